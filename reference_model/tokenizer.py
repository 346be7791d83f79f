"""Tokenizers for the reference model: a byte tokenizer and a locally trained byte-level BPE.

Both are plain Hugging Face `tokenizers.Tokenizer` objects under the hood, so every checkpoint
stores one `tokenizer.json` that transformers' `PreTrainedTokenizerFast(tokenizer_file=...)`
loads unchanged. Both are byte-level (GPT-2 style ByteLevel pre-tokenizer/decoder with no
prefix space), so encode -> decode is lossless on any Python str that is valid UTF-8: code
keeps its whitespace and indentation exactly.

Special tokens: <|bos|>, <|eos|>, <|pad|>. Text is never split on them: a corpus file that
literally contains "<|eos|>" encodes as ordinary bytes, so documents cannot forge separators.
`decode` drops special ids (generation output stops being text at EOS anyway).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from mtp_bench.api.atomic import atomic_open
from mtp_bench.api.errors import CheckpointError, ConfigError

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = [BOS, EOS, PAD]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode char map (the ByteLevel alphabet), by byte value."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(sorted(zip(bs, (chr(c) for c in cs))))


def _byte_level(tok: HFTokenizer) -> HFTokenizer:
    """Attach the byte-level pipeline: no normaliser (code is case/space sensitive), no prefix space."""
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


class Tokenizer:
    """A thin wrapper over `tokenizers.Tokenizer` implementing mtp_bench.api.protocols.Tokenizer."""

    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        # text never produces special ids (see module docstring)
        self.hf.encode_special_tokens = True
        self.vocab_size: int = hf.get_vocab_size(with_added_tokens=True)
        self.bos_id: int | None = hf.token_to_id(BOS)
        self.eos_id: int | None = hf.token_to_id(EOS)
        self.pad_id: int | None = hf.token_to_id(PAD)
        self._special_ids = {i for i in (self.bos_id, self.eos_id, self.pad_id) if i is not None}

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = self.hf.encode(text, add_special_tokens=False).ids
        if add_bos:
            if self.bos_id is None:
                raise ConfigError("add_bos=True but this tokenizer has no <|bos|> token")
            ids = [self.bos_id] + ids
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Many documents at once (tokenizers runs them in parallel in Rust)."""
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=True)

    def to_str(self) -> str:
        return self.hf.to_str()

    def sha256(self) -> str:
        """Identity of the vocabulary + pipeline, used to key token caches."""
        return hashlib.sha256(self.to_str().encode()).hexdigest()

    def save(self, path: str | os.PathLike) -> None:
        """Write tokenizer.json atomically (temp file in the same dir, fsync, rename)."""
        with atomic_open(path, "w", encoding="utf-8") as f:
            f.write(self.to_str())

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, bos_id={self.bos_id}, eos_id={self.eos_id}, pad_id={self.pad_id})"


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer.json (or a directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"tokenizer file not found: {path}")
    try:
        hf = HFTokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
        raise CheckpointError(f"cannot read tokenizer {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return Tokenizer(hf)


def byte_tokenizer() -> Tokenizer:
    """256 byte symbols (id = byte value) + <|bos|>=256, <|eos|>=257, <|pad|>=258.

    Built as a BPE model over the 256-symbol ByteLevel alphabet with no merges: every byte is
    one token, so it is lossless and needs no training.
    """
    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}  # byte value is the id
    tok = _byte_level(HFTokenizer(models.BPE(vocab=vocab, merges=[])))
    tok.add_special_tokens(SPECIAL_TOKENS)
    return Tokenizer(tok)


def train_bpe(texts: Iterable[str] | Iterator[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE tokenizer locally on `texts`.

    vocab_size counts everything: 3 specials (ids 0..2) + 256 byte symbols + merges. The full
    byte alphabet is always present, so unseen bytes still encode (the round trip stays exact).
    Deterministic for the same texts in the same order.
    """
    n_min = len(SPECIAL_TOKENS) + 256
    if vocab_size < n_min:
        raise ConfigError(f"bpe vocab_size must be >= {n_min} (3 specials + 256 bytes), got {vocab_size}")
    tok = _byte_level(HFTokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(tok)


def tokenizer_summary(tok: Tokenizer) -> dict:
    """A small JSON-able description for training.json."""
    model = json.loads(tok.to_str()).get("model", {})
    return {"vocab_size": tok.vocab_size, "type": model.get("type"), "n_merges": len(model.get("merges", [])),
            "bos_id": tok.bos_id, "eos_id": tok.eos_id, "pad_id": tok.pad_id}
