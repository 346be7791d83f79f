"""Self-speculative decoding: exactness against plain decoding, tau on oracle/adversarial drafts,
cache roll-back, batching, EOS, and the sampling acceptance rule's distribution."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mtp_bench.api.errors import ConfigError
from mtp_bench.generation import speculative
from mtp_bench.generation.speculative import acceptance_stats, plain_decode, speculative_decode

MOD = 2**31 - 1


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def roll(h: int, tok: int) -> int:
    """Rolling hash of a prefix extended by one token: the fake model's whole 'state'."""
    return (h * 1_000_003 + tok + 1) % MOD


class HashCache:
    """Stores, per row and position, the rolling hash of the real tokens up to there."""

    def __init__(self, batch_size: int):
        self.h: list[list[int]] = [[] for _ in range(batch_size)]

    @property
    def length(self) -> int:
        return len(self.h[0])

    def truncate(self, length: int) -> None:
        self.h = [row[:length] for row in self.h]


class HashMTP:
    """A deterministic MTP model whose head-1 logits are a fixed random row picked by a hash of the
    whole prefix, so any cache mistake (a rejected draft left in, a wrong roll-back) changes the output.

    Head i (i >= 1) predicts head 1's greedy rollout i steps ahead ("oracle": always right),
    a token that is always wrong ("adversarial"), or right for about two thirds of the prefixes ("mixed").
    """

    def __init__(self, vocab: int = 16, n_future: int = 4, mode: str = "mixed", scale: float = 3.0, seed: int = 0,
                 soft_heads: bool = False):
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(997, vocab, generator=g) * scale  # (M, V) head-1 logits by hash bucket
        # soft_heads: the extra heads' logits are a second random table (a real distribution, unlike p)
        self.draft_table = torch.randn(997, vocab, generator=g) * scale if soft_heads else None
        self.greedy = self.table.argmax(-1).tolist()
        self.n_future, self.vocab, self.mode = n_future, vocab, mode
        self.device, self.dtype, self.max_seq_len = torch.device("cpu"), torch.float32, 4096
        self.calls = 0

    def new_cache(self, batch_size: int, max_len: int) -> HashCache:
        return HashCache(batch_size)

    def head_target(self, h: int, i: int) -> int:
        t = self.greedy[h % 997]
        for _ in range(i):
            h = roll(h, t)
            t = self.greedy[h % 997]
        right = self.mode == "oracle" or (self.mode == "mixed" and (h // 7 + i) % 3 != 0)
        return t if right else (t + 1) % self.vocab

    def __call__(self, input_ids, cache=None, return_all_heads=False, attention_mask=None):
        self.calls += 1
        B, T = input_ids.shape
        n = self.n_future if return_all_heads else 1
        out = torch.zeros(B, T, n, self.vocab)
        for r in range(B):
            h = cache.h[r][-1] if cache.h[r] else 0
            for t in range(T):
                if attention_mask is None or attention_mask[r, t]:
                    h = roll(h, int(input_ids[r, t]))
                cache.h[r].append(h)
                out[r, t, 0] = self.table[h % 997]
                for i in range(1, n):
                    if self.draft_table is not None:
                        out[r, t, i] = self.draft_table[(h + i) % 997]
                    else:
                        out[r, t, i, self.head_target(h, i)] = 10.0
        return out


def naive_greedy(model: HashMTP, prompt: list[int], max_new: int, eos: int | None = None) -> list[int]:
    """Reference greedy decode computed from the hash chain directly (no cache, no model call)."""
    h = 0
    for t in prompt:
        h = roll(h, t)
    out = []
    while len(out) < max_new:
        t = model.greedy[h % 997]
        out.append(t)
        if t == eos:
            break
        h = roll(h, t)
    return out


PROMPTS = [[3, 1, 4, 1, 5], [9, 2, 6], [5, 3, 5, 8, 9, 7, 9, 3, 2], [7]]


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_oracle_drafts_give_tau_exactly_k(k):
    model = HashMTP(mode="oracle")
    steps = 5
    res = speculative_decode(model, [PROMPTS[0]], k=k, max_new_tokens=1 + k * steps)[0]
    assert res.output_ids == naive_greedy(model, PROMPTS[0], 1 + k * steps)
    assert res.accepted_lengths == [1] + [k] * steps
    assert acceptance_stats([res], k).tau == k
    assert model.calls == 1 + steps


def test_adversarial_drafts_give_tau_one_and_same_output():
    model = HashMTP(mode="adversarial")
    res = speculative_decode(model, [PROMPTS[0]], k=4, max_new_tokens=20)[0]
    assert res.output_ids == naive_greedy(model, PROMPTS[0], 20)
    stats = acceptance_stats([res], 4)
    assert stats.tau == 1.0 and set(res.draft_accepts) == {0}
    assert stats.alpha_cond[0] == 0.0 and stats.alpha_uncond == [0.0, 0.0, 0.0]


def test_mixed_drafts_are_lossless_and_roll_back_the_cache():
    model = HashMTP(mode="mixed")
    for prompt in PROMPTS:
        ref = naive_greedy(model, prompt, 40)
        assert plain_decode(model, [prompt], max_new_tokens=40)[0].output_ids == ref
        res = speculative_decode(model, [prompt], k=4, max_new_tokens=40)[0]
        assert res.output_ids == ref
        assert sum(res.accepted_lengths) == len(res.output_ids) == 40
        assert set(res.draft_accepts) > {0}  # partial acceptances happened, so roll-backs were exercised
    stats = acceptance_stats([speculative_decode(model, [p], k=4, max_new_tokens=40)[0] for p in PROMPTS], 4)
    assert 1.0 < stats.tau < 4.0
    # conditional acceptance is never below the unconditional one, which shrinks with depth
    assert all(c >= u for c, u in zip(stats.alpha_cond, stats.alpha_uncond))
    assert stats.alpha_uncond == sorted(stats.alpha_uncond, reverse=True)


def test_batch_equals_single_rows_with_left_padding():
    model = HashMTP(mode="mixed")
    batch = speculative_decode(model, PROMPTS, k=3, max_new_tokens=25)
    for prompt, res in zip(PROMPTS, batch):
        assert res.output_ids == naive_greedy(model, prompt, 25)
    plain = plain_decode(model, PROMPTS, max_new_tokens=25)
    assert [r.output_ids for r in plain] == [r.output_ids for r in batch]


def test_eos_trims_output_and_keeps_eos():
    model = HashMTP(mode="mixed")
    ref = naive_greedy(model, PROMPTS[2], 60)
    eos = ref[17]  # a token the greedy output really produces
    want = ref[: ref.index(eos) + 1]
    res = speculative_decode(model, [PROMPTS[2]], k=4, max_new_tokens=60, eos_id=eos)[0]
    assert res.output_ids == want and res.finish_reason == "eos"
    assert sum(res.accepted_lengths) == len(want)
    assert plain_decode(model, [PROMPTS[2]], max_new_tokens=60, eos_id=eos)[0].output_ids == want


def test_bad_k_and_overlong_prompt_are_config_errors():
    model = HashMTP(n_future=2)
    with pytest.raises(ConfigError, match="1..2"):
        speculative_decode(model, [[1, 2]], k=3)
    model.max_seq_len = 10
    with pytest.raises(ConfigError, match="max_seq_len"):
        speculative_decode(model, [[1] * 8], k=2, max_new_tokens=4)
    with pytest.raises(ConfigError, match="Generator"):
        speculative_decode(model, [[1]], k=2, temperature=1.0)


# ----------------------------------------------------------------------------- sampling


def exact_joint(model: HashMTP, prompt: list[int], n_tok: int, temperature: float, top_p: float = 1.0) -> dict[tuple, float]:
    """P(first n_tok tokens) under plain sampling from head 1, by enumerating every sequence."""
    h0 = 0
    for t in prompt:
        h0 = roll(h0, t)
    probs = {}
    for seq in itertools.product(range(model.vocab), repeat=n_tok):
        p, h = 1.0, h0
        for t in seq:
            p *= float(speculative.warp(model.table[h % 997], temperature, top_p)[t])
            h = roll(h, t)
        probs[seq] = p
    return probs


def chi_square(counts: dict[tuple, int], probs: dict[tuple, float], n: int) -> tuple[float, int]:
    """Pearson chi-square over cells with expected count >= 5 (the rest pooled into one cell)."""
    stat, dof, pool_o, pool_e = 0.0, -1, 0, 0.0
    for cell, p in probs.items():
        e, o = p * n, counts.get(cell, 0)
        if e >= 5:
            stat, dof = stat + (o - e) ** 2 / e, dof + 1
        else:
            pool_o, pool_e = pool_o + o, pool_e + e
    if pool_e > 0:
        stat, dof = stat + (pool_o - pool_e) ** 2 / pool_e, dof + 1
    return stat, dof


def chi2_critical(dof: int, z: float = 3.09) -> float:
    """Wilson-Hilferty upper quantile of chi-square (z = 3.09: p = 0.001)."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def sample_counts(model, prompt, n_runs, n_tok, temperature, batch, **kw):
    counts: dict[tuple, int] = {}
    for start in range(0, n_runs, batch):
        gens = [torch.Generator().manual_seed(1000 + s) for s in range(start, start + batch)]
        for res in speculative_decode(model, [prompt] * batch, k=3, max_new_tokens=n_tok,
                                      temperature=temperature, generators=gens, **kw):
            counts[tuple(res.output_ids)] = counts.get(tuple(res.output_ids), 0) + 1
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 300])
def test_sampling_matches_head1_distribution(batch):
    # vocab 3, 3 tokens: 27 cells; drafts are right for ~2/3 of prefixes, so accepts and rejects both occur
    model = HashMTP(vocab=3, n_future=3, mode="mixed", scale=1.0, seed=3)
    prompt, n_tok, temp, n_runs = [1, 2, 3], 3, 0.9, 600 if batch == 1 else 1800
    probs = exact_joint(model, prompt, n_tok, temp)
    counts = sample_counts(model, prompt, n_runs, n_tok, temp, batch)
    stat, dof = chi_square(counts, probs, n_runs)
    assert stat < chi2_critical(dof), (stat, dof)


@pytest.mark.slow
def test_sampling_test_detects_a_biased_acceptance_rule(monkeypatch):
    """The distribution test has power: always accepting drafts (a common bug) is caught."""
    model = HashMTP(vocab=3, n_future=3, mode="mixed", scale=1.0, seed=3)
    prompt, n_tok, temp, n_runs = [1, 2, 3], 3, 0.9, 1800

    def accept_all(logits0, drafts, temperature, generator, q=None, top_p=1.0):
        probs = torch.softmax(logits0.float() / temperature, -1)
        return len(drafts), int(torch.multinomial(probs[len(drafts)], 1, generator=generator))

    monkeypatch.setattr(speculative, "_verify_sampled", accept_all)
    counts = sample_counts(model, prompt, n_runs, n_tok, temp, batch=300)
    stat, dof = chi_square(counts, exact_joint(model, prompt, n_tok, temp), n_runs)
    assert stat > chi2_critical(dof)


@pytest.mark.parametrize("batch, top_p", [(1, 1.0), (300, 1.0), (300, 0.75)])
def test_sampled_drafts_match_head1_distribution(batch, top_p):
    """draft="sample": drafts drawn from the heads' own (soft, wrong) distributions, accepted with
    min(1, p/q), residual max(0, p - q): the tokens are distributed as plain sampling from head 1
    (Pearson chi-square over the 27 sequences of 3 tokens, p = 0.001)."""
    model = HashMTP(vocab=3, n_future=3, scale=1.5, seed=5, soft_heads=True)
    prompt, n_tok, temp, n_runs = [1, 2, 3], 3, 0.9, 600 if batch == 1 else 1800
    counts = sample_counts(model, prompt, n_runs, n_tok, temp, batch, draft="sample", top_p=top_p)
    stat, dof = chi_square(counts, exact_joint(model, prompt, n_tok, temp, top_p), n_runs)
    assert stat < chi2_critical(dof), (stat, dof)


def test_sampled_drafts_test_detects_accepting_every_draft(monkeypatch):
    model = HashMTP(vocab=3, n_future=3, scale=1.5, seed=5, soft_heads=True)
    prompt, n_tok, temp, n_runs = [1, 2, 3], 3, 0.9, 1800

    def accept_all(logits0, drafts, temperature, generator, q=None, top_p=1.0):
        probs = speculative.warp(logits0, temperature, top_p)
        return len(drafts), int(torch.multinomial(probs[len(drafts)], 1, generator=generator))

    monkeypatch.setattr(speculative, "_verify_sampled", accept_all)
    counts = sample_counts(model, prompt, n_runs, n_tok, temp, 300, draft="sample")
    stat, dof = chi_square(counts, exact_joint(model, prompt, n_tok, temp), n_runs)
    assert stat > chi2_critical(dof)


def test_bad_sampling_settings_are_config_errors():
    model = HashMTP(vocab=3, n_future=3)
    gens = [torch.Generator()]
    for kw, match in (({"temperature": -1.0}, "temperature"), ({"temperature": 1.0, "top_p": 0.0}, "top_p"),
                      ({"temperature": 1.0, "top_p": 1.5}, "top_p"), ({"temperature": 1.0, "draft": "beam"}, "draft"),
                      ({"temperature": 0.0, "draft": "sample"}, "temperature > 0")):
        with pytest.raises(ConfigError, match=match):
            speculative_decode(model, [[1]], k=2, generators=gens, **kw)
    with pytest.raises(ConfigError, match="top_p"):
        plain_decode(model, [[1]], temperature=1.0, generators=gens, top_p=2.0)


def test_sequential_modules_sample_their_chain_exactly():
    """A tiny reference model with sequential MTP modules, draft="sample": each module samples its
    draft and feeds it to the next; the tokens are still distributed as plain sampling (exact
    distribution by enumerating the model's own head-1 probabilities over 5^3 sequences)."""
    from mtp_bench.reference_model.model import ModelConfig, Transformer

    torch.manual_seed(3)
    cfg = ModelConfig(vocab_size=5, dim=16, n_layers=4, n_heads=2, multiple_of=16, max_seq_len=32, n_future=3,
                      head_type="sequential", init_std=0.6)
    m = Transformer(cfg).eval()
    prompt, n_tok, temp = [1, 2], 3, 1.0
    with torch.no_grad():
        def p1(prefix):
            return speculative.warp(m(torch.tensor([prefix]))[0, -1, 0], temp)
        probs = {}
        for seq in itertools.product(range(5), repeat=n_tok):
            p, pre = 1.0, list(prompt)
            for t in seq:
                p *= float(p1(pre)[t])
                pre.append(t)
            probs[seq] = p

    class Wrap:  # the model as speculative_decode sees an adapted one
        module, n_future, device, max_seq_len = m, 3, torch.device("cpu"), 32

        def new_cache(self, b, n):
            return m.new_cache(b, n)

        def __call__(self, *a, **kw):
            return m(*a, **kw)

        def draft(self, *a, **kw):
            return m.draft(*a, **kw)

    counts, n_runs = {}, 1500
    for start in range(0, n_runs, 300):
        gens = [torch.Generator().manual_seed(5000 + s) for s in range(start, start + 300)]
        for res in speculative_decode(Wrap(), [prompt] * 300, k=3, max_new_tokens=n_tok, temperature=temp,
                                      generators=gens, draft="sample"):
            counts[tuple(res.output_ids)] = counts.get(tuple(res.output_ids), 0) + 1
    stat, dof = chi_square(counts, probs, n_runs)
    assert stat < chi2_critical(dof), (stat, dof)


# ----------------------------------------------------------------------------- the reference model


def echo_model(head_type: str, seed: int = 0):
    """A tiny random reference model whose extra heads copy head 1 (a block copy, or the identity
    for linear heads): they draft "the next token again", right exactly where greedy output repeats,
    so acceptances are partial and the extra heads' caches are rolled back mid-block."""
    from mtp_bench.reference_model.model import ModelConfig, Transformer

    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=64, dim=32, n_layers=5, n_heads=2, multiple_of=16, max_seq_len=128,
                      n_future=4, head_type=head_type)
    m = Transformer(cfg).eval()
    with torch.no_grad():
        for h in m.extra_heads:
            if isinstance(h, torch.nn.Linear):
                h.weight.copy_(torch.eye(cfg.dim))
            else:
                h.load_state_dict(m.layers[-1].state_dict())
    m.max_seq_len = cfg.max_seq_len  # the Model protocol's attribute
    return m


def simulate_accepts(module, prompt: list[int], out: list[int], k: int) -> list[int]:
    """Drafts accepted per step, recomputed without any cache. A block starts at token seq[pos];
    its drafts come from the heads at pos-1, where seq[pos] itself was predicted (head i+1 -> seq[pos+i])."""
    seq, pos, accepts = prompt + out, len(prompt), []
    with torch.no_grad():
        while pos < len(seq) - 1:
            heads = module(torch.tensor([seq[:pos]]), return_all_heads=True)[0, -1]  # (n_future, V)
            drafts = heads[1:k].argmax(-1).tolist()
            a = 0
            while a < k - 1 and pos + 1 + a < len(seq) and drafts[a] == seq[pos + 1 + a]:
                a += 1
            accepts.append(a)
            pos += a + 1
    return accepts


@pytest.mark.slow
@pytest.mark.parametrize("head_type", ["parallel", "linear", "causal", "anticausal"])
def test_reference_model_is_lossless_with_cache_rollback(head_type):
    model = echo_model(head_type)
    prompts = [[1, 2, 3, 4, 5], [7, 8, 9]]
    plain = plain_decode(model, prompts, max_new_tokens=24)
    for k in (2, 4):
        spec = [speculative_decode(model, [p], k=k, max_new_tokens=24)[0] for p in prompts]
        for p, s, r in zip(prompts, spec, plain):
            assert s.output_ids == r.output_ids
            # every step's drafts are what the extra heads say at that position without a cache
            assert s.draft_accepts[:-1] == simulate_accepts(model, p, s.output_ids, k)[: len(s.draft_accepts) - 1]
    batch = speculative_decode(model, prompts, k=4, max_new_tokens=24)
    assert [b.output_ids for b in batch] == [r.output_ids for r in plain]


def test_reference_model_rolls_back_partial_blocks():
    """The echo drafters do get partially accepted somewhere, so the test above covers roll-back."""
    accepts = [a for ht in ("linear", "anticausal") for p in ([1, 2, 3, 4, 5], [7, 8, 9])
               for a in speculative_decode(echo_model(ht), [p], k=4, max_new_tokens=24)[0].draft_accepts]
    assert any(0 < a < 3 for a in accepts)


# ----------------------------------------------------------------------------- sequential MTP modules


def sequential_echo_model(seed: int = 0):
    """A tiny random reference model with sequential MTP modules whose block is head 1's and whose
    projection passes the normalised hidden state through: they lean to "the next token again"."""
    from mtp_bench.reference_model.model import ModelConfig, Transformer

    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=64, dim=32, n_layers=5, n_heads=2, multiple_of=16, max_seq_len=128,
                      n_future=3, head_type="sequential")
    m = Transformer(cfg).eval()
    with torch.no_grad():
        for mod in m.extra_heads:
            mod.block.load_state_dict(m.layers[-1].state_dict())
            mod.proj.weight.zero_()
            mod.proj.weight[:, : cfg.dim].copy_(torch.eye(cfg.dim))
            mod.proj.weight[:, cfg.dim :].normal_(0, 0.02)  # a little of the token embedding
            mod.norm.weight.copy_(m.norm.weight)
    m.max_seq_len = cfg.max_seq_len
    return m


def simulate_chained_accepts(module, prompt: list[int], out: list[int], k: int) -> list[int]:
    """Drafts accepted per step, recomputed without a cache: a block starts at seq[pos]; module j
    drafts at position pos-1 on the sequence up to seq[pos] extended by the j-1 drafts before it."""
    seq, pos, accepts = prompt + out, len(prompt), []
    with torch.no_grad():
        while pos < len(seq) - 1:
            ext = seq[: pos + 1]
            for j in range(1, k):
                ext.append(int(module(torch.tensor([ext]), return_all_heads=True)[0, pos - 1, j].argmax()))
            drafts = ext[pos + 1 :]
            a = 0
            while a < k - 1 and pos + 1 + a < len(seq) and drafts[a] == seq[pos + 1 + a]:
                a += 1
            accepts.append(a)
            pos += a + 1
    return accepts


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_sequential_modules_draft_by_chaining_and_are_lossless(seed):
    model = sequential_echo_model(seed)
    prompts = [[1, 2, 3, 4, 5], [7, 8, 9]]
    plain = plain_decode(model, prompts, max_new_tokens=24)
    for k in (2, 3):
        spec = [speculative_decode(model, [p], k=k, max_new_tokens=24)[0] for p in prompts]
        for p, s, r in zip(prompts, spec, plain):
            assert s.output_ids == r.output_ids
            assert s.draft_accepts[:-1] == simulate_chained_accepts(model, p, s.output_ids, k)[: len(s.draft_accepts) - 1]
    batch = speculative_decode(model, prompts, k=3, max_new_tokens=24)
    assert [b.output_ids for b in batch] == [r.output_ids for r in plain]
    assert any(a > 0 for b in batch for a in b.draft_accepts)  # the drafts do get accepted somewhere
    # the chain's time is measured apart from the verify forwards (it is part of the decode time)
    assert all(0 < b.draft_s < b.decode_s for b in batch)


def test_sequential_reuse_of_the_last_module_drafts_past_its_depth():
    model = sequential_echo_model(0)
    prompts = [[1, 2, 3, 4, 5], [7, 8, 9]]
    plain = plain_decode(model, prompts, max_new_tokens=24)
    spec = speculative_decode(model, prompts, k=5, max_new_tokens=24, reuse_last=True)
    assert [s.output_ids for s in spec] == [r.output_ids for r in plain]
    assert max(a for s in spec for a in s.draft_accepts) == 4  # drafts 3 and 4 came from the reused module
    with pytest.raises(ConfigError, match="must be in 1..3"):
        speculative_decode(model, prompts, k=5, max_new_tokens=4)
    with pytest.raises(ConfigError, match="reuse_last needs"):
        speculative_decode(echo_model("parallel"), prompts, k=2, max_new_tokens=4, reuse_last=True)


@pytest.mark.parametrize("kind", ["sequential", "parallel"])
def test_data_acceptance_equals_drafting_on_the_real_prefixes(kind):
    """The teacher-forced shortcut gives the same prefix-acceptance as drafting step by step along the text."""
    from mtp_bench.generation.speculative import data_acceptance

    model = sequential_echo_model(0) if kind == "sequential" else echo_model("parallel")
    k = 3
    x = [1, 2, 3, 4, 5] + plain_decode(model, [[1, 2, 3, 4, 5]], max_new_tokens=20)[0].output_ids
    x = x[:12] + [9, 9, 9, 9] + x[12:]  # a detour (repeats: the echo heads hit there), so that some drafts miss
    ids = torch.tensor([x])
    with torch.no_grad():
        got = data_acceptance(model(ids, return_all_heads=True), ids, k)
        hits = torch.zeros(k - 1)
        n = len(x) - k
        for t in range(n):
            if kind == "sequential":
                c = model.new_cache(1, len(x) + k)
                model(ids[:, : t + 1], cache=c)
                drafts = model.draft(c, ids[:, t + 1], k - 1)[0].tolist()
            else:
                drafts = model(ids[:, : t + 1], return_all_heads=True)[0, -1, 1:k].argmax(-1).tolist()
            ok = True
            for j in range(k - 1):
                ok = ok and drafts[j] == x[t + 2 + j]
                hits[j] += ok
    assert got == pytest.approx((hits / n).tolist())
    if kind == "sequential":  # neither all right nor all wrong: the comparison means something
        assert 0 < got[0] < 1
