"""EvalPlus's checks in the sandbox: the ground truth (step 1 of the package docstring), the check of
a sample (step 2), which tasks can be judged apart (`judge_plan`), and the plus evaluators' pipeline
(`generate_check_score`). The programs are `program.py`'s source and one call (`_call`).
"""

from __future__ import annotations

import functools
import json
import symtable
import sys
from pathlib import Path

from mtp_bench.api.atomic import atomic_open
from mtp_bench.api.errors import ConfigError, DataError
from mtp_bench.api.paths import cache_dir
from mtp_bench.execution.judge import Program
from mtp_bench.execution.pool import SandboxConfig, isolation_report, run_programs
from mtp_bench.scoring.evalplus import program
from mtp_bench.scoring.evalplus.data import (
    BIG_OUTPUT_BYTES,
    CHECK_MEMORY_MB,
    GROUND_TRUTH_TIMEOUT_S,
    GROUND_TRUTH_VERSION,
    JUDGE_PLAN_VERSION,
    MBPP_NOT_NONE,
    MBPP_SET_EQ,
    MIN_TIME_LIMIT_S,
    TASK_TIMEOUT_CAP_S,
    TIME_LIMIT_FACTOR,
    input_kind,
)
from mtp_bench.scoring.passk import execute, generate_runs, score

SOURCE = Path(program.__file__).read_text(encoding="utf-8")  # what every program starts with


def _call(fn: str, *args: object) -> str:
    """One line calling a function of `program.py` with these arguments, as Python literals."""
    return f"\n{fn}({', '.join(map(repr, args))})\n"


ISOLATIONS = ("judge", "single-process")


def ground_truth_program(dataset: str, problem: dict) -> str:
    """The trusted program of step 1: canonical outputs (pickled, base64) and times as JSON on stdout."""
    return SOURCE + _call("_ground_truth", problem["prompt"] + problem["canonical_solution"], problem["entry_point"],
                          json.dumps(problem["base_input"]), json.dumps(problem["plus_input"]),
                          input_kind(dataset, problem["task_id"]),
                          dataset == "mbpp_plus" and problem["entry_point"] in MBPP_NOT_NONE, BIG_OUTPUT_BYTES)


def _cache_dir() -> Path:
    return cache_dir("evalplus")


def _cache_path(dataset: str, digest: str, suffix: str = "") -> Path:
    """Where a data file's (sha256 `digest`) ground truth, or what is derived from it, is cached."""
    py = "".join(map(str, sys.version_info[:2]))
    return _cache_dir() / f"{dataset}-{digest[:16]}-py{py}-v{GROUND_TRUTH_VERSION}{suffix}.json"


