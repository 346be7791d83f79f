"""Generation: the engine, speculative decoding, the generation cache, distributed runs, vLLM.

May import: mtp_bench.api, mtp_bench.reference_model, mtp_bench.models.

Importing this package installs the cached generator behind `RunContext.generate`
(`cache.cached_generate`; see `mtp_bench.api.context`). The engine's API is re-exported here,
so `from mtp_bench.generation import GenerationConfig` reads as before the package existed.
"""

from mtp_bench.api.context import install_generator
from mtp_bench.generation.cache import cached_generate
from mtp_bench.generation.engine import (  # noqa: F401  the engine's API at the package path
    Generation,
    GenerationConfig,
    encode_prompt,
    generate,
    sample_next,
    trim_at_stop,
    uses_bos,
)

install_generator(cached_generate)
