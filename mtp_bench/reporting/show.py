"""Reports: side-by-side tables of a result file, in the console (rich) or as JSON.

One table per suite; a row per evaluator metric; columns candidate, baseline, delta and the
p-value of a paired test on the samples both models answered (exact McNemar for pass/fail, a
paired bootstrap otherwise; unpaired z where the samples are not shared, with the reason under
the table: `mtp_bench.reporting.compare`), `*` where it survives Holm's correction over the report.
Values read "value ± standard error". A caption under each table says what the numbers mean. A comparison between results scored by different
versions of an evaluator is refused: the numbers would not measure the same thing.

    mtp-bench show results/mine.json                          # print a saved report again
    mtp-bench show results/mine.json --baseline results/ci.json   # candidate vs another file's
    mtp-bench show results/mine.json --json                   # the result file, for machines
"""

from __future__ import annotations

import math
from typing import Any

from mtp_bench.api.errors import UserError
from mtp_bench.api.metric import Metric
from mtp_bench.api.registry import KNOWN_SUITES
from mtp_bench.reporting.pairing import Side, fmt_p, mark_holm, paired_test
from mtp_bench.scoring import metrics as M
from mtp_bench.scoring.stats import METHODS

GENERIC_CAPTION = ("value ± standard error over samples; Δ = candidate − baseline (green: better, red: worse, "
                   "in the metric's own direction ↑/↓); p (test): two-sided p-value of the candidate-baseline "
                   "difference, M = exact McNemar (pass/fail, paired), B = paired bootstrap, U = unpaired z "
                   "(no shared per-sample values); * = below 0.05 after Holm's correction over this report")


class VersionMismatchError(UserError):
    """Two results of one evaluator were scored by different evaluator versions."""


# ----------------------------------------------------------------------------- comparison rows

def _side(doc: dict, role: str) -> dict[str, Any]:
    """One model's view of a result file: its model block and, per evaluator, version + metrics."""
    return {
        "model": doc["models"].get(role),
        "evals": {name: per_role[role] for name, per_role in doc["results"].items() if role in per_role},
    }


Samples = dict[tuple[str, str], list[dict]]  # (evaluator, role) -> records


def comparison(doc: dict, baseline_doc: dict | None = None, samples: Samples | None = None,
               baseline_samples: Samples | None = None, no_samples_why: str | None = None) -> dict[str, Any]:
    """Rows of the report as plain data. Without `baseline_doc` the file's own baseline role
    (if any) is the baseline; with it, that file's candidate is. `samples` (and, with a
    baseline file, `baseline_samples`) hold the per-sample records the paired tests read; without
    them the tests are unpaired (`no_samples_why` says why). Mixing evaluator versions raises
    VersionMismatchError."""
    cand = _side(doc, "candidate")
    base_role = "candidate"
    if baseline_doc is not None:
        base = _side(baseline_doc, "candidate")
    elif "baseline" in doc["models"]:
        base, base_role, baseline_samples = _side(doc, "baseline"), "baseline", samples
    else:
        base = None
    evaluators = dict(doc["evaluators"])
    if baseline_doc is not None:
        for k, v in baseline_doc["evaluators"].items():
            evaluators.setdefault(k, v)
    rows = []
    for name in doc["evals"]:
        c = cand["evals"].get(name)
        b = base["evals"].get(name) if base is not None else None
        if c is not None and b is not None and c["version"] != b["version"]:
            raise VersionMismatchError(
                f"{name}: candidate scored with evaluator version {c['version']}, baseline with {b['version']}; "
                "refusing to compare results of different evaluator versions")
        names = list(c["metrics"]) if c else []
        names += [k for k in (b["metrics"] if b else {}) if k not in names]
        for metric in names:
            cm = Metric.from_dict(c["metrics"][metric]) if c and metric in c["metrics"] else None
            bm = Metric.from_dict(b["metrics"][metric]) if b and metric in b["metrics"] else None
            hib = (cm or bm).higher_is_better  # type: ignore[union-attr]
            test = None
            if cm and bm:
                def records(smp: Samples | None, role: str, ev: str = name) -> list[dict] | None:
                    return None if smp is None else smp.get((ev, role))

                why = no_samples_why or "no samples"
                test = paired_test(metric, Side(c, records(samples, "candidate"), why),  # type: ignore[arg-type]
                                   Side(b, records(baseline_samples, base_role), why))  # type: ignore[arg-type]
            rows.append({
                "evaluator": name,
                "version": (c or b)["version"],  # type: ignore[index]
                "metric": metric,
                "higher_is_better": hib,
                "candidate": cm.to_dict() if cm else None,
                "baseline": bm.to_dict() if bm else None,
                "delta": M.delta(cm, bm) if cm and bm else None,
                "better": M.improved(cm, bm) if cm and bm else None,
                "test": test,
            })
    marks = iter(mark_holm([r["test"] for r in rows if r["test"] is not None]))
    for r in rows:
        if r["test"] is not None:
            r["p_holm"], r["significant"] = next(marks)
            r["test"] = r["test"].to_dict()
        else:
            r["p_holm"], r["significant"] = None, None
    return {"candidate": cand["model"], "baseline": base["model"] if base else None,
            "evaluators": evaluators, "rows": rows}


