"""The evaluator contract and its registry: the spine every evaluator plugs into.

An evaluator is a small class: a name, a version, the suites it belongs to, a config
dataclass whose fields all have defaults, and one `run(model, ctx)` method that returns
per-sample records plus aggregate metrics:

    @register
    class HumanEval(Evaluator):
        name = "humaneval"
        version = "1.0"               # goes into every result; comparisons refuse to mix versions
        suites = ("code",)
        description = "HumanEval pass@k (164 problems) in the mtp-bench sandbox"

        @dataclass
        class Config:
            protocol: str = "quick"

        def run(self, model, ctx: RunContext) -> EvalOutput: ...

Registration is a decorator over a plain dict (`REGISTRY`), as in lm-evaluation-harness.
Built-in evaluators register when `mtp_bench.evals` is imported; third-party ones through
the Python entry-point group `mtp_bench.evals` (an entry point may name a module, whose
import registers its evaluators, or an `Evaluator` subclass, which is registered).
`load_plugins()` does both, once.

`RunContext` is what a run hands each evaluator: seed, limit, data dir, scratch dir, role,
progress bars and `ctx.generate`, which serves generations from the append-only cache
(`mtp_bench.cache`) and runs the generation engine only for what is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.metadata
import math
import numbers
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from mtp_bench.api.errors import ConfigError, UnknownNameError, UserError

if TYPE_CHECKING:  # the registry imports neither torch nor the generation engine at import time
    from mtp_bench.generation.cache import JsonlCache
    from mtp_bench.generation.engine import Generation, GenerationConfig

ENTRY_POINT_GROUP = "mtp_bench.evals"
# Suites in the order reports print them; "all" is every registered evaluator. A suite with no
# registered evaluator is not listed. Third-party evaluators may declare new suites.
KNOWN_SUITES = ("code", "nl", "synthetic", "speed")
ALL = "all"


class DuplicateNameError(UserError, ValueError):
    """Two evaluators claim the same name (e.g. two plugins installed side by side)."""


# ----------------------------------------------------------------------------- results

@dataclass(frozen=True)
class Metric:
    """One aggregate number with its uncertainty. `higher_is_better` lives next to the value
    so that reports, deltas and gates never have to guess the direction."""

    value: float
    stderr: float | None  # standard error of `value`; None when it has none (n=1, a timing total)
    ci95: tuple[float, float] | None  # 95% interval; None when stderr is None
    n: int  # number of independent units behind the value (problems, prompts, ...)
    higher_is_better: bool

    def __post_init__(self) -> None:
        # normalise numpy scalars to plain Python types; reject anything that is not a number
        if isinstance(self.value, bool) or not isinstance(self.value, numbers.Real):
            raise TypeError(f"Metric.value must be a real number, got {self.value!r}")
        object.__setattr__(self, "value", float(self.value))
        if self.stderr is not None:
            object.__setattr__(self, "stderr", float(self.stderr))
        if self.ci95 is not None:
            object.__setattr__(self, "ci95", (float(self.ci95[0]), float(self.ci95[1])))
        if isinstance(self.n, bool) or not isinstance(self.n, numbers.Integral) or self.n < 0:
            raise TypeError(f"Metric.n must be a count (int >= 0), got {self.n!r}")
        object.__setattr__(self, "n", int(self.n))
        if type(self.higher_is_better).__name__ not in ("bool", "bool_"):  # bool or numpy.bool_
            raise TypeError(f"Metric.higher_is_better must be a bool, got {self.higher_is_better!r}")
        object.__setattr__(self, "higher_is_better", bool(self.higher_is_better))

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": _json_float(self.value),
            "stderr": _json_float(self.stderr),
            "ci95": None if self.ci95 is None else [_json_float(self.ci95[0]), _json_float(self.ci95[1])],
            "n": int(self.n),
            "higher_is_better": bool(self.higher_is_better),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Metric:
        keys = {"value", "stderr", "ci95", "n", "higher_is_better"}
        if not isinstance(d, dict) or set(d) != keys:
            raise ValueError(f"a metric needs exactly the keys {sorted(keys)}, got {d!r}")
        ci = d["ci95"]
        return cls(value=_unjson_float(d["value"]), stderr=_unjson_float(d["stderr"]),
                   ci95=None if ci is None else (_unjson_float(ci[0]), _unjson_float(ci[1])),
                   n=int(d["n"]), higher_is_better=bool(d["higher_is_better"]))


def _json_float(x: float | None) -> float | str | None:
    """JSON has no NaN/inf; write them as strings so result files stay strict JSON."""
    if x is None or math.isfinite(x):
        return x
    return str(x)  # "nan", "inf", "-inf"


def _unjson_float(x: Any) -> float | None:
    return None if x is None else float(x)


@dataclass
class EvalOutput:
    """What `Evaluator.run` returns: one JSON-serialisable record per sample (each with a str
    "sample_id"), aggregate metrics, and JSON-serialisable extra info (e.g. sandbox isolation)."""

    records: list[dict]
    metrics: dict[str, Metric]
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class GenRequest:
    """One generation to make: sample `sample_index` (0..n-1 when sampling n per problem)
    of the problem `sample_id`, from `prompt`."""

    sample_id: str
    sample_index: int
    prompt: str


def sample_seed(run_seed: int, sample_id: str, sample_index: int) -> int:
    """The seed of one sample, from the run seed and the sample's identity only, so a sampled
    output depends neither on the batch it lands in nor on how samples are split across
    processes (the reproducibility complaint of lm-evaluation-harness issues 1645 and 3357).

    >>> sample_seed(0, "HumanEval/0", 0) == sample_seed(0, "HumanEval/0", 0)
    True
    >>> sample_seed(0, "HumanEval/0", 0) != sample_seed(0, "HumanEval/0", 1)
    True
    """
    h = hashlib.sha256(f"{int(run_seed)}\x00{sample_id}\x00{int(sample_index)}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)  # fits torch.Generator.manual_seed


# ----------------------------------------------------------------------------- evaluators

class Evaluator:
    """Base class of every evaluator. Subclasses set the class attributes and implement `run`."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = ""
    suites: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    caption: ClassVar[str | None] = None  # one line under the report table; None = generic

    @dataclass
    class Config:  # no knobs by default; subclasses declare their own dataclass
        pass

    def __init__(self, config: Any = None) -> None:
        if config is None:
            config = self.Config()
        elif isinstance(config, dict):
            config = config_from_dict(self.Config, config, owner=self.name)
        elif not isinstance(config, self.Config):
            raise TypeError(f"{self.name}: config must be a {self.Config.__qualname__}, a dict or None, "
                            f"got {type(config).__name__}")
        self.config = config

    def run(self, model: Any, ctx: RunContext) -> EvalOutput:
        raise NotImplementedError(f"{type(self).__name__}.run")

    def config_dict(self) -> dict[str, Any]:
        """The config as plain JSON (tuples become lists), as stored in result files."""
        return _jsonable(dataclasses.asdict(self.config))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, version={self.version!r}, config={self.config!r})"


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def config_from_dict(cls: type, d: dict[str, Any], owner: str = "") -> Any:
    """Build a Config dataclass from a dict; an unknown key fails with the list of valid ones."""
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(valid))
    where = f"{owner}: " if owner else ""
    if unknown:
        raise ConfigError(f"{where}unknown config field(s) {unknown}; valid fields: {valid or 'none'}")
    try:
        return cls(**d)
    except UserError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}bad config: {e}") from None


