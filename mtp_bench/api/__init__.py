"""The contracts every layer builds on: errors, file helpers, paths, configuration, protocols,
metrics as values, the evaluator registry and the run context.

May import: nothing of mtp_bench outside api (the standard library only; torch only for types).

What an evaluator author needs is re-exported here:

    from mtp_bench.api import EvalOutput, Evaluator, GenRequest, Metric, RunContext, register
"""

from mtp_bench.api.context import RunContext
from mtp_bench.api.metric import Metric
from mtp_bench.api.registry import EvalOutput, Evaluator, GenRequest, register, sample_seed

__all__ = ["EvalOutput", "Evaluator", "GenRequest", "Metric", "RunContext", "register", "sample_seed"]
