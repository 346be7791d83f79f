"""Deprecated alias of `mtp_bench.generation.vllm` (its old path), kept for one release; import from `mtp_bench.generation.vllm`."""
import warnings

from mtp_bench.generation.vllm import *  # noqa: F401,F403

warnings.warn("mtp_bench.vllm_backend moved to mtp_bench.generation.vllm; the old path goes in the next release", DeprecationWarning, stacklevel=2)
