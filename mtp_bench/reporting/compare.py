"""`mtp-bench compare`: many result files side by side, with paired tests against a reference.

    mtp-bench compare results/ntp.json results/mtp2.json results/mtp4.json
    mtp-bench compare results/seed*.json --reference 2 --json
    mtp-bench compare results/pr.json --include-baselines   # a file's candidate vs its own baseline

One column per result file's candidate (and, with `--include-baselines`, per baseline), one row
per evaluator metric, deltas against the reference column (`--reference`: a column label or its
1-based number; default the first). Each delta comes with the test that fits what the files hold
(`mtp_bench.stats`):

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
       otherwise the unpaired z test, and the table says why (a note under it).
    3) Holm's correction over every p-value of the table; `*` marks those below alpha after it.

A row whose columns were scored by different evaluator versions is shown, marked, and not
compared; the other rows are.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtp_bench.api.errors import DataError, UnknownNameError, UserError
from mtp_bench.api.metric import Metric
from mtp_bench.reporting.results import load_result
from mtp_bench.scoring import stats

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
}


def _candidates(name: str, block: dict, records: list[dict]) -> Iterable[tuple[str, dict[str, tuple[float, float]] | None]]:
    """(rule, per-sample values) in order of preference; the caller keeps the first that reproduces."""
    m = re.fullmatch(r"pass@(\d+)", name)
    if m and all("passed" in r for r in records):
        from mtp_bench.scoring.metrics import pass_at_k

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


# ----------------------------------------------------------------------------- the table

@dataclass
class Column:
    label: str
    path: str
    doc: dict
    role: str
    samples: dict[tuple[str, str], list[dict]] | None
    samples_why: str | None

    @property
    def model(self) -> dict | None:
        return self.doc["models"].get(self.role)

    def side(self, evaluator: str) -> Side | None:
        block = self.doc["results"].get(evaluator, {}).get(self.role)
        if block is None:
            return None
        recs = None if self.samples is None else self.samples.get((evaluator, self.role))
        return Side(block, recs, self.samples_why)


def columns_from_files(paths: list[str], include_baselines: bool = False) -> list[Column]:
    """Load every file (and its samples) into columns labelled by file name (role added for baselines)."""
    if not paths:
        raise UserError("give at least one result file")
    loaded = [(p, load_result(p)) for p in paths]
    stems = [Path(p).name.removesuffix(".json") for p, _ in loaded]
    cols = []
    for i, ((p, doc), stem) in enumerate(zip(loaded, stems)):
        label = stem if stems.count(stem) == 1 else f"{i + 1}:{stem}"
        samples, why = load_samples(p, doc)
        roles = ["candidate"] + (["baseline"] if include_baselines and "baseline" in doc["models"] else [])
        for role in roles:
            cols.append(Column(label if role == "candidate" else f"{label}/baseline", str(p), doc, role, samples, why))
    return cols


def pick_reference(columns: list[Column], reference: str | None) -> int:
    if reference is None:
        return 0
    labels = [c.label for c in columns]
    if reference in labels:
        return labels.index(reference)
    if reference.isdigit() and 1 <= int(reference) <= len(columns):
        return int(reference) - 1
    raise UnknownNameError(f"--reference {reference!r} is neither a column label nor a number 1..{len(columns)}; "
                           f"columns: {', '.join(labels)}")


def build(columns: list[Column], ref: int = 0, alpha: float = ALPHA) -> dict[str, Any]:
    """The comparison as plain data: columns, rows (one per evaluator metric, in first-seen order),
    per non-reference cell the delta and its test, Holm-adjusted p-values over the whole table."""
    by_ev: dict[str, dict[str, None]] = {}  # evaluators in first-seen order, their metrics likewise
    for c in columns:
        for ev in c.doc["evals"]:
            for name in (c.doc["results"].get(ev, {}).get(c.role) or {}).get("metrics", {}):
                by_ev.setdefault(ev, {}).setdefault(name)
    keys = [(ev, name) for ev, names in by_ev.items() for name in names]
    sides: dict[tuple[int, str], Side | None] = {}
    rows, flat = [], []
    for ev, name in keys:
        for j, c in enumerate(columns):
            if (j, ev) not in sides:
                sides[(j, ev)] = c.side(ev)
        cells = []
        for j in range(len(columns)):
            s = sides[(j, ev)]
            cells.append(s.block["metrics"][name] if s is not None and name in s.block["metrics"] else None)
        versions = [sides[(j, ev)].block["version"] if cells[j] is not None else None  # type: ignore[union-attr]
                    for j in range(len(columns))]
        mixed = len({v for v in versions if v is not None}) > 1
        hib = next(Metric.from_dict(x).higher_is_better for x in cells if x is not None)
        comps: list[dict | None] = []
        for j, cell in enumerate(cells):
            if j == ref or cell is None or cells[ref] is None or mixed:
                comps.append(None)
                continue
            t = paired_test(name, sides[(j, ev)], sides[(ref, ev)])  # type: ignore[arg-type]
            d = t.diff
            better = None if d == 0 or math.isnan(d) else (d > 0) == hib
            comps.append({"delta": d, "better": better, "test": t})
            flat.append(t)
        rows.append({"evaluator": ev, "metric": name, "higher_is_better": hib, "versions": versions,
                     "mixed_versions": mixed, "values": cells, "comparisons": comps})
    marks = iter(mark_holm(flat, alpha))
    for row in rows:
        for comp in row["comparisons"]:
            if comp is not None:
                comp["p_holm"], comp["significant"] = next(marks)
                comp["test"] = comp["test"].to_dict()
    return {"columns": [{"label": c.label, "path": c.path, "role": c.role, "model": c.model} for c in columns],
            "reference": ref, "alpha": alpha, "n_tests": len(flat), "rows": rows}


# ----------------------------------------------------------------------------- rendering

def fmt_p(p: float | None) -> str:
    if p is None:
        return "—"
    return "<1e-4" if p < 1e-4 else f"{p:.4f}" if p < 0.01 else f"{p:.3f}"


def _p_text(p: float | None) -> str:
    s = fmt_p(p)
    return f"p{s}" if s.startswith("<") else f"p={s}"


def comparison_cell(comp: dict | None) -> tuple[str, str]:
    """('+0.0123 B p=0.003*', style) for one delta."""
    from mtp_bench.reporting.show import _num

    if comp is None:
        return "—", ""
    t = comp["test"]
    letter = stats.METHODS[t["method"]][0]
    d = comp["delta"]
    text = f"{'+' if d > 0 else ''}{_num(d)} {letter} {_p_text(t['p'])}{'*' if comp['significant'] else ''}"
    return text, {True: "green", False: "red"}.get(comp["better"], "")


def legend(table: dict) -> list[str]:
    ref = table["columns"][table["reference"]]["label"]
    methods = sorted({c["test"]["method"] for r in table["rows"] for c in r["comparisons"] if c})
    lines = [f"Δ = column − {ref} (the reference); green: better, red: worse, in the metric's own direction ↑/↓; "
             "value ± standard error over samples"]
    lines += [f"{stats.METHODS[m][0]} = {stats.METHODS[m][1]}" for m in methods]
    lines.append(f"p: two-sided; * = below {table['alpha']} after Holm's correction over the {table['n_tests']} "
                 "p-values of this table")
    return lines


def notes(table: dict) -> list[str]:
    """Why rows fell back to unpaired tests, and which rows mix evaluator versions (deduplicated)."""
    out: list[str] = []
    unpaired: dict[tuple[str, str, str], list[str]] = {}  # (evaluator, column, why) -> metrics
    labels = [c["label"] for c in table["columns"]]
    ref = labels[table["reference"]]
    for r in table["rows"]:
        if r["mixed_versions"]:
            vs = ", ".join(f"{lab} v{v}" for lab, v in zip(labels, r["versions"]) if v)
            out.append(f"{r['evaluator']}.{r['metric']}: not compared, evaluator versions differ ({vs})")
        for lab, c in zip(labels, r["comparisons"]):
            if c and c["test"]["note"]:
                unpaired.setdefault((r["evaluator"], lab, c["test"]["note"]), []).append(r["metric"])
    for (ev, lab, why), names in unpaired.items():
        out.append(f"unpaired ({lab} vs {ref}): {ev} {', '.join(names)}: {why}")
    return out


def render(table: dict, console: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    from mtp_bench.reporting.show import _model_line, format_metric

    cols = table["columns"]
    for c in cols:
        console.print(_model_line(c["label"], c["model"]), markup=False, highlight=False)
    t = Table(title="compare", caption="\n".join(legend(table)), caption_justify="left")
    t.add_column("evaluator", no_wrap=True)
    t.add_column("metric", no_wrap=True)
    for j, c in enumerate(cols):
        t.add_column(c["label"] + (" (ref)" if j == table["reference"] else ""), justify="right", no_wrap=True)
        if j != table["reference"]:
            t.add_column(f"Δ {c['label']}", justify="right", no_wrap=True)
    last = None
    for r in table["rows"]:
        version = next(v for v in r["versions"] if v)
        ev = f"{r['evaluator']} v{version}" if r["evaluator"] != last else ""
        last = r["evaluator"]
        metric = f"{r['metric']} {'↑' if r['higher_is_better'] else '↓'}" + (" (mixed versions)" if r["mixed_versions"] else "")
        cells: list[Any] = [ev, metric]
        for j, v in enumerate(r["values"]):
            cells.append(format_metric(v))
            if j != table["reference"]:
                text, style = comparison_cell(r["comparisons"][j])
                cells.append(Text(text, style=style))
        t.add_row(*cells)
    console.print(t)
    for line in notes(table):
        console.print(line, markup=False, highlight=False, style="yellow")


# ----------------------------------------------------------------------------- `mtp-bench compare`

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (f"{p.description or ''}\n\n"
                     "examples:\n"
                     "  mtp-bench compare results/ntp.json results/mtp2.json results/mtp4.json\n"
                     "  mtp-bench compare results/seed0.json results/seed1.json results/seed2.json --reference 2\n"
                     "  mtp-bench compare results/pr.json --include-baselines --json\n\n"
                     "Tests: exact McNemar (pass/fail) or a paired bootstrap on the samples two files share;\n"
                     "unpaired z where they share none (said under the table); Holm over the table.")
    p.add_argument("results", nargs="+", metavar="RESULT", help="result files (their samples JSONL beside them)")
    p.add_argument("--reference", default=None, metavar="COLUMN",
                   help="column the others are compared with: a label (file name without .json) or its number "
                        "(default: the first)")
    p.add_argument("--include-baselines", action="store_true", help="add a column for each file's baseline model")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")


def main(args: argparse.Namespace) -> int:
    columns = columns_from_files(args.results, args.include_baselines)
    if len(columns) < 2:
        raise UserError("nothing to compare: give two or more result files, or --include-baselines "
                        "with a file that has a baseline")
    table = build(columns, pick_reference(columns, args.reference))
    if args.json:
        print(json.dumps(table, indent=2, ensure_ascii=False))
    else:
        from mtp_bench.reporting.show import report_console

        render(table, report_console())
    return 0
