"""Training corpus: documents -> held-out split -> cached token arrays -> deterministic windows.

Pipeline (each step is a function below):
  1) `load_corpus`: documents from the Python standard library of the running interpreter (the
     default, always available offline), a folder of files (glob patterns), or a JSONL file + field.
     Sorted by name, so the order never depends on the file system.
  2) `split_documents`: train/validation BY DOCUMENT, decided by a hash of the document's name, so
     validation text is truly held out and the split does not move when other files change.
  3) `tokenize_split`: tokenize once into a flat uint16/int32 array (documents separated by EOS),
     cached on disk under the cache dir (default ~/.cache/mtp-bench) keyed by corpus + tokenizer.
  4) `WindowLoader`: (B, T) batches of contiguous windows in an order derived from the seed. Its
     whole state is one integer (`cursor`, windows consumed by all ranks), saved when resuming;
     under DDP rank r of W takes a disjoint slice of every global batch.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mtp_bench.api.atomic import atomic_write_bytes
from mtp_bench.api.errors import ConfigError, DataError
from mtp_bench.api.jsonl import read_lines
from mtp_bench.api.paths import cache_root

CACHE_FORMAT_VERSION = 1  # bump when the cached token layout changes
# stdlib sub-trees that are tests, vendored packages or byte caches, not library source
STDLIB_EXCLUDE = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def default_cache_dir() -> Path:
    """The cache root (`mtp_bench.api.paths.cache_root`: $MTP_BENCH_CACHE_DIR, else ~/.cache/mtp-bench)."""
    return cache_root()


@dataclass(frozen=True)
class Document:
    name: str  # relative path (folder/stdlib) or "file.jsonl:LINE" (JSONL): the split is keyed on it
    text: str
    prompt: str | None = None  # prompt/target corpora: the prompt; `text` is then the target (the only part trained)


# -----------------------------------------------------------------------------
# 1) documents


def _matches(rel: str, patterns: list[str]) -> bool:
    """A relative path matches 'json/*.py'-style patterns; a pattern without '/' matches the basename."""
    base = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(rel, p) or ("/" not in p and fnmatch.fnmatchcase(base, p))
               or (p.startswith("**/") and fnmatch.fnmatchcase(rel, p[3:])) for p in patterns)


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"corpus file is not UTF-8: {path} (byte {e.start})") from None
    except OSError as e:
        raise DataError(f"cannot read corpus file {path}: {e.strerror}") from None


def _folder_documents(root: Path, patterns: list[str], exclude: set[str]) -> list[Document]:
    docs = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in exclude)
        for fn in filenames:
            path = Path(dirpath) / fn
            rel = path.relative_to(root).as_posix()
            if _matches(rel, patterns) and path.is_file():
                docs.append(Document(rel, _read_text(path)))
    return sorted(docs, key=lambda d: d.name)


def _jsonl_documents(path: Path, field: str) -> list[Document]:
    docs = []
    for i, rec in read_lines(path, "corpus"):
        if not isinstance(rec, dict) or field not in rec:
            keys = sorted(rec) if isinstance(rec, dict) else []
            raise DataError(f"{path}:{i}: no field {field!r} (fields: {', '.join(keys) or 'none'})")
        if not isinstance(rec[field], str):
            raise DataError(f"{path}:{i}: field {field!r} is {type(rec[field]).__name__}, not a string")
        docs.append(Document(f"{path.name}:{i}", rec[field]))
    return docs


def _jsonl_pairs(path: Path, prompt_field: str, target_field: str) -> list[Document]:
    """Prompt/target documents of a JSONL file: prompt in `prompt_field`, target in `target_field`."""
    docs = []
    for i, rec in read_lines(path, "corpus"):
        for field in (prompt_field, target_field):
            if not isinstance(rec, dict) or not isinstance(rec.get(field), str):
                keys = sorted(rec) if isinstance(rec, dict) else []
                raise DataError(f"{path}:{i}: no string field {field!r} (fields: {', '.join(keys) or 'none'})")
        docs.append(Document(f"{path.name}:{i}", rec[target_field], prompt=rec[prompt_field]))
    return docs


def load_corpus(source: str = "stdlib", glob: str = "**/*.py", field: str = "text",
                target_field: str = "") -> list[Document]:
    """Documents from `source`: "stdlib", a directory, or a .jsonl file (text in `field`).
    With `target_field` (JSONL only): prompt/target documents, prompt in `field`, target in
    `target_field` (for fine-tuning with the loss on the target only: `tokenize_pairs`).

    glob: comma-separated fnmatch patterns on the path relative to the folder ("json/*.py,email/*.py";
    "*" also crosses "/", a pattern without "/" matches the file name, "**/*.py" every .py file);
    ignored for JSONL. Empty documents are dropped; an empty corpus is a DataError.
    """
    patterns = [p.strip() for p in glob.split(",") if p.strip()]
    if target_field:
        path = Path(source).expanduser()
        if not (path.is_file() and path.suffix == ".jsonl"):
            raise DataError(f"a prompt/target corpus (target_field={target_field!r}) must be a .jsonl file, got {source}")
        docs = [d for d in _jsonl_pairs(path, field, target_field) if d.text]
        if not docs:
            raise DataError(f"empty corpus: no non-empty targets in {path} (field {target_field!r})")
        return docs
    if source == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        docs = _folder_documents(root, patterns, STDLIB_EXCLUDE)
        where = f"the Python standard library ({root}) matching {glob!r}"
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            docs = _folder_documents(path, patterns, {"__pycache__", ".git"})
            where = f"{path} matching {glob!r}"
        elif path.is_file() and path.suffix == ".jsonl":
            docs = _jsonl_documents(path, field)
            where = f"{path} (field {field!r})"
        elif path.exists():
            raise DataError(f"corpus must be 'stdlib', a directory or a .jsonl file, got {path}")
        else:
            raise DataError(f"corpus not found: {path}")
    docs = [d for d in docs if d.text]
    if not docs:
        raise DataError(f"empty corpus: no non-empty documents in {where}")
    return docs


def corpus_sha256(docs: list[Document]) -> str:
    """sha256 over the sorted (name, content) list: identifies exactly what was trained on."""
    h = hashlib.sha256()
    for d in sorted(docs, key=lambda d: d.name):
        h.update(d.name.encode() + b"\0" + hashlib.sha256(d.text.encode()).digest())
        if d.prompt is not None:
            h.update(b"\1" + hashlib.sha256(d.prompt.encode()).digest())
    return h.hexdigest()


# -----------------------------------------------------------------------------
# 2) held-out split


def _bucket(name: str) -> float:
    """Deterministic uniform number in [0, 1) from a document name (independent of everything else)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64


