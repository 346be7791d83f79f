"""File digests: the sha256 of weight files (cached, since a multi-GB checkpoint takes seconds to
hash) and of any one file. A file helper, so the reference model may use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from mtp_bench.api.errors import CheckpointError, UserError
from mtp_bench.api.paths import cache_root


def check_writable(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Check before any work that `path` can be written: not a directory, its folder exists (or is
    created) and takes a new file. One line (UserError) otherwise; returns the path."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise UserError(f"{flag} {str(out)!r} is a directory; give a file name")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the output directory {str(parent)!r} of {flag}: {e.strerror or e}") from None
    if not parent.is_dir():
        raise UserError(f"the output directory {str(parent)!r} of {flag} is not a directory")
    try:  # the only reliable test (ACLs, read-only mounts, root): actually create a file
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".mtp-bench-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"the output directory {str(parent)!r} of {flag} is not writable: {e.strerror or e}") from None
    return out


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of one file's bytes, read in 1 MiB blocks (not cached)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _cache_file() -> Path:
    return cache_root() / "weights_sha256.json"


_SHA_MEMO: dict[str, str] = {}


def weights_sha256(files: list[Path]) -> str:
    """sha256 of the weight files' bytes (concatenated in the order given).

    Hashing a multi-GB checkpoint takes seconds, so the digest is cached per (path, mtime, size)
    of every file, in memory and in `paths.cache_root()`/weights_sha256.json. A rewritten file changes mtime or size and is hashed again."""
    if not files:
        raise CheckpointError("no weight files to hash")
    stats = [(str(f.resolve()), f.stat().st_mtime_ns, f.stat().st_size) for f in files]
    key = json.dumps(stats)
    if key in _SHA_MEMO:
        return _SHA_MEMO[key]
    cache_path = _cache_file()
    try:
        disk = json.loads(cache_path.read_text(encoding="utf-8"))
        if not isinstance(disk, dict):
            disk = {}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        disk = {}  # no cache yet, or a damaged one: it is only a cache, rebuild it
    digest = disk.get(key)
    if not isinstance(digest, str):
        h = hashlib.sha256()
        for f in files:
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 24), b""):
                    h.update(chunk)
        digest = h.hexdigest()
        disk[key] = digest
        try:  # atomic: temp file in the same dir, fsync, rename; a failure only costs a rehash later
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cache_path.parent, prefix=".weights_sha256.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(disk, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, cache_path)
        except OSError:
            pass
    _SHA_MEMO[key] = digest
    return digest
