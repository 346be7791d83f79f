"""Deprecated alias of `mtp_bench.execution.wire` (its old path), kept for one release; import from `mtp_bench.execution.wire`."""
import warnings

from mtp_bench.execution.wire import *  # noqa: F401,F403

warnings.warn("mtp_bench.wire moved to mtp_bench.execution.wire; the old path goes in the next release", DeprecationWarning, stacklevel=2)
