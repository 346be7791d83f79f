"""Deprecated alias of `mtp_bench.generation.chat` (its old path), kept for one release; import from `mtp_bench.generation.chat`."""
import warnings

from mtp_bench.generation.chat import *  # noqa: F401,F403

warnings.warn("mtp_bench.chat moved to mtp_bench.generation.chat; the old path goes in the next release", DeprecationWarning, stacklevel=2)
