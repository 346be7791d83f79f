"""The reference model's modules, leaves first: RMSNorm, rotary embeddings, attention, the SwiGLU
feed-forward, the transformer block; then the two kinds of extra heads that are not transformer
blocks or Linears: DeepSeek-V3 / MiMo sequential MTP modules and Medusa-1 heads (model.py's
docstring says what each computes); and the attention context (rotary angles, mask) of a call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from mtp_bench.reference_model.model import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise in float32 at least (as Meta's and HF's Llama do), cast back, then scale
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.type_as(x)


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of the rotary angles for integer positions (B, T) -> two (B, T, 1, head_dim/2).

    Computed on the fly from each token's own position, so left-padded rows (whose positions
    start at 0 after the padding) need no special tables."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    angles = positions.to(torch.float32)[..., None] * inv_freq  # (B, T, hd/2)
    angles = angles.to(dtype)
    return angles.cos()[:, :, None, :], angles.sin()[:, :, None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]): the real form of Meta's complex-number rotary.
    x: (B, T, H, hd); the HF export permutes wq/wk rows to HF's rotate-half convention."""
    xf = x.to(cos.dtype).unflatten(-1, (-1, 2))  # (B, T, H, hd/2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).type_as(x)


def _sdpa_has_gqa() -> bool:
    import inspect

    try:
        return "enable_gqa" in inspect.signature(F.scaled_dot_product_attention).parameters
    except (TypeError, ValueError):  # a builtin without a signature: ask by calling
        try:
            F.scaled_dot_product_attention(torch.zeros(1, 2, 1, 2), torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2),
                                           enable_gqa=True)
            return True
        except TypeError:
            return False


_SDPA_GQA = _sdpa_has_gqa()


# Backends for attention over a KV cache on CUDA: every call there has a new key length (and a
# prefill a new prompt length), and cuDNN's attention, which torch prefers for half precision on
# Hopper, builds a graph per shape: milliseconds a call, 9x the whole generation of a small model
# in bfloat16 (issue 20's H200 profile; float32 never takes cuDNN). Flash (no mask) and
# memory-efficient attention (masks) take any length at no setup cost.
_CACHED_CUDA_BACKENDS = None


def _cached_cuda_backends() -> list:
    global _CACHED_CUDA_BACKENDS
    if _CACHED_CUDA_BACKENDS is None:
        from torch.nn.attention import SDPBackend

        _CACHED_CUDA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    return _CACHED_CUDA_BACKENDS


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool = True,
          cached: bool = False) -> torch.Tensor:
    """Attention of q (B, H, T, hd) over k, v (B, Hkv, S, hd); mask (B|1, 1, T, S) bool, or None: plain
    causal when `causal` (T == S), else every key (a one-token query over a cache without padding).
    GQA (Hkv < H: each kv head serves H/Hkv query heads) goes to SDPA as is (torch >= 2.5), not
    as copies of k and v: the same numbers, an order of magnitude less time in decoding on a CPU.
    `cached` (k, v read from a KV cache) keeps CUDA off cuDNN's per-shape graphs (above)."""
    if cached and q.is_cuda:
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel(_cached_cuda_backends()):
            return _sdpa(q, k, v, mask, causal)
    is_causal = mask is None and causal
    if k.shape[1] != q.shape[1]:
        if _SDPA_GQA:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=True)
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wk = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wv = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, ctx: _AttnContext, kv: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)
        q, k = apply_rotary(q, ctx.cos, ctx.sin), apply_rotary(k, ctx.cos, ctx.sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, hd)
        if kv is not None and ctx.pos is not None:  # static: positions in a tensor, every shape fixed (CUDA graphs)
            k_buf, v_buf = kv  # (B, Hkv, max_len, hd)
            k_buf.index_copy_(2, ctx.pos, k)
            v_buf.index_copy_(2, ctx.pos, v)
            k, v = k_buf, v_buf  # the whole buffer; ctx.mask hides what is not yet written
        elif kv is not None:  # write the new positions into this block's cache, attend to all so far
            k_buf, v_buf = kv  # (B, Hkv, max_len, hd)
            k_buf[:, :, ctx.q0 : ctx.q0 + T] = k
            v_buf[:, :, ctx.q0 : ctx.q0 + T] = v
            k, v = k_buf[:, :, : ctx.q0 + T], v_buf[:, :, : ctx.q0 + T]
        y = _sdpa(q, k, v, ctx.mask, ctx.causal, cached=kv is not None)  # (B, H, T, hd)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = cfg.ffn_hidden_dim
        self.w1 = nn.Linear(cfg.dim, hidden, bias=False)  # gate
        self.w2 = nn.Linear(hidden, cfg.dim, bias=False)  # down
        self.w3 = nn.Linear(cfg.dim, hidden, bias=False)  # up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x: torch.Tensor, ctx: _AttnContext, kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), ctx, kv)
        return h + self.feed_forward(self.ffn_norm(h))


