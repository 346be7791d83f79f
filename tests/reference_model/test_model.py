"""The reference MTP transformer: config, layout, cache, padding, losses and the sequential backward."""

import weakref

import pytest
import torch
import torch.nn.functional as F

from mtp_bench.api.errors import ConfigError
from mtp_bench.reference_model.model import (
    HEAD_TYPES,
    ModelConfig,
    Transformer,
    apply_rotary,
    mtp_forward_backward,
    mtp_loss,
    rotary_cos_sin,
)


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=61, dim=32, n_layers=4, n_heads=4, n_kv_heads=2, multiple_of=16, max_seq_len=64, n_future=3)
    base.update(kw)
    return ModelConfig(**base)


def model64(**kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(tiny(**kw)).double().eval()


# --- config -----------------------------------------------------------------


def test_unknown_config_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="n_futures.*valid keys:.*n_future"):
        ModelConfig.from_dict({"n_futures": 2})


def test_bad_head_type_lists_valid_types():
    with pytest.raises(ConfigError, match="parallel, linear, causal, anticausal"):
        ModelConfig(head_type="mixed")


@pytest.mark.parametrize("kw", [dict(n_layers=2, n_future=3), dict(n_heads=4, n_kv_heads=3), dict(dim=30, n_heads=4),
                                dict(vocab_size=0)])
def test_invalid_config_values_raise(kw):
    with pytest.raises(ConfigError):
        tiny(**kw)


def test_config_round_trips_through_dict():
    cfg = tiny(head_type="causal", ffn_dim_multiplier=1.3)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_explicit_ffn_hidden_and_qkv_bias():
    cfg = tiny(ffn_hidden=40, qkv_bias=True)
    assert cfg.ffn_hidden_dim == 40
    m = Transformer(cfg)
    assert m.layers[0].feed_forward.w1.weight.shape == (40, 32)
    assert m.layers[0].attention.wq.bias.shape == (32,) and m.layers[0].attention.wo.bias is None
    assert m.layers[0].feed_forward.w1.bias is None and not m.layers[0].attention.wk.bias.any()  # zero init
    with pytest.raises(ConfigError, match="ffn_hidden"):
        tiny(ffn_hidden=0)


def test_llama_ffn_hidden_rule():
    # Llama-2 7B: dim 4096, multiple_of 256 -> 11008; Llama-3 8B: multiplier 1.3, multiple_of 1024 -> 14336
    assert ModelConfig(dim=4096, n_heads=32).ffn_hidden_dim == 11008
    assert ModelConfig(dim=4096, n_heads=32, multiple_of=1024, ffn_dim_multiplier=1.3).ffn_hidden_dim == 14336


# --- layout -----------------------------------------------------------------


@pytest.mark.parametrize("n_future", [1, 2, 4])
def test_compute_matching_keeps_total_depth(n_future):
    m = Transformer(tiny(n_layers=4, n_future=n_future))
    assert len(m.layers) + len(m.extra_heads) == 4
    assert len(m.extra_heads) == n_future - 1


def test_meta_parameter_names_and_count():
    cfg = tiny(n_layers=3, n_future=2, n_kv_heads=2)
    m = Transformer(cfg)
    names = set(dict(m.named_parameters()))
    assert {"tok_embeddings.weight", "norm.weight", "output.weight", "layers.1.attention.wq.weight",
            "layers.1.feed_forward.w3.weight", "layers.1.ffn_norm.weight", "extra_heads.0.attention_norm.weight"} <= names
    d, hd, kv, ff, V = 32, 8, 2, cfg.ffn_hidden_dim, 61
    block = d * d + 2 * d * kv * hd + d * d + 3 * d * ff + 2 * d
    assert m.num_params() == 2 * V * d + d + 3 * block


def test_linear_heads_are_single_linears():
    m = Transformer(tiny(head_type="linear"))
    assert [tuple(h.weight.shape) for h in m.extra_heads] == [(32, 32), (32, 32)]
    assert len(m.layers) == 4 - 2


