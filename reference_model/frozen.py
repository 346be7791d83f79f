"""Drafting heads on a frozen trunk, trained fast: the trunk runs once per training token, ever.

`mtp-bench train --init BASE --set freeze_trunk=true --set hidden_cache=true` (pretrained_heads.py
builds the model, train.py runs the loop) spends its time here:

    TrunkCache    one pass of the frozen base over every training window before the first step,
                  with a progress line (tokens/s, ETA): the trunk output h (what parallel and linear
                  heads read), head 1's block output h0 (what sequential MTP modules read), head 1's
                  negative log-likelihood of the data's next token, and its top-k next-token
                  distribution (the self-distillation target). Memory-mapped files under the cache
                  dir, keyed by the base's weights, the token array and the window length, a done
                  flag per window written after the window: an interrupted pass resumes.
    draft vocabulary   draft_vocab=K: the K tokens the base predicts (argmax) most often on the
                  training windows (FR-Spec). The extra heads' logits cover only those, in training
                  (a K-column unembedding instead of V columns: the largest cost of a head) and in
                  drafting; head 1 keeps the whole vocabulary, so decoding stays lossless.
    frozen_step   every extra head's loss, forward and backward on one batch read from the cache:
                  parallel and linear heads one at a time (one head's logits alive), sequential
                  modules as one teacher-forced chain (module k reads module k-1's output at t and
                  the embedding of token t+k, as DeepSeek-V3 / MiMo train them).

Targets (head_targets): "tokens" = the data's token t+1+i; "base" = head 1's top-k distribution at
position t+i renormalised over the head's vocabulary (what speculative decoding accepts is agreement
with head 1). Losses are cross-entropies in nats over the head's own vocabulary.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mtp_bench.api.errors import ConfigError
from mtp_bench.reference_model import sequential
from mtp_bench.reference_model.layers import _attn_context
from mtp_bench.reference_model.model import Transformer

FIELDS = ("h", "h0", "nll", "topi", "topp")


class TrunkCache:
    """What the frozen base computes on each training window, on disk.

    Files CACHE/trunk/<key>.{h,h0}.f32 (n, T, dim), .nll.f32 (n, T), .topi.i32 and .topp.f32
    (n, T, topk), .done.u8 (n,), key = sha256(base weights, tokens, T, dim, topk). Position t of
    window w holds what the base computes at t given the window's tokens 0..t: h_t, h0_t, -log
    p(token t+1) (0 at the last position) and the top-k of p(. | tokens 0..t)."""

    def __init__(self, cache_dir: Path, base_sha: str, tokens: np.ndarray, T: int, dim: int, topk: int):
        self.n = len(tokens) // T
        self.T, self.dim, self.topk = T, dim, topk
        self.tokens = tokens
        tok_sha = hashlib.sha256(np.ascontiguousarray(tokens[: self.n * T]).tobytes()).hexdigest()
        self.key = hashlib.sha256(f"{base_sha}|{tok_sha}|{T}|{dim}|{topk}".encode()).hexdigest()[:24]
        d = Path(cache_dir) / "trunk"
        d.mkdir(parents=True, exist_ok=True)
        self.dir = d
        shapes = {"h": ((self.n, T, dim), np.float32), "h0": ((self.n, T, dim), np.float32),
                  "nll": ((self.n, T), np.float32), "topi": ((self.n, T, max(topk, 1)), np.int32),
                  "topp": ((self.n, T, max(topk, 1)), np.float32), "done": ((self.n,), np.uint8)}
        self.arrays = {}
        for name, (shape, dtype) in shapes.items():
            f = d / f"{self.key}.{name}.{np.dtype(dtype).str[1:]}"
            self.arrays[name] = np.memmap(f, dtype=dtype, mode="r+" if f.is_file() else "w+", shape=shape)

    @property
    def complete(self) -> bool:
        return bool(self.arrays["done"].all())

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def fill(self, model: Transformer, batch_size: int, autocast, log=None) -> dict:
        """Run the base over every window not yet done, in order. Returns {"windows", "tokens", "seconds"}."""
        todo = [int(w) for w in np.flatnonzero(self.arrays["done"] == 0)]
        t0, done_tok, last_log = time.perf_counter(), 0, 0.0
        a = self.arrays
        for s in range(0, len(todo), batch_size):
            idx = todo[s : s + batch_size]
            x = torch.from_numpy(self.windows(idx)).to(model.device)  # (B, T)
            out = trunk_outputs(model, x, self.topk, autocast)
            for j, w in enumerate(idx):
                for name in FIELDS:
                    if name in out:
                        a[name][w] = out[name][j].cpu().numpy()
            for name in FIELDS:
                a[name].flush()
            for w in idx:  # flags after the data: a window is never marked done before it is written
                a["done"][w] = 1
            a["done"].flush()
            done_tok += len(idx) * self.T
            now = time.perf_counter()
            if log is not None and (now - last_log > 10 or s + batch_size >= len(todo)):
                rate = done_tok / (now - t0)
                left = (len(todo) - s - len(idx)) * self.T / rate if rate else 0.0
                log(f"trunk cache: {s + len(idx)}/{len(todo)} windows, {rate:,.0f} tokens/s, ETA {left / 60:.1f} min")
                last_log = now
        return {"windows": len(todo), "tokens": len(todo) * self.T, "seconds": round(time.perf_counter() - t0, 3)}

    def windows(self, idx: list[int]) -> np.ndarray:
        return np.stack([np.asarray(self.tokens[w * self.T : (w + 1) * self.T], dtype=np.int64) for w in idx])

    def batch(self, idx: list[int], device) -> dict[str, torch.Tensor]:
        """The cached tensors of these windows: x (B, T) long, h, h0 (B, T, dim), nll (B, T), topi, topp (B, T, k)."""
        if not all(self.arrays["done"][w] for w in idx):
            raise ConfigError("trunk cache: a window was read before the cache pass filled it")
        out = {"x": torch.from_numpy(self.windows(idx))}
        for name in FIELDS:
            out[name] = torch.from_numpy(np.stack([self.arrays[name][w] for w in idx]))
        out["topi"] = out["topi"].long()
        return {k: v.to(device) for k, v in out.items()}

    def argmax_counts(self, vocab_size: int) -> np.ndarray:
        """How often each token is the base's argmax over every cached position (FR-Spec's frequency)."""
        if not self.topk:
            raise ConfigError("draft_vocab needs the base's predictions: set teacher_topk >= 1")
        counts = np.zeros(vocab_size, dtype=np.int64)
        for s in range(0, self.n, 256):
            np.add.at(counts, np.asarray(self.arrays["topi"][s : s + 256, :, 0]).ravel(), 1)
        return counts


@torch.no_grad()
def trunk_outputs(model: Transformer, x: torch.Tensor, topk: int, autocast) -> dict[str, torch.Tensor]:
    """What the frozen base computes on windows x (B, T): h, h0 (B, T, dim) float32, nll (B, T) (0 at
    the last position) and, with topk, head 1's top-k ids and probabilities (B, T, k)."""
    with autocast:
        h, ctx = model.trunk(x)  # (B, T, dim)
        h0 = model.head(0, h, ctx)
        logp = model.unembed(h0).float().log_softmax(-1)  # (B, T, V)
    nll = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    nll[:, :-1] = -logp[:, :-1].gather(-1, x[:, 1:, None])[..., 0]
    out = {"x": x, "h": h.float(), "h0": h0.float(), "nll": nll}
    if topk:
        lp, ids = logp.topk(topk, dim=-1)  # (B, T, k)
        out["topp"], out["topi"] = lp.exp(), ids
    return out


