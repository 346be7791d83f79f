"""Generation: the engine, speculative decoding, the generation cache, distributed runs, vLLM.

May import: mtp_bench.api, mtp_bench.reference_model, mtp_bench.models.

Importing this package installs the cached generator behind `RunContext.generate`
(`cache.cached_generate`; see `mtp_bench.api.context`). The engine's API is re-exported here,
so `from mtp_bench.generation import GenerationConfig` reads as before the package existed.
Both load the engine (and torch) on first use, not on import: `mtp-bench exec` imports the code
evaluators, which import `generation.chat`, and torch's import alone is seconds of its start.
"""

from mtp_bench.api.context import install_generator

_ENGINE_API = ("Generation", "GenerationConfig", "encode_prompt", "generate", "sample_next", "trim_at_stop", "uses_bos")


def cached_generate(*args, **kwargs):
    """`cache.cached_generate`, imported on the first call."""
    from mtp_bench.generation.cache import cached_generate as run

    return run(*args, **kwargs)


def __getattr__(name: str):
    if name in _ENGINE_API:
        from mtp_bench.generation import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


install_generator(cached_generate)
