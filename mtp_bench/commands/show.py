"""`mtp-bench show RESULT [--baseline OTHER]`: print a saved result file as the report `run` prints."""

from __future__ import annotations

import argparse
import json

from mtp_bench.reporting.pairing import load_samples
from mtp_bench.reporting.results import load_result
from mtp_bench.reporting.show import comparison, render, report_console


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (f"{p.description or ''}\n\n"
                     "examples:\n"
                     "  mtp-bench show results/mine.json\n"
                     "  mtp-bench show results/mine.json --baseline results/main.json\n"
                     "  mtp-bench show results/mine.json --json | jq .results")
    p.add_argument("result", help="a result file written by `mtp-bench run --out`")
    p.add_argument("--baseline", metavar="RESULT", default=None,
                   help="compare against the candidate of another result file (same evaluator versions)")
    p.add_argument("--json", action="store_true",
                   help="print JSON for machines: the result file, or the comparison rows with --baseline")


def main(args: argparse.Namespace) -> int:
    doc = load_result(args.result)
    base = load_result(args.baseline) if args.baseline else None
    if args.json and base is None:
        print(json.dumps(doc, indent=2, ensure_ascii=False))
        return 0
    samples, why = load_samples(args.result, doc)
    base_samples, base_why = load_samples(args.baseline, base) if base is not None else (None, None)
    kwargs = {"samples": samples, "baseline_samples": base_samples, "no_samples_why": why or base_why}
    if args.json:
        print(json.dumps(comparison(doc, base, **kwargs), indent=2, ensure_ascii=False))
        return 0
    render(doc, report_console(), base, **kwargs)
    return 0
