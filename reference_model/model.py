"""The reference multi-token-prediction (MTP) transformer, in one file.

Gloeckle et al. 2024, "Better & Faster Large Language Models via Multi-token Prediction":
a shared trunk, `n_future` output heads (head i predicts token t+1+i) and one shared
unembedding. The layout follows Meta's public release (facebook/multi-token-prediction) so
its weights load with the same parameter names:

    tok_embeddings -> layers[:-1] (trunk) -> h
    head 0 = layers[-1], heads 1.. = extra_heads[0..]     (each a transformer block, or a Linear)
    every head output -> norm (shared) -> output (shared unembedding)

head_type="sequential" replaces the parallel extra heads by DeepSeek-V3 / MiMo MTP modules
(DeepSeek-V3 technical report, section 2.2): module k reads the previous depth's hidden state
h^{k-1}_t (h^0 = head 0's block output, before the final norm) and the embedding of token t+k,

    x = proj([hnorm(h^{k-1}_t); enorm(emb(t_{t+k}))])     (2*dim -> dim, no bias; order: mtp_concat)
    h^k = block_k(x)                                       (its own attention over the sequence)
    logits = output(norm_k(h^k))                           (its own final norm, the shared unembedding)

so at position t it predicts token t+1+k, teacher-forced on the ground-truth t_{t+1..t+k}.

head_type="medusa" holds Medusa-1 heads (Cai et al. 2024): head k reads the model's final-normed
output norm(h^0_t), runs `medusa_layers` ResBlocks x + SiLU(W x + b) and its own Linear to the
vocabulary (no norm after): position-wise, no attention, like linear heads.

With n_future=1 this is exactly a Llama model (RMSNorm, rotary embeddings on interleaved
pairs like Meta's complex-number rotary, SwiGLU, GQA, no biases), which is what the Hugging Face
export relies on. Imported Qwen2-family models add q/k/v biases (`qkv_bias`) and an explicit
SwiGLU width (`ffn_hidden`).

This file: the config, the KV cache, the Transformer, then the two loss functions (`mtp_loss`,
`mtp_forward_backward`). Its modules, leaves first (RMSNorm, rotary, Attention, FeedForward,
TransformerBlock, SequentialModule, MedusaHead), are in layers.py beside it; what the sequential
modules do beyond one block (teacher forcing, chained drafting) in sequential.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mtp_bench.api.errors import ConfigError
from mtp_bench.reference_model import sequential
from mtp_bench.reference_model.layers import (  # noqa: F401  (the leaf modules; their old import path is this module)
    _SDPA_GQA,
    Attention,
    FeedForward,
    MedusaHead,
    RMSNorm,
    SequentialModule,
    TransformerBlock,
    _attn_context,
    _AttnContext,
    _sdpa,
    apply_rotary,
    rotary_cos_sin,
    static_context,
)

HEAD_TYPES = ("parallel", "linear", "causal", "anticausal", "sequential", "medusa")
MTP_CONCAT = ("hidden_first", "embedding_first")


# -----------------------------------------------------------------------------
# config


@dataclass
class ModelConfig:
    vocab_size: int = 32000  # set from the tokenizer
    dim: int = 512  # residual stream width
    n_layers: int = 8  # TOTAL depth: trunk + all transformer heads (constant across n_future: compute matching)
    n_heads: int = 8  # query heads; dim must divide evenly
    n_kv_heads: int | None = None  # GQA key/value heads; None = n_heads (plain multi-head attention)
    multiple_of: int = 256  # SwiGLU hidden size is rounded up to a multiple of this (Llama rule)
    ffn_dim_multiplier: float | None = None  # optional scale of the SwiGLU hidden size (Llama 2/3 rule)
    ffn_hidden: int | None = None  # explicit SwiGLU hidden size (imported models: HF's intermediate_size); None = the rule
    qkv_bias: bool = False  # biases on the q/k/v projections (Qwen2-family models); Llama has none
    norm_eps: float = 1e-5  # RMSNorm epsilon
    rope_theta: float = 10000.0  # rotary base; larger = longer wavelengths
    max_seq_len: int = 2048  # longest sequence the model was built (and trained) for
    n_future: int = 1  # number of output heads; 1 = plain next-token model
    head_type: str = "parallel"  # "parallel" | "linear" | "causal" | "anticausal" (paper Appendix B) | "sequential" (DeepSeek-V3) | "medusa"
    # sequential modules only: order of the projection's input; MiMo is [hidden; embedding], DeepSeek-V3's eh_proj
    # [embedding; hidden]. A trained-from-scratch model does not care; an imported one must match its source
    mtp_concat: str = "hidden_first"
    # sequential modules only: zero the token embedding a module reads at rotary position 0 (what vLLM's MiMo and
    # DeepSeek MTP layers do when drafting); off = the training semantics, every position reads its token
    mtp_zero_first_embedding: bool = False
    # sequential modules only: module k+1 reads module k's output after module k's final norm (MiMo's modeling code
    # returns the normed output) instead of before it (DeepSeek-V3: h^k is the block output, the norm is the head's)
    mtp_chain_normed: bool = False
    medusa_layers: int = 1  # medusa heads only: ResBlocks per head before its own unembedding
    # extra heads only: 0 = they predict over the whole vocabulary; K > 0 = over K token ids held in the
    # `draft_vocab` buffer (FR-Spec: a drafter's frequent tokens), -inf elsewhere. Head 1 always keeps the
    # whole vocabulary, so speculative decoding stays lossless
    draft_vocab_size: int = 0
    init_std: float = 0.02  # std of the normal init of every weight matrix

    def __post_init__(self) -> None:
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"invalid model config: {msg}")

        for name in ("vocab_size", "dim", "n_layers", "n_heads", "multiple_of", "max_seq_len", "n_future", "medusa_layers"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise bad(f"{name} must be a positive integer, got {v!r}")
        if self.head_type not in HEAD_TYPES:
            raise bad(f"head_type {self.head_type!r} is not one of {', '.join(HEAD_TYPES)}")
        if self.mtp_concat not in MTP_CONCAT:
            raise bad(f"mtp_concat {self.mtp_concat!r} is not one of {', '.join(MTP_CONCAT)}")
        for name in ("mtp_zero_first_embedding", "mtp_chain_normed"):
            if not isinstance(getattr(self, name), bool):
                raise bad(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.dim % self.n_heads:
            raise bad(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if (self.dim // self.n_heads) % 2:
            raise bad(f"head dim {self.dim // self.n_heads} must be even for rotary embeddings")
        if self.n_kv_heads is not None:
            if not isinstance(self.n_kv_heads, int) or self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
                raise bad(f"n_kv_heads={self.n_kv_heads!r} must be a positive divisor of n_heads={self.n_heads}")
        if self.n_layers < self.n_future:
            raise bad(f"n_layers={self.n_layers} must be >= n_future={self.n_future} (one layer per head at least)")
        if self.ffn_hidden is not None and (not isinstance(self.ffn_hidden, int) or self.ffn_hidden < 1):
            raise bad(f"ffn_hidden must be a positive integer or None, got {self.ffn_hidden!r}")
        if not isinstance(self.qkv_bias, bool):
            raise bad(f"qkv_bias must be true or false, got {self.qkv_bias!r}")
        if self.ffn_dim_multiplier is not None and not self.ffn_dim_multiplier > 0:
            raise bad(f"ffn_dim_multiplier must be > 0 or None, got {self.ffn_dim_multiplier!r}")
        if not self.norm_eps > 0 or not self.rope_theta > 0 or not self.init_std > 0:
            raise bad("norm_eps, rope_theta and init_std must be > 0")
        if not isinstance(self.draft_vocab_size, int) or not 0 <= self.draft_vocab_size <= self.vocab_size:
            raise bad(f"draft_vocab_size must be in [0, vocab_size={self.vocab_size}], got {self.draft_vocab_size!r}")
        if self.draft_vocab_size and self.head_type == "medusa":
            raise bad("draft_vocab_size: Medusa heads have their own unembeddings; a draft vocabulary is not defined for them")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def ffn_hidden_dim(self) -> int:
        """Llama's SwiGLU rule: 2/3 of 4*dim (same parameter count as a 4*dim GELU MLP), scaled, rounded up;
        or ffn_hidden when set."""
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    @property
    def n_trunk_layers(self) -> int:
        """Blocks before the heads. Compute matching: every extra head takes one block from the trunk."""
        return self.n_layers - self.n_future

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ConfigError(f"unknown model config key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(valid)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class KVCache:
    """Keys/values of every attention block (trunk, head 0, extra heads) for a batch.

    `length` positions are stored (padding included); `real` remembers which were real tokens
    so later calls compute rotary positions and masks. Extra heads are only run when asked
    for (return_all_heads=True): until then their input for the skipped positions
    [extra_length, length) waits in `extra_in` and is caught up on the next all-heads call, so
    plain next-token decoding pays nothing for them. `truncate(n)` rolls back every position >= n
    (speculative decoding).

    Sequential modules (Transformer.draft) keep more: the token ids fed so far (`ids`), each
    module's outputs (`seq_out`) and, per module k, `seq_length[k-1]`: the positions whose inputs
    were all ground truth (module k at position q reads token q+k, known once q+k < length+1);
    the positions after it were computed on drafted tokens and are recomputed on the next draft."""

    def __init__(self, cfg: ModelConfig, n_blocks: int, batch_size: int, max_len: int, device, dtype):
        if max_len < 1 or max_len > cfg.max_seq_len:
            raise ConfigError(f"cache max_len must be in [1, max_seq_len={cfg.max_seq_len}], got {max_len}")
        shape = (n_blocks, batch_size, cfg.kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.real = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.batch_size, self.max_len = batch_size, max_len
        self.length = 0  # positions stored for the trunk and head 0
        self.padded = False  # whether any stored position is padding (else attention needs no mask: _attn_context)
        self.extra_length = 0  # positions stored for the extra heads (<= length)
        self.extra_in: torch.Tensor | None = None  # (B, max_len, dim) extra-head inputs, allocated on first use
        self.ids: torch.Tensor | None = None  # (B, max_len) token ids fed (sequential modules only)
        self.seq_out: torch.Tensor | None = None  # (n_future-1, B, max_len, dim) sequential modules' outputs
        self.seq_length: list[int] = []  # per sequential module: positions computed from ground truth only

    def kv(self, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[block], self.v[block]

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (indices, in the new order): a generation drops the rows that
        have finished, so later steps compute nothing for them. Positions are untouched.

        The kept rows move to the front of the same buffers and only their stored positions
        [0, length) are copied: copying whole (max_len) buffers cost as much as a decoding step
        of a small model each time a row finished."""
        rows = rows.to(self.real.device)
        n, L = int(rows.numel()), self.length
        self.k[:, :n, :, :L] = self.k[:, rows, :, :L]  # the right side is gathered first: no overlap
        self.v[:, :n, :, :L] = self.v[:, rows, :, :L]
        self.k, self.v = self.k[:, :n], self.v[:, :n]
        self.real = self.real[rows]
        if self.extra_in is not None:
            self.extra_in[:n, :L] = self.extra_in[rows, :L]
            self.extra_in = self.extra_in[:n]
        if self.ids is not None:
            self.ids = self.ids[rows]
        if self.seq_out is not None:
            self.seq_out = self.seq_out[:, rows]
        self.batch_size = n

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ConfigError(f"cannot truncate a cache of length {self.length} to {length}")
        self.length = length
        self.real[:, length:] = False
        self.extra_length = min(self.extra_length, length)
        # module k at position q read token q+k: still ground truth if q+k <= length (the next token given)
        self.seq_length = [min(n, max(0, length + 1 - k)) for k, n in enumerate(self.seq_length, start=1)]


