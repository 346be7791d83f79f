"""Deprecated alias of `mtp_bench.scoring.evalplus` (its old path), kept for one release; import from `mtp_bench.scoring.evalplus`."""
import warnings

from mtp_bench.scoring.evalplus import *  # noqa: F401,F403

warnings.warn("mtp_bench.evalplus moved to mtp_bench.scoring.evalplus; the old path goes in the next release", DeprecationWarning, stacklevel=2)
