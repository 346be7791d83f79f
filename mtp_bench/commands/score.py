"""`mtp-bench score`: score generations made by any other system (vLLM, an API, another harness)
with an evaluator's own extraction and metrics, as `mtp-bench exec` does for code.

    mtp-bench score gsm8k gens.jsonl --out scored.jsonl --data-dir ../shared/data
    mtp-bench score summarization gens.jsonl --out scored.jsonl --config summarization.dataset=scitldr
    mtp-bench score gsm8k gens.jsonl --out scored.jsonl --result results/vllm-gsm8k.json

Input: JSONL, one object a line with an integer `doc_id` (the 0-based index in the evaluator's
test split) and a string `completion`; any other keys are kept. Several lines may share a doc_id
(n samples per problem; an optional `temperature` key groups sampling runs). Output: one line
per input, in input order, with the input's keys and the evaluator's per-sample scores, written
atomically. Then the aggregate table on the console and, with `--result`, a result file in the
usual schema (the "candidate" is the generations file, identified by its sha256).

Every input is checked before anything is scored or written: a malformed line, a missing or
non-string completion, a doc_id outside the split -> one line naming the file and line, exit 2,
no output file. An evaluator takes part by providing `load_docs(data_dir)`,
`score_completion(doc, completion)` and `aggregate(scored)` (gsm8k and summarization do).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console

from mtp_bench.api import registry
from mtp_bench.api.config import parse_overrides
from mtp_bench.api.errors import DataError, UnknownNameError, UserError, did_you_mean
from mtp_bench.api.files import file_sha256
from mtp_bench.api.jsonl import read_lines
from mtp_bench.api.registry import EvalOutput
from mtp_bench.evaluation import make_evaluators, resolve_data_dir, result_document
from mtp_bench.reporting import results
from mtp_bench.reporting.provenance import utc_now
from mtp_bench.reporting.show import render, report_console

SCORING_METHODS = ("load_docs", "score_completion", "aggregate")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (f"{p.description or ''}\n\n"
                     "examples:\n"
                     "  mtp-bench score gsm8k gens.jsonl --out scored.jsonl --data-dir ../shared/data\n"
                     "  mtp-bench score summarization gens.jsonl --out scored.jsonl "
                     "--config summarization.dataset=scitldr\n"
                     "  mtp-bench score gsm8k gens.jsonl --out scored.jsonl --result results/api-gsm8k.json\n\n"
                     'GENERATIONS: JSONL of {"doc_id": N, "completion": "..."} (other keys are kept); doc_id is the\n'
                     "0-based index in the evaluator's test split. Each line is written back with its scores.")
    p.add_argument("evaluator", help="an evaluator that scores text: " + ", ".join(scoring_evaluators()))
    p.add_argument("generations", type=Path, help="JSONL of {doc_id, completion} records")
    p.add_argument("--out", type=Path, required=True, help="scored JSONL to write (input keys + per-sample scores)")
    p.add_argument("--result", default=None, metavar="R.json", help="also write a result file in the usual schema")
    p.add_argument("--config", action="append", default=[], metavar="EVAL.FIELD=VALUE",
                   help="override an evaluator config field, as in `mtp-bench run` (repeatable)")
    p.add_argument("--data-dir", default=None, help="benchmark data folder (default: $MTP_BENCH_DATA, else the hub)")


def scoring_evaluators() -> list[str]:
    """Names of the registered evaluators that can score text made elsewhere."""
    registry.load_plugins()
    return sorted(n for n, cls in registry.REGISTRY.items() if all(hasattr(cls, m) for m in SCORING_METHODS))


def read_generations(path: Path) -> list[dict]:
    """The records of a generations file; a bad line is a DataError naming the line."""
    records = []
    for lineno, rec in read_lines(path, "generations file"):
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
        doc_id = rec.get("doc_id")
        if isinstance(doc_id, bool) or not isinstance(doc_id, int):
            raise DataError(f"{path}:{lineno}: needs an integer 'doc_id', got {doc_id!r}")
        if not isinstance(rec.get("completion"), str):
            what = "no 'completion'" if "completion" not in rec else f"a {type(rec['completion']).__name__} completion"
            raise DataError(f"{path}:{lineno}: has {what}; expected a string 'completion'")
        if "temperature" in rec and (isinstance(rec["temperature"], bool)
                                     or not isinstance(rec["temperature"], (int, float))):
            raise DataError(f"{path}:{lineno}: 'temperature' must be a number, got {rec['temperature']!r}")
        records.append((lineno, rec))
    if not records:
        raise DataError(f"{path}: no generations")
    return records


def score_file(evaluator, generations: Path, data_dir: Path | None = None) -> tuple[list[dict], dict, dict]:
    """(scored rows in input order, metrics, info) for a generations file; checks every input first."""
    # 1) inputs
    records = read_generations(generations)
    docs = evaluator.load_docs(data_dir)
    for lineno, rec in records:
        if not 0 <= rec["doc_id"] < len(docs):
            raise DataError(f"{generations}:{lineno}: doc_id {rec['doc_id']} is outside the {evaluator.name} "
                            f"test split (0..{len(docs) - 1})")
    # 2) per-sample scores, the evaluator's keys after the input's
    scored = [{**rec, **evaluator.score_completion(docs[rec["doc_id"]], rec["completion"])} for _, rec in records]
    # 3) aggregate
    metrics, info = evaluator.aggregate(scored)
    info.update({"num_generations": len(scored), "num_documents_in_split": len(docs)})
    return scored, metrics, info


def main(args: argparse.Namespace) -> int:
    t0, start_iso = time.perf_counter(), utc_now()
    # 1) what to score with, where to write (checked before any work)
    registry.load_plugins()
    if args.evaluator not in registry.REGISTRY:  # suggest and list only the evaluators `score` can use
        known = scoring_evaluators()
        raise UnknownNameError(f"unknown evaluator {args.evaluator!r}{did_you_mean(args.evaluator, known)}; "
                               f"evaluators that score generations: {', '.join(known)}")
    cls = registry.get(args.evaluator)
    if not all(hasattr(cls, m) for m in SCORING_METHODS):
        raise UserError(f"{args.evaluator} does not score generations made elsewhere; evaluators that do: "
                        f"{', '.join(scoring_evaluators())} (for code, use `mtp-bench exec`)")
    evaluator = make_evaluators([cls], parse_overrides(args.config, [cls]))[0]
    out = Path(args.out).expanduser()
    if out.suffix != ".jsonl" or out.is_dir():
        raise UserError(f"--out must name a .jsonl file, got {str(args.out)!r}")
    if args.generations.exists() and out.exists() and out.resolve() == args.generations.resolve():
        raise UserError("--out must not be the generations file itself")
    result_path = results.check_output_path(args.result)[0] if args.result else None
    results.check_output_path(out.with_suffix(".json"))  # the directory exists and is writable
    data_dir = resolve_data_dir(args.data_dir)
    # 2) score (every input checked first), 3) write the scored lines atomically
    scored, metrics, info = score_file(evaluator, args.generations, data_dir)
    results.atomic_write_jsonl(out, scored)
    # 4) the result document, as `mtp_bench.evaluate` builds it: printed as the usual table, written with --result
    sha = file_sha256(args.generations)
    model = {"path": str(args.generations), "format": "generations", "weights_sha256": sha, "n_future": None,
             "num_params": None, "config": {"kind": "generations made elsewhere", "sha256": sha}}
    info["scored_file"] = str(out)
    outputs = {evaluator.name: {"candidate": EvalOutput(records=scored, metrics=metrics, info=info)}}
    doc = result_document([evaluator], {"candidate": model}, outputs, suite=None, seed=0, device="cpu", argv=None,
                          start_time=start_iso, t0=t0)
    render(doc, report_console())
    if result_path is not None:
        results.atomic_write_json(result_path, doc)
    Console(stderr=True).print(f"wrote {out}" + (f" and {result_path}" if result_path else ""),
                               markup=False, highlight=False)
    return 0
