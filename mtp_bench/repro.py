"""Deprecated alias of `mtp_bench.commands.repro` (its old path), kept for one release; import from `mtp_bench.commands.repro`."""
import warnings

from mtp_bench.commands.repro import *  # noqa: F401,F403

warnings.warn("mtp_bench.repro moved to mtp_bench.commands.repro; the old path goes in the next release", DeprecationWarning, stacklevel=2)
