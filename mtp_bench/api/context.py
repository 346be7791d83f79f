"""`RunContext`: what a run hands each evaluator besides the model.

seed, limit, data dir, work dir, role, progress bars, and `ctx.generate(model, requests,
gen_config, evaluator)`, which serves generations from the run's append-only cache and runs the
engine only for what is missing.

The cache and the engine belong to the generation layer, above this one, so they come in through
one extension point instead of an import: `mtp_bench.generation` installs its cached generator
(`mtp_bench.generation.cache.cached_generate`) when it is imported, which every caller of
`ctx.generate` has done (the `GenerationConfig` it passes comes from there). A context may also
carry its own `generator` (same signature), which wins.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtp_bench.api.registry import Evaluator, GenRequest, sample_seed

if TYPE_CHECKING:  # types only: this module imports neither torch nor the generation layer
    from mtp_bench.generation.cache import JsonlCache
    from mtp_bench.generation.engine import Generation, GenerationConfig

# (ctx, model, requests, gen_config, evaluator) -> generations in request order
Generator = Callable[["RunContext", Any, list[GenRequest], Any, Evaluator], list]
_installed: Generator | None = None


def install_generator(fn: Generator) -> None:
    """Called once by `mtp_bench.generation` on import: the default behind `RunContext.generate`."""
    global _installed
    _installed = fn


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
    generate_fn: Callable[..., list] | None = None  # the engine; None = mtp_bench.generation.engine.generate
    distributed: Any = None  # under torchrun: a mtp_bench.generation.distributed.Group; the misses are sharded
    stats: dict[str, int] = field(default_factory=lambda: {"cache_hits": 0, "generated": 0})
    generator: Generator | None = None  # None = the generation layer's cached generator (see the module docstring)

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
        """Generations for `requests`, in order: served from the generation cache when present,
        the rest generated in batches of `gen_config.batch_size`, each batch appended to the cache
        as soon as it is done, so a run killed at any point and started again redoes at most one
        batch (the steps: `mtp_bench.generation.cache.cached_generate`)."""
        generator = self.generator or _installed
        if generator is None:
            raise RuntimeError("RunContext.generate needs the generation layer: import mtp_bench.generation")
        return generator(self, model, requests, gen_config, evaluator)
