"""`mtp-bench repro FINDING [--budget smoke|quick|full]`: the command line of the repro package.

    mtp-bench repro induction                       # n=1 vs n=2 on stories with two-token names
    mtp-bench repro arithmetic --budget smoke       # n=1 vs n=2 vs n=4 on F7[X]/(X^5); pipeline check
    mtp-bench repro arithmetic --budget full --device cuda
    mtp-bench repro speedup                         # an n=4 model drafting with k = 1..4 heads (Table S2)
    mtp-bench repro memory                          # peak training memory, n=1 vs n=4 sequential vs naive
"""

from __future__ import annotations

import argparse
import sys

from mtp_bench.api.errors import UserError
from mtp_bench.commands.repro.findings import BUDGETS, FINDINGS
from mtp_bench.commands.repro.pipeline import run
from mtp_bench.commands.repro.rules import MEMORY_RULE_TEXT, RULE_TEXT, SPEEDUP_RULE_TEXT


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = f"{p.description or ''}\n\n" + __doc__.split("\n\n")[1]
    p.epilog = ("findings: " + ", ".join(FINDINGS) + "\nverdict rule (induction, arithmetic):\n  " + RULE_TEXT
                + "\nverdict rule (speedup):\n  " + SPEEDUP_RULE_TEXT + "\nverdict rule (memory):\n  " + MEMORY_RULE_TEXT)
    p.add_argument("finding", help=" | ".join(FINDINGS))
    p.add_argument("--budget", default="quick", choices=BUDGETS,
                   help="smoke (< 3 min, pipeline only) | quick (30 min on 2 CPU cores, default) | full (GPU)")
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
