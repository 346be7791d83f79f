"""mtp-bench: evaluation and benchmarking for multi-token-prediction language models.

    model = mtp_bench.load("reference_model/checkpoints/mtp4-code")          # any supported format
    result = mtp_bench.evaluate(model, ["humaneval", "heads"], baseline="reference_model/checkpoints/ntp-code")

Both import their layer on first use, so `import mtp_bench` stays light (docs/ARCHITECTURE.md).
"""

from mtp_bench.api.version import __version__


def load(path, device=None, dtype=None, base=None):
    """Load a model from a native mtp-bench checkpoint, a Meta-format MTP checkpoint, a
    Hugging Face causal-LM directory, a GGUF file or a heads-only checkpoint (`base`: where its
    base model is, when not at the recorded path). See `mtp_bench.models.loader.load`."""
    from mtp_bench.models.loader import load as _load

    return _load(path, device=device, dtype=dtype, base=base)


def evaluate(model, evals=None, **kwargs):
    """Run evaluators (by name, or `suite=`) on a model and optionally a `baseline`; returns a
    `Result` (the result document, each evaluator's records, cache counts). Keywords and steps:
    `mtp_bench.evaluation.evaluate`."""
    from mtp_bench.evaluation import evaluate as _evaluate

    return _evaluate(model, evals, **kwargs)


__all__ = ["__version__", "evaluate", "load"]
