"""`mtp-bench bench specdec`: self-speculative decoding speed and acceptance, as in the paper's
Table S2 (k = number of heads used, from 1 to n_future).

For each k it runs the `specdec` evaluator `--repeats` times (each run: warm-up, then plain
KV-cache greedy and self-speculative decoding back to back on every prompt, plus Hugging Face
greedy and prompt-lookup decoding on the same weights exported as a Llama) and prints the
medians over repeats. Output tokens are checked identical to plain greedy on every prompt.

examples:
  mtp-bench bench specdec                                  # the shipped mtp4-code checkpoint
  mtp-bench bench specdec --model CKPT --k 1,2,3,4 --n-prompts 20 --out specdec.json
  mtp-bench bench specdec --random --n-prompts 2 --max-new-tokens 32 --repeats 1   # smoke run

A random model's drafts are garbage (tau ~ 1, speedup < 1): the smoke run checks the plumbing,
not the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from mtp_bench.api.atomic import atomic_open
from mtp_bench.api.errors import ConfigError, UserError
from mtp_bench.api.paths import resolve_data_dir

SHIPPED = "mtp4-code"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "examples:" + __doc__.split("examples:", 1)[1]
    parser.add_argument("--model", help=f"checkpoint to measure (default: the shipped {SHIPPED})")
    parser.add_argument("--random", action="store_true",
                        help="measure a randomly initialised n_future=4 model (byte vocabulary, d=256, 6 layers)")
    parser.add_argument("--k", default=None, help="heads used, comma-separated (default: 1..n_future)")
    parser.add_argument("--prompt-set", default="code", choices=("code", "text"))
    parser.add_argument("--n-prompts", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="runs per k; the table shows medians")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--no-peers", action="store_true", help="skip HF greedy and prompt lookup")
    parser.add_argument("--data-dir", default=None, help="benchmark data (for --prompt-set text)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="float32", help="float32 by default: the lossless check needs it")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", default=None, help="write the medians and every repeat as JSON")


def _random_checkpoint(dir_: Path) -> Path:
    """A random n_future=4 model at the shipped size, saved so that the HF export works on it."""
    import torch

    from mtp_bench.reference_model.checkpoint import save_checkpoint
    from mtp_bench.reference_model.model import ModelConfig, Transformer
    from mtp_bench.reference_model.tokenizer import byte_tokenizer

    torch.manual_seed(0)
    tok = byte_tokenizer()
    cfg = ModelConfig(vocab_size=tok.vocab_size, dim=256, n_layers=6, n_heads=8, multiple_of=64, max_seq_len=512,
                      n_future=4)
    return save_checkpoint(dir_ / "random-mtp4", Transformer(cfg), tok, {"note": "random init, bench specdec --random"})


def _resolve_model_path(args, tmp: Path) -> Path:
    if args.random and args.model:
        raise ConfigError("give --model or --random, not both")
    if args.random:
        return _random_checkpoint(tmp)
    if args.model:
        return Path(args.model)
    from mtp_bench import reference_model

    shipped = Path(reference_model.__file__).parent / "checkpoints" / SHIPPED
    if not shipped.is_dir():
        raise UserError(f"no --model given and the shipped checkpoint {SHIPPED} is not at {shipped}; "
                        "pass --model PATH (or --random for a smoke run)")
    return shipped


def _parse_ks(spec: str | None, n_future: int) -> list[int]:
    if spec is None:
        return list(range(1, n_future + 1))
    try:
        ks = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--k must be comma-separated integers, got {spec!r}") from None
    bad = [k for k in ks if not 1 <= k <= n_future]
    if not ks or bad:
        raise ConfigError(f"--k values must be in 1..{n_future} for this model, got {spec!r}")
    return ks


def _write_json_atomic(path: Path, obj) -> None:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def main(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from mtp_bench.api.context import RunContext
    from mtp_bench.evals.specdec import SpecDec
    from mtp_bench.models.loader import load as load_model

    if args.repeats < 1:
        raise ConfigError("--repeats must be >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out_path = Path(args.out) if args.out else None
    if out_path is not None and not os.access(out_path.parent if out_path.parent.exists() else Path("."), os.W_OK):
        raise UserError(f"cannot write {out_path}: directory not writable")
    console = Console()
    data_dir = resolve_data_dir(args.data_dir)

    with tempfile.TemporaryDirectory(prefix="mtp-bench-specdec-") as tmp:
        tmp = Path(tmp)
        model = load_model(_resolve_model_path(args, tmp), device=args.device, dtype=args.dtype)
        ks = _parse_ks(args.k, model.n_future)
        ctx = RunContext(seed=0, data_dir=Path(data_dir) if data_dir else None, work_dir=tmp)
        rows: dict[int, dict] = {}
        for k in ks:
            cfg = SpecDec.Config(k=k, prompt_set=args.prompt_set, n_prompts=args.n_prompts,
                                 max_new_tokens=args.max_new_tokens, warmup=args.warmup, batch_size=args.batch_size,
                                 peers=not args.no_peers)
            runs = []
            for rep in range(args.repeats):
                console.print(f"[dim]k={k} repeat {rep + 1}/{args.repeats} ...[/dim]")
                res = SpecDec(cfg).run(model, ctx)
                runs.append({name: m.value for name, m in res.metrics.items()} | {"_info": res.info})
            names = [n for n in runs[0] if n != "_info"]
            rows[k] = {"median": {n: statistics.median(r[n] for r in runs if n in r) for n in names},
                       "repeats": runs}

    # the table: one row per metric, one column per k (Table S2 reads down a column), medians over repeats
    table = Table(title=f"self-speculative decoding, median of {args.repeats}: {model.path}\n(n_future={model.n_future}, "
                        f"{model.device}, {torch.get_num_threads()} threads, {args.n_prompts} {args.prompt_set} prompts, "
                        f"{args.max_new_tokens} new tokens)")
    table.add_column("metric")
    for k in ks:
        table.add_column(f"k={k}", justify="right")
    names = [n for k in ks for n in rows[k]["median"]]
    for name in dict.fromkeys(names):  # first-seen order, no duplicates
        table.add_row(name, *(f"{rows[k]['median'][name]:.4g}" if name in rows[k]["median"] else "-" for k in ks))
    console.print(table)
    console.print("tau = tokens per decoding forward (bonus included); speedup = plain KV-cache greedy time / "
                  "self-speculative time (same model, same run, identical tokens); vs HF prompt lookup = HF "
                  "prompt-lookup time / self-speculative time on the same weights.")
    if out_path is not None:
        _write_json_atomic(out_path, {"model": str(model.path), "n_future": model.n_future,
                                      "weights_sha256": model.weights_sha256, "device": str(model.device),
                                      "threads": torch.get_num_threads(), "prompt_set": args.prompt_set,
                                      "n_prompts": args.n_prompts, "max_new_tokens": args.max_new_tokens,
                                      "repeats": args.repeats, "by_k": {str(k): v for k, v in rows.items()}})
        console.print(f"wrote {out_path}")
    return 0