REGISTRY: dict[str, type[Evaluator]] = {}


def register(cls: type[Evaluator]) -> type[Evaluator]:
    """Class decorator: add an evaluator to `REGISTRY`. A duplicate name is an error."""
    if not (isinstance(cls, type) and issubclass(cls, Evaluator)):
        raise TypeError(f"@register expects an Evaluator subclass, got {cls!r}")
    for attr in ("name", "version", "description"):
        if not isinstance(getattr(cls, attr), str) or not getattr(cls, attr):
            raise TypeError(f"{cls.__qualname__}.{attr} must be a non-empty string")
    if isinstance(cls.suites, str) or not cls.suites or not all(isinstance(s, str) and s for s in cls.suites):
        raise TypeError(f"{cls.__qualname__}.suites must be a non-empty tuple of suite names")
    if ALL in cls.suites:
        raise TypeError(f"{cls.__qualname__}.suites must not contain {ALL!r}: every evaluator is in it")
    if not dataclasses.is_dataclass(cls.Config):
        raise TypeError(f"{cls.__qualname__}.Config must be a @dataclass")
    missing = [f.name for f in dataclasses.fields(cls.Config)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise TypeError(f"{cls.__qualname__}.Config fields need defaults: {missing}")
    existing = REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise DuplicateNameError(
            f"evaluator name {cls.name!r} is registered twice: {_where(existing)} and {_where(cls)}")
    REGISTRY[cls.name] = cls
    return cls


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


_plugins_loaded = False


def load_plugins() -> None:
    """Import the built-in evaluators and every `mtp_bench.evals` entry point, once.
    A plugin that fails to import is a bug in that plugin: its exception propagates."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _import_builtins()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        if isinstance(obj, type) and issubclass(obj, Evaluator):
            register(obj)
    _plugins_loaded = True


def _import_builtins() -> None:
    importlib.import_module("mtp_bench.evals")  # its __init__ imports every built-in module


def get(name: str) -> type[Evaluator]:
    """The evaluator class registered as `name`; unknown -> UnknownNameError listing known ones."""
    load_plugins()
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownNameError(f"unknown evaluator {name!r}; known evaluators: {_names(REGISTRY)}") from None


def suites() -> dict[str, list[str]]:
    """suite -> evaluator names, computed from the registered evaluators (known suites first,
    then any third-party ones alphabetically, then "all"). Suites without evaluators are absent."""
    load_plugins()
    out: dict[str, list[str]] = {}
    extra = sorted({s for cls in REGISTRY.values() for s in cls.suites} - set(KNOWN_SUITES))
    for suite in (*KNOWN_SUITES, *extra):
        names = sorted(n for n, cls in REGISTRY.items() if suite in cls.suites)
        if names:
            out[suite] = names
    if REGISTRY:
        out[ALL] = sorted(REGISTRY)
    return out


def resolve(suite: str | None = None, evals: list[str] | None = None) -> list[type[Evaluator]]:
    """The evaluator classes a run uses: `evals` by name (in the given order), else `suite`.
    Unknown names fail with the list of known ones."""
    load_plugins()
    if evals:
        seen: list[str] = []
        for n in evals:
            if n not in seen:
                seen.append(n)
        return [get(n) for n in seen]
    table = suites()
    if suite is None:
        raise UserError("give --suite or --evals")
    if suite not in table:
        known = ", ".join(table) if table else "none (no evaluator is installed)"
        raise UnknownNameError(f"unknown suite {suite!r}; known suites: {known}")
    return [REGISTRY[n] for n in table[suite]]


def _names(d: dict) -> str:
    return ", ".join(sorted(d)) if d else "none (no evaluator is installed)"


# ----------------------------------------------------------------------------- run context

class _NullProgress:
    def advance(self, n: int = 1) -> None:
        pass


@contextlib.contextmanager
def _null_progress(description: str, total: int | None) -> Iterator[_NullProgress]:
    yield _NullProgress()


@dataclass
class RunContext:
    """Everything a run hands an evaluator besides the model.

    Tests of evaluators build one directly: `RunContext(seed=0, work_dir=tmp_path)` gives no
    progress bars and no generation cache (every `generate` call runs the engine).
    """

    seed: int = 0  # run seed; per-sample seeds derive from it (sample_seed)
    limit: int | None = None  # run only the first N samples of each evaluator (smoke runs, CI)
    data_dir: Path | None = None  # --data-dir, else $MTP_BENCH_DATA, else None (evaluator's own default)
    work_dir: Path = Path(".")  # scratch space that persists across resumes of one run
    role: str = "candidate"  # "candidate" | "baseline"
    progress_factory: Callable[[str, int | None], contextlib.AbstractContextManager] = _null_progress
    cache: JsonlCache | None = None  # append-only generation cache; None = always generate
    generate_fn: Callable[..., list] | None = None  # None = mtp_bench.generation.generate
    distributed: Any = None  # under torchrun: a mtp_bench.distributed.Group; the misses are sharded across ranks
    stats: dict[str, int] = field(default_factory=lambda: {"cache_hits": 0, "generated": 0})

    def __post_init__(self) -> None:
        if self.role not in ("candidate", "baseline"):
            raise ValueError(f"role must be 'candidate' or 'baseline', got {self.role!r}")
        self.work_dir = Path(self.work_dir)
        if self.data_dir is not None:
            self.data_dir = Path(self.data_dir)

    def progress(self, description: str, total: int | None = None) -> contextlib.AbstractContextManager:
        """`with ctx.progress("humaneval: execute", total=n) as bar: ... bar.advance()`:
        a rich progress bar with ETA in the console, a no-op when quiet or in tests."""
        return self.progress_factory(description, total)

    def sample_seed(self, sample_id: str, sample_index: int) -> int:
        return sample_seed(self.seed, sample_id, sample_index)

    def generate(self, model: Any, requests: list[GenRequest], gen_config: GenerationConfig,
                 evaluator: Evaluator) -> list[Generation]:
        """Generations for `requests`, in order. Each is served from the generation cache when
        present; the rest run through the generation engine in batches of
        `gen_config.batch_size`, and each batch is appended to the cache as soon as it is done,
        so a run killed at any point and started again redoes at most one batch.

        1) key every request (weights, evaluator name + version, sample id + index, generation
           config, prompt hash, and the per-sample seed when sampling)
        2) serve hits from the cache
        3) sort misses by prompt length (fewer pad tokens per batch), generate batch by batch
           with per-sample seeds, append each batch to the cache (`generate_batches`); under
           torchrun every rank does this for its shard of the misses (`mtp_bench.distributed`)
        """
        from mtp_bench.generation import cache as cache_mod
        from mtp_bench.generation.engine import Generation, generate

        gen_fn = self.generate_fn or generate
        cfg = gen_config.to_dict()
        cfg.pop("batch_size", None)  # outputs do not depend on it (per-sample seeds), so neither does the key
        engine = getattr(model, "generation_engine", None)  # another engine (vLLM) never shares our outputs
        if engine is not None:
            cfg["engine"] = engine
        sampling = float(gen_config.temperature) > 0.0
        seeds = [self.sample_seed(r.sample_id, r.sample_index) for r in requests]
        weights = str(model.weights_sha256)
        known = {f.name for f in dataclasses.fields(Generation)}
        out: list[Generation | None] = [None] * len(requests)
        keys: list[str] = []
        key_fields: list[dict] = []
        # 1) + 2)
        for i, r in enumerate(requests):
            fields = cache_mod.key_fields(weights, evaluator.name, evaluator.version, r.sample_id,
                                          r.sample_index, cfg, r.prompt, seeds[i] if sampling else None)
            key = cache_mod.hash_fields(fields)
            keys.append(key)
            key_fields.append(fields)
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                out[i] = Generation(**{k: v for k, v in hit.items() if k in known})
        misses = [i for i, g in enumerate(out) if g is None]
        self.stats["cache_hits"] += len(requests) - len(misses)
        if not misses:
            return out  # type: ignore[return-value]
        # 3)
        todo = [MissingGeneration(requests[i].sample_id, requests[i].prompt, seeds[i], keys[i], key_fields[i])
                for i in misses]
        with self.progress(f"{evaluator.name} [{self.role}]: generate", len(requests)) as bar:
            bar.advance(len(requests) - len(misses))
            if self.distributed is not None:  # every rank generates its shard (mtp_bench.distributed)
                gens = self.distributed.generate(model, self.role, todo, gen_config, gen_fn, self.cache, bar)
            else:
                gens = generate_batches(model, todo, gen_config, gen_fn, self.cache, bar)
        for i, g in zip(misses, gens):
            out[i] = g
        self.stats["generated"] += len(misses)
        return out  # type: ignore[return-value]


@dataclass(frozen=True)
class MissingGeneration:
    """A request the cache could not serve, with what is needed to generate and cache it."""

    sample_id: str
    prompt: str
    seed: int
    key: str  # cache key
    fields: dict  # what the key hashes, stored beside it for humans


def generate_batches(model: Any, todo: list[MissingGeneration], gen_config: GenerationConfig,
                     gen_fn: Callable[..., list], cache: JsonlCache | None, bar: Any = None) -> list[Generation]:
    """Generate `todo` (in order) batch by batch: longest prompts first (fewer pad tokens per
    batch), per-sample seeds, each batch appended to the cache as soon as it is done.
    A model may ask for larger batches (`generation_batch_size`: an engine that batches itself)."""
    enc = model.tokenizer.encode
    order = sorted(range(len(todo)), key=lambda i: (-len(enc(todo[i].prompt)), i))
    bs = int(getattr(model, "generation_batch_size", None) or gen_config.batch_size)
    out: list[Generation | None] = [None] * len(todo)
    for start in range(0, len(order), bs):
        chunk = order[start:start + bs]
        gens = gen_fn(model, [todo[i].prompt for i in chunk], gen_config, seeds=[todo[i].seed for i in chunk])
        if len(gens) != len(chunk):
            raise RuntimeError(f"generation engine returned {len(gens)} results for {len(chunk)} prompts")
        for i, g in zip(chunk, gens):
            out[i] = g
        if cache is not None:
            cache.put_many([(todo[i].key, dataclasses.asdict(g), todo[i].fields) for i, g in zip(chunk, gens)])
        if bar is not None:
            bar.advance(len(chunk))
    return out  # type: ignore[return-value]
