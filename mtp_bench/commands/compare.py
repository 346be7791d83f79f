"""`mtp-bench compare A.json B.json ...`: many result files side by side, with paired tests
against a reference column (`mtp_bench.reporting.compare`)."""

from __future__ import annotations

import argparse
import json

from mtp_bench.api.errors import UserError
from mtp_bench.reporting.compare import build, columns_from_files, pick_reference, render
from mtp_bench.reporting.show import report_console


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
        render(table, report_console())
    return 0
