"""Batched autoregressive generation with a KV cache: greedy, temperature and nucleus sampling,
stop sequences, EOS and a token budget.

Reproducibility is the point of this module. lm-evaluation-harness draws samples from one
global RNG, so a sample depends on the batch size and on how prompts are split across
processes (its issues 1645 and 3357). Here every prompt owns a `torch.Generator` seeded from
`seeds[i]` (default: the prompt's index), and a row's next token is a function of that row's
logits and that row's generator only. One uniform number is drawn per generated token, so the
random stream of a row never depends on what the other rows did. Batch size 1 and batch size
8 therefore give the same samples (up to float rounding of the logits themselves, which moves
a sample only if a uniform draw lands within ~1e-7 of a bucket edge).

How a batch runs:
    1) encode every prompt (BOS first if the model wants it: see `uses_bos`), truncate from the left
       if it does not leave room for max_new_tokens, and record how much was dropped
    2) sort prompts by length (longest first) so a batch holds similar lengths, then cut
       into batches of `batch_size`; results go back in input order
    3) left-pad the batch, mask the padding (attention_mask 0), prefill in one call
    4) decode one token per step for every row; a finished row leaves the batch where the cache
       can drop rows (`keep_rows`), else it is fed the pad token (its outputs ignored) until every
       row is done; batch 1 on CUDA replays one CUDA graph a step (`mtp_bench.generation.graphs`)
    5) a row finishes on EOS, on a stop sequence (checked on the decoded tail of the row, a
       window wide enough for the longest stop, so the check is O(1) per step and catches
       stops that span token boundaries) or on max_new_tokens
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from mtp_bench.api.errors import ConfigError
from mtp_bench.generation import graphs

# tokens decoded beyond the longest stop sequence when checking the tail; covers tokens that
# decode to nothing on their own (a partial UTF-8 character) and leading-space artefacts
_STOP_WINDOW_SLACK = 8


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 256  # token budget per prompt; HumanEval completions fit in 256
    temperature: float = 0.0  # 0 = greedy (argmax); > 0 samples from softmax(logits / T)
    top_p: float = 1.0  # nucleus sampling: keep the smallest set of tokens with mass >= top_p
    stop: tuple[str, ...] = ()  # text is trimmed at the first stop sequence (excluded)
    batch_size: int = 8  # prompts per forward pass; never changes the outputs

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ConfigError(f"{name} must be an integer, got {v!r}")
        for name in ("temperature", "top_p"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise ConfigError(f"{name} must be a number, got {v!r}")
        if isinstance(self.stop, str) or not all(isinstance(s, str) for s in self.stop):
            raise ConfigError(f"stop must be a tuple of strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))
        if any(s == "" for s in self.stop):
            raise ConfigError("stop sequences must be non-empty strings")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0.0:  # also rejects NaN
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")

    def to_dict(self) -> dict:
        """Every field, for result files. batch_size is included for the record although it
        never changes an output; a generation cache key may leave it out."""
        d = dataclasses.asdict(self)
        d["stop"] = list(self.stop)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> GenerationConfig:
        """Build from a plain dict (a result file, a suite config); unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown generation keys {unknown}; valid keys: {sorted(known)}")
        d = dict(d)
        if "stop" in d:
            d["stop"] = tuple(d["stop"])
        return cls(**d)


@dataclass
class Generation:
    text: str  # completion, trimmed at the first stop sequence; never includes the prompt or EOS
    token_ids: list[int]  # generated ids (EOS excluded); on a stop, up to the token that completed it
    prompt_ids: list[int]  # the ids the model saw (after BOS and left truncation)
    finish_reason: str  # "stop" | "eos" | "length"
    prompt_truncated: int = 0  # prompt tokens dropped from the left to fit max_seq_len


