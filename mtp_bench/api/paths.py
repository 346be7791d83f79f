"""Where mtp-bench keeps caches and finds benchmark data: one cache variable, one data resolver.

    cache_root()          $MTP_BENCH_CACHE_DIR, else $XDG_CACHE_HOME/mtp-bench, else ~/.cache/mtp-bench
    cache_dir("runs")     a folder under it (runs, evalplus, gguf, datasets, tokens, repro, ...)
    data_dirs(given)      the benchmark-data search path: the given folders in order, then $MTP_BENCH_DATA,
                          then the default data folder <cache root>/data when it exists
    resolve_data_dir(d)   --data-dir, else $MTP_BENCH_DATA, else <cache root>/data when it exists, else
                          None; a path that is not a folder is an error

Every cache (generations of a run, weights hashes, GGUF conversions, EvalPlus ground truth, MBPP
downloads, the trainer's token arrays, repro work dirs) lives under `cache_root()`, and every
evaluator looks for its data along `data_dirs()`; the sandbox hides both from the programs it runs
(`mtp_bench.execution.pool.hidden_paths`). `MTP_BENCH_CACHE`, the trainer's name for the cache
variable before there was one, is read when `MTP_BENCH_CACHE_DIR` is unset (for one release).
Imports only the standard library and the errors module, so the reference model may use it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from mtp_bench.api.errors import DataError

CACHE_ENV = "MTP_BENCH_CACHE_DIR"
OLD_CACHE_ENV = "MTP_BENCH_CACHE"  # deprecated spelling (the trainer's); read when CACHE_ENV is unset
DATA_ENV = "MTP_BENCH_DATA"


def cache_root(env: Mapping[str, str] = os.environ) -> Path:
    """$MTP_BENCH_CACHE_DIR, else $XDG_CACHE_HOME/mtp-bench, else ~/.cache/mtp-bench.

    >>> str(cache_root({"MTP_BENCH_CACHE_DIR": "/data/cache", "XDG_CACHE_HOME": "/xdg"}))
    '/data/cache'
    >>> str(cache_root({"XDG_CACHE_HOME": "/xdg"}))
    '/xdg/mtp-bench'
    """
    root = env.get(CACHE_ENV) or env.get(OLD_CACHE_ENV)
    if root:
        return Path(root).expanduser()
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mtp-bench"


def cache_dir(*parts: str) -> Path:
    """A folder under the cache root (not created here)."""
    return cache_root().joinpath(*parts)


def default_data_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Where benchmark data is found with no --data-dir and no $MTP_BENCH_DATA: <cache root>/data
    (a copy or a symlink of the shared data folder, e.g. `ln -s /path/to/data ~/.cache/mtp-bench/data`)."""
    return cache_root(env) / "data"


def data_dirs(given: str | os.PathLike | Iterable[str | os.PathLike | None] | None = None,
              env: Mapping[str, str] = os.environ) -> list[Path]:
    """The folders (or files) to search for benchmark data, in order: `given` (one path or several:
    an evaluator's `data_dir` field, the run's --data-dir), then $MTP_BENCH_DATA, then the default
    data folder when it exists; empty entries dropped, each once.

    >>> [str(p) for p in data_dirs(["a", None, "b", "a"], env={"MTP_BENCH_DATA": "shared", "MTP_BENCH_CACHE_DIR": "/nonexistent"})]
    ['a', 'b', 'shared']
    >>> data_dirs(None, env={"MTP_BENCH_CACHE_DIR": "/nonexistent"})
    []
    """
    if given is None:
        given = []
    elif isinstance(given, (str, os.PathLike)):
        given = [given]
    default = default_data_dir(env)
    raw = [*given, env.get(DATA_ENV), default if default.is_dir() else None]
    return list(dict.fromkeys(Path(d).expanduser() for d in raw if d))


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """--data-dir, else $MTP_BENCH_DATA, else the default data folder when it exists, else None
    (each evaluator says what it needs). A path that is not a folder is a DataError naming where
    it came from."""
    raw, source = (data_dir, "--data-dir") if data_dir else (os.environ.get(DATA_ENV), f"${DATA_ENV}")
    if not raw:
        default = default_data_dir()
        return default if default.is_dir() else None
    p = Path(raw).expanduser()
    if not p.is_dir():
        raise DataError(f"{source} {str(raw)!r} is not a directory")
    return p
