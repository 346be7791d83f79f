"""`mtp-bench compare`: many result files side by side, with paired tests against a reference.

    mtp-bench compare results/ntp.json results/mtp2.json results/mtp4.json
    mtp-bench compare results/seed*.json --reference 2 --json
    mtp-bench compare results/pr.json --include-baselines   # a file's candidate vs its own baseline

One column per result file's candidate (and, with `--include-baselines`, per baseline), one row
per evaluator metric, deltas against the reference column (`--reference`: a column label or its
1-based number; default the first). Each delta comes with the test that fits what the files hold
(`mtp_bench.scoring.stats`):

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

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtp_bench.api.errors import UnknownNameError, UserError
from mtp_bench.api.metric import Metric
from mtp_bench.reporting.pairing import ALPHA, Side, fmt_p, load_samples, mark_holm, paired_test
from mtp_bench.reporting.results import load_result
from mtp_bench.reporting.show import _model_line, _num, format_metric
from mtp_bench.scoring import stats

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

def _p_text(p: float | None) -> str:
    s = fmt_p(p)
    return f"p{s}" if s.startswith("<") else f"p={s}"


def comparison_cell(comp: dict | None) -> tuple[str, str]:
    """('+0.0123 B p=0.003*', style) for one delta."""
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