def test_rotary_matches_meta_complex_form():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 8, dtype=torch.float64)
    pos = torch.arange(5)[None].expand(2, 5)
    cos, sin = rotary_cos_sin(pos, 8, 10000.0, torch.float64)
    freqs = 1.0 / (10000.0 ** (torch.arange(0, 8, 2, dtype=torch.float64) / 8))
    cis = torch.polar(torch.ones(5, 4, dtype=torch.float64), torch.outer(torch.arange(5, dtype=torch.float64), freqs))
    ref = torch.view_as_real(torch.view_as_complex(x.reshape(2, 5, 3, 4, 2)) * cis[None, :, None]).flatten(3)
    torch.testing.assert_close(apply_rotary(x, cos, sin), ref)


# --- forward, cache, padding ---------------------------------------------------


def test_head_zero_only_unless_asked():
    m = model64()
    x = torch.randint(0, 61, (2, 9))
    with torch.no_grad():
        one, all_ = m(x), m(x, return_all_heads=True)
    assert one.shape == (2, 9, 1, 61) and all_.shape == (2, 9, 3, 61)
    torch.testing.assert_close(one[:, :, 0], all_[:, :, 0])
    assert not torch.allclose(all_[:, :, 0], all_[:, :, 1])


@pytest.mark.slow
@pytest.mark.parametrize("head_type", [t for t in HEAD_TYPES if t != "sequential"])  # sequential: test_draft_*
def test_incremental_decoding_equals_full_forward(head_type):
    m = model64(head_type=head_type)
    x = torch.randint(0, 61, (2, 14))
    with torch.no_grad():
        full = m(x, return_all_heads=True)  # (B, T, n, V)
        # token by token, all heads
        c = m.new_cache(2, 20)
        steps = torch.cat([m(x[:, t : t + 1], cache=c, return_all_heads=True) for t in range(14)], dim=1)
        torch.testing.assert_close(steps, full)
        assert c.length == 14
        # chunks, head 0 only for a while (the extra heads catch up later), then truncate and redo
        c = m.new_cache(2, 20)
        a = m(x[:, :5], cache=c)
        m(x[:, 5:8], cache=c)
        m(torch.randint(0, 61, (2, 3)), cache=c, return_all_heads=True)  # rejected draft
        c.truncate(7)
        b = m(x[:, 7:10], cache=c, return_all_heads=True)
        m(x[:, 10:11], cache=c)
        m(torch.randint(0, 61, (2, 2)), cache=c)
        c.truncate(11)
        d = m(x[:, 11:14], cache=c, return_all_heads=True)
    torch.testing.assert_close(a, full[:, :5, :1])
    torch.testing.assert_close(b, full[:, 7:10])
    torch.testing.assert_close(d, full[:, 11:14])


@pytest.mark.parametrize("head_type", ["parallel", "causal"])
def test_left_padded_batch_equals_rows_alone(head_type):
    m = model64(head_type=head_type)
    rows = [torch.randint(1, 61, (n,)) for n in (9, 6, 4)]
    T = 9
    ids = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, T - len(row) :], mask[r, T - len(row) :] = row, 1
    with torch.no_grad():
        batched = m(ids, attention_mask=mask, return_all_heads=True)
        # padded prefill through the cache, then two decode steps
        c = m.new_cache(3, 12)
        m(ids[:, :5], cache=c, attention_mask=mask[:, :5])
        m(ids[:, 5:], cache=c, attention_mask=mask[:, 5:])
        nxt = torch.randint(1, 61, (3, 2))
        step = m(nxt, cache=c, return_all_heads=True)
        for r, row in enumerate(rows):
            alone = m(torch.cat([row, nxt[r]])[None], return_all_heads=True)[0]
            assert not torch.isnan(batched[r]).any()
            torch.testing.assert_close(batched[r, T - len(row) :], alone[: len(row)])
            torch.testing.assert_close(step[r], alone[len(row) :])


def test_cache_overflow_and_bad_truncate_raise():
    m = model64()
    c = m.new_cache(1, 4)
    with torch.no_grad():
        m(torch.zeros(1, 3, dtype=torch.long), cache=c)
        with pytest.raises(ConfigError, match="overflow"):
            m(torch.zeros(1, 2, dtype=torch.long), cache=c)
    with pytest.raises(ConfigError):
        c.truncate(5)
    with pytest.raises(ConfigError, match="max_seq_len"):
        m.new_cache(1, 65)


# --- losses -------------------------------------------------------------------


