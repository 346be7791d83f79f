"""`mtp-bench gate`: a CI regression gate over two result files.

    mtp-bench run --suite code --model CKPT --out results/pr.json
    mtp-bench gate results/pr.json --baseline results/main.json --metrics humaneval.pass@1,heads.head1_loss

A metric regresses when the candidate is worse than the baseline in the metric's own direction
(`higher_is_better`) by more than the tolerance AND, unless `--ignore-intervals`, the two 95%
intervals do not overlap (so sampling noise alone does not fail a build). The candidate of each
file is compared (a file's own baseline role is not used). Evaluator versions must match:
numbers from different versions do not measure the same thing.

Exit codes: 0 = no regression, 1 = at least one regression, 2 = bad input (missing file, unknown
metric, version mismatch). Timing metrics (tokens/s, speedups) move with the machine: gate them
only between results measured on the same machine.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from mtp_bench.errors import UnknownNameError, UserError
from mtp_bench.metrics import delta, intervals_overlap
from mtp_bench.registry import Metric
from mtp_bench.results import load_result


@dataclass
class Check:
    metric: str  # "evaluator.metric"
    candidate: Metric
    baseline: Metric
    worse_by: float  # how much worse the candidate is, in the metric's direction (negative = better)
    overlap: bool | None  # of the 95% intervals
    regressed: bool


def _candidate_metrics(doc: dict) -> dict[str, tuple[str, Metric]]:
    """"evaluator.metric" -> (evaluator version, Metric) of a result file's candidate."""
    out = {}
    for ev, per_role in doc["results"].items():
        block = per_role.get("candidate")
        if block is None:
            continue
        for name, m in block["metrics"].items():
            out[f"{ev}.{name}"] = (block["version"], Metric.from_dict(m))
    return out


def compare(doc: dict, base_doc: dict, metrics: list[str] | None = None, tolerance: float = 0.0,
            relative: bool = False, ignore_intervals: bool = False) -> list[Check]:
    """One Check per gated metric. `metrics` None = every metric both files have.
    tolerance: allowed worsening, absolute (or a fraction of |baseline| when `relative`)."""
    cand, base = _candidate_metrics(doc), _candidate_metrics(base_doc)
    common = [k for k in cand if k in base]
    if metrics:
        unknown = [m for m in metrics if m not in common]
        if unknown:
            raise UnknownNameError(f"metric(s) {', '.join(unknown)} not in both result files; "
                                   f"common metrics: {', '.join(common) or 'none'}")
        names = metrics
    else:
        names = common
    if not names:
        raise UserError("the two result files share no metric to gate")
    checks = []
    for name in names:
        (cv, cm), (bv, bm) = cand[name], base[name]
        if cv != bv:
            raise UserError(f"{name}: candidate scored with evaluator version {cv}, baseline with {bv}; "
                            "refusing to gate results of different evaluator versions")
        d = delta(cm, bm)
        worse_by = -d if cm.higher_is_better else d
        allowed = tolerance * abs(bm.value) if relative else tolerance
        overlap = intervals_overlap(cm, bm)
        regressed = worse_by > allowed and (ignore_intervals or overlap is not True)
        checks.append(Check(name, cm, bm, worse_by, overlap, regressed))
    return checks


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (f"{p.description or ''}\n\n"
                     "examples:\n"
                     "  mtp-bench gate results/pr.json --baseline results/main.json\n"
                     "  mtp-bench gate results/pr.json --baseline results/main.json "
                     "--metrics humaneval.pass@1 --tolerance 0.02\n"
                     "  mtp-bench gate results/pr.json --baseline results/main.json --tolerance 0.05 --relative\n\n"
                     "exit 0: no regression; 1: a regression; 2: bad input")
    p.add_argument("result", help="result file of the checkpoint under test (its candidate is gated)")
    p.add_argument("--baseline", required=True, metavar="RESULT", help="result file to compare against (its candidate)")
    p.add_argument("--metrics", default=None, metavar="EVAL.METRIC,...",
                   help="metrics to gate (default: every metric both files have)")
    p.add_argument("--tolerance", type=float, default=0.0, help="allowed worsening (absolute; default 0)")
    p.add_argument("--relative", action="store_true", help="--tolerance is a fraction of the baseline value")
    p.add_argument("--ignore-intervals", action="store_true",
                   help="fail on any worsening beyond the tolerance, even within overlapping 95%% intervals")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")


def main(args: argparse.Namespace) -> int:
    if args.tolerance < 0:
        raise UserError(f"--tolerance must be >= 0, got {args.tolerance}")
    doc, base = load_result(args.result), load_result(args.baseline)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    checks = compare(doc, base, metrics, args.tolerance, args.relative, args.ignore_intervals)
    failed = [c for c in checks if c.regressed]
    if args.json:
        print(json.dumps([{"metric": c.metric, "candidate": c.candidate.to_dict(), "baseline": c.baseline.to_dict(),
                           "worse_by": c.worse_by, "intervals_overlap": c.overlap, "regressed": c.regressed}
                          for c in checks], indent=2))
    else:
        from rich.table import Table

        from mtp_bench.report import format_metric, report_console

        table = Table(title=f"gate: {args.result} vs {args.baseline}")
        for col in ("metric", "candidate", "baseline", "worse by", "overlap", "verdict"):
            table.add_column(col, no_wrap=col != "metric")
        for c in checks:
            table.add_row(f"{c.metric} {'↑' if c.candidate.higher_is_better else '↓'}",
                          format_metric(c.candidate.to_dict()), format_metric(c.baseline.to_dict()),
                          f"{c.worse_by:+.4g}", {True: "yes", False: "no", None: "—"}[c.overlap],
                          "[red]REGRESSED[/red]" if c.regressed else "[green]ok[/green]")
        report_console().print(table)
        print(f"{len(failed)} of {len(checks)} metrics regressed" if failed else f"all {len(checks)} metrics ok")
    return 1 if failed else 0
