"""Train a reference multi-token-prediction model: `mtp-bench train`.

A nanoGPT-style loop over the MTP transformer of model.py:
  AdamW (betas 0.9/0.95, weight decay on matrices only), linear warm-up then cosine decay to
  3% of the peak, gradient clipping at 1.0, bf16 autocast on CUDA, gradient accumulation,
  the paper's memory-efficient sequential backward (or the naive one, to compare),
  periodic validation of EVERY head (held-out loss and top-1 accuracy of head i predicting
  token t+1+i), resumable state (model, optimizer, scheduler, step, data cursor, RNG states),
  and a final checkpoint written with `checkpoint.save_checkpoint`.

Configuration: one flat `TrainConfig`; named presets in `PRESETS`; overrides on the command
line as `--set key=value` (typed by the dataclass field). Precedence: defaults < preset < --set
< --out. Nothing is read from the environment except torchrun's RANK/WORLD_SIZE/LOCAL_RANK.

Distributed: under `torchrun` (gloo on CPU, nccl on CUDA) every rank holds the whole model and
reads a disjoint slice of each global batch; gradients are averaged with one all-reduce per
optimizer step. (Not DDP's module wrapper: the sequential backward runs the trunk and each head
separately, outside the wrapper's forward hooks.) W ranks with grad_accum=a see the same windows
as one process with grad_accum=a*W.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shlex
import signal
import subprocess
import sys
import threading
import time
import typing
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from mtp_bench.api.atomic import atomic_open
from mtp_bench.api.errors import CheckpointError, ConfigError, DataError, UnknownNameError
from mtp_bench.api.version import __version__
from mtp_bench.reference_model import data as D
from mtp_bench.reference_model import frozen as FZ
from mtp_bench.reference_model import pretrained_heads as PH
from mtp_bench.reference_model.checkpoint import save_checkpoint
from mtp_bench.reference_model.model import ModelConfig, Transformer, mtp_forward_backward
from mtp_bench.reference_model.tokenizer import Tokenizer, byte_tokenizer, load_tokenizer, tokenizer_summary, train_bpe

# -----------------------------------------------------------------------------
# config


@dataclass
class TrainConfig:
    # --- model shape (ModelConfig; vocab_size comes from the tokenizer, max_seq_len = seq_len) ---
    dim: int = 256  # residual width
    n_layers: int = 6  # total depth incl. head layers: constant across n_future (the paper's compute matching)
    n_heads: int = 8  # attention heads
    n_kv_heads: int | None = None  # GQA key/value heads; None = n_heads
    multiple_of: int = 64  # SwiGLU hidden rounding; small so small models are not padded much
    ffn_dim_multiplier: float | None = None  # Llama-style SwiGLU width scale; None = 8/3 * dim
    norm_eps: float = 1e-5  # RMSNorm epsilon
    rope_theta: float = 10000.0  # rotary base
    init_std: float = 0.02  # normal init std of every matrix
    n_future: int = 4  # output heads; 1 = the next-token baseline. 4 is the paper's choice for code
    head_type: str = "parallel"  # "parallel" | "linear" | "causal" | "anticausal" (paper Appendix B) | "sequential" (DeepSeek-V3)
    head_weights: tuple[float, ...] | None = None  # per-head loss weights; None = plain sum (the paper)
    # --- tokenizer ---
    tokenizer: str = "bpe"  # "bpe" (trained on the training split, cached) | "byte" (259 ids, no training)
    bpe_vocab_size: int = 8192  # bpe only: total vocabulary incl. 3 specials and 256 bytes
    # --- data ---
    corpus: str = "stdlib"  # "stdlib" (this interpreter's standard library, offline) | a folder | a .jsonl file
    corpus_glob: str = "**/*.py"  # comma-separated patterns relative to the folder, e.g. "json/*.py,email/*.py"
    corpus_field: str = "text"  # JSONL corpora: the field holding each document (the prompt, with target_field)
    target_field: str = ""  # JSONL prompt/target corpora (fine-tuning): the target field; loss on target tokens only
    val_fraction: float = 0.02  # share of DOCUMENTS held out for validation (by hash of their name)
    cache_dir: str = ""  # token/tokenizer cache; "" = the cache root ($MTP_BENCH_CACHE_DIR, else ~/.cache/mtp-bench)
    # --- batch and length ---
    seq_len: int = 256  # tokens per training window (= the model's max_seq_len)
    batch_size: int = 8  # windows per micro-batch per rank
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 2000  # optimizer steps
    max_tokens: int = 0  # if > 0: train for this many tokens instead (max_steps = ceil(tokens / tokens per step))
    # --- optimizer (AdamW + warm-up + cosine) ---
    lr: float = 1e-3  # peak learning rate
    warmup_steps: int = 100  # linear warm-up from 0 to lr
    min_lr_ratio: float = 0.03  # cosine decays to this fraction of lr at max_steps
    weight_decay: float = 0.1  # applied to matrices (dim >= 2) only, not norms
    betas: tuple[float, ...] = (0.9, 0.95)  # AdamW betas (beta1, beta2)
    grad_clip: float = 1.0  # max global grad norm; 0 = no clipping
    backward: str = "sequential"  # "sequential" (paper Fig. 2: one head's logits alive at a time) | "naive"
    # --- evaluation, logging, checkpoints ---
    eval_interval: int = 200  # steps between validations (and at the end); 0 = only at the end
    eval_batches: int = 8  # validation batches (of batch_size windows) per evaluation, fixed windows
    log_interval: int = 10  # steps between plain log lines when not on a terminal
    ckpt_interval: int = 500  # steps between resumable state saves (OUT.state/); 0 = only on interrupt/never
    # --- run ---
    seed: int = 1337  # model init and data order; same config + seed = same losses
    device: str = "auto"  # "auto" (cuda if available) | "cpu" | "cuda" | "cuda:N"
    # autocast dtype: "auto" = bfloat16 on CUDA, and on a CPU with native bf16 (AVX512-BF16/AMX) for frozen-trunk
    # runs; float32 elsewhere (an AVX2 CPU emulates bf16 several times slower than fp32) | "float32" | "bfloat16"
    dtype: str = "auto"
    out: str = ""  # final checkpoint directory (resumable state goes to OUT.state/); required, no silent default
    # --- heads on a pretrained trunk (pretrained_heads.py; `--init BASE`) ---
    init: str = ""  # base next-token model (.gguf, HF dir, hub id, native): model shape and tokenizer come from it
    freeze_trunk: bool = False  # init only: train the extra heads alone; the rest stays bit-identical
    head_init: str = "copy"  # init only: "copy" of the base's last block (identity for linear) | "fresh" | "lstsq"
    lstsq_windows: int = 64  # head_init=lstsq (linear heads): training windows the closed-form fit reads
    hidden_cache: bool = False  # freeze_trunk only: one pass of the base over all training windows first, kept on disk
    # (frozen.TrunkCache); every step then runs the extra heads alone
    heads_dtype: str = "float32"  # freeze_trunk only: storage of heads.safetensors ("float32" | "bfloat16" | "int8": weight-only, per-row scales)
    head_targets: str = "tokens"  # freeze_trunk only: "tokens" (the data) | "base" (head 1's distribution: self-distillation)
    teacher_topk: int = 16  # head_targets=base / draft_vocab: head 1's top-k next-token distribution kept per position
    # freeze_trunk only: train each extra head only at positions whose tokens t+1..t+i are head 1's own greedy choices,
    # the only positions where it drafts in greedy decoding (frozen.on_policy_mask)
    on_policy: bool = False
    draft_vocab: int = 0  # freeze_trunk + hidden_cache: the extra heads predict over the K tokens the base predicts most
    # often on the training data (FR-Spec), a K-column unembedding in training and drafting; 0 = the whole vocabulary

    def __post_init__(self) -> None:
        choices = {"tokenizer": ("bpe", "byte"), "backward": ("sequential", "naive"),
                   "dtype": ("auto", "float32", "bfloat16"),
                   "head_type": ("parallel", "linear", "causal", "anticausal", "sequential"),
                   "head_init": ("copy", "fresh", "lstsq"), "heads_dtype": ("float32", "bfloat16", "int8"),
                   "head_targets": ("tokens", "base")}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not one of: {', '.join(valid)}")
        for name in ("dim", "n_layers", "n_heads", "n_future", "seq_len", "batch_size", "grad_accum",
                     "max_steps", "eval_batches", "log_interval", "bpe_vocab_size", "lstsq_windows"):
            if getattr(self, name) < (0 if name == "max_steps" and self.head_init == "lstsq" else 1):
                raise ConfigError(f"{name} must be >= 1 (max_steps >= 0 after head_init=lstsq), got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_interval", "ckpt_interval", "max_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.seq_len < self.n_future + 1:
            raise ConfigError(f"seq_len={self.seq_len} must be >= n_future+1={self.n_future + 1}")
        if self.head_weights is not None and len(self.head_weights) != self.n_future:
            raise ConfigError(f"head_weights has {len(self.head_weights)} entries, n_future={self.n_future}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not self.lr > 0 or not 0.0 <= self.min_lr_ratio <= 1.0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("need lr > 0, 0 <= min_lr_ratio <= 1, weight_decay >= 0, grad_clip >= 0")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"device={self.device!r} is not one of: auto, cpu, cuda, cuda:N")
        if self.target_field and self.backward == "sequential" and self.head_type in ("causal", "anticausal"):
            raise ConfigError("target_field with causal/anticausal heads needs backward=naive")
        self.model_config(vocab_size=259)  # validate the model shape now, not after data prep
        if self.head_targets != "tokens" and not self.freeze_trunk:
            raise ConfigError("head_targets=base needs freeze_trunk=true (the teacher is the frozen head 1)")
        if self.on_policy and not self.freeze_trunk:
            raise ConfigError("on_policy=true needs freeze_trunk=true (head 1's greedy choices come from the frozen base)")
        if (self.freeze_trunk or self.hidden_cache) and not self.init:
            raise ConfigError("freeze_trunk and hidden_cache need init=BASE (--init): heads on a pretrained trunk")
        if self.target_field and self.freeze_trunk:
            raise ConfigError("target_field (loss on target tokens only) is not implemented with freeze_trunk=true")
        if self.hidden_cache and not self.freeze_trunk:
            raise ConfigError("hidden_cache=true needs freeze_trunk=true (a trained trunk changes its output)")
        if self.draft_vocab < 0 or self.teacher_topk < 1:
            raise ConfigError(f"draft_vocab must be >= 0 and teacher_topk >= 1, got {self.draft_vocab}, {self.teacher_topk}")
        if self.draft_vocab and not self.hidden_cache:
            raise ConfigError("draft_vocab=K needs hidden_cache=true (it is chosen from the base's predictions on the cached windows)")
        if self.freeze_trunk and self.head_type in ("causal", "anticausal"):
            raise ConfigError(f"head_type={self.head_type} on a frozen trunk is not implemented: use parallel, linear or sequential")

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(vocab_size=vocab_size, dim=self.dim, n_layers=self.n_layers, n_heads=self.n_heads,
                           n_kv_heads=self.n_kv_heads, multiple_of=self.multiple_of,
                           ffn_dim_multiplier=self.ffn_dim_multiplier, norm_eps=self.norm_eps,
                           rope_theta=self.rope_theta, max_seq_len=self.seq_len, n_future=self.n_future,
                           head_type=self.head_type, init_std=self.init_std)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ConfigError(f"unknown train config key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}")
        hints = typing.get_type_hints(cls)
        return cls(**{k: tuple(v) if v is not None and "tuple" in str(hints[k]) else v for k, v in d.items()})


# Named presets: overrides of the defaults above (data, so `--set` can change any of it).
PRESETS: dict[str, dict] = {
    # seconds on a CPU: a test trains it (golden losses in tests/fixtures/golden_debug_losses.json)
    "debug": dict(dim=32, n_layers=3, n_heads=2, multiple_of=16, n_future=2, tokenizer="byte",
                  corpus="stdlib", corpus_glob="json/*.py", seq_len=32, batch_size=4, max_steps=8,
                  lr=3e-3, warmup_steps=2, eval_interval=4, eval_batches=2, log_interval=1, ckpt_interval=0),
    # ~10-20 minutes on 2 CPU cores (~1-2 s/step): learns Python's surface syntax
    "tiny": dict(dim=128, n_layers=4, n_heads=4, n_future=4, tokenizer="bpe", bpe_vocab_size=4096,
                 seq_len=128, batch_size=16, max_steps=600, lr=2e-3, warmup_steps=50, eval_interval=100,
                 eval_batches=8, ckpt_interval=100),
    # about an hour on 2 CPU cores (~4 s/step; minutes on a GPU): the shipped-checkpoint scale
    "small": dict(dim=256, n_layers=6, n_heads=8, n_future=4, tokenizer="bpe", bpe_vocab_size=8192,
                  seq_len=256, batch_size=8, max_steps=800, lr=1e-3, warmup_steps=80, eval_interval=100,
                  eval_batches=8, ckpt_interval=50),
}


def make_config(preset: str | None = None, overrides: dict | None = None) -> TrainConfig:
    """defaults < PRESETS[preset] < overrides."""
    d: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise UnknownNameError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
        d.update(PRESETS[preset])
    d.update(overrides or {})
    valid = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(d) - valid)
    if unknown:
        raise ConfigError(f"unknown train config key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(valid))}")
    return TrainConfig(**d)


def reproduce_command(cfg: TrainConfig) -> str:
    """The exact `mtp-bench train` line for this config: every field that differs from the defaults."""
    default = TrainConfig()
    parts = ["mtp-bench", "train"]
    for f in fields(TrainConfig):
        v, dv = getattr(cfg, f.name), getattr(default, f.name)
        if v != dv and f.name != "out":
            s = "none" if v is None else ",".join(map(str, v)) if isinstance(v, tuple) else str(v)
            parts += ["--set", f"{f.name}={s}"]
    parts += ["--out", cfg.out]
    return shlex.join(parts)


# -----------------------------------------------------------------------------
# pieces of the loop


def lr_multiplier(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Linear warm-up to 1 over warmup_steps, then cosine to min_lr_ratio at total_steps (step is 0-based)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, cfg: TrainConfig, fused: bool = False) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices (embeddings, projections, unembedding), none on norm gains."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=fused or None)


def target_only_forward_backward(model: Transformer, x: torch.Tensor, mask: torch.Tensor,
                                 head_weights: list[float], mode: str = "sequential"):
    """The MTP loss on target tokens only (prompt/target corpora), accumulated into .grad.

    Head i at position t counts when token t+1+i has mask 1; each head's CE is the mean over the
    tokens it counts. mode "sequential" (parallel/linear heads) runs the trunk once and each
    head's forward and backward in turn, as model.mtp_forward_backward does, so one head's logits
    are alive at a time; "naive" builds one graph. Returns the detached (loss, per_head)."""
    T = x.shape[1]

    def head_ce(i: int, z: torch.Tensor) -> torch.Tensor:
        logits = model.unembed(z[:, : T - 1 - i]).float()  # (B, T-1-i, V)
        target = x[:, 1 + i :].masked_fill(mask[:, 1 + i :] == 0, -100)  # (B, T-1-i); -100 = not trained
        ce_sum = nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100, reduction="sum")
        return ce_sum / mask[:, 1 + i :].sum().clamp(min=1)

    h, ctx = model.trunk(x)  # (B, T, dim)
    ces: dict[int, torch.Tensor] = {}
    if mode == "sequential":
        h_d = h.detach().requires_grad_()
        for i in range(model.n_future):
            ce = head_ce(i, model.head(i, h_d, ctx))
            (head_weights[i] * ce).backward()
            ces[i] = ce.detach()
            del ce  # this head's logits are freed before the next head runs
        h.backward(h_d.grad)
    else:
        outs: dict[int, torch.Tensor] = {}
        for i in model.head_order():
            outs[i] = model.head(i, model.head_input(i, h, outs), ctx)
            ces[i] = head_ce(i, outs[i])
        sum(head_weights[i] * ces[i] for i in ces).backward()
    per_head = torch.stack([ces[i].detach() for i in range(model.n_future)])  # (n_future,)
    return (torch.tensor(head_weights, dtype=per_head.dtype, device=per_head.device) * per_head).sum(), per_head


@torch.no_grad()
def evaluate(model: Transformer, windows: torch.Tensor, batch_size: int, autocast, rank: int = 0,
             world_size: int = 1, masks: torch.Tensor | None = None) -> dict:
    """Loss and top-1 accuracy of every head on fixed windows (B_total, T), and how often each
    extra head agrees with head 1 (the acceptance proxy).

    Head i at position t is scored on token t+1+i; one head's logits exist at a time. Under DDP
    each rank scores a disjoint share of the batches and the sums are all-reduced. With `masks`
    (B_total, T) only tokens whose mask is 1 are scored (prompt/target corpora: the targets).
    A head with a draft vocabulary is scored on the tokens inside it ("tokens" counts those; a
    token outside counts as a miss in "acc"). agree[i] = P(head i's argmax at t == head 1's
    argmax at t+i), the token head 1 would emit there given the same prefix; accept[i] =
    P(heads 2..i+1 all agree) at the positions where every head is defined: chained, the
    expected accepted drafts per step of greedy speculative decoding on this text (exact where
    the text is the model's own greedy output). Both are 1.0 for head 1 by definition.
    Returns {"loss", "acc", "tokens", "agree", "accept"}, lists of n_future.
    """
    was_training = model.training
    model.eval()
    n = model.n_future
    restricted = bool(getattr(model.config, "draft_vocab_size", 0))
    sums = torch.zeros(6, n, dtype=torch.float64)  # rows: CE sum, correct, scored, targets, agreeing, compared
    acc_sums = torch.zeros(2, n, dtype=torch.float64)  # chained agreement at positions with every head, count
    batches = windows.split(batch_size)
    mask_batches = masks.split(batch_size) if masks is not None else None
    for b in range(rank, len(batches), world_size):
        x = batches[b].to(model.device)  # (B, T)
        keep = mask_batches[b].to(model.device).bool() if mask_batches is not None else None  # (B, T)
        T = x.shape[1]
        pred: dict[int, torch.Tensor] = {}  # head i's argmax at every position t <= T-1-i (head 1: all T)
        with autocast:
            h, ctx = model.trunk(x)  # (B, T, dim)
            outs: dict[int, torch.Tensor] = {}
            for i in model.head_order():
                outs[i] = model.head(i, model.head_input(i, h, outs, x, ctx), ctx)
                last = T if i == 0 else T - i  # sequential modules are undefined past T-1-i
                logits_all = model.unembed(outs[i][:, :last], i).float()  # (B, last, V)
                pred[i] = logits_all.argmax(-1)
                logits = logits_all[:, : T - 1 - i]  # (B, T-1-i, V)
                target = x[:, 1 + i :]  # (B, T-1-i)
                if keep is not None:  # score the target tokens only
                    sel = keep[:, 1 + i :]
                    logits, target = logits[sel], target[sel]  # (N, V), (N,)
                flat, tflat = logits.reshape(-1, logits.shape[-1]), target.flatten()
                if restricted and i > 0:  # tokens outside the head's vocabulary have no finite loss
                    ce = torch.nn.functional.cross_entropy(flat, tflat, reduction="none")
                    fin = torch.isfinite(ce)
                    sums[0, i] += ce[fin].sum().double().cpu()
                    sums[2, i] += fin.sum().double().cpu()
                else:
                    sums[0, i] += torch.nn.functional.cross_entropy(flat, tflat, reduction="sum").double().cpu()
                    sums[2, i] += tflat.numel()
                sums[1, i] += (logits.argmax(-1) == target).sum().double().cpu()
                sums[3, i] += target.numel()
                del logits, logits_all
        # agreement with head 1's own choice at t+i, and chained over heads
        chain = None
        m = T - (n - 1)  # positions t where every head i has head 1's t+i
        for i in range(n):
            same = pred[i][:, : T - i] == pred[0][:, i:]  # (B, T-i)
            sums[4, i] += same.sum().double().cpu()
            sums[5, i] += same.numel()
            chain = same[:, :m] if chain is None else chain & same[:, :m]
            acc_sums[0, i] += chain.sum().double().cpu()
        acc_sums[1] += chain.numel()
    if world_size > 1:
        dist.all_reduce(sums)
        dist.all_reduce(acc_sums)
    model.train(was_training)
    scored, targets = sums[2].clamp(min=1), sums[3].clamp(min=1)
    return {"loss": (sums[0] / scored).tolist(), "acc": (sums[1] / targets).tolist(), "tokens": sums[2].long().tolist(),
            "agree": (sums[4] / sums[5].clamp(min=1)).tolist(), "accept": (acc_sums[0] / acc_sums[1].clamp(min=1)).tolist()}


def resolve_amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = float32): dtype=auto is bfloat16 on CUDA, and on a CPU with native
    bf16 units for frozen-trunk runs (full training keeps float32 there: its golden losses are fp32)."""
    if cfg.dtype == "bfloat16":
        return torch.bfloat16
    if cfg.dtype == "float32":
        return None
    if device.type == "cuda":
        return torch.bfloat16
    if cfg.freeze_trunk:
        return torch.bfloat16 if FZ.cpu_native_bf16() else None
    return None


def rng_state() -> dict:
    s = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _atomic_torch_save(obj, path: Path) -> None:
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def state_path(out: str | os.PathLike) -> Path:
    """Resumable training state lives beside the checkpoint: OUT.state/state.pt."""
    out = Path(out)
    return out.parent / f"{out.name}.state" / "state.pt"


def git_commit() -> str | None:
    """The commit of the mtp-bench source tree, if it is a git checkout (else None)."""
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                           capture_output=True, text=True, timeout=5)
        return r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def setup_distributed(device_kind: str) -> Dist:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; start the process group (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    d = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return d


def resolve_device(cfg: TrainConfig, dd: Dist) -> torch.device:
    if cfg.device == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        kind = cfg.device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={cfg.device!r} but CUDA is not available")
    if kind == "cuda":
        return torch.device("cuda", dd.local_rank if dd.enabled or cfg.device in ("auto", "cuda") else int(cfg.device.split(":")[1]))
    return torch.device("cpu")


# -----------------------------------------------------------------------------
# data + tokenizer


def prepare_data(cfg: TrainConfig, dd: Dist, tokenizer=None) -> tuple[Tokenizer, np.ndarray, np.ndarray, dict]:
    """Corpus -> split -> tokenizer -> cached token arrays. Rank 0 builds the caches first."""
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else D.default_cache_dir()
    if dd.enabled and not dd.main:
        dd.barrier()  # wait until rank 0 has filled the caches; then this rank only reads them
    docs = D.load_corpus(cfg.corpus, cfg.corpus_glob, cfg.corpus_field, cfg.target_field)
    train_docs, val_docs = D.split_documents(docs, cfg.val_fraction)
    if tokenizer is not None:  # --init: the base model's own tokenizer
        tok = tokenizer
    elif cfg.tokenizer == "byte":
        tok = byte_tokenizer()
    else:  # trained on the training split only, cached per (vocab size, training documents)
        tok_path = cache_dir / "tokenizers" / f"bpe-{cfg.bpe_vocab_size}-{D.corpus_sha256(train_docs)[:24]}.json"
        if tok_path.is_file():
            tok = load_tokenizer(tok_path)
        else:
            tok = train_bpe(((d.prompt or "") + d.text for d in train_docs), cfg.bpe_vocab_size)
            tok.save(tok_path)
    if cfg.target_field:  # prompt/target rows and their loss masks: (tokens, mask) pairs, not cached
        train_tokens = D.tokenize_pairs(train_docs, tok, cfg.seq_len)
        val_tokens = D.tokenize_pairs(val_docs, tok, cfg.seq_len)
    else:
        train_tokens = D.tokenize_split(train_docs, tok, cache_dir, "train")
        val_tokens = D.tokenize_split(val_docs, tok, cache_dir, "val")
    if dd.enabled and dd.main:
        dd.barrier()  # caches complete: release the other ranks
    info = {"source": cfg.corpus, "glob": cfg.corpus_glob, "field": cfg.corpus_field,
            "sha256": D.corpus_sha256(docs), "n_docs": len(docs), "n_train_docs": len(train_docs),
            "n_val_docs": len(val_docs), "train_tokens": int(len(train_tokens[0] if cfg.target_field else train_tokens)),
            "val_tokens": int(len(val_tokens[0] if cfg.target_field else val_tokens)), "target_field": cfg.target_field,
            "val_fraction": cfg.val_fraction, "cache_dir": str(cache_dir)}
    info.update(distill_record(cfg.corpus))
    return tok, train_tokens, val_tokens, info


def distill_record(corpus: str) -> dict:
    """A corpus written by `mtp-bench data distill` has a manifest.json beside it: record its base,
    generation settings and the sha256 of every training prompt, so that an evaluation can tell
    whether its prompts were trained on. Nothing for any other corpus."""
    path = Path(corpus)
    manifest = path.parent / "manifest.json"
    if path.suffix != ".jsonl" or not manifest.is_file():
        return {}
    try:
        m = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(m, dict) or m.get("format") != "mtp-bench-distill":
        return {}
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != m.get("sha256"):
        raise DataError(f"{manifest}: its sha256 does not match {path} (the corpus changed after the manifest was written)")
    return {"distill": {k: m.get(k) for k in ("base", "generation", "kinds", "counts", "completion_tokens", "sources",
                                               "evaluation_prompts_excluded", "sha256")},
            "prompt_sha256s": m.get("prompt_sha256s", [])}


# -----------------------------------------------------------------------------
# progress


class Progress:
    """rich progress bar on a terminal (rank 0); plain log lines otherwise."""

    def __init__(self, total: int, start: int, enabled: bool, log_interval: int):
        self.enabled, self.log_interval, self.total = enabled, log_interval, total
        self._t0: float | None = None  # plain log lines: the ETA's clock starts at the first step logged
        self._s0 = start
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                    TextColumn("{task.fields[info]}"), console=Console(stderr=True), transient=False)
            self.task = self.bar.add_task("train", total=total, completed=start, info="")
            self.bar.start()

    def step(self, step: int, loss: float, per_head: list[float], tok_s: float, lr: float) -> None:
        heads = " ".join(f"{x:.3f}" for x in per_head)
        info = f"loss {loss:.4f} | heads {heads} | {tok_s:,.0f} tok/s | lr {lr:.2e}"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        elif self.enabled and (step % self.log_interval == 0 or step == self.total):
            now = time.perf_counter()
            if self._t0 is None:
                self._t0, self._s0 = now, step - 1
            rate = (step - self._s0) / max(now - self._t0, 1e-9)  # steps/s since the first logged step
            eta = (self.total - step) / rate if rate > 0 else 0.0
            print(f"step {step}/{self.total} {info} | ETA {eta / 60:.1f} min", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _eval_line(step: int, split: str, ev: dict) -> str:
    loss = " ".join(f"{x:.4f}" for x in ev["loss"])
    acc = " ".join(f"{x:.3f}" for x in ev["acc"])
    line = f"step {step} {split}: loss per head [{loss}] top-1 acc per head [{acc}]"
    if len(ev.get("accept", [])) > 1:
        line += f" | agree with head 1 [{' '.join(f'{x:.3f}' for x in ev['agree'][1:])}] tau proxy {1 + sum(ev['accept'][1:]):.3f}"
    return line


# -----------------------------------------------------------------------------
# the loop

# config fields that may change between a run and its resumption (they do not change the math)
RESUME_MUTABLE = {"out", "eval_interval", "log_interval", "ckpt_interval", "device", "cache_dir"}


@dataclass
class _Setup:
    """Everything a run needs before its first step (`_setup`)."""

    dd: Dist
    device: torch.device
    amp_dtype: torch.dtype | None
    autocast: Any
    model: Transformer
    tok: Any
    base: dict | None  # init=BASE: what the heads checkpoint records about its base
    corpus_info: dict
    train_tokens: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: D.WindowLoader
    tokens_per_step: int
    total_steps: int
    val: tuple  # (windows, masks) scored at each evaluation
    train_sample: tuple  # a fixed sample of training windows, scored like validation
    lstsq: dict | None = None
    frozen_info: dict = field(default_factory=dict)
    trunk_cache: Any = None
    topk: int = 0


def _check_out(cfg: TrainConfig) -> tuple[Path, Path]:
    """The output directory (required) and its resumable state path."""
    if not cfg.out:
        raise ConfigError("no output directory: pass --out DIR (or set out=DIR)")
    out = Path(cfg.out)
    spath = state_path(out)
    return out, spath


def _check_state(out: Path, spath: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    if resume and not spath.is_file():
        raise ConfigError(f"--resume: no saved training state at {spath}")
    if not resume and spath.is_file():
        raise ConfigError(f"{spath} holds an unfinished run: pass --resume to continue it, or remove it / pick another --out")


def _setup(cfg: TrainConfig, resume: bool, out: Path, spath: Path, init_model: Callable | None, verbose: bool) -> _Setup:
    """Steps 0 and 1 of `train`: distributed, device, precision; data and tokenizer (cached), model,
    optimizer, schedule, loader; with init=BASE the base and its heads, and on a frozen trunk the
    base's outputs (TrunkCache), the draft vocabulary and the sequential modules' input scale."""
    # 0) distributed, device, precision
    kind = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device.split(":")[0]
    dd = setup_distributed(kind)
    device = resolve_device(cfg, dd)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    amp_dtype = resolve_amp_dtype(cfg, device)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    _check_state(out, spath, resume)
    # 1) data and tokenizer (cached), model, optimizer, schedule, loader
    base = None
    if cfg.init:  # heads on a pretrained trunk: the model and tokenizer come from the base
        if init_model is None:
            raise ConfigError("init=BASE needs a base loader: train(cfg, init_model=mtp_bench.models.heads.init_model), "
                              "as `mtp-bench train --init BASE` does")
        model, base_tok, base = init_model(cfg, device)
    tok, train_tokens, val_tokens, corpus_info = prepare_data(cfg, dd, base_tok if base else None)
    train_mask = val_mask = None  # loss masks of prompt/target corpora (target tokens only)
    if cfg.target_field:
        (train_tokens, train_mask), (val_tokens, val_mask) = train_tokens, val_tokens
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    if base is None:
        model = Transformer(cfg.model_config(tok.vocab_size)).to(device)
    if dd.enabled:  # identical start on every rank, whatever the RNG did
        for p in model.parameters():
            dist.broadcast(p.data, src=0)
    optimizer = make_optimizer(model, cfg, fused=device.type == "cuda")
    tokens_per_step = cfg.batch_size * cfg.grad_accum * dd.world_size * cfg.seq_len
    total_steps = math.ceil(cfg.max_tokens / tokens_per_step) if cfg.max_tokens else cfg.max_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s, cfg, total_steps))
    loader = D.WindowLoader(train_tokens, cfg.seq_len, cfg.batch_size, cfg.seed, dd.rank, dd.world_size, mask=train_mask)
    n_eval = cfg.eval_batches * cfg.batch_size
    windows = lambda tokens, mask: (D.eval_windows(tokens, cfg.seq_len, n_eval),  # noqa: E731
                                    D.eval_windows(mask, cfg.seq_len, n_eval) if mask is not None else None)
    r = _Setup(dd, device, amp_dtype, autocast, model, tok, base, corpus_info, train_tokens, optimizer, scheduler,
               loader, tokens_per_step, total_steps, windows(val_tokens, val_mask), windows(train_tokens, train_mask))
    if cfg.init and cfg.head_init == "lstsq" and not resume:  # closed-form linear heads before any step
        fit_windows = D.eval_windows(train_tokens, cfg.seq_len, cfg.lstsq_windows)
        r.lstsq = PH.fit_linear_heads(model, fit_windows, cfg.batch_size, autocast=autocast,
                                      log=print if dd.main and verbose else None)
    if cfg.freeze_trunk:
        _setup_frozen(cfg, r, resume, verbose)
    return r


