"""`mtp-bench data`: write the synthetic suite's problems and training corpora as JSONL.

    mtp-bench data arithmetic --split test --m 3 --n 2000 --seed 0 --out test-m3.jsonl
    mtp-bench data arithmetic --split train --m 1-5 --n 4000 --seed 1 --out train.jsonl
    mtp-bench data induction --split train --tokenizer byte --source STORIES.txt --out stories.jsonl

arithmetic: one problem a line with `prompt`, `answer` (the text the model must produce),
`answer_coeffs` (c0..c4), `program` (the expression tree; leaves are 5-coefficient lists), `m`,
`id` and `text` (prompt + answer: what `mtp-bench train --set corpus=FILE.jsonl` trains on).
`--split train` draws from the same generator as the test set under its own seed and drops
every problem whose prompt is in the default test set (`evals/arithmetic.py`).

induction: the training stories (the evaluator's split) or the evaluation stories, with their
character names replaced by random two-token names, one JSON object a line with `text` and
`names` (original -> replacement).

Files are written atomically: a failed run leaves no half-written file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mtp_bench.api.atomic import atomic_open
from mtp_bench.api.errors import ConfigError, UserError
from mtp_bench.api.paths import resolve_data_dir

EXAMPLES = __doc__.split("\n\n")[1]


def parse_ms(raw: str) -> list[int]:
    """"3" -> [3]; "1-5" -> [1, 2, 3, 4, 5]; "1,3,6" -> [1, 3, 6].

    >>> parse_ms("1-3,6")
    [1, 2, 3, 6]
    """
    out: list[int] = []
    try:
        for part in (p.strip() for p in raw.split(",") if p.strip()):
            lo, dash, hi = part.partition("-")
            out.extend(range(int(lo), int(hi) + 1) if dash else [int(lo)])
    except ValueError:
        raise ConfigError(f"--m expects M, M-N or a comma list, got {raw!r}") from None
    if not out or min(out) < 1:
        raise ConfigError(f"--m needs operation counts >= 1, got {raw!r}")
    return out


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")


def arithmetic_rows(split: str, ms: list[int], n: int, seed: int) -> list[dict]:
    from mtp_bench.evals import arithmetic as A

    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    if split == "test":
        return [p for m in ms for p in A.problems(m, n, seed, "test")]
    return [p for m in ms for p in A.train_problems(m, n, seed)]


def induction_rows(split: str, tokenizer: str, source: str, eval_fraction: float, seed: int,
                   pool_size: int = 256) -> list[dict]:
    from mtp_bench.evals import induction as I

    tok = load_tokenizer_arg(tokenizer)
    stories, _ = I.resolve_source(source, None)
    train, ev = I.split_stories(stories, eval_fraction)
    chosen = train if split == "train" else ev
    return [{"text": text, "names": mapping} for text, mapping in I.transform_stories(chosen, tok, seed, pool_size)]


def load_tokenizer_arg(spec: str):
    """"byte", a tokenizer.json, or a checkpoint directory holding one."""
    from mtp_bench.reference_model.tokenizer import byte_tokenizer, load_tokenizer

    return byte_tokenizer() if spec == "byte" else load_tokenizer(spec)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = f"{p.description or ''}\n\nexamples:\n" + EXAMPLES
    sub = p.add_subparsers(dest="dataset", metavar="DATASET")
    a = sub.add_parser("arithmetic", help="polynomial problems in F7[X]/(X^5)")
    a.add_argument("--split", choices=("test", "train"), required=True)
    a.add_argument("--m", default="1-5", help="operation counts: M, M-N or a comma list (default 1-5)")
    a.add_argument("--n", type=int, default=2000, help="problems per m (default 2000)")
    a.add_argument("--seed", type=int, default=None, help="default: 0 for test, 1 for train")
    a.add_argument("--out", required=True, metavar="FILE.jsonl")
    i = sub.add_parser("induction", help="stories with two-token replacement names")
    i.add_argument("--split", choices=("train", "eval"), required=True)
    i.add_argument("--tokenizer", default="byte", help="byte | tokenizer.json | checkpoint dir (default byte)")
    i.add_argument("--source", required=True, help="story file, stories separated by <|endoftext|>")
    i.add_argument("--eval-fraction", type=float, default=0.1)
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--out", required=True, metavar="FILE.jsonl")
    d = sub.add_parser("distill", help="a base model's greedy continuations of code and chat prompts (drafter training data)",
                       description=(__import__("mtp_bench.commands.distill", fromlist=["x"]).__doc__ or "").split("\n\n")[0])
    d.add_argument("--model", required=True, help="the base model (.gguf, HF dir, native checkpoint)")
    d.add_argument("--data-dir", default=None, help="benchmark data folder (default $MTP_BENCH_DATA)")
    d.add_argument("--out", required=True, metavar="DIR", help="writes DIR/distill.jsonl and DIR/manifest.json")
    d.add_argument("--kinds", default="code,chat", help="comma list of code, chat (default both)")
    d.add_argument("--max-prompts", default="1500", help="prompts per kind: N, or KIND=N,KIND=N (default 1500)")
    d.add_argument("--max-new-tokens", type=int, default=160)
    d.add_argument("--batch-size", type=int, default=64)
    d.add_argument("--corpus", action="store_true", help="add the existing SmolLM2 corpus (stdlib code, MBPP and GSM8K chats)")
    d.add_argument("--corpus-code-chars", type=int, default=600_000, help="--corpus: characters of stdlib code (default 600000)")
    d.add_argument("--corpus-gsm8k", type=int, default=1500, help="--corpus: GSM8K training chats (default 1500)")
    d.add_argument("--device", default=None)
    d.add_argument("--dtype", default=None)


def main(args: argparse.Namespace) -> int:
    if args.dataset is None:
        raise UserError("give a dataset: mtp-bench data arithmetic|induction|distill ... (see --help)")
    if args.dataset == "distill":
        from mtp_bench.commands.distill import build

        data_dir = resolve_data_dir(args.data_dir)
        if data_dir is None:
            raise UserError("data distill needs the benchmark data folder: --data-dir DIR or $MTP_BENCH_DATA")
        from mtp_bench.commands.distill import parse_max_prompts

        kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
        build(args.model, Path(data_dir), Path(args.out), kinds, parse_max_prompts(args.max_prompts, kinds), args.max_new_tokens, args.batch_size, corpus=args.corpus, device=args.device,
              dtype=args.dtype, corpus_code_chars=args.corpus_code_chars, corpus_gsm8k=args.corpus_gsm8k)
        return 0
    out = Path(args.out)
    if out.exists() and out.is_dir():
        raise UserError(f"--out {out} is a directory")
    if args.dataset == "arithmetic":
        seed = args.seed if args.seed is not None else (0 if args.split == "test" else 1)
        rows = arithmetic_rows(args.split, parse_ms(args.m), args.n, seed)
    else:
        rows = induction_rows(args.split, args.tokenizer, args.source, args.eval_fraction, args.seed)
    write_jsonl(out, rows)
    print(f"wrote {len(rows)} rows to {out}")
    return 0
