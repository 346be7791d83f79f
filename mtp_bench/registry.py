"""Deprecated alias of `mtp_bench.api.registry` (its old path), kept for one release; import from `mtp_bench.api.registry`."""
import warnings

from mtp_bench.api.config import config_from_dict  # noqa: F401
from mtp_bench.api.context import *  # noqa: F401,F403
from mtp_bench.api.metric import *  # noqa: F401,F403
from mtp_bench.api.registry import *  # noqa: F401,F403
from mtp_bench.generation.cache import MissingGeneration, generate_batches  # noqa: F401

warnings.warn("mtp_bench.registry moved to mtp_bench.api.registry; the old path goes in the next release", DeprecationWarning, stacklevel=2)
