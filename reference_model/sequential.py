"""DeepSeek-V3 / MiMo sequential MTP modules in the reference model: the teacher-forced forward,
chained drafting after a cached forward, and what a module reads (the previous depth's hidden
state, the embeddings of the tokens ahead). `Transformer` calls these for head_type "sequential";
the modules themselves are `layers.SequentialModule`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from mtp_bench.api.errors import ConfigError
from mtp_bench.reference_model.layers import _attn_context, _AttnContext

if TYPE_CHECKING:
    from mtp_bench.reference_model.model import KVCache, Transformer


def chain_input(model: Transformer, i: int, z: torch.Tensor) -> torch.Tensor:
    """The previous depth's hidden state as sequential module i reads it: head 0's block output,
    or module i-1's block output, after that module's final norm when mtp_chain_normed."""
    if i > 1 and model.config.mtp_chain_normed:
        return model.extra_heads[i - 2].norm(z)
    return z

def ahead_embeddings(model: Transformer, input_ids: torch.Tensor, i: int, ctx: _AttnContext) -> torch.Tensor:
    """Embeddings of input_ids shifted i to the left: (B, T) -> (B, T, dim), position t holding
    token t+i. The last i positions have no such token: they get token T-1's embedding, and
    their outputs are never used (causal attention keeps them out of the earlier positions)."""
    ids = torch.cat([input_ids[:, i:], input_ids[:, -1:].expand(-1, min(i, input_ids.shape[1]))], dim=1)
    return module_embeddings(model, ids, ctx)

def module_embeddings(model: Transformer, ids: torch.Tensor, ctx: _AttnContext) -> torch.Tensor:
    e = model.tok_embeddings(ids)  # (B, T, dim)
    if model.config.mtp_zero_first_embedding:
        if ctx.first is not None:
            e = e * (~ctx.first)[..., None].to(e.dtype)
        elif ctx.q0 == 0:
            e = torch.cat([torch.zeros_like(e[:, :1]), e[:, 1:]], dim=1)
    return e


def forward(model: Transformer, input_ids, cache, return_all_heads, attention_mask) -> torch.Tensor:
    """Teacher-forced logits (B, T, n, V): module i at position t reads tokens up to t+i and
    predicts t+1+i; where t+i >= T the token is not in the input, so those entries are NaN.
    With a cache only head 0 runs (drafting goes through `draft`); its outputs and the
    token ids are kept for the modules."""
    B, T = input_ids.shape
    start, real = model._prepare(input_ids, cache, attention_mask)
    h, ctx = model.trunk(input_ids, cache, _prepared=(start, real))
    h0 = model.head(0, h, ctx, cache)  # (B, T, dim)
    if cache is not None:
        if return_all_heads:
            raise ConfigError("a sequential MTP model drafts with model.draft(cache, next_token, n) after a cached "
                              "forward; return_all_heads with a cache is not defined (the modules read tokens ahead)")
        if cache.extra_in is None:
            cache.extra_in = h0.new_zeros(B, cache.max_len, h0.shape[-1])
            cache.ids = input_ids.new_zeros(B, cache.max_len)
            cache.seq_length = [0] * (model.n_future - 1)
        cache.extra_in[:, start : start + T] = h0
        cache.ids[:, start : start + T] = input_ids
        cache.extra_length = cache.length
        return model.unembed(h0)[:, :, None]  # (B, T, 1, V)
    if not return_all_heads:
        return model.unembed(h0)[:, :, None]
    outs, logits = {0: h0}, [model.unembed(h0)]
    for i in range(1, model.n_future):
        outs[i] = model.head(i, model.head_input(i, h, outs, input_ids, ctx), ctx)
        lg = model.unembed(outs[i], i)  # (B, T, V)
        lg[:, max(T - i, 0) :] = float("nan")  # token t+i is past the input: undefined
        logits.append(lg)
    return torch.stack(logits, dim=2)  # (B, T, n_future, V)

@torch.no_grad()
def draft(model: Transformer, cache: KVCache, next_token: torch.Tensor, n_draft: int, reuse_last: bool = False,
          sample=None) -> torch.Tensor:
    """Chained drafting with the sequential modules after a cached forward.

    The cache holds positions [0, p] (p = cache.length - 1); next_token (B,) is token p+1 (head
    0's choice, not yet fed). Module k, run at position p on the previous module's output and
    on the token module k-1 drafted (module 1: next_token), drafts token p+1+k. Its attention
    sees its own keys at the earlier positions, computed on ground-truth tokens where they are
    known and on the drafts where not (exactly the teacher-forced model when the drafts are
    right). reuse_last: draft more tokens than there are modules by running the last module
    again at the next positions on its own output and draft (what vLLM does with one MTP
    layer); off = at most n_future-1 drafts. sample: a function (B, V) logits -> (B,) tokens that
    chooses each draft (speculative sampling draws them); None = argmax. Returns (B, n_draft) token
    ids; nothing in the cache's trunk changes."""
    pick = sample if sample is not None else (lambda lg: lg.argmax(-1))
    M = model.n_future - 1
    if model.config.head_type != "sequential" or M < 1:
        raise ConfigError("draft needs a model with sequential MTP modules (head_type='sequential', n_future > 1)")
    if n_draft < 0 or (n_draft > M and not reuse_last):
        raise ConfigError(f"n_draft={n_draft} must be in 0..{M} (the modules; reuse_last=True drafts more)")
    if cache.ids is None or cache.length < 1:
        raise ConfigError("draft needs a cache filled by a forward pass of this model")
    p, B = cache.length - 1, cache.batch_size
    if p + 1 + max(n_draft - M, 0) > cache.max_len:
        raise ConfigError(f"cache overflow: drafting {n_draft} tokens needs {p + 1 + n_draft - M} positions "
                          f"> cache max_len={cache.max_len}")
    if cache.seq_out is None:
        cache.seq_out = cache.extra_in.new_zeros(M, B, cache.max_len, cache.extra_in.shape[-1])
    known = torch.cat([cache.ids[:, : p + 1], next_token.to(cache.ids)[:, None]], dim=1)  # (B, p+2) tokens 0..p+1
    drafts: list[torch.Tensor] = []
    prev = cache.extra_in  # depth 0: head 0's outputs
    for k in range(1, min(M, n_draft) + 1):
        # 1) module k over [L, p]: its token at q is q+k, ground truth up to p+1 then the drafts
        L = cache.seq_length[k - 1]
        if L > p:  # nothing fed since the last draft: module 1's output at p is ground truth, kept
            drafts.append(pick(model.unembed(cache.seq_out[k - 1, :, p : p + 1], k)[:, 0]))
            prev = cache.seq_out[k - 1]
            continue
        toks = torch.cat([known] + [d[:, None] for d in drafts], dim=1)[:, L + k : p + k + 1]  # (B, p+1-L)
        ctx = _attn_context(cache.real, L, p + 1 - L, model.config, prev.dtype, prev.device, padded=cache.padded)
        module = model.extra_heads[k - 1]
        x = module.fuse(chain_input(model, k, prev[:, L : p + 1]), module_embeddings(model, toks, ctx))
        out = module.block(x, ctx, cache.kv(len(model.layers) + k - 1))  # (B, p+1-L, dim)
        cache.seq_out[k - 1, :, L : p + 1] = out
        cache.seq_length[k - 1] = max(0, p + 2 - k)  # inputs at q <= p+1-k were all ground truth
        drafts.append(pick(model.unembed(out[:, -1:], k)[:, 0]))  # (B,) token p+1+k
        prev = cache.seq_out[k - 1]
    if n_draft > M:
        # 2) reuse the last module at positions p+1, p+2, ...: its own output stands in for the
        # previous depth's, its own draft is the token (vLLM's one-layer MTP drafting)
        real = cache.real.clone()
        real[:, p + 1 : p + 1 + n_draft - M] = True
        module, h_last = model.extra_heads[M - 1], cache.seq_out[M - 1, :, p : p + 1]
        for j in range(M + 1, n_draft + 1):
            q = p + j - M
            ctx = _attn_context(real, q, 1, model.config, h_last.dtype, h_last.device, padded=cache.padded)
            x = module.fuse(chain_input(model, M + 1, h_last), module_embeddings(model, drafts[-1][:, None], ctx))
            h_last = module.block(x, ctx, cache.kv(len(model.layers) + M - 1))
            drafts.append(pick(model.unembed(h_last, M)[:, 0]))
    if not drafts:
        return next_token.new_zeros(B, 0, dtype=torch.long)
    return torch.stack(drafts, dim=1)  # (B, n_draft)