def split_documents(docs: list[Document], val_fraction: float) -> tuple[list[Document], list[Document]]:
    """Split by document: those whose name hashes below val_fraction are validation.

    Small corpora may hash no document into validation; then the one with the smallest hash
    is held out, so there is always a validation set (and always a training set).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if len(docs) < 2:
        raise DataError(f"need at least 2 documents to hold one out for validation, got {len(docs)}")
    val_names = {d.name for d in docs if _bucket(d.name) < val_fraction}
    if not val_names:
        val_names = {min(docs, key=lambda d: _bucket(d.name)).name}
    if len(val_names) == len(docs):
        val_names.discard(max(docs, key=lambda d: _bucket(d.name)).name)
    train = [d for d in docs if d.name not in val_names]
    val = [d for d in docs if d.name in val_names]
    return train, val


# -----------------------------------------------------------------------------
# 3) token cache


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.int32)


def tokenize_documents(docs: list[Document], tokenizer) -> np.ndarray:
    """Flat array: doc_0 EOS doc_1 EOS ... (EOS after every document, so each one's end is learnt)."""
    if tokenizer.eos_id is None:
        raise ConfigError("the tokenizer has no EOS token to separate documents")
    ids = tokenizer.encode_batch([d.text for d in docs]) if hasattr(tokenizer, "encode_batch") \
        else [tokenizer.encode(d.text) for d in docs]
    flat = np.fromiter((t for doc in ids for t in (*doc, tokenizer.eos_id)),
                       dtype=np.int64, count=sum(len(d) + 1 for d in ids))
    return flat.astype(token_dtype(tokenizer.vocab_size))


def tokenize_split(docs: list[Document], tokenizer, cache_dir: str | os.PathLike, split: str) -> np.ndarray:
    """Tokenize `docs` once and cache the array; later calls memory-map the cached file.

    Cache key = sha256(format version, corpus hash of these docs, tokenizer JSON), so a changed
    file or vocabulary never reuses stale tokens. The cache dir must not be the shared data dir.
    """
    cache_dir = Path(cache_dir).expanduser()
    key = hashlib.sha256(f"{CACHE_FORMAT_VERSION}|{corpus_sha256(docs)}|{tokenizer.sha256()}".encode()).hexdigest()[:24]
    dtype = token_dtype(tokenizer.vocab_size)
    path = cache_dir / "tokens" / f"{split}-{key}.{dtype.name}.bin"
    if not path.is_file():
        _atomic_write_bytes(path, tokenize_documents(docs, tokenizer).tobytes())
    return np.memmap(path, dtype=dtype, mode="r")


def tokenize_pairs(docs: list[Document], tokenizer, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Prompt/target documents as one row of seq_len tokens each, flattened, and its loss mask.

    Row = prompt + target + EOS, right-padded with the pad token (EOS when there is none); the
    prompt is cut from its start (its end, the cue the target follows, is kept) and a target
    longer than seq_len - 1 from its end. mask is 1 on target and EOS tokens, 0 on prompt and
    padding. Rows are exactly the windows of `WindowLoader` / `eval_windows` (both cut the flat
    array every seq_len tokens), so a window never mixes two documents.
    """
    if tokenizer.eos_id is None:
        raise ConfigError("the tokenizer has no EOS token to end targets")
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    tokens = np.full((len(docs), seq_len), pad, dtype=np.int64)
    mask = np.zeros((len(docs), seq_len), dtype=np.uint8)
    for r, d in enumerate(docs):
        target = list(tokenizer.encode(d.text))[: seq_len - 1] + [tokenizer.eos_id]
        prompt = list(tokenizer.encode(d.prompt or ""))
        prompt = prompt[max(0, len(prompt) - (seq_len - len(target))):]
        row = prompt + target
        tokens[r, : len(row)] = row
        mask[r, len(prompt) : len(row)] = 1
    return tokens.reshape(-1).astype(token_dtype(tokenizer.vocab_size)), mask.reshape(-1)


# -----------------------------------------------------------------------------
# 4) windows


class WindowLoader:
    """Deterministic (B, T) batches of non-overlapping contiguous windows, reshuffled every epoch.

    The token array is cut into n = len(tokens) // T windows. Global position p (counting every
    window any rank has taken) maps to window perm_e[p % n] with e = p // n and perm_e a
    permutation seeded by (seed, e). One call of `next_batch` on every rank takes the global
    positions [cursor, cursor + B*W): rank r gets [cursor + r*B, cursor + (r+1)*B). So W ranks
    with grad_accum=a see exactly the windows of one process with grad_accum=a*W.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, mask: np.ndarray | None = None):
        if seq_len < 2 or batch_size < 1:
            raise ConfigError(f"seq_len must be >= 2 and batch_size >= 1, got {seq_len}, {batch_size}")
        self.tokens, self.T, self.B, self.seed = tokens, seq_len, batch_size, seed
        self.mask = mask  # loss mask aligned with tokens (prompt/target corpora), else None
        self.rank, self.world_size = rank, world_size
        self.n_windows = len(tokens) // seq_len
        if self.n_windows < 1:
            raise DataError(f"training split has {len(tokens)} tokens, fewer than one window of seq_len={seq_len}")
        self.cursor = 0  # global windows consumed, all ranks together: the resume state
        self._perm_epoch, self._perm = -1, None

    def _window(self, p: int) -> int:
        epoch, i = divmod(p, self.n_windows)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
            self._perm_epoch = epoch
        return int(self._perm[i])

    @property
    def epoch(self) -> float:
        return self.cursor / self.n_windows

    def next_batch(self) -> torch.Tensor:
        return self.next_batch_with_mask()[0]

    def next_batch_with_mask(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The next (B, T) batch and its (B, T) loss mask (None without a mask)."""
        start = self.cursor + self.rank * self.B
        rows = [self._window(p) * self.T for p in range(start, start + self.B)]
        batch = np.stack([np.asarray(self.tokens[s : s + self.T], dtype=np.int64) for s in rows])  # (B, T)
        mask = None if self.mask is None else torch.from_numpy(
            np.stack([np.asarray(self.mask[s : s + self.T], dtype=np.int64) for s in rows]))  # (B, T)
        self.cursor += self.B * self.world_size
        return torch.from_numpy(batch), mask

    def state_dict(self) -> dict:
        return {"cursor": self.cursor, "seed": self.seed, "n_windows": self.n_windows, "seq_len": self.T}

    def load_state_dict(self, state: dict) -> None:
        if (state["n_windows"], state["seq_len"], state["seed"]) != (self.n_windows, self.T, self.seed):
            raise DataError("cannot resume: the training data or seq_len/seed differ from the saved run")
        self.cursor = int(state["cursor"])


def eval_windows(tokens: np.ndarray, seq_len: int, n: int) -> torch.Tensor:
    """Up to n fixed validation windows spread evenly over the split: (n', T), same every eval."""
    n_windows = len(tokens) // seq_len
    if n_windows < 1:
        raise DataError(f"validation split has {len(tokens)} tokens, fewer than one window of "
                        f"seq_len={seq_len}; raise val_fraction or use a bigger corpus")
    idx = np.unique(np.linspace(0, n_windows - 1, num=min(n, n_windows)).round().astype(np.int64))
    return torch.from_numpy(np.stack([np.asarray(tokens[i * seq_len : (i + 1) * seq_len], dtype=np.int64) for i in idx]))
