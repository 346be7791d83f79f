"""The contracts between layers, as typing Protocols. Data flows one way:

    checkpoint -> model adapter (Model) -> evaluator (Evaluator) -> result record -> report / gate

`mtp_bench.load(path)` returns a `Model`. Evaluators receive a `Model` and a `RunContext`
(see `mtp_bench.api.registry`). Nothing here imports torch at runtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids. `eos_id`/`bos_id`/`pad_id` may be None when the vocabulary has none."""

    vocab_size: int
    eos_id: int | None
    bos_id: int | None
    pad_id: int | None

    def encode(self, text: str, add_bos: bool = False) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@runtime_checkable
class KVCache(Protocol):
    """Per-layer key/value cache that can grow and be rolled back.

    `length` is the number of positions stored (padding included). `truncate(n)` drops every
    position >= n (speculative decoding rolls back rejected draft tokens this way).
    """

    length: int

    def truncate(self, length: int) -> None: ...


@runtime_checkable
class Model(Protocol):
    """What every evaluator may rely on.

    Calling the model:
        logits = model(input_ids, cache=None, return_all_heads=False, attention_mask=None)
    input_ids: (B, T) long on model.device.
    returns float logits (B, T, n_future, V) when return_all_heads else (B, T, 1, V);
    head 0 predicts token t+1, head i predicts token t+1+i.
    attention_mask: (B, T) of 0/1 for the *new* tokens only (0 = left padding); the cache
    remembers the mask of earlier positions. A token's rotary position is the number of
    real (mask=1) tokens before it in its row, so left-padded batches give the same logits
    as unpadded single rows.
    cache: from `model.new_cache(batch_size, max_len)`; the call appends the new positions.
    """

    n_future: int
    tokenizer: Tokenizer
    device: torch.device
    dtype: torch.dtype
    max_seq_len: int
    path: str  # where it was loaded from
    format: str  # "native" | "meta" | "hf"
    weights_sha256: str  # sha256 of the weight file(s), hex
    num_params: int
    config: dict[str, Any]  # JSON-serialisable model config

    def __call__(self, input_ids: torch.Tensor, cache: KVCache | None = None,
                 return_all_heads: bool = False, attention_mask: torch.Tensor | None = None) -> torch.Tensor: ...

    def new_cache(self, batch_size: int, max_len: int) -> KVCache: ...