def _setup_frozen(cfg: TrainConfig, r: _Setup, resume: bool, verbose: bool) -> None:
    """Heads on a frozen trunk (frozen.py): the base's outputs once, then heads only."""
    dd, model, device, autocast = r.dd, r.model, r.device, r.autocast
    r.topk = cfg.teacher_topk if (cfg.head_targets == "base" or cfg.draft_vocab or cfg.on_policy) else 0
    if cfg.hidden_cache:
        if dd.enabled and not dd.main:
            dd.barrier()  # rank 0 creates and fills the cache files first
        r.trunk_cache = FZ.TrunkCache(Path(r.corpus_info["cache_dir"]), r.base["sha256"], r.train_tokens, cfg.seq_len,
                                      model.config.dim, r.topk)
        if dd.main:
            r.frozen_info["trunk_cache"] = {**r.trunk_cache.fill(model, cfg.batch_size, autocast,
                                                                 FZ.log_line if verbose else None),
                                            "key": r.trunk_cache.key, "bytes": r.trunk_cache.nbytes()}
        if dd.enabled and dd.main:
            dd.barrier()
    if cfg.draft_vocab and not resume:
        ids, cover = FZ.choose_draft_vocab(r.trunk_cache.argmax_counts(model.config.vocab_size), cfg.draft_vocab)
        model.draft_vocab = ids.to(device)
        r.frozen_info["draft_vocab"] = {"size": cfg.draft_vocab, "argmax_coverage": round(cover, 6)}
    if cfg.head_type == "sequential" and cfg.head_init == "copy" and not resume:
        # the copied block expects its input at the scale of the residual stream, not at RMS 1
        x0 = torch.from_numpy(np.asarray(r.train_tokens[: cfg.batch_size * cfg.seq_len], dtype=np.int64))
        h0 = FZ.trunk_outputs(model, x0.view(-1, cfg.seq_len).to(device), 0, autocast)["h0"]
        scale = float(h0.pow(2).mean().sqrt())
        with torch.no_grad():
            for module in model.extra_heads:
                module.hnorm.weight.fill_(scale)
        r.frozen_info["h0_rms"] = scale


