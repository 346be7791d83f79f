"""`mtp_bench.load(path)`: any supported checkpoint as a `protocols.Model`, and `mtp-bench export`.

Every format but heads-only checkpoints loads in `adapters.load_checkpoint`; a heads-only
checkpoint (config.json with "format": "mtp-bench-heads") loads with its base in `heads.load_heads`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mtp_bench.api.errors import ConfigError, UnknownNameError
from mtp_bench.models import heads
from mtp_bench.models.adapters import is_gguf, load_checkpoint
from mtp_bench.models.device import resolve_device, resolve_dtype
from mtp_bench.reference_model import checkpoint
from mtp_bench.reference_model.pretrained_heads import HEADS_DTYPES, convert_heads


def load(path: str | os.PathLike, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
         base: str | None = None):
    """Load any supported checkpoint as a protocols.Model (formats: `mtp_bench.models.adapters`).
    base: where the base model of a heads-only checkpoint is, when not at its recorded path
    (ignored otherwise)."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if not is_gguf(path) and checkpoint.detect_format(Path(path)) == "heads":
        return heads.load_heads(Path(path), dev, dt, base=base)
    return load_checkpoint(path, dev, dt)


def export_checkpoint(path: str | os.PathLike, out: str | os.PathLike, format: str = "hf-llama",
                      base: str | None = None, n_future: int | None = None) -> Path:
    """The next-token model (trunk + head 1) of a native or Meta checkpoint as a LlamaForCausalLM
    directory; of a heads-only checkpoint, its base's own next-token model (`heads.export_heads`)."""
    if format.startswith("heads-"):  # a heads checkpoint stored in another dtype (heads-int8: a quarter of fp32)
        if format.removeprefix("heads-") not in HEADS_DTYPES:
            raise UnknownNameError(f"unknown export format {format!r}; heads formats: "
                                   + ", ".join(f"heads-{d}" for d in HEADS_DTYPES))
        if checkpoint.detect_format(Path(path)) != "heads":
            raise ConfigError(f"--format {format} re-stores a heads checkpoint; {path} is not one")
        return convert_heads(Path(path), out, format.removeprefix("heads-"), n_future)
    if n_future is not None:
        raise ConfigError("--n-future keeps the first heads of a heads checkpoint: use it with --format heads-DTYPE")
    checkpoint.check_export_format(format)  # before anything is loaded
    if checkpoint.detect_format(Path(path)) == "heads":
        return heads.export_heads(Path(path), out, format, base=base)
    return checkpoint.export_checkpoint(path, out, format)
