"""Heads-only checkpoints as framework models: extra heads on a pretrained base (format "heads").

The heads themselves (building, initialising, fitting, saving them; the checkpoint's config and
where its base is) belong to the reference model (`mtp_bench.reference_model.pretrained_heads`);
what needs the framework's loaders lives here:

    load_base(source)        the base as a one-head MTPModel in the reference backend
    load_heads(dir, base=)   base + heads as one MTPModel (what `mtp_bench.load(dir)` returns)
    init_model(cfg, device)  the trainer's `--init BASE` (mtp-bench train passes it to `train`)
    export_heads(dir, out)   `mtp-bench export` of a heads dir: the base's own next-token model
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from mtp_bench.api.errors import CheckpointError, ConfigError
from mtp_bench.models.adapters import MTPModel, load_checkpoint
from mtp_bench.reference_model.checkpoint import export_checkpoint, write_dir_atomically
from mtp_bench.reference_model.model import ModelConfig
from mtp_bench.reference_model.pretrained_heads import (
    BaseTokenizer,
    attach_heads,
    base_record,
    find_base,
    freeze_trunk,
    read_heads_config,
)
from mtp_bench.reference_model.quant import dequantize_state_dict, is_quantized


def load_base(source: str, device=None, dtype=None):
    """BASE as an MTPModel (reference backend, one head); ConfigError if it cannot take heads."""
    m = load_checkpoint(source, device=device, dtype=dtype)
    if getattr(m, "backend", None) != "reference":
        raise ConfigError(f"--init {source}: runs through transformers ({m.backend_note}); heads need the reference model")
    if m.n_future != 1:
        raise ConfigError(f"--init {source}: already has n_future={m.n_future} heads; start from a next-token model")
    return m




def load_heads(d: Path, device=None, dtype=None, base: str | None = None):
    """A heads checkpoint with its base, as one MTPModel (format "heads")."""
    c = read_heads_config(d)
    source = find_base(c, d, base)
    bm = load_base(source, device=device, dtype=dtype)
    if bm.weights_sha256 != c["base"]["sha256"]:
        raise CheckpointError(f"{d}: base {source} has weights sha256 {bm.weights_sha256[:12]}..., but these heads were "
                              f"trained on {c['base']['sha256'][:12]}...; pass the right --base")
    try:
        mcfg = ModelConfig.from_dict(c["model"])
    except ConfigError as e:
        raise CheckpointError(f"{d / 'config.json'}: {e}") from None
    model = attach_heads(bm.module, mcfg.n_future, mcfg.head_type, "fresh", draft_vocab_size=mcfg.draft_vocab_size)
    if model.config != mcfg:
        raise CheckpointError(f"{d}: the heads' model config does not match base {source} plus {mcfg.n_future - 1} heads")
    f = d / "heads.safetensors"
    try:
        sd = load_file(str(f))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read {f} (truncated or not safetensors?): {e}") from None
    try:
        vocab = sd.pop("draft_vocab", None)
        if (vocab is None) != (not mcfg.draft_vocab_size):
            raise RuntimeError(f"draft_vocab: config.json says draft_vocab_size={mcfg.draft_vocab_size}, the file "
                               f"{'lacks' if vocab is None else 'has'} a draft_vocab tensor")
        if vocab is not None:
            if tuple(vocab.shape) != (mcfg.draft_vocab_size,) or vocab.dtype != torch.int64 or \
                    int(vocab.min()) < 0 or int(vocab.max()) >= mcfg.vocab_size:
                raise RuntimeError(f"draft_vocab must be {mcfg.draft_vocab_size} token ids below {mcfg.vocab_size}")
            model.draft_vocab = vocab.to(bm.device)
        if is_quantized(sd):  # heads_dtype=int8: dequantized once, the model holds the dequantized weights
            sd = dequantize_state_dict(sd)
        model.extra_heads.load_state_dict({k.removeprefix("extra_heads."): v for k, v in sd.items()}, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{f}: heads do not match config.json: {str(e).splitlines()[-1].strip()}") from None
    model = model.to(device=bm.device, dtype=bm.dtype).eval()
    info = {**bm.info, "base": source, "base_format": bm.format, "base_sha256": c["base"]["sha256"]}
    return MTPModel(model, bm.tokenizer, str(d), "heads", [*bm._weight_files, f], info)




def init_model(cfg, device: torch.device):
    """TrainConfig with init=BASE -> (model with extra heads, tokenizer, base record). The base
    loads in float32 (autocast handles bf16 training)."""
    bm = load_base(cfg.init, device=device, dtype=torch.float32)
    model = attach_heads(bm.module, cfg.n_future, cfg.head_type, cfg.head_init, cfg.seed, cfg.draft_vocab)
    if cfg.freeze_trunk:
        freeze_trunk(model)
    return model, BaseTokenizer(bm.tokenizer), base_record(cfg.init, bm)




def export_heads(path: Path, out, format: str = "hf-llama", base: str | None = None) -> Path:
    """`mtp-bench export HEADS_DIR`: the base's next-token model, unchanged (the heads add nothing
    to it): a GGUF base's cached HF conversion or an HF base's files, copied; a native base exported."""
    c = read_heads_config(path)
    source = find_base(c, path, base)
    bm = load_base(source)
    if bm.weights_sha256 != c["base"]["sha256"]:
        raise CheckpointError(f"{path}: base {source} has weights sha256 {bm.weights_sha256[:12]}..., but these heads were "
                              f"trained on {c['base']['sha256'][:12]}...; pass the right --base")
    if bm.format in ("native", "meta"):
        return export_checkpoint(source, out, format=format)
    src = Path(bm.info["converted_dir"]) if bm.format == "gguf" else Path(source)

    def fill(d: Path) -> None:
        for f in sorted(src.iterdir()):
            if f.is_file() and f.name != "gguf.json":
                shutil.copy2(f, d / f.name)
        (d / "mtp_bench_export.json").write_text(json.dumps(
            {"source": str(path), "source_format": "heads", "base": source, "base_sha256": c["base"]["sha256"],
             "n_future_dropped": c["model"].get("n_future", 1) - 1, "format": format}, indent=2) + "\n", encoding="utf-8")

    return write_dir_atomically(out, fill)
