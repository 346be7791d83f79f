"""HumanEval+ (EvalPlus, Liu et al. 2023): HumanEval's 164 problems with about 80x more test inputs,
judged by differential testing against the canonical solution (`mtp_bench.evalplus`).

Data: HumanEvalPlus-v0.1.10.jsonl.gz (EvalPlus's release), found as DIR/evalplus/FILE or DIR/FILE
under --data-dir / $MTP_BENCH_DATA (or the config field `data_dir`); not found -> the suite run
skips it and says why.

Prompt modes (config field `prompt_mode`, `mtp_bench.chat`; `auto`, the default, is chat when the
tokenizer has a chat template):
    completion  EvalPlus's direct-completion protocol for base models: the prompt stripped plus
                "\\n", generation stopped at STOP_SEQUENCES (EvalPlus's humaneval stops), and the
                solution = prompt + completion
    chat        `chat.FUNCTION_INSTRUCTION` around the prompt in the chat template, no stop
                sequence, and the solution taken out of the answer by `code_extract.chat_solution`
                (first Python block, longest valid span, sanitized; prompt kept in front)

Each solution runs on the base inputs and on the plus inputs in the sandbox; outputs are compared
with the canonical solution's, exactly or within the problem's atol, with EvalPlus's per-input time
limits (`mtp_bench.evalplus` docstring). Metrics, side by side: `base_pass@k` (the original
inputs) and `plus_pass@k` (base + plus: the HumanEval+ score); `info.passes_taken_away_by_plus`
counts the samples that pass the base inputs but not the plus ones. Protocols are humaneval's
(quick: greedy pass@1; standard; paper). Version VERSION, VERSION + "-chat" in chat mode.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtp_bench import chat, evalplus
from mtp_bench.code_extract import chat_solution
from mtp_bench.errors import ConfigError
from mtp_bench.passk import validate_sampling_config
from mtp_bench.registry import EvalOutput, Evaluator, RunContext, register

VERSION = "1.1"  # 1.1: verdicts judged apart (the comparison in a judge process, mtp_bench.evalplus)
DATASET = "humaneval_plus"
# EvalPlus's stops for direct completion on HumanEval (its generic ones first)
STOP_SEQUENCES = ("<|endoftext|>", "<|endofmask|>", "</s>", "\nif __name__", "\ndef main(", "\nprint(",
                  "\ndef ", "\nclass ", "\nimport ", "\nfrom ", "\nassert ")


def load_problems(data_dir=None) -> dict[str, dict]:
    """task_id -> problem of HumanEvalPlus-v0.1.10 (prompt, entry_point, canonical_solution, inputs, atol)."""
    return evalplus.load_problems(DATASET, data_dir)


def build_prompt(problem: dict) -> str:
    return problem["prompt"].strip() + "\n"


def build_chat_prompt(model, problem: dict) -> str:
    return chat.render_chat(model, chat.FUNCTION_INSTRUCTION.format(prompt=problem["prompt"]))


@register
class HumanEvalPlus(Evaluator):
    name = "humaneval_plus"
    version = VERSION  # VERSION + "-chat" once a run resolved to the chat mode
    suites = ("code",)
    description = "HumanEval+ (EvalPlus v0.1.10): base and base+plus pass@k by differential testing in the sandbox"
    caption = ("base_pass@k: HumanEval's own inputs; plus_pass@k: base + EvalPlus's extra inputs (the HumanEval+ "
               "score); the gap is what the stricter tests take away")

    @dataclass
    class Config:
        protocol: str = "quick"  # quick | standard | paper (evals/humaneval.py docstring)
        prompt_mode: str = "auto"  # completion | chat | auto (chat when the tokenizer has a chat template)
        data_dir: str | None = None  # overrides --data-dir / $MTP_BENCH_DATA for this evaluator
        n: int | None = None  # samples per problem and temperature; None = the protocol's
        temperatures: tuple[float, ...] | None = None  # None = the protocol's; else one run each, best per k
        k: tuple[int, ...] | None = None  # pass@k to report; None = the protocol's; k > n is skipped
        top_p: float = 0.95  # nucleus sampling; unused when greedy
        max_new_tokens: int = 512  # long enough for every canonical solution
        batch_size: int = 8  # generation batch; results don't depend on it (per-sample seeds)
        timeout_s: float = 60.0  # cap on one check program's wall clock before EvalPlus's +2 s (its default)
        workers: int | None = None  # sandbox processes; None = the sandbox's default (all cores)

        def __post_init__(self):
            try:
                validate_sampling_config(self)
                chat.validate_prompt_mode(self.prompt_mode)
            except ConfigError as e:
                raise ConfigError(f"humaneval_plus config: {e}") from None

    def run(self, model, ctx: RunContext) -> EvalOutput:
        cfg = self.config
        problems = load_problems([d for d in (cfg.data_dir, ctx.data_dir) if d])
        task_ids = list(problems)[: ctx.limit] if ctx.limit is not None else list(problems)
        if not task_ids:
            raise ConfigError(f"{self.name}: no problems to run (limit={ctx.limit})")
        mode, template = chat.resolve_prompt_mode(cfg.prompt_mode, model, self.name)
        self.version = chat.set_run_version(self, VERSION, mode)
        if mode == "chat":
            prompts = {t: build_chat_prompt(model, problems[t]) for t in task_ids}
            stop: tuple[str, ...] = ()
            to_solution = lambda t, text: chat_solution(problems[t]["prompt"], text, problems[t]["entry_point"])  # noqa: E731
        else:
            prompts = {t: build_prompt(problems[t]) for t in task_ids}
            stop = STOP_SEQUENCES
            to_solution = lambda t, text: prompts[t] + text  # noqa: E731
        records, metrics, info = evalplus.generate_check_score(self, model, ctx, DATASET, problems, task_ids, prompts,
                                                               stop, to_solution)
        info.update({"prompt_mode": mode, "chat_template_sha256": chat.template_sha256(template)})
        return EvalOutput(records=records, metrics=metrics, info=info)
