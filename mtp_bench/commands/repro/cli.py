"""`mtp-bench repro FINDING [--budget smoke|quick|full]`: the command line of the repro package.

    mtp-bench repro induction                       # n=1 vs n=2 on stories with two-token names
    mtp-bench repro arithmetic --budget smoke       # n=1 vs n=2 vs n=4 on F7[X]/(X^5); pipeline check
    mtp-bench repro arithmetic --budget full --device cuda
    mtp-bench repro speedup                         # an n=4 model drafting with k = 1..4 heads (Table S2)
    mtp-bench repro memory                          # peak training memory, n=1 vs n=4 sequential vs naive
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mtp_bench.api.errors import UserError
from mtp_bench.commands.repro.findings import BUDGETS, FINDINGS
from mtp_bench.commands.repro.pipeline import run
from mtp_bench.commands.repro.rules import MEMORY_RULE_TEXT, RULE_TEXT, SPEEDUP_RULE_TEXT


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = f"{p.description or ''}\n\n" + __doc__.split("\n\n")[1]
    p.epilog = ("findings: " + ", ".join(FINDINGS) + "\nverdict rule (induction, arithmetic):\n  " + RULE_TEXT
                + "\nverdict rule (speedup):\n  " + SPEEDUP_RULE_TEXT + "\nverdict rule (memory):\n  " + MEMORY_RULE_TEXT)
    p.add_argument("finding", help=" | ".join(FINDINGS))
    p.add_argument("--budget", default="quick", metavar="BUDGET",
                   help="smoke (< 3 min, pipeline only) | quick (30 min on 2 CPU cores, default) | gpu (8 min on "
                        "one H200, --device cuda) | full (longer GPU runs)")
    p.add_argument("--plan", action="store_true",
                   help="print the plan as JSON (per arm: parameters, tokens, epochs, estimated times) and exit")
    p.add_argument("--out", default=None, metavar="DIR", help="result dir (default results/repro/FINDING-BUDGET)")
    p.add_argument("--work-dir", default=None, help="checkpoints and caches (default ~/.cache/mtp-bench/repro/FINDING-BUDGET)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (training uses bf16 on CUDA)")
    p.add_argument("--source", default="", help="induction, speedup: story file (default DATA_DIR/tinystories/...)")
    p.add_argument("--data-dir", default=None, help="benchmark data folder (default $MTP_BENCH_DATA)")
    p.add_argument("--arm", type=int, default=None, metavar="N",
                   help="train and evaluate only the arm n_future=N (parallel workers on one --work-dir)")
    p.add_argument("--seed", type=int, default=None, metavar="S",
                   help="train and evaluate only seed S of each arm (parallel workers on one --work-dir; "
                        "not memory)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--quiet", action="store_true")


def main(args: argparse.Namespace) -> int:
    if args.finding not in FINDINGS:
        raise UserError(f"unknown finding {args.finding!r}; findings: {', '.join(FINDINGS)}")
    if args.budget not in BUDGETS:
        raise UserError(f"unknown budget {args.budget!r}; budgets: {', '.join(BUDGETS)}")
    if args.plan:
        from mtp_bench.commands.repro.plan import describe

        print(json.dumps(describe(args.finding, args.budget, args.source or _default_source(args.data_dir)), indent=2))
        return 0
    if str(args.device).startswith("cuda"):
        from mtp_bench.models.device import resolve_device

        resolve_device(args.device)  # --device cuda without CUDA: one line, exit 2, before any data or training
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    doc = run(args.finding, args.budget, args.work_dir, args.out, args.device, args.source, args.data_dir,
              verbose=not args.quiet, argv=sys.argv[1:], only_arm=args.arm, only_seed=args.seed)
    print(doc["sentence"])
    if doc["to_conclude"]:
        print(f"to make it conclusive: {doc['to_conclude']}")
    return 0


def _default_source(data_dir: str | None) -> str | None:
    """The story file a run would read, for --plan's counts (None when there is none)."""
    from mtp_bench.api.paths import resolve_data_dir
    from mtp_bench.evals.induction import DEFAULT_FILE

    ddir = resolve_data_dir(data_dir)
    return str(Path(ddir) / DEFAULT_FILE[0] / DEFAULT_FILE[1]) if ddir else None