def _read_cache(path: Path, use: bool) -> dict:
    """A cached JSON object, or {} when not used, absent, torn or foreign (then recomputed)."""
    if not use or not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_cache(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as fh:
        fh.write(json.dumps(obj))


def ground_truth(dataset: str, problems: dict[str, dict], task_ids: list[str] | None = None,
                 workers: int | None = None, cache: bool = True, progress=None) -> dict[str, dict]:
    """task_id -> {"base", "plus" (base64 pickles of the expected outputs), "base_time", "plus_time"}
    for `task_ids` (default: every problem).

    Computed in the sandbox and cached by the data file's sha256 (only missing tasks are computed);
    a canonical solution that fails to run is a DataError (the data is broken, not a model)."""
    ids = list(problems) if task_ids is None else list(task_ids)
    path = _cache_path(dataset, problems[ids[0]]["sha256"])
    truth: dict[str, dict] = _read_cache(path, cache)
    todo = [t for t in ids if t not in truth]
    if todo:
        config = SandboxConfig(timeout_s=GROUND_TRUTH_TIMEOUT_S, max_output_bytes=256 << 20, memory_mb=4096)
        results = run_programs([ground_truth_program(dataset, problems[t]) for t in todo], config=config,
                               workers=workers, progress=progress)
        for tid, res in zip(todo, results):
            if not res.passed or program._MARK not in res.stdout:
                raise DataError(f"{dataset} {tid}: the canonical solution did not run to completion "
                                f"({res.status}: {res.detail})")
            truth[tid] = json.loads(res.stdout.rsplit(program._MARK, 1)[1])
        if cache:
            _write_cache(path, truth)
    return {t: truth[t] for t in ids}


def time_limits(ref_times: list[float]) -> list[float]:
    """Per-input limits, EvalPlus's: max(4 s, 4 x the canonical time).

    >>> time_limits([0.001, 2.0])
    [4.0, 8.0]
    """
    return [max(MIN_TIME_LIMIT_S, TIME_LIMIT_FACTOR * t) for t in ref_times]


def program_timeout(limits: list[float], ref_times: list[float], cap_s: float = TASK_TIMEOUT_CAP_S) -> float:
    """Wall clock for one check program: min(cap, sum of the limits) + 2 s, as EvalPlus joins its
    process, where cap = max(cap_s, TIME_LIMIT_FACTOR x the canonical solution's total time): EvalPlus
    caps at 60 s, which a canonical solution that itself needs 15 s or more on this machine (Mbpp/599,
    sums of ranges of 10^8, under load) cannot meet.

    >>> program_timeout([4.0] * 3, [0.0] * 3), program_timeout([4.0] * 100, [0.0] * 100)
    (14.0, 62.0)
    >>> program_timeout([8.0] * 20, [2.0] * 20)
    162.0
    """
    cap = max(cap_s, TIME_LIMIT_FACTOR * sum(ref_times))
    return min(cap, sum(limits)) + 2.0


def check_program(dataset: str, problem: dict, truth: dict, solution: str, part: str,
                  cap_s: float = TASK_TIMEOUT_CAP_S, isolation: str = "judge"):
    """The sandboxed program of step 2 for one part ("base" or "plus"), and its wall-clock timeout.

    isolation "judge" (the default): a `Program` whose candidate process holds only the solution and
    whose judge process holds the inputs, the expected outputs and the comparison; "single-process":
    one program text with all of it (the fallback for problems `judge_plan` cannot split)."""
    if part not in ("base", "plus"):
        raise ConfigError(f"part must be 'base' or 'plus', got {part!r}")
    if isolation not in ISOLATIONS:
        raise ConfigError(f"isolation must be one of {', '.join(ISOLATIONS)}, got {isolation!r}")
    ref_times = truth[problem["task_id"]][f"{part}_time"]
    limits = time_limits(ref_times)
    entry, tid = problem["entry_point"], problem["task_id"]
    not_none = dataset == "mbpp_plus" and entry in MBPP_NOT_NONE
    setup = _call("_c = _check_setup", input_kind(dataset, tid), json.dumps(problem[f"{part}_input"]), truth[tid][part])
    loop = (dataset, entry, part, limits, truth[tid][f"{part}_digest"], problem["atol"], MBPP_SET_EQ, MBPP_NOT_NONE)
    timeout = program_timeout(limits, ref_times, cap_s)
    if isolation == "single-process":
        return SOURCE + setup + _loop_call(*loop, f"*_load_solution({solution!r}, {entry!r})"), timeout
    tests = SOURCE + setup + _loop_call(*loop, f"globals()[{entry!r}], globals()['_mtp_digest_call']")
    candidate = SOURCE + f"\nglobals().update(_candidate({solution!r}, {entry!r}, {not_none!r}))\n"
    return Program(candidate, tests, names=(entry, "_mtp_digest_call")), timeout


def _loop_call(dataset: str, entry: str, part: str, limits: list[float], digests: dict, atol: float,
               set_eq: tuple, not_none: tuple, fns: str) -> str:
    """The check loop's call: inputs and expected outputs from `_c` (`_check_setup`), then the entry
    point and its digest call as the expression `fns` gives them."""
    args = ", ".join(map(repr, (dataset, entry, part))) + ", _c[0], _c[1], " + \
        ", ".join(map(repr, (limits, digests, atol, set_eq, not_none)))
    return f"\n_check_loop({args}, {fns})\n"


def _splittable(entry: str) -> str | None:
    """Why a problem's entry point cannot be proxied by name in the judge, or None."""
    if not entry.isidentifier():
        return f"the entry point {entry!r} is not an identifier"
    if entry in _judge_names() or entry == "_mtp_digest_call":
        return f"the entry point {entry!r} is a name of the judge's check program"
    return None


@functools.lru_cache(maxsize=1)
def _judge_names() -> frozenset[str]:
    """Every name the judged check program binds at module level: its helpers, imports, and the
    globals its functions assign (the loop's `_expected`, `_i`)."""
    table = symtable.symtable(SOURCE + "\n_c = None\n", "<check>", "exec")
    names = {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported() or s.is_namespace()}
    todo = list(table.get_children())
    while todo:
        t = todo.pop()
        names |= {s.get_name() for s in t.get_symbols() if s.is_declared_global()}
        todo += t.get_children()
    return frozenset(names)


def judge_plan(dataset: str, problems: dict[str, dict], truth: dict[str, dict], task_ids: list[str],
               workers: int | None = None, cache: bool = True) -> dict[str, str]:
    """task_id -> why its samples must be checked in one process, for the tasks that cannot be split.

    Decided from the dataset alone, never from a sample: a task is split (judged apart) when its
    canonical solution passes the judged check on its base and plus inputs, i.e. when every output
    it returns crosses between processes as plain data and compares as it did in its own process.
    A canonical solution that fails judged apart for another reason than a time limit falls back,
    with that failure as the reason. Cached beside the ground truth (by the data file's sha256)."""
    digest = problems[task_ids[0]]["sha256"] if task_ids else ""
    path = _cache_path(dataset, digest, f"-judge{JUDGE_PLAN_VERSION}")
    plan: dict[str, str | None] = _read_cache(path, cache)
    todo = [t for t in task_ids if t not in plan]
    plan.update({t: _splittable(problems[t]["entry_point"]) for t in todo})
    check = [t for t in todo if plan[t] is None]
    verdicts = check_solutions(dataset, problems, truth,
                               [(t, problems[t]["prompt"] + problems[t]["canonical_solution"]) for t in check], workers)
    for tid, v in zip(check, verdicts):
        fail = next((v[p] for p in ("base", "plus") if not v[p]["passed"] and v[p]["status"] != "timeout"), None)
        if fail is not None:
            plan[tid] = f"the canonical solution fails judged apart: {fail['detail']}"[:300]
    if cache and todo:
        _write_cache(path, plan)
    return {t: plan[t] for t in task_ids if plan[t]}


def check_solutions(dataset: str, problems: dict[str, dict], truth: dict[str, dict],
                    samples: list[tuple[str, str]], workers: int | None = None, cache_dir: Path | None = None,
                    bar=None, cap_s: float = TASK_TIMEOUT_CAP_S, single_process: dict[str, str] | None = None) -> list[dict]:
    """Verdicts of (task_id, solution) samples, in order: {"base": verdict, "plus": verdict} with each
    verdict as mtp_bench.scoring.passk.execute gives it (passed, status, detail, duration_s, isolation);
    "plus" is the plus inputs alone, so a sample's base+plus pass is base["passed"] and plus["passed"].

    Every task is judged apart except those in `single_process` (task_id -> reason, `judge_plan`).
    Programs are grouped by their timeout and run through `passk.execute` (identical programs run
    once; verdicts cached in `cache_dir` when given, so a resumed run executes nothing twice)."""
    single_process = single_process or {}
    jobs: dict[float, list[tuple[int, str, object]]] = {}  # timeout -> [(sample index, part, program)]
    for i, (tid, solution) in enumerate(samples):
        isolation = "single-process" if tid in single_process else "judge"
        for part in ("base", "plus"):
            program, timeout = check_program(dataset, problems[tid], truth, solution, part, cap_s, isolation)
            jobs.setdefault(timeout, []).append((i, part, program))
    out: list[dict] = [{} for _ in samples]
    for timeout, group in sorted(jobs.items()):
        cache_path = None if cache_dir is None else Path(cache_dir) / f"{dataset}-exec-{timeout:g}s.jsonl"
        verdicts = execute([p for _, _, p in group], timeout, workers, cache_path, bar=bar,
                           memory_mb=CHECK_MEMORY_MB)
        for (i, part, _), v in zip(group, verdicts):
            out[i][part] = v
    return out


def generate_check_score(evaluator, model, ctx, dataset: str, problems: dict[str, dict], task_ids: list[str],
                         prompts: dict[str, str], stop: tuple[str, ...], to_solution) -> tuple[list[dict], dict, dict]:
    """The plus evaluators' pipeline, as `passk.generate_execute_score` but checked EvalPlus's way.

    1) generate every sampling run of the protocol (cached and resumable through ctx.generate)
    2) ground truth for these tasks (cached), then every sample's solution (`to_solution(task_id,
       generated text)`) checked on the base inputs and on the plus inputs (verdicts cached)
    3) score: base_pass@k (base inputs) and plus_pass@k (base + plus inputs) per run, best run per k
    Returns (records, metrics, info)."""
    cfg = evaluator.config
    # 1)
    runs, skipped, generated, truncated, max_new = generate_runs(evaluator, model, ctx, task_ids, prompts, stop)
    samples = [(r, q.sample_id, q.sample_index, g.text, g.finish_reason) for r, q, g in generated]
    # 2)
    truth = ground_truth(dataset, problems, task_ids, workers=cfg.workers)
    single = judge_plan(dataset, problems, truth, task_ids, workers=cfg.workers)
    solutions = [to_solution(tid, text) for _, tid, _, text, _ in samples]
    with ctx.progress(f"{evaluator.name} [{ctx.role}]: execute", 2 * len(samples)) as bar:
        verdicts = check_solutions(dataset, problems, truth, [(s[1], sol) for s, sol in zip(samples, solutions)],
                                   cfg.workers, Path(ctx.work_dir), bar, cap_s=cfg.timeout_s, single_process=single)
    # 3)
    base = {r.temperature: {tid: [] for tid in task_ids} for r in runs}
    plus = {r.temperature: {tid: [] for tid in task_ids} for r in runs}
    for (r, tid, *_), v in zip(samples, verdicts):
        base[r.temperature][tid].append(v["base"]["passed"])
        plus[r.temperature][tid].append(v["base"]["passed"] and v["plus"]["passed"])
    base_metrics, base_info = score(runs, base)
    plus_metrics, plus_info = score(runs, plus)
    metrics = {}
    for name in base_metrics:  # side by side: base_pass@1, plus_pass@1, base_pass@10, ...
        metrics[f"base_{name}"], metrics[f"plus_{name}"] = base_metrics[name], plus_metrics[name]
    records = []
    for (r, tid, i, text, finish), solution, v in zip(samples, solutions, verdicts):
        fail = next((v[p] for p in ("base", "plus") if not v[p]["passed"]), None)
        records.append({
            "sample_id": tid, "task_id": tid, "sample_index": i, "temperature": r.temperature,
            "prompt": prompts[tid], "generation": text, "solution": solution, "finish_reason": finish,
            "base_passed": v["base"]["passed"], "plus_passed": v["plus"]["passed"],
            "passed": v["base"]["passed"] and v["plus"]["passed"],
            "status": "passed" if fail is None else fail["status"], "detail": "" if fail is None else fail["detail"],
            "isolation": v["base"].get("isolation", "single-process"),
        })
    n_base = sum(sum(sum(v) for v in per.values()) for per in base.values())
    n_plus = sum(sum(sum(v) for v in per.values()) for per in plus.values())
    info = {"best_temperature": {**{f"base_{k}": t for k, t in base_info["best_temperature"].items()},
                                 **{f"plus_{k}": t for k, t in plus_info["best_temperature"].items()}},
            "runs": {"base": base_info["runs"], "plus": plus_info["runs"]},
            "base_passes": n_base, "plus_passes": n_plus, "passes_taken_away_by_plus": n_base - n_plus,
            "max_new_tokens": max_new, "prompts_truncated": truncated, "protocol": cfg.protocol,
            "num_problems": len(task_ids), "k_skipped_above_n": skipped,
            # tasks whose samples are checked in one process, and why (`judge_plan`); the rest judged apart
            "single_process_problems": len(single), "single_process_reasons": single,
            "data_sha256": problems[task_ids[0]]["sha256"],
            "time_limits": {"min_s": MIN_TIME_LIMIT_S, "factor": TIME_LIMIT_FACTOR, "program_cap_s": cfg.timeout_s},
            "sandbox": isolation_report()}
    return records, metrics, info