class Transformer(nn.Module):
    # inference (no grad): run the parallel extra heads as one J-batched block (_fused_extra_heads)
    fuse_extra_heads: bool = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.n_future = cfg.n_future
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        # trunk blocks, then head 0 (the next-token head) as the last entry, as in Meta's release
        self.layers = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_trunk_layers + 1))
        if cfg.head_type == "linear":
            self.extra_heads = nn.ModuleList(nn.Linear(cfg.dim, cfg.dim, bias=False) for _ in range(cfg.n_future - 1))
        elif cfg.head_type == "sequential":
            self.extra_heads = nn.ModuleList(SequentialModule(cfg) for _ in range(cfg.n_future - 1))
        elif cfg.head_type == "medusa":
            self.extra_heads = nn.ModuleList(MedusaHead(cfg) for _ in range(cfg.n_future - 1))
        else:
            self.extra_heads = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_future - 1))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)  # shared by every head
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)  # shared unembedding
        self.apply(self._init_weights)
        if cfg.draft_vocab_size:  # the extra heads' token ids (sorted); set by the trainer or loaded with the heads
            self.register_buffer("draft_vocab", torch.arange(cfg.draft_vocab_size))

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=self.config.init_std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def device(self) -> torch.device:
        return self.output.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.output.weight.dtype

    @property
    def _attn_extra(self) -> bool:
        return self.config.head_type not in ("linear", "medusa") and self.n_future > 1

    def new_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> KVCache:
        n_blocks = len(self.layers) + (len(self.extra_heads) if self._attn_extra else 0)
        return KVCache(self.config, n_blocks, batch_size, max_len, device or self.device, dtype or self.dtype)

    # --- forward pieces (mtp_forward_backward runs them one at a time) ---

    def _prepare(self, input_ids: torch.Tensor, cache: KVCache | None, attention_mask: torch.Tensor | None):
        """Validate inputs, record the new positions in the cache; returns (start, real (B, S) or None)."""
        if input_ids.dim() != 2:
            raise ConfigError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        if attention_mask is not None and tuple(attention_mask.shape) != (B, T):
            raise ConfigError(f"attention_mask must have the shape of input_ids {(B, T)}, got {tuple(attention_mask.shape)}")
        new_real = None if attention_mask is None else attention_mask.to(device=input_ids.device).bool()
        if cache is None:
            if T > self.config.max_seq_len:
                raise ConfigError(f"sequence of {T} tokens is longer than max_seq_len={self.config.max_seq_len}")
            return 0, new_real
        start = cache.length
        if B != cache.batch_size:
            raise ConfigError(f"batch of {B} rows does not match the cache's batch size {cache.batch_size}")
        if start + T > cache.max_len:
            raise ConfigError(f"cache overflow: {start} + {T} positions > cache max_len={cache.max_len}")
        cache.real[:, start : start + T] = True if new_real is None else new_real
        if new_real is not None and not cache.padded:  # one check per masked call (a padded prefill)
            cache.padded = not bool(new_real.all())
        cache.length = start + T
        return start, cache.real

    def trunk(self, input_ids, cache=None, attention_mask=None, _prepared=None):
        """Embeddings and layers[:-1]: the shared trunk output h, (B, T, dim)."""
        start, real = _prepared or self._prepare(input_ids, cache, attention_mask)
        x = self.tok_embeddings(input_ids)  # (B, T, dim)
        ctx = _attn_context(real, start, input_ids.shape[1], self.config, x.dtype, x.device,
                            padded=cache is None or cache.padded)
        for i, layer in enumerate(self.layers[:-1]):
            x = layer(x, ctx, cache.kv(i) if cache is not None else None)
        return x, ctx

    def head(self, i: int, x: torch.Tensor, ctx: _AttnContext, cache: KVCache | None = None) -> torch.Tensor:
        """Head i's transformer block (or Linear) on its input x: (B, T, dim) -> (B, T, dim)."""
        if i == 0:
            return self.layers[-1](x, ctx, cache.kv(len(self.layers) - 1) if cache is not None else None)
        block = self.extra_heads[i - 1]
        if isinstance(block, nn.Linear):
            return block(x)
        if isinstance(block, MedusaHead):
            return block(self.norm(x))  # Medusa reads the base model's final-normed output
        if isinstance(block, SequentialModule):
            block = block.block
        return block(x, ctx, cache.kv(len(self.layers) + i - 1) if cache is not None else None)

    def _stacked_extra_weights(self) -> dict[str, torch.Tensor]:
        """The extra heads' weights stacked along a new first dim (J = n_future-1), for inference.
        Rebuilt whenever a parameter changes (an optimizer step or load_state_dict bumps its
        tensor version counter)."""
        params = list(self.extra_heads.parameters())
        key = tuple((p.data_ptr(), p._version) for p in params)
        cached = getattr(self, "_stacked_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        blocks = list(self.extra_heads)
        with torch.no_grad():
            w = {
                "attn_norm": torch.stack([b.attention_norm.weight for b in blocks]),  # (J, dim)
                "ffn_norm": torch.stack([b.ffn_norm.weight for b in blocks]),  # (J, dim)
                "wqkv": torch.stack([torch.cat([b.attention.wq.weight, b.attention.wk.weight, b.attention.wv.weight])
                                     for b in blocks]).transpose(1, 2).contiguous(),  # (J, dim, (H+2Hkv)*hd)
                "bqkv": (torch.stack([torch.cat([b.attention.wq.bias, b.attention.wk.bias, b.attention.wv.bias])
                                      for b in blocks])[:, None, :] if self.config.qkv_bias else None),  # (J, 1, ...)
                "wo": torch.stack([b.attention.wo.weight for b in blocks]).transpose(1, 2).contiguous(),  # (J, H*hd, dim)
                "w13": torch.stack([torch.cat([b.feed_forward.w1.weight, b.feed_forward.w3.weight])
                                    for b in blocks]).transpose(1, 2).contiguous(),  # (J, dim, 2*hidden)
                "w2": torch.stack([b.feed_forward.w2.weight for b in blocks]).transpose(1, 2).contiguous(),  # (J, hidden, dim)
            }
        self._stacked_cache = (key, w)
        return w

    def _fused_extra_heads(self, x: torch.Tensor, ctx: _AttnContext, cache: KVCache | None) -> torch.Tensor:
        """All parallel extra heads on the same input at once (inference only): the same math as
        running `self.extra_heads[j]` one by one, as J-batched matmuls, so a speculative-decoding
        verification pays one block's worth of kernel launches for all drafting heads instead of
        n_future-1. x: (B, T, dim) -> (J, B, T, dim)."""
        cfg, w = self.config, self._stacked_extra_weights()
        J, (B, T, D) = len(self.extra_heads), x.shape
        H, Hkv, hd = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        eps = cfg.norm_eps

        def norm(t: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # RMSNorm.forward, per head
            tf = t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
            return weight[:, None, None, :] * (tf * torch.rsqrt(tf.pow(2).mean(-1, keepdim=True) + eps)).type_as(t)

        # 1) attention: q, k, v of every head in one batched matmul
        xn = norm(x.expand(J, B, T, D), w["attn_norm"])  # (J, B, T, D)
        xn = xn.reshape(J, B * T, D)
        qkv = (torch.bmm(xn, w["wqkv"]) if w["bqkv"] is None else torch.baddbmm(w["bqkv"], xn, w["wqkv"])).view(J, B, T, -1)
        q, k, v = qkv.split([H * hd, Hkv * hd, Hkv * hd], dim=-1)
        cos = ctx.cos.expand(B, -1, -1, -1).repeat(J, 1, 1, 1)  # (J*B, T, 1, hd/2)
        sin = ctx.sin.expand(B, -1, -1, -1).repeat(J, 1, 1, 1)
        q = apply_rotary(q.reshape(J * B, T, H, hd), cos, sin)
        k = apply_rotary(k.reshape(J * B, T, Hkv, hd), cos, sin)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (J*B, H|Hkv, T, hd)
        v = v.reshape(J * B, T, Hkv, hd).transpose(1, 2)
        if cache is not None:  # the extra heads' cache blocks are contiguous: (J, B, Hkv, max_len, hd)
            first = len(self.layers)
            k_buf, v_buf = cache.k[first : first + J], cache.v[first : first + J]
            k_buf[:, :, :, ctx.q0 : ctx.q0 + T] = k.view(J, B, Hkv, T, hd)
            v_buf[:, :, :, ctx.q0 : ctx.q0 + T] = v.view(J, B, Hkv, T, hd)
            S = ctx.q0 + T
            k = k_buf[:, :, :, :S].reshape(J * B, Hkv, S, hd)
            v = v_buf[:, :, :, :S].reshape(J * B, Hkv, S, hd)
        mask = None if ctx.mask is None else ctx.mask.repeat(J if ctx.mask.shape[0] > 1 else 1, 1, 1, 1)  # (J*B|1, 1, T, S)
        y = _sdpa(q, k, v, mask, ctx.causal, cached=cache is not None)
        y = y.transpose(1, 2).reshape(J, B * T, H * hd)
        h = x + torch.bmm(y, w["wo"]).view(J, B, T, D)  # (J, B, T, D)
        # 2) SwiGLU feed-forward, batched the same way
        hn = norm(h, w["ffn_norm"]).reshape(J, B * T, D)
        a, b = torch.bmm(hn, w["w13"]).chunk(2, dim=-1)
        return h + torch.bmm(F.silu(a) * b, w["w2"]).view(J, B, T, D)

    def head_order(self) -> list[int]:
        """The order heads are computed in: causal chains 0 -> n-1, anticausal n-1 -> 0."""
        return list(reversed(range(self.n_future))) if self.config.head_type == "anticausal" else list(range(self.n_future))

    def head_input(self, i: int, h: torch.Tensor, outs: dict[int, torch.Tensor], input_ids: torch.Tensor | None = None,
                   ctx: _AttnContext | None = None) -> torch.Tensor:
        """What head i reads: h for parallel/linear heads, the previous head's output in a chain; for
        sequential module i, the projection of the previous depth's output and the embeddings of
        the tokens i ahead (teacher forcing: input_ids (B, T) and the attention context are needed)."""
        t = self.config.head_type
        if t == "medusa" and i > 0:
            return outs[0]
        if t == "sequential" and i > 0:
            if input_ids is None or ctx is None:
                raise ConfigError("sequential MTP modules need input_ids and ctx in head_input (they read tokens ahead)")
            return self.extra_heads[i - 1].fuse(sequential.chain_input(self, i, outs[i - 1]),
                                                sequential.ahead_embeddings(self, input_ids, i, ctx))
        if t == "causal" and i > 0:
            return outs[i - 1]
        if t == "anticausal" and i < self.n_future - 1:
            return outs[i + 1]
        return h

    def draft_logits(self, z: torch.Tensor, i: int) -> torch.Tensor:
        """Extra head i's logits over its draft vocabulary only: (..., dim) -> (..., K), column j
        for token draft_vocab[j] (the whole vocabulary when draft_vocab_size is 0). Training reads
        these (a K-column unembedding); `unembed` scatters them into the full vocabulary."""
        if not self.config.draft_vocab_size:
            return self.unembed(z, i)
        norm = self.extra_heads[i - 1].norm if self.config.head_type == "sequential" else self.norm
        logits = F.linear(norm(z), self._draft_weight())  # (..., K)
        return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits

    def _draft_weight(self) -> torch.Tensor:
        """The unembedding's rows of the draft vocabulary, (K, dim); kept between calls while neither
        changes and no gradient has to reach the unembedding (inference, a frozen trunk)."""
        w = self.output.weight
        if w.requires_grad and torch.is_grad_enabled():
            return w[self.draft_vocab]
        key = (w.data_ptr(), w._version, self.draft_vocab.data_ptr(), self.draft_vocab._version, w.dtype, w.device)
        cached = getattr(self, "_draft_weight_cache", None)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, w[self.draft_vocab].contiguous())
            self._draft_weight_cache = cached
        return cached[1]

    def unembed(self, z: torch.Tensor, i: int = 0) -> torch.Tensor:
        """Final norm + shared unembedding of head i (the shared norm, or a sequential module's own);
        logits at least float32 (a float64 model keeps float64)."""
        if i > 0 and self.config.head_type == "medusa":
            logits = self.extra_heads[i - 1].output(z)  # its own unembedding, straight after the ResBlocks
            return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        if i > 0 and self.config.draft_vocab_size:  # drafts only come from the draft vocabulary
            sub = self.draft_logits(z, i)  # (..., K)
            logits = sub.new_full((*sub.shape[:-1], self.config.vocab_size), float("-inf"))
            return logits.index_copy_(-1, self.draft_vocab, sub)
        norm = self.extra_heads[i - 1].norm if i > 0 and self.config.head_type == "sequential" else self.norm
        logits = self.output(norm(z))
        return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None, return_all_heads: bool = False,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, n_future, V) if return_all_heads else (B, T, 1, V), float32 (float64 for a float64 model).

        attention_mask (B, T) 0/1 marks left padding of the new tokens; a token's rotary position
        is the number of real tokens before it, so a padded row gives the same logits as alone.
        Sequential modules are teacher-forced: head k at position t reads tokens up to t+k, so its
        logits at the last k positions (whose token t+k is not in the input) are NaN; with a cache
        they run through `draft` instead (return_all_heads then raises)."""
        B, T = input_ids.shape
        if self.config.head_type == "sequential" and self.n_future > 1:
            return sequential.forward(self, input_ids, cache, return_all_heads, attention_mask)
        start, real = self._prepare(input_ids, cache, attention_mask)
        # 1) trunk
        h, ctx = self.trunk(input_ids, cache, _prepared=(start, real))  # (B, T, dim)
        # 2) heads: only head 0 unless asked (anticausal needs the whole chain for head 0)
        n_out = self.n_future if return_all_heads else 1
        if self.config.head_type == "anticausal":
            needed = self.head_order()
        else:
            needed = list(range(n_out))
        outs: dict[int, torch.Tensor] = {}
        catch_up = cache is not None and self._attn_extra and self.config.head_type != "anticausal"
        ext_ctx, n_pend = ctx, 0
        if catch_up and n_out > 1 and cache.extra_length < start:
            # the extra heads skipped some earlier positions: run them over those too
            n_pend = start - cache.extra_length
            ext_ctx = _attn_context(real, cache.extra_length, n_pend + T, self.config, h.dtype, h.device,
                                    padded=cache.padded)
        fuse = (self.fuse_extra_heads and self.config.head_type == "parallel" and n_out > 2
                and not torch.is_grad_enabled())
        for i in needed:
            if fuse and i > 1:
                break  # heads 1..n-1 ran together below
            x = self.head_input(i, h, outs)
            if i > 0 and n_pend and (i == 1 or self.config.head_type == "parallel"):
                x = torch.cat([cache.extra_in[:, cache.extra_length : start], x], dim=1)  # (B, n_pend + T, dim)
            if fuse and i == 1:  # inference: every parallel extra head reads the same x, so batch them
                for j, y in enumerate(self._fused_extra_heads(x, ext_ctx, cache)):
                    outs[1 + j] = y
            else:
                outs[i] = self.head(i, x, ext_ctx if i > 0 else ctx, cache)
        if catch_up:
            if n_out > 1:
                cache.extra_length = cache.length
            else:  # remember what the extra heads will read at these positions
                if cache.extra_in is None:
                    cache.extra_in = h.new_zeros(B, cache.max_len, h.shape[-1])
                cache.extra_in[:, start : start + T] = h if self.config.head_type == "parallel" else outs[0]
        elif cache is not None:
            cache.extra_length = cache.length
        if self.config.head_type == "medusa":  # every head its own unembedding
            return torch.stack([self.unembed(outs[i][:, -T:], i) for i in range(n_out)], dim=2)
        z = torch.stack([outs[i][:, -T:] for i in range(n_out)], dim=2)  # (B, T, n_out, dim)
        if self.config.draft_vocab_size and n_out > 1:  # head 1 over the vocabulary, the drafters over theirs
            return torch.cat([self.unembed(z[:, :, :1]), self.unembed(z[:, :, 1:], 1)], dim=2)
        return self.unembed(z)  # (B, T, n_out, V)

    def decode_step_static(self, token: torch.Tensor, pos: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Head 0's logits (1, 1, V) for one token (1, 1) at cache position pos ((1,) tensor) of a batch-1
        cache without padding, every shape fixed whatever the position (`layers.static_context`), so
        one CUDA graph replays every decoding step (`mtp_bench.generation.graphs`). Only the trunk and
        head 0 run (the extra heads are not caught up: plain decoding). The caller moves
        `cache.length` on; the logits are those of `forward` on the same token."""
        x = self.tok_embeddings(token)  # (1, 1, dim)
        ctx = static_context(pos, cache.max_len, self.config, x.dtype)
        for i, layer in enumerate(self.layers):  # the trunk, then head 0 (the last entry)
            x = layer(x, ctx, cache.kv(i))
        return self.unembed(x)  # (1, 1, V)

    def draft(self, cache: KVCache, next_token: torch.Tensor, n_draft: int, reuse_last: bool = False,
              sample=None) -> torch.Tensor:
        """Chained drafting with the sequential MTP modules after a cached forward: (B, n_draft) token
        ids (`sequential.draft`; sample chooses each draft from its logits, None = argmax)."""
        return sequential.draft(self, cache, next_token, n_draft, reuse_last, sample)