class SequentialModule(nn.Module):
    """One DeepSeek-V3 / MiMo MTP module: two RMSNorms, a 2d -> d projection, a transformer block,
    and its own final norm (the unembedding is the model's, shared)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.hidden_first = cfg.mtp_concat == "hidden_first"
        self.hnorm = RMSNorm(cfg.dim, cfg.norm_eps)  # on the previous depth's hidden state
        self.enorm = RMSNorm(cfg.dim, cfg.norm_eps)  # on the token embedding
        self.proj = nn.Linear(2 * cfg.dim, cfg.dim, bias=False)
        self.block = TransformerBlock(cfg)
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)  # this module's final norm, before the shared unembedding

    def fuse(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """(B, T, dim) hidden states and (B, T, dim) embeddings -> the block's input (B, T, dim)."""
        parts = (self.hnorm(h), self.enorm(emb)) if self.hidden_first else (self.enorm(emb), self.hnorm(h))
        return self.proj(torch.cat(parts, dim=-1))


class MedusaHead(nn.Module):
    """One Medusa-1 head: ResBlocks x + SiLU(W x + b), then its own unembedding (no bias)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.res = nn.ModuleList(nn.Linear(cfg.dim, cfg.dim, bias=True) for _ in range(cfg.medusa_layers))
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for lin in self.res:
            x = x + F.silu(lin(x))
        return x


@dataclass
class _AttnContext:
    """Rotary angles and attention mask for queries at cache positions [q0, q0+T)."""

    cos: torch.Tensor  # (B|1, T, 1, hd/2)
    sin: torch.Tensor  # (B|1, T, 1, hd/2)
    mask: torch.Tensor | None  # (B|1, 1, T, q0+T) bool, True = may attend; None: see `causal`
    q0: int  # cache position of the first query
    first: torch.Tensor | None = None  # (B, T) bool, query at rotary position 0 (None: only q0 == 0's first column)
    causal: bool = True  # with mask None: plain causal (q0 == 0); False: one query that sees every key
    pos: torch.Tensor | None = None  # (T,) cache positions as a tensor: the static path (`static_context`)


def static_context(pos: torch.Tensor, max_len: int, cfg: ModelConfig, dtype: torch.dtype) -> _AttnContext:
    """The attention context of one query at cache position `pos` (a (1,) tensor) of a cache without
    padding, with every shape independent of the position: the key/value write is an index_copy_ at
    `pos` and attention spans the whole max_len buffer behind a (1, 1, 1, max_len) mask. What a CUDA
    graph needs (one capture serves every step); the numbers of the sliced path's one-query context."""
    rope_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    cos, sin = rotary_cos_sin(pos[None], cfg.head_dim, cfg.rope_theta, rope_dtype)  # (1, 1, 1, hd/2)
    mask = (torch.arange(max_len, device=pos.device) <= pos)[None, None, None, :]  # (1, 1, 1, max_len)
    return _AttnContext(cos, sin, mask, -1, causal=False, pos=pos)


def _attn_context(real: torch.Tensor | None, q0: int, T: int, cfg: ModelConfig, dtype: torch.dtype, device,
                  padded: bool = True) -> _AttnContext:
    """real: (B, S) bool, which of the positions [0, S) are real tokens (S >= q0+T), or None when
    there is no padding and no cache (then positions are 0..T-1 and attention is plain causal).

    padded=False promises that real[:, :S] is all True (a cache that never stored padding: every
    batch-1 decode, every unpadded batch): positions are then q0..S-1 for every row and the mask
    is one causal (T, S) shared by the rows, or none for a single query, which lets CUDA run
    flash attention and spares the per-step cumulative sum and (B, T, S) mask. Same numbers."""
    rope_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    if real is None:
        pos = torch.arange(T, device=device)[None]  # (1, T)
        cos, sin = rotary_cos_sin(pos, cfg.head_dim, cfg.rope_theta, rope_dtype)
        return _AttnContext(cos, sin, None, 0)
    S = q0 + T
    if not padded:
        pos = torch.arange(q0, S, device=device)[None]  # (1, T)
        cos, sin = rotary_cos_sin(pos, cfg.head_dim, cfg.rope_theta, rope_dtype)
        if T == 1:
            return _AttnContext(cos, sin, None, q0, causal=False)
        if q0 == 0:
            return _AttnContext(cos, sin, None, 0)
        mask = torch.arange(S, device=device)[None, :] <= torch.arange(q0, S, device=device)[:, None]  # (T, S)
        return _AttnContext(cos, sin, mask[None, None], q0)
    real = real[:, :S]
    positions = real.long().cumsum(1) - real.long()  # (B, S) number of real tokens before each position
    cos, sin = rotary_cos_sin(positions[:, q0:S], cfg.head_dim, cfg.rope_theta, rope_dtype)
    q_idx = torch.arange(q0, S, device=device)[:, None]  # (T, 1)
    k_idx = torch.arange(S, device=device)[None, :]  # (1, S)
    # causal, real keys only; a query may always see itself so padded rows never go all -inf (NaN)
    mask = (k_idx <= q_idx)[None] & (real[:, None, :] | (k_idx == q_idx)[None])  # (B, T, S)
    first = (positions[:, q0:S] == 0) & real[:, q0:S]  # (B, T)
    return _AttnContext(cos, sin, mask[:, None], q0, first)
