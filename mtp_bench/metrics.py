"""Deprecated alias of `mtp_bench.scoring.metrics` (its old path), kept for one release; import from `mtp_bench.scoring.metrics`."""
import warnings

from mtp_bench.scoring.metrics import *  # noqa: F401,F403

warnings.warn("mtp_bench.metrics moved to mtp_bench.scoring.metrics; the old path goes in the next release", DeprecationWarning, stacklevel=2)