def test_mtp_loss_is_weighted_sum_of_shifted_cross_entropies():
    m = model64()
    x = torch.randint(0, 61, (2, 10))
    w = [1.0, 0.5, 0.25]
    with torch.no_grad():
        loss, per_head = mtp_loss(m, x, w)
        logits = m(x, return_all_heads=True)
    ref = [F.cross_entropy(logits[:, : 10 - 1 - i, i].reshape(-1, 61), x[:, 1 + i :].reshape(-1)) for i in range(3)]
    torch.testing.assert_close(per_head, torch.stack(ref))
    torch.testing.assert_close(loss, sum(wi * r for wi, r in zip(w, ref)))


@pytest.mark.parametrize("head_type", HEAD_TYPES)
@pytest.mark.parametrize("mode", ["sequential", "naive"])
def test_forward_backward_gradients_equal_autograd(head_type, mode):
    m = model64(head_type=head_type, n_future=3)
    x = torch.randint(0, 61, (2, 11))
    w = [1.0, 0.7, 0.3]
    loss, per_head = mtp_loss(m, x, w)
    ref = dict(zip([n for n, _ in m.named_parameters()], torch.autograd.grad(loss, list(m.parameters()))))
    m.zero_grad(set_to_none=True)
    loss2, per_head2 = mtp_forward_backward(m, x, w, mode=mode)
    torch.testing.assert_close(loss2, loss.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(per_head2, per_head, rtol=0, atol=1e-12)
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-10, atol=1e-12, msg=n)
    # a second call accumulates like loss.backward()
    mtp_forward_backward(m, x, w, mode=mode)
    torch.testing.assert_close(m.output.weight.grad, 2 * ref["output.weight"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("head_type", ["parallel", "causal", "anticausal"])
@pytest.mark.parametrize("mode", ["sequential", "naive"])
def test_sequential_mode_keeps_one_head_of_logits_alive(head_type, mode):
    m = Transformer(tiny(head_type=head_type, n_future=3))
    x = torch.randint(0, 61, (2, 10))
    saved, alive = [], []  # weakrefs to vocabulary-sized tensors autograd keeps; how many live at each unembedding

    def pack(t):
        if t.dim() >= 2 and t.shape[-1] == 61 and t.data_ptr() != m.output.weight.data_ptr():
            saved.append(weakref.ref(t))
        return t

    def hook(_mod, _inp, out):
        assert out.dim() == 3 and out.shape[-1] == 61  # (B, T', V): never (B, T, n, V)
        alive.append(sum(r() is not None for r in saved))

    handle = m.output.register_forward_hook(hook)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            mtp_forward_backward(m, x, mode=mode)
    finally:
        handle.remove()
    if mode == "sequential":  # earlier heads' logits were freed before the next head's were built
        assert alive == [0, 0, 0]
    else:  # the naive graph keeps every head's logits: the memory the sequential mode saves
        assert alive[0] == 0 and alive[1] > 0 and alive[2] > alive[1]


def test_bad_head_weights_and_short_input_raise():
    m = model64()
    with pytest.raises(ConfigError, match="head_weights"):
        mtp_loss(m, torch.zeros(1, 8, dtype=torch.long), [1.0, 1.0])
    with pytest.raises(ConfigError, match="T >= n_future"):
        mtp_forward_backward(m, torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ConfigError, match="valid modes"):
        mtp_forward_backward(m, torch.zeros(1, 8, dtype=torch.long), mode="fast")


@pytest.mark.parametrize("n_kv_heads,qkv_bias", [(None, False), (2, False), (2, True)])
def test_fused_extra_heads_equal_one_at_a_time(n_kv_heads, qkv_bias):
    """Inference runs the parallel extra heads as one batched block; it must be the same math."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, dim=32, n_layers=5, n_heads=4, n_kv_heads=n_kv_heads, max_seq_len=64, n_future=4,
                      qkv_bias=qkv_bias)
    m = Transformer(cfg).eval()
    if qkv_bias:  # biases start at zero: make them count
        for name, p in m.named_parameters():
            if name.endswith(".bias"):
                p.data.normal_(0, 0.5)
    x = torch.randint(0, 97, (3, 20))
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[0, :6] = 0  # a left-padded row
    outs = {}
    for fuse in (False, True):
        m.fuse_extra_heads = fuse
        with torch.no_grad():
            full = m(x, return_all_heads=True, attention_mask=mask)
            cache = m.new_cache(3, 64)
            m(x[:, :9], cache=cache, attention_mask=mask[:, :9])  # head 0 only: extra heads catch up later
            m(x[:, 9:13], cache=cache, return_all_heads=True, attention_mask=mask[:, 9:13])
            cache.truncate(11)  # roll back two positions, as speculative decoding does
            inc = m(x[:, 11:], cache=cache, return_all_heads=True, attention_mask=mask[:, 11:])
        outs[fuse] = (full, inc)
    m.fuse_extra_heads = True
    torch.testing.assert_close(outs[True][0], outs[False][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[True][1], outs[False][1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[True][1], outs[False][0][:, 11:], atol=1e-5, rtol=1e-5)


# --- sequential MTP modules (DeepSeek-V3 / MiMo) ---------------------------------------


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _sequential_reference(m: Transformer, x: torch.Tensor) -> torch.Tensor:
    """Module k computed on the length-(T-k) sequence of the DeepSeek-V3 report (no padding at the
    end), from the parameters: (B, T, n, V) with NaN where the report defines nothing."""
    from mtp_bench.reference_model.model import _attn_context

    B, T = x.shape
    h, ctx = m.trunk(x)
    hk = m.head(0, h, ctx)  # depth 0: the main model's last block output, before its norm
    out = torch.full((B, T, m.n_future, m.config.vocab_size), float("nan"), dtype=hk.dtype)
    out[:, :, 0] = m.output(_rms(hk, m.norm.weight))
    for k in range(1, m.n_future):
        mod = m.extra_heads[k - 1]
        n = T - k  # positions 0..T-k-1 have token t+k
        e = m.tok_embeddings(x[:, k:])  # (B, T-k, dim)
        xin = torch.cat([_rms(hk[:, :n], mod.hnorm.weight), _rms(e, mod.enorm.weight)], dim=-1) @ mod.proj.weight.T
        hk = mod.block(xin, _attn_context(None, 0, n, m.config, xin.dtype, xin.device))
        out[:, :n, k] = m.output(_rms(hk, mod.norm.weight))
        if m.config.mtp_chain_normed:  # MiMo: the next module reads this one's normed output
            hk = _rms(hk, mod.norm.weight)
    return out


@pytest.mark.parametrize("chain_normed", [False, True])
def test_sequential_modules_equal_the_report_formula_and_nan_past_the_input(chain_normed):
    m = model64(head_type="sequential", n_future=4, n_layers=5, mtp_chain_normed=chain_normed)
    for mod in m.extra_heads:  # non-trivial norms, so that normed and raw chains differ
        torch.nn.init.uniform_(mod.norm.weight, 0.5, 1.5)
    x = torch.randint(0, 61, (2, 12))
    with torch.no_grad():
        got, ref = m(x, return_all_heads=True), _sequential_reference(m, x)
    assert got.shape == (2, 12, 4, 61)
    for k in range(4):  # head k at position t reads token t+k: defined for t <= T-1-k
        assert not torch.isnan(got[:, : 12 - k, k]).any() and torch.isnan(got[:, 12 - k :, k]).all()
    torch.testing.assert_close(got, ref, equal_nan=True)


def test_sequential_head_k_at_t_reads_tokens_up_to_t_plus_k():
    m = model64(head_type="sequential", n_future=3)
    x = torch.randint(0, 61, (1, 10))
    t = 3
    with torch.no_grad():
        base = m(x, return_all_heads=True)[0, t]  # (n, V)
        for j in range(10):
            y = x.clone()
            y[0, j] = (y[0, j] + 1) % 61
            changed = (m(y, return_all_heads=True)[0, t] - base).abs().amax(-1) > 1e-9  # (n,)
            assert changed.tolist() == [j <= t + k for k in range(3)], j


def test_sequential_concat_order_is_the_projection_column_order():
    a = model64(head_type="sequential", mtp_concat="hidden_first")
    b = Transformer(tiny(head_type="sequential", mtp_concat="embedding_first")).double().eval()
    sd = a.state_dict()
    for k in [k for k in sd if k.endswith(".proj.weight")]:
        w = sd[k]
        sd[k] = torch.cat([w[:, 32:], w[:, :32]], dim=1)  # [embedding; hidden] columns
    b.load_state_dict(sd)
    x = torch.randint(0, 61, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(b(x, return_all_heads=True), a(x, return_all_heads=True), equal_nan=True)


def test_sequential_zero_first_embedding_drops_the_position0_tokens():
    on = model64(head_type="sequential", mtp_zero_first_embedding=True)
    off = model64(head_type="sequential")
    x = torch.randint(0, 61, (1, 8))
    y = x.clone()
    y[0, 1:3] = (y[0, 1:3] + 1) % 61  # the tokens modules 1 and 2 read at position 0
    with torch.no_grad():
        # position 0 of heads 1, 2 then depends on token 0 only
        torch.testing.assert_close(on(x, return_all_heads=True)[0, 0], on(y, return_all_heads=True)[0, 0])
        assert not torch.allclose(off(x, return_all_heads=True)[0, 0, 1:], off(y, return_all_heads=True)[0, 0, 1:])


@pytest.mark.slow
@pytest.mark.parametrize("zero_first,chain_normed", [(False, False), (True, True)])
def test_draft_equals_teacher_forced_model_when_drafts_are_right(zero_first, chain_normed):
    """Chained drafting in a cache (left padding, accepted prefixes, roll-backs) gives module k's
    teacher-forced logits on the sequence completed by the drafts themselves."""
    torch.manual_seed(1)
    m = model64(head_type="sequential", n_future=4, n_layers=5, mtp_zero_first_embedding=zero_first,
                mtp_chain_normed=chain_normed)
    for mod in m.extra_heads:
        torch.nn.init.uniform_(mod.norm.weight, 0.5, 1.5)
    M, pad = 3, 2
    seqs = [torch.randint(1, 61, (7,)).tolist(), torch.randint(1, 61, (5,)).tolist()]  # row 1 left-padded by 2
    ids = torch.tensor([seqs[0], [0] * pad + seqs[1]])
    mask = torch.tensor([[1] * 7, [0] * pad + [1] * 5])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        c = m.new_cache(2, 40)
        m(ids, cache=c, attention_mask=mask)
        for step in range(5):
            nxt = torch.randint(1, 61, (2,), generator=gen)
            d = m.draft(c, nxt, M)  # (B, M)
            p = c.length - 1
            for r in range(2):
                full = torch.tensor(seqs[r] + [int(nxt[r])] + d[r].tolist())[None]
                ref = m(full, return_all_heads=True)[0, len(seqs[r]) - 1]  # (n, V) at position p of row r
                for k in range(1, M + 1):
                    got = m.unembed(c.seq_out[k - 1, r, p], k)
                    torch.testing.assert_close(got, ref[k], msg=f"step {step} row {r} module {k}")
                    assert int(d[r, k - 1]) == int(ref[k].argmax())
            # verify a block [nxt, d...], keep a prefix of it (as speculative decoding does), roll back
            base = c.length
            m(torch.cat([nxt[:, None], d], dim=1), cache=c)
            n = int(torch.randint(0, M + 1, (), generator=gen))
            c.truncate(base + n + 1)
            for r in range(2):
                seqs[r] += [int(nxt[r])] + d[r, :n].tolist()


def test_draft_reusing_the_last_module_continues_its_own_stream():
    from mtp_bench.reference_model.model import _attn_context

    m = model64(head_type="sequential", n_future=2, n_layers=3)
    x = torch.randint(1, 61, (1, 6))
    nxt = torch.tensor([7])
    with torch.no_grad():
        c = m.new_cache(1, 20)
        m(x, cache=c)
        d = m.draft(c, nxt, 3, reuse_last=True)[0].tolist()
        assert m.draft(c, nxt, 1)[0].tolist() == d[:1]
        with pytest.raises(ConfigError, match="reuse_last"):
            m.draft(c, nxt, 2)
        # reference, no cache: module 1 over positions 0..5 on (h0, token t+1), then its own output
        # and draft at positions 6, 7 (the vLLM recurrence)
        mod = m.extra_heads[0]
        h, ctx = m.trunk(x)
        hid = list(m.head(0, h, ctx)[0])
        toks = x[0, 1:].tolist() + [7]
        for j in range(3):
            T = len(toks)
            z = mod.block(mod.fuse(torch.stack(hid)[None], m.tok_embeddings(torch.tensor(toks))[None]),
                          _attn_context(None, 0, T, m.config, torch.float64, x.device))
            tok = int(m.unembed(z[:, -1], 1).argmax())
            assert tok == d[j], j
            hid.append(z[0, -1])
            toks.append(tok)
