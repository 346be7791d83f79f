"""Pairing: which per-sample values of two result files reproduce a metric, and the test that fits.

Shared by the text report (`show`), `compare` and `gate`:

    1) per-sample values: the samples JSONL beside each result file holds every evaluator's
       records; `sample_units` finds, for each metric, the per-sample values that reproduce the
       recorded aggregate exactly (value and n), or gives none. Rules, first that reproduces:
       pass@k from `passed` (per problem, at the temperature that reported it); `head{k}_{f}` from
       the list field `f`; a field named like the metric (or without a `_fraction`/`_rate` suffix);
       known ratio layouts (self-speculative decoding's tau, acceptance, speedups); and, for a new
       evaluator, any one numeric field whose mean reproduces the metric. A rule that does not
       reproduce the aggregate is never used, so a paired test never runs on the wrong numbers.
    2) paired when both sides have per-sample values over the same sample ids (and the same prompts,
       where records carry them): exact McNemar for pass/fail, else a paired bootstrap;
       otherwise the unpaired z test, and the reason why (`paired_test`).
    3) Holm's correction over a family of p-values (`mark_holm`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtp_bench.api.errors import DataError
from mtp_bench.api.metric import Metric
from mtp_bench.scoring import stats
from mtp_bench.scoring.metrics import pass_at_k

ALPHA = 0.05
REL_TOL = 1e-6  # a rule's per-sample values must reproduce the recorded aggregate to this
# record fields that say what a sample is: where both sides have one, it must be equal to pair
IDENTITY_FIELDS = ("prompt", "task_id", "doc_id", "question", "target", "reference", "references",
                   "n_tokens", "n_bytes_scored")
Records = dict[str, list[dict]]  # evaluator -> its records for one model role


# ----------------------------------------------------------------------------- samples files

def load_samples(path: str | Path, doc: dict) -> tuple[dict[tuple[str, str], list[dict]] | None, str | None]:
    """The records of a result file's samples JSONL: (evaluator, role) -> records, or (None, why)
    when the file has none beside it (then comparisons fall back to unpaired). A samples file
    that is there but malformed, or does not match its result file, is a DataError."""
    name = doc.get("samples_file")
    if not name:
        return None, "the result has no samples file"
    spath = Path(path).parent / name
    if not spath.is_file():
        return None, f"no samples file {spath.name} beside {Path(path).name}"
    out: dict[tuple[str, str], list[dict]] = {}
    try:
        lines = spath.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {str(spath)!r}: {e}") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{str(spath)!r} line {i} is not JSON ({e.msg})") from None
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in
                                                ("evaluator", "evaluator_version", "role", "sample_id")):
            raise DataError(f"{str(spath)!r} line {i}: a sample needs string evaluator, evaluator_version, "
                            "role and sample_id")
        out.setdefault((row["evaluator"], row["role"]), []).append(row)
    for ev, per_role in doc["results"].items():
        for role, block in per_role.items():
            got = out.get((ev, role), [])
            want = block.get("n_records")
            if want is not None and len(got) != want:
                raise DataError(f"{str(spath)!r} holds {len(got)} samples of {ev}/{role}, its result file says "
                                f"{want}: the samples file does not belong to {Path(path).name}")
            if any(r["evaluator_version"] != block["version"] for r in got):
                raise DataError(f"{str(spath)!r}: {ev}/{role} samples were scored by another evaluator version "
                                f"than its result file ({block['version']})")
    return out, None


# ----------------------------------------------------------------------------- per-sample values

@dataclass(frozen=True)
class Units:
    """Per-sample values of one metric for one model: the metric is sum(num) / sum(den) over the
    samples (den = 1 for a mean). `binary` when every value is 0 or 1 (pass/fail)."""

    values: dict[str, tuple[float, float]]  # sample id -> (num, den)
    binary: bool
    rule: str  # which rule found them (for the JSON output)


def _num(x: Any) -> float | None:
    if isinstance(x, bool):
        return float(x)
    if isinstance(x, (int, float)) and math.isfinite(x):
        return float(x)
    return None


def _group(records: list[dict], get: Callable[[dict], tuple[float, float] | None]) -> dict[str, tuple[float, float]] | None:
    """Per sample id: the mean over its records of num (den summed likewise); None when a record lacks it."""
    acc: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        try:
            v = get(r)
        except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError):
            return None
        if v is None:
            return None
        acc.setdefault(r["sample_id"], []).append(v)
    if not acc:
        return None
    return {sid: (math.fsum(a for a, _ in vs) / len(vs), math.fsum(b for _, b in vs) / len(vs))
            for sid, vs in acc.items()}


def _mean_of(f: Callable[[dict], Any]) -> Callable[[dict], tuple[float, float] | None]:
    def get(r: dict) -> tuple[float, float] | None:
        v = _num(f(r))
        return None if v is None else (v, 1.0)
    return get


def _leaves(record: dict) -> Iterable[tuple[str, Callable[[dict], Any]]]:
    """Numeric (or bool) scalar fields of a record, nested dicts one level deep as 'a.b'."""
    for k, v in record.items():
        if k in ("sample_id", "sample_index", "evaluator", "evaluator_version", "role"):
            continue
        if _num(v) is not None:
            yield k, (lambda r, k=k: r[k])
        elif isinstance(v, dict):
            for k2, v2 in v.items():
                if _num(v2) is not None:
                    yield f"{k}.{k2}", (lambda r, k=k, k2=k2: r[k][k2])


def _count(xs: list[int], at_least: int) -> int:
    return sum(1 for a in xs if a >= at_least)


# known ratio layouts: metric name -> per-record (num, den); written for self-speculative decoding's
# records (accepted_lengths, draft_accepts, timings), but keyed by fields, so any evaluator writing
# these fields gets them. Each is used only where it reproduces the recorded aggregate.
RATIO_RULES: dict[str, Callable[[dict], tuple[float, float]]] = {
    "tau": lambda r: (sum(r["accepted_lengths"][1:]), len(r["accepted_lengths"][1:])),
    "forwards_per_token": lambda r: (len(r["accepted_lengths"]), len(r["output_ids"])),
    "tokens_per_s": lambda r: (len(r["output_ids"]) / r["spec_s"], 1.0),
    "tokens_per_s_total": lambda r: (len(r["output_ids"]), r["spec_s"]),
    "plain_tokens_per_s": lambda r: (len(r.get("plain_output_ids", r["output_ids"])) / r["plain_s"], 1.0),
    "speedup": lambda r: (r["plain_s"], r["spec_s"]),
    "speedup_decode": lambda r: (r["plain_s"] - r["plain_prefill_s"], r["spec_s"] - r["spec_prefill_s"]),
}
INDEXED_RATIO_RULES: dict[str, Callable[[dict, int], tuple[float, float]]] = {
    # head i's draft accepted, given the drafts before it were / among all steps
    "alpha_cond": lambda r, i: (_count(r["draft_accepts"], i - 1), _count(r["draft_accepts"], i - 2)),
    "alpha_uncond": lambda r, i: (_count(r["draft_accepts"], i - 1), len(r["draft_accepts"])),
    # the heads evaluator's teacher-forced chain: head i's per-window agreement, already a mean
    "alpha_proxy": lambda r, i: (r["alpha_proxy"][i - 2], 1.0),
}


def _block_ratio_rules(block: dict) -> dict[str, Callable[[dict], tuple[float, float]]]:
    """Ratio rules that need the block's info (the draft length k of vLLM's acceptance rate)."""
    rules: dict[str, Callable[[dict], tuple[float, float]]] = {
        # vLLM's mean acceptance length: 1 + accepted / draft steps (counted before trimming)
        "mean_acceptance_length": lambda r: (len(r["draft_accepts"]) + sum(r["draft_accepts"]), len(r["draft_accepts"])),
    }
    k = (block.get("info") or {}).get("k")
    if isinstance(k, int) and k > 1:
        rules["draft_acceptance_rate"] = lambda r: (sum(r["draft_accepts"]), (k - 1) * len(r["draft_accepts"]))
    return rules


def _candidates(name: str, block: dict, records: list[dict]) -> Iterable[tuple[str, dict[str, tuple[float, float]] | None]]:
    """(rule, per-sample values) in order of preference; the caller keeps the first that reproduces."""
    m = re.fullmatch(r"pass@(\d+)", name)
    if m and all("passed" in r for r in records):

        k = int(m.group(1))
        best_t = ((block.get("info") or {}).get("best_temperature") or {}).get(name)
        use = [r for r in records if best_t is None or r.get("temperature") == best_t]
        by_task: dict[str, list[bool]] = {}
        for r in use:
            by_task.setdefault(r["sample_id"], []).append(bool(r["passed"]))
        if by_task and all(len(v) >= k for v in by_task.values()):
            yield "pass@k from passed", {t: (pass_at_k(len(v), sum(v), k), 1.0) for t, v in by_task.items()}
    m = re.fullmatch(r"head(\d+)_(\w+)", name)
    if m:
        i, f = int(m.group(1)) - 1, m.group(2)
        yield f"{f}[{i}]", _group(records, _mean_of(lambda r: r[f][i]))
    if name in RATIO_RULES:
        yield f"ratio rule {name}", _group(records, RATIO_RULES[name])
    block_rules = _block_ratio_rules(block)
    if name in block_rules and all("draft_accepts" in r for r in records):
        with_steps = [r for r in records if r["draft_accepts"]]  # steps exist only where a draft was made
        yield f"ratio rule {name}", _group(with_steps, block_rules[name])
    m = re.fullmatch(r"(\w+?)_(\d+)", name)
    if m and m.group(1) in INDEXED_RATIO_RULES:
        rule, i = INDEXED_RATIO_RULES[m.group(1)], int(m.group(2))
        yield f"ratio rule {name}", _group(records, lambda r: rule(r, i))
    stripped = re.sub(r"_(fraction|rate|mean)$", "", name)
    for f in dict.fromkeys((name, stripped)):
        yield f, _group(records, _mean_of(lambda r, f=f: r[f]))
    # a new evaluator: any single numeric field that reproduces the metric (ambiguity -> none). Not a
    # field named for another metric of the block (`degenerate` is degenerate_fraction's), and not a
    # constant one (a constant field with the right value, a temperature, would "reproduce" a mean
    # by chance) unless it is all 0 or all 1: a pass rate of 0 or 1 has only that per-sample vector
    others = {re.sub(r"_(fraction|rate|mean)$", "", m) for m in block["metrics"] if m != name} | set(block["metrics"])
    found = {}
    for f, get in _leaves(records[0]):
        vals = _group(records, _mean_of(get)) if f not in others else None
        if vals is not None and (len(set(vals.values())) > 1 or next(iter(vals.values())) in ((0.0, 1.0), (1.0, 1.0))):
            found[f] = vals
    yield "field search", _unique_reproducing(found, block, name)


def _reproduces(vals: dict[str, tuple[float, float]] | None, metric: Metric) -> bool:
    if not vals or len(vals) != metric.n:
        return False
    den = math.fsum(b for _, b in vals.values())
    if den == 0:
        return False
    stat = math.fsum(a for a, _ in vals.values()) / den
    return math.isclose(stat, metric.value, rel_tol=REL_TOL, abs_tol=REL_TOL)


def _unique_reproducing(found: dict[str, dict], block: dict, name: str) -> dict | None:
    metric = Metric.from_dict(block["metrics"][name])
    hits = [v for v in found.values() if _reproduces(v, metric)]
    if not hits or any(h != hits[0] for h in hits[1:]):
        return None  # none, or several fields that reproduce it but disagree: do not guess
    return hits[0]


def sample_units(name: str, block: dict, records: list[dict] | None) -> Units | None:
    """Per-sample values of metric `name` of one evaluator block (a result's per-role block) from
    its records, or None when no rule reproduces the recorded value and n."""
    if not records or name not in block.get("metrics", {}):
        return None
    metric = Metric.from_dict(block["metrics"][name])
    for rule, vals in _candidates(name, block, records):
        if _reproduces(vals, metric):
            binary = all(b == 1.0 and a in (0.0, 1.0) for a, b in vals.values())  # type: ignore[union-attr]
            return Units(vals, binary, rule)  # type: ignore[arg-type]
    return None


# ----------------------------------------------------------------------------- one test

@dataclass
class Side:
    """One model's results of one evaluator: its block and its records (None: no samples)."""

    block: dict
    records: list[dict] | None
    no_records_why: str | None = None
    _units: dict[str, Units | None] = field(default_factory=dict)

    def units(self, name: str) -> Units | None:
        if name not in self._units:
            self._units[name] = sample_units(name, self.block, self.records)
        return self._units[name]


def _identity_mismatch(a: list[dict], b: list[dict]) -> str | None:
    first_a: dict[str, dict] = {}
    first_b: dict[str, dict] = {}
    for recs, first in ((a, first_a), (b, first_b)):
        for r in recs:
            first.setdefault(r["sample_id"], r)
    for f in IDENTITY_FIELDS:
        for sid, ra in first_a.items():
            rb = first_b.get(sid)
            if rb is not None and f in ra and f in rb and ra[f] != rb[f]:
                return f"{f} of sample {sid} differs"
    return None


def paired_test(name: str, side: Side, ref: Side) -> stats.Difference:
    """The test of `side` against `ref` on one metric: paired where both have per-sample values
    over the same samples, unpaired (with the reason in `note`) otherwise."""
    a, b = Metric.from_dict(side.block["metrics"][name]), Metric.from_dict(ref.block["metrics"][name])
    why = None
    if side.records is None or ref.records is None:
        why = side.no_records_why or ref.no_records_why or "no samples"
    else:
        ua, ub = side.units(name), ref.units(name)
        if ua is None or ub is None:
            why = "no per-sample values reproduce this metric"
        elif set(ua.values) != set(ub.values):
            shared = len(set(ua.values) & set(ub.values))
            why = f"samples not shared ({len(ua.values)} vs {len(ub.values)} sample ids, {shared} in common)"
        else:
            why = _identity_mismatch(side.records, ref.records)
            if why is None:
                ids = sorted(ua.values)
                if ua.binary and ub.binary:
                    return stats.mcnemar_test([ua.values[i][0] for i in ids], [ub.values[i][0] for i in ids])
                return stats.paired_bootstrap([ua.values[i][0] for i in ids], [ua.values[i][1] for i in ids],
                                              [ub.values[i][0] for i in ids], [ub.values[i][1] for i in ids])
    return stats.unpaired_z_test(a.value, a.stderr, b.value, b.stderr, note=why)


def mark_holm(tests: list[stats.Difference | None], alpha: float = ALPHA) -> list[tuple[float | None, bool]]:
    """(Holm-adjusted p, significant) per test, over the family of tests that have a p-value."""
    adjusted = stats.holm([t.p if t is not None else None for t in tests])
    return [(p, p is not None and p < alpha) for p in adjusted]


def fmt_p(p: float | None) -> str:
    if p is None:
        return "—"
    return "<1e-4" if p < 1e-4 else f"{p:.4f}" if p < 0.01 else f"{p:.3f}"
