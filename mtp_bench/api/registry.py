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

What a run hands each evaluator besides the model is a `RunContext` (`mtp_bench.api.context`);
what an evaluator reports is a `Metric` per aggregate (`mtp_bench.api.metric`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from mtp_bench.api.config import config_from_dict
from mtp_bench.api.errors import UnknownNameError, UserError, did_you_mean
from mtp_bench.api.metric import Metric

if TYPE_CHECKING:
    from mtp_bench.api.context import RunContext

ENTRY_POINT_GROUP = "mtp_bench.evals"
# Suites in the order reports print them; "all" is every registered evaluator. A suite with no
# registered evaluator is not listed. Third-party evaluators may declare new suites.
KNOWN_SUITES = ("code", "nl", "synthetic", "speed")
ALL = "all"


class DuplicateNameError(UserError, ValueError):
    """Two evaluators claim the same name (e.g. two plugins installed side by side)."""


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
        raise UnknownNameError(f"unknown evaluator {name!r}{did_you_mean(name, REGISTRY)}; "
                               f"known evaluators: {_names(REGISTRY)}") from None


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
        raise UnknownNameError(f"unknown suite {suite!r}{did_you_mean(suite, table)}; known suites: {known}")
    return [REGISTRY[n] for n in table[suite]]


def _names(d: dict) -> str:
    return ", ".join(sorted(d)) if d else "none (no evaluator is installed)"