def choose_draft_vocab(counts: np.ndarray, size: int) -> tuple[torch.Tensor, float]:
    """The `size` most frequent ids (ties: the lower id), sorted; and the share of positions whose
    argmax they cover.

    >>> v, cover = choose_draft_vocab(np.array([5, 0, 3, 2]), 2)
    >>> v.tolist(), cover
    ([0, 2], 0.8)
    """
    order = np.lexsort((np.arange(len(counts)), -counts))[:size]
    ids = np.sort(order)
    total = counts.sum()
    return torch.from_numpy(ids.astype(np.int64)), float(counts[ids].sum() / total) if total else 0.0


def vocab_index(model: Transformer) -> torch.Tensor | None:
    """(V,) map from token id to its column in the draft vocabulary, -1 outside; None = whole vocabulary."""
    if not model.config.draft_vocab_size:
        return None
    m = torch.full((model.config.vocab_size,), -1, dtype=torch.long, device=model.draft_vocab.device)
    m[model.draft_vocab] = torch.arange(model.config.draft_vocab_size, device=m.device)
    return m


def on_policy_mask(b: dict[str, torch.Tensor], i: int, n: int) -> torch.Tensor:
    """(B, n) bool: positions t < n whose next i tokens t+1..t+i are head 1's own greedy choices
    (the data token at t+j equals head 1's argmax at t+j-1). Only there does a drafting head see
    what it sees in greedy decoding, where every token before a draft is head 1's (the bonus) or
    an accepted draft: the inputs of a sequential module and the prefix its target conditions on.

    >>> b = {"x": torch.tensor([[5, 1, 2, 9, 4]]), "topi": torch.tensor([[[1], [2], [3], [4], [0]]])}
    >>> on_policy_mask(b, 1, 4).tolist(), on_policy_mask(b, 2, 3).tolist()
    ([[True, True, False, True]], [[True, False, False]])
    """
    x, top1 = b["x"], b["topi"][..., 0]
    ok = torch.zeros_like(x, dtype=torch.bool)
    ok[:, 1:] = x[:, 1:] == top1[:, :-1]  # token t is head 1's greedy choice after t-1
    keep = torch.ones(x.shape[0], n, dtype=torch.bool, device=x.device)
    for j in range(1, i + 1):
        keep &= ok[:, j : j + n]
    return keep


