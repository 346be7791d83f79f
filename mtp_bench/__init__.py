"""mtp-bench: evaluation and benchmarking for multi-token-prediction language models."""

__version__ = "0.1.0"


def load(path, device=None, dtype=None, base=None):
    """Load a model from a native mtp-bench checkpoint, a Meta-format MTP checkpoint, a
    Hugging Face causal-LM directory, a GGUF file or a heads-only checkpoint (`base`: where its
    base model is, when not at the recorded path). See `mtp_bench.adapters.load`."""
    from mtp_bench.models.adapters import load as _load

    return _load(path, device=device, dtype=dtype, base=base)


__all__ = ["__version__", "load"]