def sample_next(logits: torch.Tensor, temperature: float, top_p: float,
                generators: list[torch.Generator] | None) -> torch.Tensor:
    """Pick one token per row from logits (B, V). Row i's choice depends only on logits[i] and
    generators[i]: every operation below is row-wise, and each row draws exactly one uniform.

    Greedy (temperature 0) is argmax, the first index on ties, as in Hugging Face.
    Sampling is inverse-CDF over the nucleus, in float32:
        1) scale by 1/temperature, softmax
        2) top_p < 1: the tokens in descending order of probability, ties by index (a stable
           sort), keeping those whose preceding mass is < top_p (so always >= 1 token); top_p = 1
           keeps every token in vocabulary order, no sort
        3) draw u ~ U[0,1) from the row's generator, take the first token whose cumulative
           mass exceeds u * total (a zero-probability token is never picked: searchsorted
           with right=True steps over flat stretches of the cumulative sum, and the index is
           clamped to the last kept token)
    On a CPU step 2 is `_stable_sort_desc`: the same order for as many columns as the nucleus
    needs, in a fraction of torch's stable sort time (which for a 4k-32k vocabulary can cost more
    than a small model's forward).
    """
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    if generators is None or len(generators) != logits.shape[0]:
        raise ValueError(f"sampling needs one generator per row: {logits.shape[0]} rows")
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (B, V)
    order = None
    if top_p < 1.0:
        probs, order = (_stable_sort_desc(probs, top_p) if probs.device.type == "cpu"
                        else torch.sort(probs, dim=-1, descending=True, stable=True))  # (B, K), K <= V
        keep = (probs.cumsum(dim=-1) - probs) < top_p  # the first token always has 0 mass before it
        probs = probs * keep
        last = keep.sum(dim=-1, keepdim=True) - 1  # (B, 1) the last kept position
    else:
        last = torch.full((probs.shape[0], 1), probs.shape[-1] - 1, device=probs.device)
    cum = probs.cumsum(dim=-1)  # (B, K)
    u = torch.cat([torch.rand(1, generator=g, dtype=torch.float32) for g in generators])  # (B,)
    target = (u.to(cum.device) * cum[:, -1]).unsqueeze(-1)  # (B, 1)
    idx = torch.minimum(torch.searchsorted(cum, target, right=True), last)  # (B, 1)
    return (idx if order is None else order.gather(-1, idx)).squeeze(-1)


def _stable_sort_desc(probs: torch.Tensor, top_p: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The first K columns of `torch.sort(probs, dim=-1, descending=True, stable=True)` for float32
    probs >= 0 on a CPU, values and indices, with K large enough that every row's nucleus (the
    tokens whose preceding mass is < top_p) ends inside them, in a fraction of the sort's time.

    1) a non-negative float32's bits, read as an integer, order as the float does, so each entry
       becomes one unique int64 key (bits, then the inverted index: ties go to the lower index);
       any sort of unique keys is exact, and values and indices are read back from the keys
    2) when every row's 8 most likely tokens hold top_p (plus 1e-3) of the mass, they are the
       columns; else the nucleus lies within the tokens of the highest binary exponents whose mass reaches
       top_p (plus 1e-3, far above float32 rounding of the sums): K is the most such tokens of
       any row; when K <= V/8 a topk of K keys is enough, else numpy sorts every key (a third
       to a half of torch's stable sort). Cumulative sums over the K columns equal the full
       sort's first K (torch's CPU cumsum accumulates each prefix in order, in double).
    """
    B, V = probs.shape
    shift = max(1, (V - 1).bit_length())
    bits = probs.contiguous().view(torch.int32)
    keys = (bits.to(torch.int64) << shift) | torch.arange(V - 1, -1, -1, dtype=torch.int64)  # (B, V) unique per row
    K = V
    if top_p < 1.0 and V > 64:  # peaked rows (low temperature): the 8 most likely tokens hold every nucleus
        top = torch.topk(keys, 8, dim=-1, sorted=True).values  # (B, 8)
        if bool(((top >> shift).to(torch.int32).view(torch.float32).sum(-1) >= top_p + 1e-3).all()):
            return (top >> shift).to(torch.int32).view(torch.float32), (V - 1) - (top & ((1 << shift) - 1))
    if top_p < 1.0:
        exponent = (bits >> 23).long()  # (B, V) in [0, 255]: the binade of each probability
        mass = probs.new_zeros(B, 256).scatter_add_(1, exponent, probs).flip(-1).cumsum(-1).flip(-1)  # mass at >= e
        count = torch.zeros(B, 256, dtype=torch.int64).scatter_add_(1, exponent, torch.ones_like(exponent))
        count = count.flip(-1).cumsum(-1).flip(-1)  # (B, 256) tokens at >= e
        e = (mass >= top_p + 1e-3).sum(dim=-1, keepdim=True) - 1  # (B, 1) the highest such binade; -1: none
        if bool((e >= 0).all()):
            K = int(count.gather(-1, e).max())
    if 8 * K <= V:
        keys = torch.topk(keys, K, dim=-1, sorted=True).values  # (B, K)
    else:
        keys = torch.from_numpy(-np.sort(-keys.numpy(), axis=-1))  # (B, V) descending
    vals = (keys >> shift).to(torch.int32).view(torch.float32)
    return vals, (V - 1) - (keys & ((1 << shift) - 1))


def _find_stop(text: str, stops: tuple[str, ...]) -> int:
    """Index of the earliest stop sequence in text, or -1."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else -1


