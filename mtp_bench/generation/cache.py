"""The append-only generation cache that makes runs resumable.

One JSONL file per run (`<work_dir>/generations.jsonl`); each line is

    {"key": "<sha256>", "fields": {...what was hashed, for humans...}, "value": {...}}

written with one `write` call, then flushed and fsynced before the next batch starts. So a run
killed at any point (SIGKILL included) loses at most the batch in flight, and the file holds
only whole lines plus, at worst, one torn last line. On read a line that does not parse is
skipped and counted (`skipped`); before appending after a torn line we start a fresh line, so
the torn bytes never glue onto a good record. The first record of a key wins, so a later
duplicate (two processes racing on one work dir) cannot change an earlier result.

A generation's key hashes everything that determines it: the weights (sha256), the evaluator
name and version, the sample id and index, the generation config (minus the batch size,
which never changes an output, so a rerun with another batch size is served), the prompt text (so a
changed prompt template can never be served a stale completion even if someone forgets to
bump the version), and the per-sample seed when sampling (greedy outputs do not depend on it,
so they are shared across seeds).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

GENERATIONS_FILE = "generations.jsonl"
RANK_FILE = "generations.rank{rank}.jsonl"  # written by rank r > 0 of a torchrun run (mtp_bench.distributed)



def generation_key(weights_sha256: str, evaluator: str, evaluator_version: str, sample_id: str,
                   sample_index: int, gen_config: dict[str, Any], prompt: str, seed: int | None) -> str:
    """sha256 over the canonical JSON of everything that determines one generation.

    >>> k = generation_key("ab", "humaneval", "1.0", "HumanEval/0", 0, {"temperature": 0.0}, "def f():", None)
    >>> k == generation_key("ab", "humaneval", "1.0", "HumanEval/0", 0, {"temperature": 0.0}, "def f():", None)
    True
    >>> k == generation_key("ab", "humaneval", "1.1", "HumanEval/0", 0, {"temperature": 0.0}, "def f():", None)
    False
    """
    return hash_fields(key_fields(weights_sha256, evaluator, evaluator_version, sample_id, sample_index,
                           gen_config, prompt, seed))


def key_fields(weights_sha256: str, evaluator: str, evaluator_version: str, sample_id: str,
               sample_index: int, gen_config: dict[str, Any], prompt: str, seed: int | None) -> dict[str, Any]:
    return {
        "weights_sha256": str(weights_sha256),
        "evaluator": str(evaluator),
        "evaluator_version": str(evaluator_version),
        "sample_id": str(sample_id),
        "sample_index": int(sample_index),
        "gen_config": gen_config,
        "prompt_sha256": hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest(),
        "seed": seed,
    }


def hash_fields(obj: Any) -> str:
    """sha256 of the canonical JSON of `obj` (sorted keys, no whitespace)."""
    return hashlib.sha256(_canonical(obj).encode()).hexdigest()


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


class JsonlCache:
    """An append-only key -> JSON value store in one JSONL file. Not a database: one writer
    at a time per file (one run per work dir)."""

    def __init__(self, path: str | Path, read_also: Iterable[str | Path] = ()) -> None:
        self.path = Path(path)
        self._data: dict[str, Any] = {}
        self.skipped = 0  # unreadable lines (a torn last line after a kill)
        self._needs_newline = False  # the file ends in a torn line: start a fresh one first
        self._load(self.path, own=True)
        for other in read_also:  # read-only sources (other ranks' files); this file's records win
            self._load(Path(other), own=False)

    def _load(self, path: Path, own: bool) -> None:
        if not path.exists():
            return
        raw = path.read_bytes()
        if own:
            self._needs_newline = bool(raw) and not raw.endswith(b"\n")
        for line in raw.split(b"\n"):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                key, value = obj["key"], obj["value"]
                if not isinstance(key, str):
                    raise TypeError(key)
            except (ValueError, KeyError, TypeError):
                self.skipped += 1
                continue
            self._data.setdefault(key, value)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str) -> Any | None:
        return self._data.get(key)

    def put(self, key: str, value: Any, fields: dict[str, Any] | None = None) -> None:
        self.put_many([(key, value)] if fields is None else [(key, value, fields)])

    def put_many(self, items: Iterable[tuple]) -> None:
        """Append records in one write, then flush and fsync: after this returns they survive
        a SIGKILL. Items are (key, value) or (key, value, fields)."""
        lines = []
        fresh: list[tuple[str, Any]] = []
        for item in items:
            key, value = item[0], item[1]
            rec = {"key": key, "value": value}
            if len(item) > 2:
                rec["fields"] = item[2]
            lines.append(json.dumps(rec, sort_keys=True, separators=(",", ":"), allow_nan=False))
            fresh.append((key, value))
        if not lines:
            return
        payload = ("\n" if self._needs_newline else "") + "\n".join(lines) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            data = payload.encode()
            while data:  # os.write may write less than asked
                n = os.write(fd, data)
                data = data[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        self._needs_newline = False
        for key, value in fresh:
            self._data.setdefault(key, value)


def open_run_cache(work_dir: str | Path, rank: int = 0) -> JsonlCache:
    """The generation cache of a run. Rank 0 (or the only process) appends to generations.jsonl
    and also reads every rank's file, so a killed multi-rank run resumes with any number of
    ranks, one included; rank r > 0 appends to and reads only its own generations.rank{r}.jsonl."""
    work_dir = Path(work_dir)
    if rank:
        return JsonlCache(work_dir / RANK_FILE.format(rank=rank))
    others = sorted(work_dir.glob(RANK_FILE.format(rank="*")))
    return JsonlCache(work_dir / GENERATIONS_FILE, read_also=others)
