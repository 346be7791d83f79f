"""The base of the plus evaluators (evals/humaneval_plus.py, evals/mbpp_plus.py), which differ only in
their data, prompts, stops and how a chat answer becomes a solution."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mtp_bench.api.context import RunContext
from mtp_bench.api.errors import ConfigError
from mtp_bench.api.registry import EvalOutput, Evaluator
from mtp_bench.scoring.evalplus.check import generate_check_score
from mtp_bench.scoring.evalplus.data import load_problems
from mtp_bench.scoring.passk import validate_sampling_config


@dataclass
class PlusConfig:
    """The plus evaluators' config; a subclass names its evaluator in `owner` (error messages)."""

    owner: ClassVar[str] = "evalplus"
    protocol: str = "quick"  # quick | standard | paper (evals/humaneval.py docstring)
    prompt_mode: str = "auto"  # completion | chat | auto (chat when the tokenizer has a chat template)
    data_dir: str | None = None  # overrides --data-dir / $MTP_BENCH_DATA for this evaluator
    n: int | None = None  # samples per task and temperature; None = the protocol's
    temperatures: tuple[float, ...] | None = None  # None = the protocol's; else one run each, best per k
    k: tuple[int, ...] | None = None  # pass@k to report; None = the protocol's; k > n is skipped
    top_p: float = 0.95  # nucleus sampling; unused when greedy
    max_new_tokens: int = 512  # long enough for every canonical solution
    batch_size: int = 8  # generation batch; results don't depend on it (per-sample seeds)
    timeout_s: float = 60.0  # cap on one check program's wall clock before EvalPlus's +2 s (its default)
    workers: int | None = None  # sandbox processes; None = the sandbox's default (all cores)

    def __post_init__(self):
        from mtp_bench.generation import chat  # the generation package imports torch: not for `mtp-bench exec`

        try:
            validate_sampling_config(self)
            chat.validate_prompt_mode(self.prompt_mode)
        except ConfigError as e:
            raise ConfigError(f"{self.owner} config: {e}") from None


class PlusEvaluator(Evaluator):
    """HumanEval+ / MBPP+: load the dataset, build the prompts of the resolved prompt mode, then
    `generate_check_score`. A subclass sets `dataset`, `base_version` (its VERSION), `stop_sequences`
    (completion mode) and `build_chat_prompt` / `chat_solution` (chat mode)."""

    dataset: ClassVar[str]
    base_version: ClassVar[str]
    stop_sequences: ClassVar[tuple[str, ...]]
    Config = PlusConfig

    def build_chat_prompt(self, model, problem: dict) -> str:
        raise NotImplementedError

    def chat_solution(self, problem: dict, text: str) -> str:
        raise NotImplementedError

    def run(self, model, ctx: RunContext) -> EvalOutput:
        from mtp_bench.generation import chat

        cfg = self.config
        problems = load_problems(self.dataset, [d for d in (cfg.data_dir, ctx.data_dir) if d])
        task_ids = list(problems)[: ctx.limit] if ctx.limit is not None else list(problems)
        if not task_ids:
            raise ConfigError(f"{self.name}: no problems to run (limit={ctx.limit})")
        mode, template = chat.resolve_prompt_mode(cfg.prompt_mode, model, self.name)
        self.version = chat.set_run_version(self, self.base_version, mode)
        if mode == "chat":
            prompts = {t: self.build_chat_prompt(model, problems[t]) for t in task_ids}
            stop: tuple[str, ...] = ()
            to_solution = lambda t, text: self.chat_solution(problems[t], text)  # noqa: E731
        else:
            prompts = {t: completion_prompt(problems[t]) for t in task_ids}
            stop = self.stop_sequences
            to_solution = lambda t, text: prompts[t] + text  # noqa: E731
        records, metrics, info = generate_check_score(self, model, ctx, self.dataset, problems, task_ids, prompts,
                                                      stop, to_solution)
        info.update({"prompt_mode": mode, "chat_template_sha256": chat.template_sha256(template)})
        return EvalOutput(records=records, metrics=metrics, info=info)


def completion_prompt(problem: dict) -> str:
    """EvalPlus's direct-completion prompt: the problem's prompt, stripped, and a newline."""
    return problem["prompt"].strip() + "\n"


def solution_of(problem: dict, sample: dict) -> str:
    """A sample's full solution: its `solution`, else the prompt + its `completion` (EvalPlus's rule)."""
    if isinstance(sample.get("solution"), str):
        return sample["solution"]
    return problem["prompt"] + sample["completion"]