def trim_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """Cut text at its first stop sequence (excluded). Returns (text, whether a stop was found).

    >>> trim_at_stop("x = 1\\ndef g():", ("\\ndef", "\\nclass"))
    ('x = 1', True)
    """
    i = _find_stop(text, stops)
    return (text[:i], True) if i >= 0 else (text, False)


def uses_bos(model) -> bool:
    """Whether prompts for this model start with BOS.

    A model may say so itself with an `add_bos` attribute. Otherwise, by format: native
    mtp-bench models are trained without BOS (documents are only separated by EOS); Meta's MTP
    models were trained with BOS on every document; a Hugging Face model gets BOS exactly when
    its own tokenizer adds it to plain text (Llama's does, GPT-2's does not).
    """
    explicit = getattr(model, "add_bos", None)
    if explicit is not None:
        return bool(explicit)
    tok = model.tokenizer
    if tok.bos_id is None:
        return False
    fmt = getattr(model, "format", "native")
    if fmt == "meta":
        return True
    if fmt in ("hf", "gguf", "heads"):  # heads: on an HF/GGUF base, the base's tokenizer
        inner = getattr(tok, "tok", None)  # adapters.HFTokenizer wraps the transformers tokenizer
        return inner is not None and list(inner("a")["input_ids"][:1]) == [tok.bos_id]
    return False


def encode_prompt(model, prompt: str, max_prompt_len: int, add_bos: bool) -> tuple[list[int], int]:
    """Token ids for one prompt, and how many were cut from the left to fit max_prompt_len.

    Left truncation keeps the end of the prompt, which is what the model must continue; a
    BOS stays in front of the kept part.
    """
    ids = list(model.tokenizer.encode(prompt, add_bos=False))
    bos = [model.tokenizer.bos_id] if add_bos else []
    if not ids and not bos:
        raise ConfigError(f"prompt {prompt[:40]!r} encodes to no tokens and the model has no BOS to start from")
    dropped = max(0, len(bos) + len(ids) - max_prompt_len)
    return bos + ids[dropped:], dropped


@torch.inference_mode()
def generate(model, prompts: list[str], config: GenerationConfig, seeds: list[int] | None = None,
             progress=None) -> list[Generation]:
    """Complete every prompt; results come back in input order.

    seeds[i] seeds prompt i's sampler (default i); the same (prompt, seed) gives the same
    completion whatever the batch size or the other prompts. `progress.advance(n)` is called
    with the number of prompts finished after each batch.
    """
    if isinstance(prompts, str):
        raise ConfigError("prompts must be a list of strings, not one string")
    if seeds is not None and len(seeds) != len(prompts):
        raise ConfigError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
    max_prompt_len = model.max_seq_len - config.max_new_tokens
    if max_prompt_len < 1:
        raise ConfigError(f"max_new_tokens={config.max_new_tokens} leaves no room for a prompt "
                          f"in the model's max_seq_len={model.max_seq_len}")
    # 1) encode
    add_bos = uses_bos(model)
    encoded = [encode_prompt(model, p, max_prompt_len, add_bos) for p in prompts]
    seeds = list(range(len(prompts))) if seeds is None else [int(s) for s in seeds]
    # 2) longest first, so the first batch shows an out-of-memory error at once
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i][0]))
    results: list[Generation | None] = [None] * len(prompts)
    for start in range(0, len(order), config.batch_size):
        rows = order[start : start + config.batch_size]
        gens = _generate_batch(model, [encoded[i][0] for i in rows], config, [seeds[i] for i in rows])
        for i, g in zip(rows, gens):
            g.prompt_truncated = encoded[i][1]
            results[i] = g
        if progress is not None:
            progress.advance(len(rows))
    return results  # type: ignore[return-value]