# -----------------------------------------------------------------------------
# losses


def _head_weights(model: Transformer, head_weights: Sequence[float] | None) -> list[float]:
    n = model.n_future
    if head_weights is None:
        return [1.0] * n
    w = [float(x) for x in head_weights]
    if len(w) != n:
        raise ConfigError(f"head_weights has {len(w)} entries but the model has n_future={n} heads")
    return w


def _head_ce(model: Transformer, z: torch.Tensor, input_ids: torch.Tensor, i: int) -> torch.Tensor:
    """Mean cross-entropy of head i: its output at position t predicts input_ids[:, t+1+i].
    Only the positions that have a target are unembedded."""
    T = input_ids.shape[1]
    n_valid = T - 1 - i
    logits = model.unembed(z[:, :n_valid], i)  # (B, T-1-i, V): one head's logits at a time
    return F.cross_entropy(logits.flatten(0, 1), input_ids[:, 1 + i :].flatten())


def _check_len(model: Transformer, input_ids: torch.Tensor) -> None:
    if input_ids.dim() != 2 or input_ids.shape[1] < model.n_future + 1:
        raise ConfigError(f"input_ids must be (B, T) with T >= n_future+1 = {model.n_future + 1} so every head has a target, "
                          f"got shape {tuple(input_ids.shape)}")


