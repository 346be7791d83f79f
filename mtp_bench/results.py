"""Deprecated alias of `mtp_bench.reporting.results` (its old path), kept for one release; import from `mtp_bench.reporting.results`."""
import warnings

from mtp_bench.reporting.results import *  # noqa: F401,F403

warnings.warn("mtp_bench.results moved to mtp_bench.reporting.results; the old path goes in the next release", DeprecationWarning, stacklevel=2)