def _generate_batch(model, prompt_ids: list[list[int]], config: GenerationConfig,
                    seeds: list[int]) -> list[Generation]:
    tok = model.tokenizer
    device = model.device
    B = len(prompt_ids)
    T = max(len(p) for p in prompt_ids)
    pad_id = tok.pad_id if tok.pad_id is not None else (tok.eos_id if tok.eos_id is not None else 0)
    eos_id = tok.eos_id
    stops = config.stop
    window = (max(len(s) for s in stops) + _STOP_WINDOW_SLACK) if stops else 0
    generators = None
    if config.temperature > 0.0:
        generators = [torch.Generator().manual_seed(s) for s in seeds]  # CPU: same stream on any device

    # 3) left-pad and prefill
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for r, ids in enumerate(prompt_ids):
        input_ids[r, T - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        mask[r, T - len(ids) :] = 1
    padded = bool((mask == 0).any())
    cache = model.new_cache(B, T + config.max_new_tokens)
    logits = model(input_ids.to(device), cache=cache,
                   attention_mask=mask.to(device) if padded else None)  # (B, T, 1, V)
    next_logits = logits[:, -1, 0, :]  # (B, V)

    # 4) decode; `rows[j]` is the prompt in cache row j. A row that finished is dropped from the
    # cache (`keep_rows`, where the cache has it), so the batch shrinks to the rows still decoding
    # instead of carrying padding until its longest answer ends; else it is fed padding.
    out: list[list[int]] = [[] for _ in range(B)]
    finish: list[str | None] = [None] * B
    rows = list(range(B))
    compact = hasattr(cache, "keep_rows")
    static = graphs.StaticDecoder(model.module, cache) if graphs.applies(model, B) else None  # one CUDA graph a step
    for step in range(config.max_new_tokens):
        gens = None if generators is None else [generators[r] for r in rows]
        toks = sample_next(next_logits, config.temperature, config.top_p, gens).tolist()  # (len(rows),)
        for r, t in zip(rows, toks):
            if finish[r] is not None:
                continue
            if eos_id is not None and t == eos_id:
                finish[r] = "eos"
                continue
            out[r].append(t)
            # 5) stop check on the decoded tail; confirm on the full text (rare, so not quadratic)
            if stops and any(s in tok.decode(out[r][-window:]) for s in stops):
                if _find_stop(tok.decode(out[r]), stops) >= 0:
                    finish[r] = "stop"
        if all(f is not None for f in finish) or step == config.max_new_tokens - 1:
            break
        live = [j for j, r in enumerate(rows) if finish[r] is None]
        if compact and len(live) < len(rows):
            cache.keep_rows(torch.tensor(live, dtype=torch.long))
            rows, toks = [rows[j] for j in live], [toks[j] for j in live]
        if static is not None:  # batch 1: the row is live (else the loop ended)
            next_logits = static(toks[0])  # (1, V)
            continue
        feed = torch.tensor([pad_id if finish[r] is not None else t for r, t in zip(rows, toks)],
                            dtype=torch.long, device=device).unsqueeze(1)  # (rows, 1)
        next_logits = model(feed, cache=cache)[:, -1, 0, :]  # (rows, V)

    gens = []
    for r in range(B):
        text = tok.decode(out[r])
        text, hit = trim_at_stop(text, stops)  # also catches a stop the tail window missed
        reason = "stop" if hit else (finish[r] or "length")
        gens.append(Generation(text=text, token_ids=out[r], prompt_ids=list(prompt_ids[r]), finish_reason=reason))
    return gens
