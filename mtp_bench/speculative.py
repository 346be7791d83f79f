"""Deprecated alias of `mtp_bench.generation.speculative` (its old path), kept for one release; import from `mtp_bench.generation.speculative`."""
import warnings

from mtp_bench.generation.speculative import *  # noqa: F401,F403

warnings.warn("mtp_bench.speculative moved to mtp_bench.generation.speculative; the old path goes in the next release", DeprecationWarning, stacklevel=2)
