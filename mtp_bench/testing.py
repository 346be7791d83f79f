"""Deterministic fakes for tests of any layer: a byte tokenizer and a model that follows the
`mtp_bench.api.protocols.Model` contract exactly (left padding, attention mask, KV cache with
truncate, n_future heads), but whose predictions are a few lines of arithmetic instead of
a transformer. They are small enough to read and fast enough for every test.

What the fake model predicts, for a row whose real tokens so far decode to bytes `ctx`:
    1) scripted: if `ctx` starts with a prompt given in `responses` and what follows the prompt
       is a prefix of that prompt's completion, the next byte of the completion, then EOS
       (so an evaluator test can make the "model" answer a problem right or wrong at will)
    2) otherwise a fixed pseudo-random printable byte (or a newline) from the last two bytes
       and the seed, so output is deterministic but looks like text
Head i (0-based) predicts the token i+1 steps ahead by following the same rule on its own
predictions: the extra heads are perfect drafters (`wrong_drafts=True` makes heads >= 1 always
wrong, for speculative-decoding tests). Logits are a fixed seeded noise (scale 1) with the
target raised `sharpness` above the largest noise value, so greedy is always the target and
sampling at a high temperature (or a low sharpness) varies.

    >>> m = FakeModel(responses={"Q: 1+1=": " 2"})
    >>> from mtp_bench.generation import GenerationConfig, generate
    >>> generate(m, ["Q: 1+1="], GenerationConfig(max_new_tokens=8))[0].text
    ' 2'
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import torch

from mtp_bench.api import registry

BYTE_VOCAB = 256
BOS_ID, EOS_ID, PAD_ID = 256, 257, 258


class FakeTokenizer:
    """UTF-8 bytes are tokens 0..255; then <bos>=256, <eos>=257, <pad>=258. Lossless."""

    vocab_size = 259
    bos_id = BOS_ID
    eos_id = EOS_ID
    pad_id = PAD_ID

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [BOS_ID, *ids] if add_bos else ids

    def decode(self, ids: list[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < BYTE_VOCAB).decode("utf-8", errors="replace")


class FakeCache:
    """Per row, the token at every cached position (None where the mask was 0)."""

    def __init__(self, batch_size: int, max_len: int) -> None:
        self.rows: list[list[int | None]] = [[] for _ in range(batch_size)]
        self.max_len = max_len

    @property
    def length(self) -> int:
        return len(self.rows[0]) if self.rows else 0

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {length}")
        self.rows = [r[:length] for r in self.rows]


class FakeModel:
    """A deterministic stand-in for an MTP model (see the module docstring)."""

    format = "fake"

    def __init__(self, responses: dict[str, str] | None = None, n_future: int = 1, seed: int = 0,
                 sharpness: float = 12.0, delay_s: float = 0.0, wrong_drafts: bool = False,
                 max_seq_len: int = 4096, name: str = "fake") -> None:
        self.responses = dict(responses or {})
        self._scripts = sorted(((p.encode(), c.encode()) for p, c in self.responses.items()),
                               key=lambda pc: -len(pc[0]))  # longest prompt wins
        self.n_future = int(n_future)
        self.seed = int(seed)
        self.sharpness = float(sharpness)
        self.delay_s = float(delay_s)  # sleep per forward call: a "slow model" for kill/resume tests
        self.wrong_drafts = bool(wrong_drafts)
        self.max_seq_len = int(max_seq_len)
        self.tokenizer = FakeTokenizer()
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.path = f"fake://{name}"
        self.config = {"kind": "fake", "vocab_size": FakeTokenizer.vocab_size, "n_future": self.n_future,
                       "seed": self.seed, "sharpness": self.sharpness, "wrong_drafts": self.wrong_drafts,
                       "max_seq_len": self.max_seq_len}
        ident = json.dumps({"config": self.config, "responses": self.responses}, sort_keys=True)
        self.weights_sha256 = hashlib.sha256(ident.encode()).hexdigest()
        g = torch.Generator().manual_seed(self.seed)
        V = FakeTokenizer.vocab_size
        self._noise = torch.randn(V, V, generator=g)  # (prev token, V): fixed logit noise
        self._noise_max = self._noise.max(dim=-1).values  # (prev token,)
        self.num_params = V * V
        self.calls = 0  # forward calls, for tests that count work

    # -- the prediction rule ---------------------------------------------------------------

    def next_token(self, ctx: bytes) -> int:
        """The greedy next token after the bytes `ctx` (rule 1, else rule 2 of the docstring)."""
        for prompt, completion in self._scripts:
            if len(ctx) >= len(prompt) and ctx.startswith(prompt):
                done = ctx[len(prompt):]
                if completion.startswith(done):
                    return completion[len(done)] if len(done) < len(completion) else EOS_ID
        a = ctx[-2] if len(ctx) >= 2 else 0
        b = ctx[-1] if ctx else 0
        x = (a * 131 + b * 31 + self.seed * 17 + 7) % 96
        return 10 if x == 95 else 32 + x  # printable ASCII or "\n"

    def _targets(self, ctx: bytes) -> list[int]:
        """Targets of heads 0..n_future-1: head i predicts i+1 steps ahead."""
        out = []
        cur = ctx
        for i in range(self.n_future):
            t = self.next_token(cur)
            out.append((t + 1) % FakeTokenizer.vocab_size if (self.wrong_drafts and i > 0) else t)
            if t == EOS_ID:  # after EOS keep predicting EOS
                out.extend([EOS_ID] * (self.n_future - 1 - i))
                break
            cur = cur + bytes([t]) if t < BYTE_VOCAB else cur
        return out

    # -- the Model protocol ----------------------------------------------------------------

    def new_cache(self, batch_size: int, max_len: int, device: Any = None, dtype: Any = None) -> FakeCache:
        return FakeCache(batch_size, max_len)

    def __call__(self, input_ids: torch.Tensor, cache: FakeCache | None = None, return_all_heads: bool = False,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        B, T = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones(B, T, dtype=torch.long)
        if cache is not None and len(cache.rows) != B:
            raise ValueError(f"cache has {len(cache.rows)} rows, input has {B}")
        n_heads = self.n_future if return_all_heads else 1
        V = FakeTokenizer.vocab_size
        logits = torch.zeros(B, T, n_heads, V)  # (B, T, n_heads, V)
        ids = input_ids.tolist()
        mask = attention_mask.tolist()
        for b in range(B):
            past = cache.rows[b] if cache is not None else []
            ctx = bytearray(t for t in past if t is not None and t < BYTE_VOCAB)
            new_row: list[int | None] = []
            prev = next((t for t in reversed(past) if t is not None), BOS_ID)
            for t in range(T):
                if not mask[b][t]:
                    new_row.append(None)
                    continue
                tok = ids[b][t]
                new_row.append(tok)
                if tok < BYTE_VOCAB:
                    ctx.append(tok)
                prev = tok
                targets = self._targets(bytes(ctx))
                for h in range(n_heads):
                    logits[b, t, h] = self._noise[prev]
                    logits[b, t, h, targets[h]] = self._noise_max[prev] + self.sharpness  # greedy = target
            if cache is not None:
                cache.rows[b] = past + new_row
        return logits


@contextlib.contextmanager
def isolated_registry(builtins: bool = False) -> Iterator[dict]:
    """Run a block with its own evaluator registry and restore the real one afterwards.
    builtins=False: start empty and skip plugin loading, so only the evaluators the test
    registers exist. builtins=True: start from the built-ins and installed plugins."""
    saved, saved_loaded = dict(registry.REGISTRY), registry._plugins_loaded
    try:
        if builtins:
            registry.load_plugins()
        else:
            registry.REGISTRY.clear()
            registry._plugins_loaded = True
        yield registry.REGISTRY
    finally:
        # a built-in module first imported inside the block registered itself here; a module
        # registers only once per process, so keep it or it would be gone for later tests
        late = {n: c for n, c in registry.REGISTRY.items()
                if n not in saved and c.__module__.startswith("mtp_bench.evals.")}
        registry.REGISTRY.clear()
        registry.REGISTRY.update(saved)
        registry.REGISTRY.update(late)
        registry._plugins_loaded = saved_loaded
