"""Self-speculative decoding with a multi-token-prediction model's own heads.

Blockwise-parallel decoding (Stern et al. 2018) as used in Gloeckle et al. 2024 (Table S2/S3):
head 1 (next token) is the model; heads 2..k draft the k-1 tokens after it. Every forward pass
after the prompt feeds [last accepted token, d_1 .. d_{k-1}] and so does two jobs at once:

    input      x      d_1    d_2   ...  d_{k-1}
    head 1    ->d_1?  ->d_2? ->d_3? ...  ->bonus        (verification: the greedy/sampled token)
    heads 2..k                (drafts for the next step, read at the last accepted position)

The longest prefix of drafts that head 1 agrees with is accepted, plus head 1's own token at
the first disagreement (the "bonus"), so every forward emits between 1 and k tokens. The KV
cache (trunk and extra heads alike) is then truncated back to the accepted length.

Losslessness. Greedy: the emitted tokens are exactly head 1's greedy tokens, because every
emitted token is head 1's argmax given the emitted prefix. Sampling (temperature > 0, top_p):
p = head 1's distribution after temperature and nucleus (top-p) warping, the distribution plain
sampling draws from; a draft x comes from a proposal q and is accepted with probability
min(1, p(x)/q(x)); on rejection the token is drawn from norm(max(0, p - q)), so every emitted
token is distributed exactly as p (Leviathan et al. 2023, Chen et al. 2023). Two proposals:
    draft="argmax"  each head's argmax, a point mass q = delta(x): acceptance is p(x), and the
                    residual is p with x removed (what vLLM, SGLang and llama.cpp do)
    draft="sample"  a sample from each head's own distribution, warped like p (same temperature
                    and top_p); q is that distribution. A chain of sequential modules feeds each
                    module the previous module's sampled draft.

Sequential MTP modules (DeepSeek-V3 / MiMo, head_type "sequential") draft by chaining instead:
after each forward, module 1 reads head 1's hidden state at the last accepted position and the
token head 1 just chose, module 2 reads module 1's output there and module 1's draft, and so
on (`Transformer.draft`); the verification forward then runs head 1 only. With `reuse_last` the
last module drafts on past its depth, reading its own output and draft (vLLM's way with one MTP
layer), so k may exceed n_future. The lossless check and the metrics are the same.

Batches (B > 1) share one cache length, so a step keeps n = min over unfinished rows of the
accepted drafts; a row that accepted more keeps its (equally valid) tokens up to n+1 and redrafts.
That is still exact: emitting a prefix of correctly distributed tokens is always allowed.

Nothing here knows about evaluators; `evals/specdec.py` and `mtp_bench/commands/bench/specdec.py`
build on `speculative_decode` and `plain_decode`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from mtp_bench.api.errors import ConfigError
from mtp_bench.generation import graphs


class LosslessError(RuntimeError):
    """Speculative greedy output differs from plain greedy output. Not a metric: in float32 it is
    a bug (in the decoder or the model's cache roll-back); in lower precision, a near-tie flipped."""


@dataclass
class DecodeResult:
    """One prompt's decode. `accepted_lengths` has one entry per forward pass, the prefill first
    (always 1: the prompt's last position yields head 1's first token); sum(accepted_lengths) ==
    len(output_ids). Timings are wall-clock for the whole batch the row was decoded in."""

    prompt_ids: list[int]
    output_ids: list[int]  # generated tokens, EOS included when hit, at most max_new_tokens
    accepted_lengths: list[int]  # tokens kept per forward pass (prefill first), after trimming
    draft_accepts: list[int]  # per decoding step: drafts head 1 accepted (0..k-1), before trimming
    finish_reason: str  # "eos" | "length"
    prefill_s: float  # time to the first token (prompt forward included)
    total_s: float  # prefill + decode
    k: int = 1
    draft_s: float = 0.0  # of decode_s: drafting outside the verify forward (sequential modules' chain;
    # parallel heads run inside the verify forward, so only their argmax/sampling counts here)

    @property
    def decode_s(self) -> float:
        return self.total_s - self.prefill_s


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _left_pad(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Left-pad a batch of token lists. Returns (ids (B, T), mask (B, T) or None for one row / equal lengths)."""
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, T - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[r, T - len(p):] = 1
    if bool(mask.all()):
        return ids.to(device), None
    return ids.to(device), mask.to(device)


def is_sequential(model) -> bool:
    """Whether the model drafts with chained sequential MTP modules (a reference model, bare or adapted)."""
    module = getattr(model, "module", model)
    cfg = getattr(module, "config", None)
    return getattr(cfg, "head_type", None) == "sequential" and getattr(module, "n_future", 1) > 1


DRAFT_MODES = ("argmax", "sample")


def _check_inputs(model, prompts: list[list[int]], max_new_tokens: int, k: int, temperature: float,
                  generators: list[torch.Generator] | None, reuse_last: bool = False, top_p: float = 1.0,
                  draft: str = "argmax") -> None:
    if not prompts:
        raise ConfigError("no prompts to decode")
    if any(len(p) == 0 for p in prompts):
        raise ConfigError("empty prompt: every prompt needs at least one token")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if reuse_last and not is_sequential(model):
        raise ConfigError("reuse_last needs a model with sequential MTP modules (head_type 'sequential')")
    if reuse_last and k < 1:
        raise ConfigError(f"k (draft block length) must be >= 1, got {k}")
    if not reuse_last and not 1 <= k <= model.n_future:
        raise ConfigError(f"k (heads used) must be in 1..{model.n_future} for this model, got {k}")
    if not temperature >= 0:  # also rejects NaN
        raise ConfigError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}")
    if draft not in DRAFT_MODES:
        raise ConfigError(f"draft must be one of {', '.join(DRAFT_MODES)}, got {draft!r}")
    if draft == "sample" and temperature == 0:
        raise ConfigError("draft=sample draws drafts from the heads' distributions: it needs temperature > 0")
    if temperature > 0 and (generators is None or len(generators) != len(prompts)):
        raise ConfigError("sampling (temperature > 0) needs one torch.Generator per prompt")
    longest = max(len(p) for p in prompts) + max_new_tokens + k
    if longest > model.max_seq_len:
        raise ConfigError(f"prompt ({max(len(p) for p in prompts)} tokens) + max_new_tokens ({max_new_tokens}) + k "
                          f"({k}) exceeds the model's max_seq_len {model.max_seq_len}; shorten the prompt")


def warp(logits: torch.Tensor, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """The sampling distribution of logit rows (..., V): softmax(logits / temperature), then the
    nucleus: the smallest set of the most likely tokens whose mass reaches top_p (ties broken by
    token id, like generation.sample_next), renormalised. float32 on the CPU.

    >>> [round(p, 4) for p in warp(torch.tensor([2.0, 1.0, 0.0, -1.0]), 1.0, top_p=0.9).tolist()]
    [0.6652, 0.2447, 0.09, 0.0]
    """
    probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
    if top_p >= 1.0:
        return probs
    sp, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    keep = (sp.cumsum(dim=-1) - sp) < top_p  # the most likely token is always kept
    sp = sp * keep
    return torch.zeros_like(probs).scatter_(-1, order, sp / sp.sum(dim=-1, keepdim=True))


def _pick(logits: torch.Tensor, temperature: float, generator: torch.Generator | None, top_p: float = 1.0) -> int:
    """Head 1's token from one (V,) logit row: argmax, or a sample at `temperature` and `top_p`."""
    if temperature == 0:
        return int(logits.argmax())
    return int(torch.multinomial(warp(logits, temperature, top_p), 1, generator=generator))


def _verify_sampled(logits0: torch.Tensor, drafts: list[int], temperature: float,
                    generator: torch.Generator, q: torch.Tensor | None = None, top_p: float = 1.0) -> tuple[int, int]:
    """Speculative sampling for one row.

    logits0: (k, V) head-1 logits at [x, d_1 .. d_{k-1}]; drafts: [d_1 .. d_{k-1}]; q: (k-1, V)
    the proposal each draft was sampled from, or None for argmax drafts (a point mass at each).
    Returns (a, token): a drafts accepted, then head 1's token at position a (the resample after
    the first rejection, or the bonus sample when all drafts pass).
    """
    probs = warp(logits0, temperature, top_p)  # (k, V)
    for j, x in enumerate(drafts):
        # 1) accept draft x with probability min(1, p(x) / q(x)) (q(x) = 1 for a point mass)
        ratio = float(probs[j, x]) if q is None else min(1.0, float(probs[j, x]) / float(q[j, x]))
        if float(torch.rand((), generator=generator)) < ratio:
            continue
        # 2) rejected: sample from norm(max(0, p - q)): p with x removed for a point mass
        if q is None:
            residual = probs[j].clone()
            residual[x] = 0.0
        else:
            residual = (probs[j] - q[j]).clamp_(min=0.0)
        if float(residual.sum()) <= 0.0:  # p <= q everywhere yet x rejected: only rounding gets here
            residual = probs[j]
        return j, int(torch.multinomial(residual / residual.sum(), 1, generator=generator))
    # 3) all drafts accepted: the bonus token is a plain sample from p at the last position
    return len(drafts), int(torch.multinomial(probs[len(drafts)], 1, generator=generator))


def _sample_drafts(logits: torch.Tensor, temperature: float, top_p: float, generators: list[torch.Generator],
                   rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """draft="sample" for parallel heads: logits (B, k-1, V) of heads 2..k at the last accepted
    position -> drafts (B, k-1) sampled with each row's generator, and their proposals q (B, k-1, V)."""
    q = warp(logits, temperature, top_p)  # (B, k-1, V)
    d = torch.zeros(q.shape[:2], dtype=torch.long)
    for r in rows:
        for j in range(q.shape[1]):
            d[r, j] = int(torch.multinomial(q[r, j], 1, generator=generators[r]))
    return d.to(logits.device), q


class _Rows:
    """Per-row bookkeeping shared by both decoders: outputs, trimming at EOS / max_new_tokens."""

    def __init__(self, n: int, max_new_tokens: int, eos_id: int | None):
        self.out: list[list[int]] = [[] for _ in range(n)]
        self.acc: list[list[int]] = [[] for _ in range(n)]
        self.drafts_ok: list[list[int]] = [[] for _ in range(n)]
        self.finish = [""] * n
        self.max_new = max_new_tokens
        self.eos_id = eos_id

    def active(self) -> list[int]:
        return [r for r, f in enumerate(self.finish) if not f]

    def emit(self, r: int, tokens: list[int]) -> None:
        """Append this forward's tokens to row r, cut at EOS (kept) and at max_new_tokens."""
        kept = []
        for t in tokens:
            kept.append(t)
            if self.eos_id is not None and t == self.eos_id:
                self.finish[r] = "eos"
                break
            if len(self.out[r]) + len(kept) >= self.max_new:
                self.finish[r] = "length"
                break
        self.out[r].extend(kept)
        self.acc[r].append(len(kept))


def speculative_decode(model, prompts: list[list[int]], k: int | None = None, max_new_tokens: int = 128,
                       temperature: float = 0.0, eos_id: int | None = None,
                       generators: list[torch.Generator] | None = None,
                       pad_id: int = 0, reuse_last: bool = False, top_p: float = 1.0,
                       draft: str = "argmax") -> list[DecodeResult]:
    """Decode `prompts` (token lists) with heads 2..k drafting and head 1 verifying.

    k: heads used, 1..model.n_future (None = all); k = 1 is plain decoding with head 1 (tau = 1).
    reuse_last: sequential MTP modules only; the last module drafts on, so k may exceed n_future.
    eos_id: a row stops after emitting it (kept in the output); None = never stop early.
    generators: one per prompt when temperature > 0 (per-prompt seeds make outputs batch-independent
    for B = 1; with B > 1 the shared acceptance length n couples rows' random streams).
    top_p: nucleus sampling (temperature > 0), applied to head 1 and, with draft="sample", to the heads.
    draft: "argmax" (each head's most likely token) or "sample" (drawn from each head's distribution;
    temperature > 0): see the module docstring.
    """
    k = model.n_future if k is None else k
    _check_inputs(model, prompts, max_new_tokens, k, temperature, generators, reuse_last, top_p, draft)
    B, dev = len(prompts), model.device
    rows = _Rows(B, max_new_tokens, eos_id)
    chained = is_sequential(model)
    all_heads = k > 1 and not chained  # chained drafts come from model.draft after a head-1 forward
    chain = getattr(model, "draft", None)
    sampled = draft == "sample"
    ids, mask = _left_pad(prompts, pad_id, dev)

    def make_drafts(head_logits: torch.Tensor | None, tok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Drafts (B, k-1) for the next block and, for draft="sample", their proposals q (B, k-1, V)."""
        if chained:
            if not sampled:
                return chain(cache, tok, k - 1, reuse_last), None
            qs: list[torch.Tensor] = []

            def pick(lg: torch.Tensor) -> torch.Tensor:  # (B, V) -> (B,): module j's sampled draft
                d, q = _sample_drafts(lg[:, None], temperature, top_p, generators, rows.active())
                qs.append(q[:, 0])
                return d[:, 0]

            d = chain(cache, tok, k - 1, reuse_last, sample=pick)
            return d, (torch.stack(qs, dim=1) if qs else None)
        if not sampled:
            return head_logits.argmax(-1), None
        return _sample_drafts(head_logits, temperature, top_p, generators, rows.active())

    with torch.inference_mode():
        _sync(dev)
        t0 = time.perf_counter()
        cache = model.new_cache(B, ids.shape[1] + max_new_tokens + k)
        # 1) prefill: head 1 gives the first token, heads 2..k the first drafts
        last = model(ids, cache=cache, return_all_heads=all_heads, attention_mask=mask)[:, -1]  # (B, n, V)
        first = [_pick(last[r, 0], temperature, generators[r] if generators else None, top_p) for r in range(B)]
        tok = torch.tensor(first, dtype=torch.long, device=dev)  # (B,) last emitted token per row
        for r in range(B):
            rows.emit(r, [first[r]])
        drafts, q = make_drafts(None if chained else last[:, 1:k], tok)  # (B, k-1), proposals or None
        _sync(dev)
        t_prefill = time.perf_counter() - t0
        draft_s = 0.0

        while rows.active():
            # 2) verify: one forward over [x, d_1 .. d_{k-1}]
            base = cache.length
            inp = torch.cat([tok[:, None], drafts], dim=1)  # (B, k)
            logits = model(inp, cache=cache, return_all_heads=all_heads)  # (B, k, n, V)
            active = rows.active()
            drafts_l = drafts.tolist()
            if temperature == 0:
                pred = logits[:, :, 0].argmax(-1)  # (B, k) head 1's greedy token after each input
                match = (pred[:, :-1] == drafts).long().cumprod(dim=1)  # (B, k-1)
                accepted = match.sum(dim=1).tolist()  # (B,) drafts accepted per row
                pred_l = pred.tolist()
                resolved = {r: (accepted[r], pred_l[r][accepted[r]]) for r in active}
            else:
                resolved = {r: _verify_sampled(logits[r, :, 0], drafts_l[r], temperature, generators[r],
                                               None if q is None else q[r], top_p)
                            for r in active}
            # 3) accept: the longest prefix every unfinished row agrees on, plus head 1's token there
            n = min(a for a, _ in resolved.values())
            new_tok = tok.clone()
            for r in active:
                a, t = resolved[r]
                bonus = t if a == n else drafts_l[r][n]  # a row that accepted more keeps its own draft
                rows.emit(r, drafts_l[r][:n] + [bonus])
                rows.drafts_ok[r].append(a)
                new_tok[r] = bonus
            # 4) roll the cache back past the rejected drafts; next drafts come from heads 2..k there
            cache.truncate(base + n + 1)
            tok = new_tok
            if not rows.active():
                break
            _sync(dev)
            t_draft = time.perf_counter()
            drafts, q = make_drafts(None if chained else logits[:, n, 1:k], tok)  # (B, k-1)
            _sync(dev)
            draft_s += time.perf_counter() - t_draft
        _sync(dev)
        total = time.perf_counter() - t0

    return [DecodeResult(prompt_ids=list(prompts[r]), output_ids=rows.out[r], accepted_lengths=rows.acc[r],
                         draft_accepts=rows.drafts_ok[r], finish_reason=rows.finish[r], prefill_s=t_prefill,
                         total_s=total, k=k, draft_s=draft_s) for r in range(B)]


def plain_decode(model, prompts: list[list[int]], max_new_tokens: int = 128, temperature: float = 0.0,
                 eos_id: int | None = None, generators: list[torch.Generator] | None = None,
                 pad_id: int = 0, top_p: float = 1.0) -> list[DecodeResult]:
    """The baseline: KV-cache decoding with head 1 only, one token per forward.

    Written separately from `speculative_decode` (not as its k = 1 case) so that it is an
    independent reference for the lossless check.
    """
    _check_inputs(model, prompts, max_new_tokens, 1, temperature, generators, top_p=top_p)
    B, dev = len(prompts), model.device
    rows = _Rows(B, max_new_tokens, eos_id)
    ids, mask = _left_pad(prompts, pad_id, dev)
    with torch.inference_mode():
        _sync(dev)
        t0 = time.perf_counter()
        cache = model.new_cache(B, ids.shape[1] + max_new_tokens + 1)
        logits = model(ids, cache=cache, attention_mask=mask)[:, -1, 0]  # (B, V)
        static = graphs.StaticDecoder(model.module, cache) if graphs.applies(model, B) else None  # CUDA graphs
        t_prefill = None
        while True:
            toks = [_pick(logits[r], temperature, generators[r] if generators else None, top_p) for r in range(B)]
            for r in rows.active():
                rows.emit(r, [toks[r]])
            if t_prefill is None:
                _sync(dev)
                t_prefill = time.perf_counter() - t0
            if not rows.active():
                break
            if static is not None:
                logits = static(toks[0])  # (1, V)
                continue
            inp = torch.tensor(toks, dtype=torch.long, device=dev)[:, None]  # (B, 1)
            logits = model(inp, cache=cache)[:, -1, 0]  # (B, V)
        _sync(dev)
        total = time.perf_counter() - t0
    return [DecodeResult(prompt_ids=list(prompts[r]), output_ids=rows.out[r], accepted_lengths=rows.acc[r],
                         draft_accepts=[], finish_reason=rows.finish[r], prefill_s=t_prefill, total_s=total, k=1)
            for r in range(B)]


# ----------------------------------------------------------------------------- statistics


@dataclass
class AcceptanceStats:
    """Pooled over every decoding step of every prompt (steps weighted equally, as Spec-Bench).

    tau: mean tokens emitted per decoding forward, the bonus token included (prefill excluded).
    forwards_per_token: all forwards (prefill included) / generated tokens.
    alpha_cond[i]: P(draft i+1 accepted | drafts 1..i accepted), EAGLE's per-head acceptance.
    alpha_uncond[i]: P(drafts 1..i+1 all accepted) per step, vLLM's per-position acceptance rate.
    """

    tau: float
    forwards_per_token: float
    alpha_cond: list[float] = field(default_factory=list)
    alpha_uncond: list[float] = field(default_factory=list)
    steps: int = 0
    tokens: int = 0


def acceptance_stats(results: list[DecodeResult], k: int) -> AcceptanceStats:
    """Aggregate tau and per-head acceptance over decodes made with `k` heads.

    >>> r = DecodeResult([1], [5, 6, 7, 8, 9], [1, 3, 1], [2, 0], "length", 0.0, 0.0, k=3)
    >>> s = acceptance_stats([r], k=3)
    >>> s.tau, s.forwards_per_token, s.alpha_cond, s.alpha_uncond
    (2.0, 0.6, [0.5, 1.0], [0.5, 0.5])
    """
    steps = [a for r in results for a in r.accepted_lengths[1:]]
    tokens = sum(len(r.output_ids) for r in results)
    forwards = sum(len(r.accepted_lengths) for r in results)
    tau = sum(steps) / len(steps) if steps else 1.0  # a one-token output has no decoding step
    drafts = [a for r in results for a in r.draft_accepts]
    cond, uncond = [], []
    for i in range(1, k):
        reached = sum(1 for a in drafts if a >= i - 1)  # steps where draft i was judged
        passed = sum(1 for a in drafts if a >= i)
        cond.append(passed / reached if reached else float("nan"))
        uncond.append(passed / len(drafts) if drafts else float("nan"))
    return AcceptanceStats(tau=tau, forwards_per_token=forwards / tokens if tokens else float("nan"),
                           alpha_cond=cond, alpha_uncond=uncond, steps=len(steps), tokens=tokens)


def data_acceptance(logits: torch.Tensor, ids: torch.Tensor, k: int) -> list[float]:
    """How often the drafts of heads 2..k would match real text: P(drafts 1..j all equal the data), j = 1..k-1.

    logits: (B, T, n, V) teacher-forced heads (head i at position t predicts ids[t+1+i]); ids: (B, T).
    A step is a position t whose next token ids[t+1] is taken as given (the bonus); its drafts
    are the heads' argmaxes there. For chained sequential modules this is exact too: module j's
    draft is computed on drafts 1..j-1, which equal the data exactly when they are counted as
    right, and on the data the chain is the teacher-forced model (Transformer.draft's test).
    Positions whose k-1 targets run past the window are left out (and NaN logits with them).

    >>> V = 3
    >>> ids = torch.tensor([[0, 1, 2, 0, 1]])
    >>> logits = torch.zeros(1, 5, 3, V)
    >>> for t in range(5):
    ...     for i in (1, 2):
    ...         if t + 1 + i < 5:
    ...             logits[0, t, i, ids[0, t + 1 + i] if (t, i) != (1, 2) else 0] = 1.0
    >>> data_acceptance(logits, ids, k=3)  # steps t = 0, 1: draft 1 right at both, draft 2 wrong at t = 1
    [1.0, 0.5]
    """
    B, T = ids.shape
    n = T - k  # positions t with targets t+2 .. t+k inside the window
    if n < 1 or k < 2:
        return []
    right = torch.stack([logits[:, :n, i].argmax(-1) == ids[:, 1 + i : 1 + i + n] for i in range(1, k)], dim=-1)
    prefix = right.long().cumprod(dim=-1)  # (B, n, k-1): drafts 1..j all right
    return [float(x) for x in prefix.float().mean(dim=(0, 1))]