def mtp_loss(model: Transformer, input_ids: torch.Tensor, head_weights: Sequence[float] | None = None):
    """loss = sum_i w_i * CE_i (the paper's plain sum when w_i = 1), and the detached (n_future,)
    per-head CEs. Builds one graph through every head; use for eval (under no_grad) or autograd."""
    _check_len(model, input_ids)
    w = _head_weights(model, head_weights)
    h, ctx = model.trunk(input_ids)
    outs: dict[int, torch.Tensor] = {}
    ces: dict[int, torch.Tensor] = {}
    for i in model.head_order():
        outs[i] = model.head(i, model.head_input(i, h, outs, input_ids, ctx), ctx)
        ces[i] = _head_ce(model, outs[i], input_ids, i)
    per_head = torch.stack([ces[i] for i in range(model.n_future)])  # (n_future,)
    loss = sum(w[i] * ces[i] for i in range(model.n_future))
    return loss, per_head.detach()


def mtp_forward_backward(model: Transformer, input_ids: torch.Tensor, head_weights: Sequence[float] | None = None,
                         mode: str = "sequential"):
    """Forward and backward of the MTP loss, accumulating into .grad like loss.backward().
    Returns the detached (loss, per_head).

    mode="sequential" is the paper's memory trick (Figure 2): the trunk runs once; each head's
    forward and backward then run in turn, so only one head's logits (B, T, V) are alive at a
    time instead of all n of them; the heads' gradients accumulate in the detached trunk output,
    which is finally backpropagated through the trunk once. For causal/anticausal chains
    (Figure S11) the chain is run forward keeping each link's detached input, then the heads are
    backpropagated from the end of the chain to its start, each passing its input gradient on.
    Sequential MTP modules run as such a chain (module k reads module k-1's output and the token
    embeddings k ahead, whose gradient goes straight to tok_embeddings): the trick still keeps only
    one head's logits alive, but every module's block activations stay alive until the backward
    reaches it (as for causal heads), unlike parallel heads where one head's activations live at a time.
    mode="naive": one graph with every head's logits alive, one backward."""
    if mode not in ("sequential", "naive"):
        raise ConfigError(f"unknown mode {mode!r}; valid modes: sequential, naive")
    if mode == "naive":
        loss, per_head = mtp_loss(model, input_ids, head_weights)
        loss.backward()
        return loss.detach(), per_head
    _check_len(model, input_ids)
    w = _head_weights(model, head_weights)
    # 1) trunk forward once; cut the graph at its output
    h, ctx = model.trunk(input_ids)  # (B, T, dim)
    h_d = h.detach().requires_grad_()
    ces: dict[int, torch.Tensor] = {}  # detached per-head CEs, kept on the device (no sync per head)
    if model.config.head_type == "medusa":
        # 2) head 0 first; the Medusa heads read its detached output one at a time, their gradient
        # accumulating there, then head 0's CE and that gradient go back through head 0 together
        z0 = model.head(0, h_d, ctx)
        z0_d = z0.detach().requires_grad_()
        for i in range(1, model.n_future):
            ce = _head_ce(model, model.head(i, z0_d, ctx), input_ids, i)
            (w[i] * ce).backward()
            ces[i] = ce.detach()
            del ce
        ce0 = _head_ce(model, z0, input_ids, 0)
        extra = [z0] if z0_d.grad is not None else []
        torch.autograd.backward([w[0] * ce0, *extra], [None, *([z0_d.grad] if extra else [])])
        ces[0] = ce0.detach()
    elif model.config.head_type in ("parallel", "linear"):
        # 2) each head: forward, its logits and CE, backward into h_d.grad and its own weights; free
        for i in range(model.n_future):
            z = model.head(i, h_d, ctx)
            ce = _head_ce(model, z, input_ids, i)
            (w[i] * ce).backward()
            ces[i] = ce.detach()
            del z, ce  # this head's logits are freed before the next head runs
    else:
        # 2a) forward the chain; each link reads a detached copy of the previous link's output
        order = model.head_order()
        inputs: dict[int, torch.Tensor] = {}
        outs: dict[int, torch.Tensor] = {}
        for j, i in enumerate(order):
            inputs[i] = h_d if j == 0 else outs[order[j - 1]].detach().requires_grad_()
            prev = {order[j - 1]: inputs[i]} if j else {}
            outs[i] = model.head(i, model.head_input(i, h_d, prev, input_ids, ctx), ctx)
        # 2b) backward from the end of the chain to its start: head i's CE plus the gradient its
        # successor left in its output; logits are built one head at a time, inside this loop
        for j in reversed(range(len(order))):
            i = order[j]
            ce = _head_ce(model, outs[i], input_ids, i)
            tensors, grads = [w[i] * ce], [None]
            if j + 1 < len(order):
                nxt = inputs[order[j + 1]]
                if nxt.grad is not None:
                    tensors.append(outs[i])
                    grads.append(nxt.grad)
            torch.autograd.backward(tensors, grads)
            ces[i] = ce.detach()
            del ce
            outs.pop(i)
    # 3) backward through the trunk once with the heads' accumulated gradient
    h.backward(h_d.grad)
    per_head = torch.stack([ces[i] for i in range(model.n_future)])  # (n_future,)
    loss = (torch.tensor(w, dtype=per_head.dtype, device=per_head.device) * per_head).sum()
    return loss, per_head