def head_loss(logits: torch.Tensor, b: dict[str, torch.Tensor], i: int, targets: str,
              vmap: torch.Tensor | None, on_policy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Head i's loss at positions t < T-i from its logits (B, T-i, K) over its vocabulary.

    targets "tokens": CE on the data's token t+1+i (positions whose token is outside the draft
    vocabulary are left out); "base": CE on head 1's top-k distribution at t+i, restricted to the
    vocabulary and renormalised. on_policy: only positions whose tokens t+1..t+i are head 1's greedy
    choices count (`on_policy_mask`). Returns (loss, number of positions that counted)."""
    B, n, K = logits.shape
    logq = logits.float().log_softmax(-1)  # (B, n, K)
    policy = on_policy_mask(b, i, n) if on_policy else None
    if targets == "tokens":
        tgt = b["x"][:, 1 + i : 1 + i + n]  # (B, n); the last position has no token t+1+i
        if tgt.shape[1] < n:
            logq = logq[:, : tgt.shape[1]]
        if vmap is not None:
            tgt = vmap[tgt]
        keep = tgt >= 0
        if policy is not None:
            keep &= policy[:, : tgt.shape[1]]
        nll = -logq.gather(-1, tgt.clamp(min=0)[..., None])[..., 0]
        cnt = keep.sum()
        return (nll * keep).sum() / cnt.clamp(min=1), cnt
    ids, p = b["topi"][:, i : i + n], b["topp"][:, i : i + n].float()  # (B, n, k): head 1 at t+i
    if vmap is not None:
        ids = vmap[ids]
        p = p * (ids >= 0)
    mass = p.sum(-1, keepdim=True)  # (B, n, 1)
    keep = mass[..., 0] > 0
    if policy is not None:
        keep &= policy
    pn = p / mass.clamp(min=1e-12)
    ce = -(pn * logq.gather(-1, ids.clamp(min=0))).sum(-1)  # (B, n)
    cnt = keep.sum()
    return (ce * keep).sum() / cnt.clamp(min=1), cnt


def frozen_step(model: Transformer, b: dict[str, torch.Tensor], head_weights: list[float], targets: str,
                autocast, vmap: torch.Tensor | None, on_policy: bool = False) -> torch.Tensor:
    """Forward and backward of every extra head on one cached batch; gradients accumulate in the
    extra heads only. Returns the detached per-head losses (n_future,), head 1's being the base's
    own NLL of the data (logged, never trained)."""
    x = b["x"]
    T = x.shape[1]
    ctx = _attn_context(None, 0, T, model.config, b["h"].dtype, x.device)
    losses = [b["nll"][:, :-1].mean()]
    if model.config.head_type == "sequential":
        # 1) the teacher-forced chain: module k reads module k-1's output (h0 for k = 1) and the
        # embedding of token t+k; one backward through all modules
        with autocast:
            prev, total = b["h0"], 0.0
            for k in range(1, model.n_future):
                module = model.extra_heads[k - 1]
                with torch.no_grad():
                    emb = sequential.ahead_embeddings(model, x, k, ctx)  # (B, T, dim), the frozen embedding
                out = module.block(module.fuse(sequential.chain_input(model, k, prev), emb), ctx)  # (B, T, dim)
                loss, _ = head_loss(model.draft_logits(out[:, : T - k], k), b, k, targets, vmap, on_policy)
                total = total + head_weights[k] * loss
                losses.append(loss.detach())
                prev = out
        total.backward()
    else:
        # 2) parallel / linear heads read the same h: one head's graph and logits alive at a time
        for i in range(1, model.n_future):
            with autocast:
                z = model.head(i, b["h"], ctx)  # (B, T, dim)
                loss, _ = head_loss(model.draft_logits(z[:, : T - i], i), b, i, targets, vmap, on_policy)
            (head_weights[i] * loss).backward()
            losses.append(loss.detach())
            del z, loss
    return torch.stack([v.float() for v in losses])


def cpu_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX). Without it
    (AVX2-only CPUs) PyTorch emulates bf16 and a matmul runs several times slower than in fp32."""
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # an old torch without the probe's backing: assume emulation
            continue
    return False


def log_line(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