def _step_fn(cfg: TrainConfig, r: _Setup, micro_w: list[float]) -> Callable[[], torch.Tensor]:
    """The step, chosen once: the whole model (full_step), or the extra heads alone on the base's
    cached or just computed outputs (frozen_step). Either returns the micro-batch's per-head CE."""
    model, loader, device, autocast = r.model, r.loader, r.device, r.autocast

    def full_step() -> torch.Tensor:
        """One micro-batch through the whole model (trunk and every head); returns per-head CE."""
        x, m = loader.next_batch_with_mask()  # (B, T), loss mask (B, T) or None
        x = x.to(device, non_blocking=True)
        with autocast:
            if m is None:
                return mtp_forward_backward(model, x, micro_w, mode=cfg.backward)[1]
            return target_only_forward_backward(model, x, m.to(device), micro_w, mode=cfg.backward)[1]

    if not cfg.freeze_trunk:
        return full_step
    vmap = FZ.vocab_index(model)

    def frozen_step() -> torch.Tensor:
        """One micro-batch of the extra heads alone, on the base's cached (or just computed) outputs."""
        idx = PH.window_indices(loader, cfg.batch_size) if r.trunk_cache is not None else None
        x, _ = loader.next_batch_with_mask()
        b = r.trunk_cache.batch(idx, device) if r.trunk_cache is not None else \
            FZ.trunk_outputs(model, x.to(device), r.topk, autocast)
        return FZ.frozen_step(model, b, micro_w, cfg.head_targets, autocast, vmap, cfg.on_policy)

    return frozen_step


