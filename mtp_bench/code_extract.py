"""Deprecated alias of `mtp_bench.scoring.code_extract` (its old path), kept for one release; import from `mtp_bench.scoring.code_extract`."""
import warnings

from mtp_bench.scoring.code_extract import *  # noqa: F401,F403

warnings.warn("mtp_bench.code_extract moved to mtp_bench.scoring.code_extract; the old path goes in the next release", DeprecationWarning, stacklevel=2)
