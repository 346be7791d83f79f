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

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtp_bench.api.context import RunContext
from mtp_bench.api.registry import Evaluator, GenRequest
from mtp_bench.generation import engine
from mtp_bench.generation.engine import Generation

if TYPE_CHECKING:
    from mtp_bench.generation.engine import GenerationConfig

GENERATIONS_FILE = "generations.jsonl"
RANK_FILE = "generations.rank{rank}.jsonl"  # written by rank r > 0 of a torchrun run (mtp_bench.generation.distributed)


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


# ----------------------------------------------------------------------------- cached generation

def cached_generate(ctx: RunContext, model: Any, requests: list[GenRequest], gen_config: GenerationConfig,
                    evaluator: Evaluator) -> list[Generation]:
    """What `RunContext.generate` does (installed there by `mtp_bench.generation`): generations for
    `requests`, in order. Each is served from the run's generation cache when present; the rest run
    through the engine (`ctx.generate_fn`, default `engine.generate`) in batches of
    `gen_config.batch_size`, and each batch is appended to the cache as soon as it is done, so a run
    killed at any point and started again redoes at most one batch.

    1) key every request (weights, evaluator name + version, sample id + index, generation
       config, prompt hash, and the per-sample seed when sampling)
    2) serve hits from the cache
    3) sort misses by prompt length (fewer pad tokens per batch), generate batch by batch
       with per-sample seeds, append each batch to the cache (`generate_batches`); under
       torchrun every rank does this for its shard of the misses (`mtp_bench.generation.distributed`)
    """
    gen_fn = ctx.generate_fn or engine.generate
    cfg = gen_config.to_dict()
    cfg.pop("batch_size", None)  # outputs do not depend on it (per-sample seeds), so neither does the key
    other_engine = getattr(model, "generation_engine", None)  # another engine (vLLM) never shares our outputs
    if other_engine is not None:
        cfg["engine"] = other_engine
    sampling = float(gen_config.temperature) > 0.0
    seeds = [ctx.sample_seed(r.sample_id, r.sample_index) for r in requests]
    weights = str(model.weights_sha256)
    known = {f.name for f in dataclasses.fields(Generation)}
    out: list[Generation | None] = [None] * len(requests)
    keys: list[str] = []
    hashed: list[dict] = []
    # 1) + 2)
    for i, r in enumerate(requests):
        fields = key_fields(weights, evaluator.name, evaluator.version, r.sample_id,
                            r.sample_index, cfg, r.prompt, seeds[i] if sampling else None)
        key = hash_fields(fields)
        keys.append(key)
        hashed.append(fields)
        hit = ctx.cache.get(key) if ctx.cache is not None else None
        if hit is not None:
            out[i] = Generation(**{k: v for k, v in hit.items() if k in known})
    misses = [i for i, g in enumerate(out) if g is None]
    ctx.stats["cache_hits"] += len(requests) - len(misses)
    if not misses:
        return out  # type: ignore[return-value]
    # 3)
    todo = [MissingGeneration(requests[i].sample_id, requests[i].prompt, seeds[i], keys[i], hashed[i])
            for i in misses]
    with ctx.progress(f"{evaluator.name} [{ctx.role}]: generate", len(requests)) as bar:
        bar.advance(len(requests) - len(misses))
        if ctx.distributed is not None:  # every rank generates its shard (distributed.py)
            gens = ctx.distributed.generate(model, ctx.role, todo, gen_config, gen_fn, ctx.cache, bar)
        else:
            gens = generate_batches(model, todo, gen_config, gen_fn, ctx.cache, bar)
    for i, g in zip(misses, gens):
        out[i] = g
    ctx.stats["generated"] += len(misses)
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class MissingGeneration:
    """A request the cache could not serve, with what is needed to generate and cache it."""

    sample_id: str
    prompt: str
    seed: int
    key: str  # cache key
    fields: dict  # what the key hashes, stored beside it for humans


def generate_batches(model: Any, todo: list[MissingGeneration], gen_config: GenerationConfig,
                     gen_fn: Callable[..., list], cache: JsonlCache | None, bar: Any = None) -> list[Generation]:
    """Generate `todo` (in order) batch by batch: longest prompts first (fewer pad tokens per
    batch), per-sample seeds, each batch appended to the cache as soon as it is done.
    A model may ask for larger batches (`generation_batch_size`: an engine that batches itself)."""
    enc = model.tokenizer.encode
    order = sorted(range(len(todo)), key=lambda i: (-len(enc(todo[i].prompt)), i))
    bs = int(getattr(model, "generation_batch_size", None) or gen_config.batch_size)
    out: list[Generation | None] = [None] * len(todo)
    for start in range(0, len(order), bs):
        chunk = order[start:start + bs]
        gens = gen_fn(model, [todo[i].prompt for i in chunk], gen_config, seeds=[todo[i].seed for i in chunk])
        if len(gens) != len(chunk):
            raise RuntimeError(f"generation engine returned {len(gens)} results for {len(chunk)} prompts")
        for i, g in zip(chunk, gens):
            out[i] = g
        if cache is not None:
            cache.put_many([(todo[i].key, dataclasses.asdict(g), todo[i].fields) for i, g in zip(chunk, gens)])
        if bar is not None:
            bar.advance(len(chunk))
    return out  # type: ignore[return-value]
