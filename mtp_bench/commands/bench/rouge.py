"""`mtp-bench bench rouge`: ROUGE scoring throughput, rouge-score vs the Rust port rouge-score-rs.

Pairs: the 1000 XSum test documents of the data dir (`summarization/xsum/XSum-test-1000.jsonl`),
each scored as the summarization evaluator scores it (`rouge_scores`: ROUGE-1/2/L/Lsum, Porter
stemmer, sentences split one a line) against its reference. The "summary" is the article's first
two sentences (a lead baseline: real overlap, several sentences, so ROUGE-Lsum does real work).

Reported per backend: documents scored per second (median of `--repeats`, each backend's scorer
built and warmed on the first pair before timing), the ratio rust / python, and whether every
per-document precision, recall and F1 of every type is bit-identical between the two (the
condition under which the summarization evaluator may use the Rust port).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from pathlib import Path

from mtp_bench.api.errors import ConfigError, DataError

BACKENDS = ("rouge-score", "rouge-score-rs")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = """ROUGE scoring throughput: rouge-score (pure Python) vs rouge-score-rs, same pairs.

examples:
  mtp-bench bench rouge --data-dir ../shared/data
  mtp-bench bench rouge --data-dir ../shared/data --repeats 5 --out rouge.json"""
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--data-dir", default=None, help="folder with summarization/xsum/ (default: $MTP_BENCH_DATA)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per backend; the median counts")
    p.add_argument("--limit", type=int, default=None, help="only the first N documents")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")


def pairs(data_dir, limit: int | None = None) -> list[tuple[str, list[str]]]:
    from mtp_bench.evals import summarization as S

    docs, _ = S.load_split("xsum", data_dir)
    docs = docs[:limit] if limit else docs
    return [(" ".join(S.split_sentences(d["article"])[:2]), d["references"]) for d in docs]


def measure(backend: str, items: list[tuple[str, list[str]]], repeats: int) -> tuple[float, list[dict]]:
    """(median seconds of one pass over every pair, the per-document scores of the last pass)."""
    from mtp_bench.evals import summarization as S

    S.rouge_scores(*items[0], backend=backend)  # build and warm the scorer
    times, scores = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        scores = [S.rouge_scores(pred, refs, backend=backend) for pred, refs in items]
        times.append(time.perf_counter() - t0)
    return statistics.median(times), scores


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from mtp_bench.api.atomic import atomic_open
    from mtp_bench.evaluation import resolve_data_dir

    if args.repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {args.repeats}")
    if importlib.util.find_spec("rouge_score_rs") is None:
        raise ConfigError("bench rouge compares against rouge-score-rs: pip install rouge-score-rs")
    data_dir = resolve_data_dir(args.data_dir)
    if data_dir is None:
        raise DataError("bench rouge needs the XSum file: pass --data-dir DIR (with summarization/xsum/) "
                        "or set MTP_BENCH_DATA")
    items = pairs(data_dir, args.limit)
    results = {b: measure(b, items, args.repeats) for b in BACKENDS}
    identical = sum(a == b for a, b in zip(results["rouge-score"][1], results["rouge-score-rs"][1]))
    fig = {b: {"seconds": round(results[b][0], 4), "docs_per_s": round(len(items) / results[b][0], 1)}
           for b in BACKENDS}
    ratio = fig["rouge-score-rs"]["docs_per_s"] / fig["rouge-score"]["docs_per_s"]
    out = {"documents": len(items), "repeats": args.repeats, "backends": fig, "ratio_rs_over_python": round(ratio, 2),
           "identical_documents": identical, "all_identical": identical == len(items)}
    table = Table(title=f"ROUGE-1/2/L/Lsum (stemmed) on {len(items)} XSum pairs, median of {args.repeats}")
    for col in ("backend", "seconds", "documents/s", "vs rouge-score"):
        table.add_column(col, justify="right" if col != "backend" else "left")
    for b in BACKENDS:
        table.add_row(b, f"{fig[b]['seconds']:.3f}", f"{fig[b]['docs_per_s']:.1f}",
                      "1.00x" if b == "rouge-score" else f"{ratio:.2f}x")
    console = Console()
    console.print(table)
    console.print(f"identical per-document scores (P, R, F1 of every type): {identical}/{len(items)}")
    if args.out:
        with atomic_open(args.out, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))
    return 0
