"""`mtp-bench gate RESULT --baseline BASE [--policy gate.toml]`: the CI regression gate
(`mtp_bench.reporting.gate`). Exit 0: no regression; 1: a regression; 2: bad input."""

from __future__ import annotations

import argparse
import dataclasses
import json

from rich.table import Table

from mtp_bench.api.atomic import atomic_write_bytes
from mtp_bench.api.errors import UserError
from mtp_bench.reporting.gate import Policy, compare, junit_xml, load_policy, markdown
from mtp_bench.reporting.pairing import load_samples
from mtp_bench.reporting.results import load_result
from mtp_bench.reporting.show import _model_line, format_metric, report_console, test_cell


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (f"{p.description or ''}\n\n"
                     "examples:\n"
                     "  mtp-bench gate results/pr.json --baseline results/main.json\n"
                     "  mtp-bench gate results/pr.json --baseline results/main.json "
                     "--metrics humaneval.pass@1 --tolerance 0.02\n"
                     "  mtp-bench gate results/pr.json --baseline results/main.json --policy gate.toml "
                     "--junit gate.xml --markdown gate.md\n\n"
                     "precedence: defaults < --policy file < flags given here\n"
                     "exit 0: no regression; 1: a regression; 2: bad input")
    p.add_argument("result", help="result file of the checkpoint under test (its candidate is gated)")
    p.add_argument("--baseline", required=True, metavar="RESULT", help="result file to compare against (its candidate)")
    p.add_argument("--policy", default=None, metavar="GATE.TOML", help="per-metric thresholds (see the README)")
    p.add_argument("--metrics", default=None, metavar="EVAL.METRIC,...",
                   help="metrics to gate, globs allowed (default: the policy's, else every metric both files have)")
    p.add_argument("--tolerance", type=float, default=None, help="allowed worsening (absolute; default 0)")
    p.add_argument("--relative", action="store_true", default=None,
                   help="--tolerance is a fraction of the baseline value")
    p.add_argument("--alpha", type=float, default=None, help="significance level after Holm (default 0.05)")
    p.add_argument("--ignore-significance", "--ignore-intervals", dest="ignore_significance", action="store_true",
                   default=None, help="fail on any worsening beyond the tolerance, significant or not")
    p.add_argument("--junit", default=None, metavar="FILE.xml", help="write a JUnit XML report")
    p.add_argument("--markdown", default=None, metavar="FILE.md", help="write a Markdown summary")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")


def policy_from_args(args: argparse.Namespace) -> Policy:
    """The policy file (if any) with the flags given on the command line on top."""
    policy = load_policy(args.policy) if args.policy else Policy()
    if args.tolerance is not None and args.tolerance < 0:
        raise UserError(f"--tolerance must be >= 0, got {args.tolerance}")
    if args.alpha is not None and not 0 < args.alpha < 1:
        raise UserError(f"--alpha must be in (0, 1), got {args.alpha}")
    if args.metrics:
        policy.metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    overrides = {"tolerance": args.tolerance, "relative": args.relative, "alpha": args.alpha,
                 "require_significance": None if args.ignore_significance is None else not args.ignore_significance}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:  # a flag wins over the file, for every metric
        policy.defaults = dataclasses.replace(policy.defaults, **overrides)
        policy.per_metric = {pat: {k: v for k, v in f.items() if k not in overrides}
                             for pat, f in policy.per_metric.items()}
    return policy


def main(args: argparse.Namespace) -> int:
    policy = policy_from_args(args)
    doc, base = load_result(args.result), load_result(args.baseline)
    samples, why = load_samples(args.result, doc)
    base_samples, base_why = load_samples(args.baseline, base)
    checks = compare(doc, base, policy, samples, base_samples, why or base_why)
    failed = [c for c in checks if c.regressed]
    title = f"gate: {args.result} vs {args.baseline}"
    models = [_model_line("candidate", doc["models"].get("candidate")),
              _model_line("baseline", base["models"].get("candidate")) + " (the baseline file's candidate)"]
    if args.junit:
        props = {"candidate_result": args.result, "baseline_result": args.baseline,
                 "candidate_sha256": doc["models"]["candidate"].get("weights_sha256"),
                 "baseline_sha256": base["models"]["candidate"].get("weights_sha256"),
                 "correction": policy.correction, "policy": args.policy or ""}
        atomic_write_bytes(args.junit, junit_xml(checks, title, props))
    if args.markdown:
        atomic_write_bytes(args.markdown, markdown(checks, title, models).encode())
    if args.json:
        print(json.dumps([c.to_dict() for c in checks], indent=2))
    else:
        table = Table(title=title, caption=(
            "p (test): M = exact McNemar, B = paired bootstrap, U = unpaired z; * = significant after "
            f"{'Holm' if policy.correction == 'holm' else 'no'} correction"), caption_justify="left")
        for col in ("metric", "candidate", "baseline", "worse by", "allowed", "p (test)", "verdict"):
            table.add_column(col, no_wrap=col != "metric")
        for c in checks:
            row = {"test": c.test.to_dict() if c.test else None, "significant": c.significant}
            table.add_row(f"{c.metric} {'↑' if c.candidate.higher_is_better else '↓'}",
                          format_metric(c.candidate.to_dict()), format_metric(c.baseline.to_dict()),
                          "—" if c.skipped else f"{c.worse_by:+.4g}", "—" if c.skipped else f"{c.allowed:.4g}",
                          test_cell(row) if c.test else "—",
                          {"REGRESSED": "[red]REGRESSED[/red]", "ok": "[green]ok[/green]",
                           "skipped": f"[dim]skipped: {c.skipped}[/dim]"}[c.verdict])
        report_console().print(table)
        gated = len([c for c in checks if not c.skipped])
        print(f"{len(failed)} of {gated} gated metrics regressed" if failed else f"all {gated} gated metrics ok")
    return 1 if failed else 0
