"""Deprecated alias of `mtp_bench.commands.run` (its old path), kept for one release; import from `mtp_bench.commands.run`."""
import warnings

from mtp_bench.api.config import parse_overrides, parse_value  # noqa: F401
from mtp_bench.commands.run import *  # noqa: F401,F403
from mtp_bench.evaluation import resolve_data_dir, resolve_work_dir, seed_everything  # noqa: F401

warnings.warn("mtp_bench.runner moved to mtp_bench.commands.run; the old path goes in the next release", DeprecationWarning, stacklevel=2)