def suite_tables(doc: dict, comp: dict) -> list[tuple[str, list[dict]]]:
    """Group rows into one table per suite. A run of one suite is one table; a run of `all` or
    of `--evals` puts each evaluator under its first suite (so no row is printed twice)."""
    suite = doc.get("suite")
    if suite and suite != "all":
        return [(suite, comp["rows"])]
    groups: dict[str, list[dict]] = {}
    for row in comp["rows"]:
        suites = comp["evaluators"].get(row["evaluator"], {}).get("suites") or ["other"]
        groups.setdefault(suites[0], []).append(row)
    order = [s for s in KNOWN_SUITES if s in groups] + sorted(s for s in groups if s not in KNOWN_SUITES)
    return [(s, groups[s]) for s in order]


# ----------------------------------------------------------------------------- rendering

REPORT_WIDTH = 160  # columns when the output is not a terminal (a log, a file, CI): never truncate


def report_console():
    """A rich console for reports: the terminal's width on a terminal; REPORT_WIDTH otherwise,
    since rich would fall back to 80 columns and cut the numbers of a side-by-side table."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=REPORT_WIDTH)


def _num(x: Any, like: float | None = None) -> str:
    """Fixed decimals chosen by magnitude (of `like` when given, so a standard error is printed
    with the decimals of its value): 0.4512, 12.35, 523.2, 1.235e+06."""
    if x is None:
        return "—"
    x = float(x)
    if math.isnan(x) or math.isinf(x):
        return str(x)
    ref = abs(float(like)) if like is not None and math.isfinite(float(like)) else abs(x)
    if ref >= 1e5 or (0 < ref < 1e-3):
        return f"{x:.3e}"
    return f"{x:.4f}" if ref < 10 else f"{x:.2f}" if ref < 1000 else f"{x:.1f}"


def format_metric(m: dict | None) -> str:
    """'0.4512 ± 0.0390' (value ± standard error), or the bare value without one."""
    if m is None:
        return "—"
    if m.get("stderr") is None:
        return _num(m["value"])
    return f"{_num(m['value'])} ± {_num(m['stderr'], like=m['value'])}"


def _model_line(role: str, info: dict | None) -> str:
    if info is None:
        return f"{role}: —"
    params = info.get("num_params")
    p = f"{params / 1e6:.2f}M params" if isinstance(params, int) else "? params"
    return (f"{role}: {info.get('path')} ({info.get('format')}, n_future={info.get('n_future')}, {p}, "
            f"sha256 {str(info.get('weights_sha256'))[:12]})")


def sandbox_lines(doc: dict) -> list[str]:
    """One line per distinct code-execution isolation recorded by the evaluators (what the
    sandbox probe saw in force on the machine that ran them), so a report never hides it."""
    seen: dict[tuple, list[str]] = {}
    for name, per_role in doc.get("results", {}).items():
        for block in per_role.values():
            sb = (block.get("info") or {}).get("sandbox")
            if isinstance(sb, dict) and "in_force" in sb:
                key = (tuple(sb.get("in_force") or ()), tuple(sb.get("not_in_force") or ()))
                if name not in seen.setdefault(key, []):
                    seen[key].append(name)
    lines = []
    for (on, off), names in seen.items():
        line = f"sandbox ({', '.join(names)}): in force: {', '.join(on) or 'none'}"
        lines.append(line + (f"; NOT in force: {', '.join(off)}" if off else ""))
    single = [f"{name} {role} {info['single_process_problems']}/{info.get('num_problems', '?')}"
              for name, per_role in doc.get("results", {}).items() for role, block in per_role.items()
              if "single_process_problems" in (info := block.get("info") or {})]
    if single:  # problems whose tests could not be split from the program (mtp_bench.execution.judge)
        lines.append("problems judged in one process with the program, not apart: " + ", ".join(single))
    return lines


def test_cell(row: dict) -> str:
    """'0.0021 B*': p-value, test letter, * when it survives Holm; '—' without a test."""
    t = row.get("test")
    if t is None or t["p"] is None:
        return "—"
    return f"{fmt_p(t['p'])} {METHODS[t['method']][0]}{'*' if row['significant'] else ''}"


BLOCKS = " ▁▂▃▄▅▆▇█"


def acceptance_lines(doc: dict) -> list[str]:
    """Speculative decoding's acceptance profile per evaluator and role, as text: the share of steps
    that accepted 0..k-1 drafts (a bar each) and the mean accepted drafts per output-position bin.

    >>> doc = {"results": {"specdec": {"candidate": {"info": {"acceptance_histogram": [6, 3, 1],
    ...        "acceptance_by_position": {"bin": 32, "starts": [0, 32], "mean_accepted": [0.6, 0.4]}}}}}}
    >>> for line in acceptance_lines(doc): print(line)
    specdec candidate: drafts accepted per step: 0: 60% ▅, 1: 30% ▂, 2: 10% ▁ (10 steps)
    specdec candidate: mean drafts accepted by output position (32-token bins): 0: 0.60, 32: 0.40
    """
    lines = []
    for ev, per_role in doc.get("results", {}).items():
        for role, block in per_role.items():
            info = (block or {}).get("info") or {}
            hist = info.get("acceptance_histogram")
            if not (isinstance(hist, list) and hist and sum(hist) > 0):
                continue
            total = sum(hist)
            cells = [f"{a}: {h / total:.0%} {BLOCKS[min(8, max(1 if h else 0, round(8 * h / total)))]}".rstrip()
                     for a, h in enumerate(hist)]
            lines.append(f"{ev} {role}: drafts accepted per step: {', '.join(cells)} ({total} steps)")
            pos = info.get("acceptance_by_position") or {}
            if pos.get("starts"):
                by = ", ".join(f"{s}: {m:.2f}" for s, m in zip(pos["starts"], pos["mean_accepted"]))
                lines.append(f"{ev} {role}: mean drafts accepted by output position ({pos.get('bin')}-token bins): {by}")
    return lines


def render(doc: dict, console: Any, baseline_doc: dict | None = None, samples: Samples | None = None,
           baseline_samples: Samples | None = None, no_samples_why: str | None = None) -> None:
    """Print the report of a result document to a rich console (`comparison` says what the
    samples arguments are)."""
    from rich.table import Table
    from rich.text import Text

    comp = comparison(doc, baseline_doc, samples, baseline_samples, no_samples_why)
    has_base = comp["baseline"] is not None
    console.print(_model_line("candidate", comp["candidate"]), markup=False, highlight=False)
    if has_base:
        where = "" if baseline_doc is None else " (from the baseline file)"
        console.print(_model_line("baseline", comp["baseline"]) + where, markup=False, highlight=False)
    for suite, rows in suite_tables(doc, comp):
        captions = []
        for name in dict.fromkeys(r["evaluator"] for r in rows):
            cap = comp["evaluators"].get(name, {}).get("caption")
            if cap:
                captions.append(f"{name}: {cap}")
        captions.append(GENERIC_CAPTION if has_base else "value ± standard error over samples; ↑/↓ = higher/lower is better")
        table = Table(title=f"suite: {suite}", caption="\n".join(captions), caption_justify="left")
        table.add_column("evaluator", no_wrap=True)
        table.add_column("metric", no_wrap=True)
        table.add_column("candidate", justify="right", no_wrap=True)
        if has_base:
            table.add_column("baseline", justify="right", no_wrap=True)
            table.add_column("Δ", justify="right", no_wrap=True)
            table.add_column("p (test)", justify="right", min_width=8, no_wrap=True)
        last = None
        for r in rows:
            ev = f"{r['evaluator']} v{r['version']}" if r["evaluator"] != last else ""
            last = r["evaluator"]
            metric = f"{r['metric']} {'↑' if r['higher_is_better'] else '↓'}"
            cells: list[Any] = [ev, metric, format_metric(r["candidate"])]
            if has_base:
                d = r["delta"]
                style = {True: "green", False: "red"}.get(r["better"], "")
                cells += [format_metric(r["baseline"]),
                          Text("—" if d is None else ("+" if d > 0 else "") + _num(d), style=style),
                          Text(test_cell(r), style="bold" if r["significant"] else "")]
            table.add_row(*cells)
        console.print(table)
    unpaired: dict[str, list[str]] = {}
    for r in comp["rows"]:
        if r["test"] is not None and r["test"]["note"]:
            unpaired.setdefault(r["test"]["note"], []).append(f"{r['evaluator']}.{r['metric']}")
    n_tests = sum(1 for r in comp["rows"] if r["test"] is not None)
    for why, names in unpaired.items():
        which = "every compared metric" if len(names) == n_tests > 1 else ", ".join(names)
        console.print(f"unpaired: {which}: {why}", markup=False, highlight=False, style="yellow")
    for line in acceptance_lines(doc):
        console.print(line, markup=False, highlight=False)
    for line in sandbox_lines(doc):
        console.print(line, markup=False, highlight=False, style="dim")
    for name, why in (doc.get("skipped") or {}).items():
        console.print(f"not run: {name}: {why}", markup=False, highlight=False, style="yellow")
    prov = doc.get("provenance", {})
    commit = prov.get("git_commit")
    console.print(
        f"mtp-bench {prov.get('mtp_bench_version')} ({commit[:10] if commit else 'no git commit'}), "
        f"{prov.get('device')}, {prov.get('torch_threads')} threads, seed {prov.get('seed')}, "
        f"started {prov.get('start_time')}, {prov.get('duration_s')} s", markup=False, highlight=False, style="dim")
    gb = prov.get("generation_backend")
    if isinstance(gb, dict):  # --backend vllm: say which engine made the generations
        c = gb.get("config") or {}
        console.print(f"generations made by {gb.get('engine')} {gb.get('vllm_version')} on {gb.get('platform', 'gpu')} "
                      f"(dtype {c.get('dtype')}, tensor_parallel_size {c.get('tensor_parallel_size')}, "
                      f"enforce_eager {gb.get('enforce_eager', c.get('enforce_eager'))})",
                      markup=False, highlight=False, style="dim")