def _all_reduce(model: nn.Module, per_head: torch.Tensor, dd: Dist, device: torch.device) -> torch.Tensor:
    """Average gradients (and the logged losses) over ranks: one flat all-reduce."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads] + [per_head.to(grads[0].dtype).to(device)])
    dist.all_reduce(flat)
    flat /= dd.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
    return flat[offset:].double().cpu()


@contextlib.contextmanager
def _deferred_sigint(interrupted: list[int]):
    """Ctrl-C (SIGINT) is deferred to the end of the current step, where the state is consistent:
    the loop saves it there and stops; `--resume` continues. A second Ctrl-C stops at once."""
    prev = None
    if threading.current_thread() is threading.main_thread():
        def on_sigint(signum, frame):
            if interrupted:  # a second Ctrl-C stops at once (no state saved)
                raise KeyboardInterrupt
            interrupted.append(signum)

        prev = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        if prev is not None:
            signal.signal(signal.SIGINT, prev)


def train(cfg: TrainConfig, *, resume: bool = False, preset: str | None = None, overrides: dict | None = None,
          step_callback: Callable[[int, nn.Module], None] | None = None, verbose: bool = True,
          init_model: Callable | None = None) -> Path:
    """Train per `cfg`; return the final checkpoint directory (cfg.out).

    step_callback(step, model) runs after each optimizer step (after any state save): tests use it
    to watch parameters or to simulate a crash. preset/overrides only go into training.json.
    init_model(cfg, device) -> (model, tokenizer, base record): how `init=BASE` loads the base and
    adds heads; loading a base needs the framework's loaders, so the caller passes it
    (`mtp_bench.models.heads.init_model`, which `mtp-bench train` passes).
    """
    t_start = time.time()
    out, spath = _check_out(cfg)
    # 0) + 1) device and precision; data, model, optimizer, schedule, loader (`_setup`)
    r = _setup(cfg, resume, out, spath, init_model, verbose)
    model, optimizer, scheduler, loader, dd = r.model, r.optimizer, r.scheduler, r.loader, r.dd
    # frozen trunk: only the extra heads (and their vocabulary) are in the resumable state
    trained_state = (lambda: {k: v for k, v in model.state_dict().items()
                              if k.startswith("extra_heads.") or k == "draft_vocab"}) \
        if cfg.freeze_trunk else model.state_dict
    step, history, evals = 0, [], []

    # 2) resume: everything that determines the next step
    if resume:
        try:  # our own file (it holds Python/NumPy RNG states, hence weights_only=False)
            state = torch.load(spath, map_location="cpu", weights_only=False)
        except Exception as e:
            raise CheckpointError(f"cannot read training state {spath}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        diff = sorted(k for k, v in state["config"].items() if k not in RESUME_MUTABLE and cfg.to_dict().get(k) != v)
        if diff:
            raise ConfigError(f"cannot resume {spath}: config differs in {', '.join(diff)}")
        model.load_state_dict(state["model"], strict=not cfg.freeze_trunk)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        loader.load_state_dict(state["loader"])
        step, history, evals = state["step"], state["history"], state["evals"]
        set_rng_state(state["rng"])

    def save_state(sync: bool = True) -> None:
        if dd.main:
            _atomic_torch_save({"config": cfg.to_dict(), "model": trained_state(), "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(), "loader": loader.state_dict(), "step": step,
                                "history": history, "evals": evals, "rng": rng_state()}, spath)
        if sync:
            dd.barrier()

    def run_eval() -> None:
        rec = {"step": step, "val": evaluate(model, r.val[0], cfg.batch_size, r.autocast, dd.rank, dd.world_size, r.val[1]),
               "train": evaluate(model, r.train_sample[0], cfg.batch_size, r.autocast, dd.rank, dd.world_size,
                                 r.train_sample[1])}
        evals.append(rec)
        progress.message(_eval_line(step, "val", rec["val"]))

    progress = Progress(r.total_steps, step, dd.main and verbose, cfg.log_interval)
    if dd.main and verbose:
        progress.message(f"model: {model.num_params():,} params, n_future={cfg.n_future} ({cfg.head_type}), "
                         f"vocab {r.tok.vocab_size}; data: {r.corpus_info['train_tokens']:,} train / "
                         f"{r.corpus_info['val_tokens']:,} val tokens; {r.tokens_per_step:,} tokens/step; device {r.device}"
                         + (f" x{dd.world_size} ranks" if dd.enabled else ""))
    # 3) the step, chosen once, and the loop
    head_w = list(cfg.head_weights) if cfg.head_weights is not None else [1.0] * cfg.n_future
    micro_w = [w / cfg.grad_accum for w in head_w]  # so accumulated grads are the mean over micro-batches
    step_fn = _step_fn(cfg, r, micro_w)
    model.train()
    interrupted: list[int] = []
    try:
        with _deferred_sigint(interrupted):
            while step < r.total_steps:
                t0 = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                per_head = torch.zeros(cfg.n_future, dtype=torch.float64)
                for _ in range(cfg.grad_accum):
                    per_head += step_fn().double().cpu() / cfg.grad_accum  # unweighted CE per head
                if dd.enabled:
                    per_head = _all_reduce(model, per_head, dd, r.device)
                grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else None
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                step += 1
                loss = float((torch.tensor(head_w, dtype=torch.float64) * per_head).sum())
                history.append({"step": step, "loss": loss, "per_head": per_head.tolist(), "lr": lr,
                                "grad_norm": float(grad_norm) if grad_norm is not None else None})
                progress.step(step, loss, per_head.tolist(), r.tokens_per_step / (time.perf_counter() - t0), lr)
                if (cfg.eval_interval and step % cfg.eval_interval == 0) or step == r.total_steps:
                    run_eval()
                if interrupted and step < r.total_steps:
                    save_state(sync=False)
                    progress.message(f"interrupted at step {step}: state saved to {spath}; continue with --resume")
                    raise KeyboardInterrupt
                if cfg.ckpt_interval and step % cfg.ckpt_interval == 0 and step < r.total_steps:
                    save_state()
                if step_callback is not None:
                    step_callback(step, model)
            if not evals or evals[-1]["step"] != step:
                run_eval()
    finally:
        progress.close()
    # 4) final checkpoint (rank 0), then drop the resumable state: the run is complete
    _finish(cfg, r, out, spath, step, history, evals, preset, overrides, t_start, progress, verbose)
    return out


def _finish(cfg: TrainConfig, r: _Setup, out: Path, spath: Path, step: int, history: list, evals: list,
            preset: str | None, overrides: dict | None, t_start: float, progress: Progress, verbose: bool) -> None:
    """Step 4: training.json's report and the checkpoint (rank 0); the resumable state removed."""
    dd, model = r.dd, r.model
    last = evals[-1]
    info = {
        "preset": preset, "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in (overrides or {}).items()},
        "config": cfg.to_dict(), "corpus": r.corpus_info, "tokenizer": tokenizer_summary(r.tok),
        "steps": step, "tokens_seen": step * r.tokens_per_step, "tokens_per_step": r.tokens_per_step,
        "world_size": dd.world_size, "num_params": model.num_params(),
        "final": {"train_loss_last_step": history[-1]["per_head"] if history else None,
                  "train": last["train"], "val": last["val"]},
        "history": history, "evals": evals, "seed": cfg.seed,
        "mtp_bench_version": __version__, "git_commit": git_commit(), "torch": torch.__version__,
        "device": str(r.device), "duration_s": round(time.time() - t_start, 3),
        "command": reproduce_command(cfg), "argv": shlex.join(sys.argv),
    }
    if dd.main and r.base is not None:
        info["base"] = r.base
        info["lstsq"] = r.lstsq
        info["frozen"] = r.frozen_info
        info["dtype_resolved"] = str(r.amp_dtype).removeprefix("torch.") if r.amp_dtype is not None else "float32"
    if dd.main and cfg.freeze_trunk:  # heads only; the base stays where it is
        PH.save_heads(out, model, r.base, info, {"bfloat16": torch.bfloat16, "int8": "int8"}.get(cfg.heads_dtype))
    elif dd.main:
        save_checkpoint(out, model, r.tok, info)
        if spath.is_file():
            spath.unlink()
            try:
                spath.parent.rmdir()
            except OSError:
                pass
        if verbose:
            progress.message(f"saved {out} ({step} steps, {step * r.tokens_per_step:,} tokens)")
    dd.barrier()
