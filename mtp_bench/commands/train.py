"""`mtp-bench train`: the reference model's trainer (`mtp_bench.reference_model.train`) on the command
line: `--preset` and `--set KEY=VALUE` (the override grammar of `mtp_bench.api.config`), and
`--init BASE`, for which this layer hands the trainer the framework's base loader.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

import torch.distributed as dist

from mtp_bench.api.config import parse_set
from mtp_bench.models import heads
from mtp_bench.reference_model import train as T


def parse_overrides(items: list[str]) -> dict:
    """["lr=1e-3", "n_future=1"] -> {"lr": 0.001, "n_future": 1}, typed by TrainConfig's fields."""
    return parse_set(items, T.TrainConfig)


def train(cfg: T.TrainConfig, **kwargs) -> Path:
    """`reference_model.train.train` with the framework's base loader for `init=BASE`."""
    return T.train(cfg, init_model=heads.init_model, **kwargs)


HELP = """examples:
  mtp-bench train --preset debug --out ckpt/debug                 # seconds: a smoke run
  mtp-bench train --preset tiny --out ckpt/mtp4-tiny              # minutes on 2 CPU cores
  mtp-bench train --preset tiny --set n_future=1 --out ckpt/ntp-tiny   # the next-token baseline
  mtp-bench train --preset small --set lr=6e-4 --set head_type=linear --out ckpt/lin
  mtp-bench train --preset tiny --set corpus=data/code.jsonl --set corpus_field=content --out ckpt/x
  mtp-bench train --preset tiny --set corpus=xsum-train.jsonl --set corpus_field=prompt --set target_field=target --out ckpt/sum
  mtp-bench train --preset tiny --out ckpt/mtp4-tiny --resume     # continue an interrupted run
  torchrun --nproc_per_node 2 -m mtp_bench train --preset small --out ckpt/ddp   # data parallel
  mtp-bench train --preset small --print-config                   # show the resolved config

config: defaults < --preset < --set key=value (repeatable; any TrainConfig field, typed by it:
  ints, floats, strings, `none`, comma lists like head_weights=1,0.5,0.5,0.5) < --out.
  Resumable state is saved every ckpt_interval steps and on Ctrl-C to OUT.state/.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = HELP + "\npresets: " + ", ".join(T.PRESETS) + "\nkeys: " + ", ".join(f.name for f in fields(T.TrainConfig))
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--preset", default=None, help=f"named config: {', '.join(T.PRESETS)} (default: none, the TrainConfig defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field (repeatable)")
    parser.add_argument("--out", default=None, help="checkpoint directory to write (same as --set out=DIR)")
    parser.add_argument("--init", default=None, metavar="BASE",
                        help="add n_future-1 heads to this next-token model (.gguf, HF dir, hub id; same as --set init=BASE)")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in OUT.state/")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def main(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.overrides)
    if args.out is not None:
        overrides["out"] = args.out
    if getattr(args, "init", None):
        overrides["init"] = args.init
    cfg = T.make_config(args.preset, overrides)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    try:
        train(cfg, resume=args.resume, preset=args.preset, overrides=overrides, verbose=not args.quiet)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0
