"""Evaluators, one a file. Importing this package registers every built-in evaluator.

May import: mtp_bench.api, .reference_model, .models, .generation, .execution, .scoring; an
evaluator never imports another (shared code lives in mtp_bench.scoring).
"""

import importlib as _importlib
from pathlib import Path as _Path

# Built-in evaluator modules, in report order. A module not written yet is simply absent; a
# module that exists but fails to import is a bug and its exception propagates.
BUILTIN_MODULES = ("humaneval", "mbpp", "humaneval_plus", "mbpp_plus", "specdec", "heads", "summarization", "gsm8k",
                   "induction", "arithmetic", "specdec_vllm")

for _name in BUILTIN_MODULES:
    if (_Path(__file__).parent / f"{_name}.py").exists():
        _importlib.import_module(f"{__name__}.{_name}")
