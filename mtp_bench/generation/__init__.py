"""Generation: the engine, speculative decoding, the generation cache, distributed runs, vLLM."""

from mtp_bench.generation.engine import (  # noqa: F401  the engine's API at the package path
    Generation,
    GenerationConfig,
    encode_prompt,
    generate,
    sample_next,
    trim_at_stop,
    uses_bos,
)
