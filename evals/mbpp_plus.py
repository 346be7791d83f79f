"""MBPP+ (EvalPlus, Liu et al. 2023): 378 hand-verified MBPP tasks with about 35x more test inputs,
judged by differential testing against the canonical solution (`mtp_bench.evalplus`).

Data: MbppPlus-v0.2.0.jsonl.gz (EvalPlus's release), found as DIR/evalplus/FILE or DIR/FILE under
--data-dir / $MTP_BENCH_DATA (or the config field `data_dir`); not found -> the suite run skips it
and says why.

Prompt modes (config field `prompt_mode`, `mtp_bench.chat`; `auto`, the default, is chat when the
tokenizer has a chat template):
    completion  EvalPlus's direct-completion protocol for base models: the task's prompt (a
                docstring holding the task and one assert) stripped plus "\\n", generation stopped
                at STOP_SEQUENCES (EvalPlus's mbpp stops), the solution = prompt + completion.
                Not MBPP's 3-shot [BEGIN]/[DONE] prompt (evals/mbpp.py): numbers compare with
                EvalPlus's, not with the mbpp evaluator's
    chat        `chat.TASK_INSTRUCTION` with the docstring's task text and assert, in the chat
                template, no stop sequence, and the code taken out of the answer (first Python
                block or the whole answer, longest valid span) and sanitized to the entry point

Checking and metrics as evals/humaneval_plus.py: `base_pass@k` (MBPP's own test inputs) and
`plus_pass@k` (base + plus: the MBPP+ score) side by side. Version VERSION, VERSION + "-chat" in
chat mode.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtp_bench import chat, evalplus
from mtp_bench.code_extract import extract_fenced, sanitize
from mtp_bench.errors import ConfigError
from mtp_bench.passk import validate_sampling_config
from mtp_bench.registry import EvalOutput, Evaluator, RunContext, register

VERSION = "1.1"  # 1.1: verdicts judged apart (the comparison in a judge process, mtp_bench.evalplus)
DATASET = "mbpp_plus"
# EvalPlus's stops for direct completion on MBPP (its generic ones first)
STOP_SEQUENCES = ("<|endoftext|>", "<|endofmask|>", "</s>", "\nif __name__", "\ndef main(", "\nprint(",
                  '\n"""', "\nassert")


def load_problems(data_dir=None) -> dict[str, dict]:
    """task_id ("Mbpp/2") -> problem of MbppPlus-v0.2.0 (prompt, entry_point, canonical_solution, inputs, atol)."""
    return evalplus.load_problems(DATASET, data_dir)


def build_prompt(problem: dict) -> str:
    return problem["prompt"].strip() + "\n"


def task_and_tests(problem: dict) -> tuple[str, str]:
    """The docstring prompt split into the task's text and its assert line(s).

    >>> task_and_tests({"prompt": '\"\"\"\\nWrite f.\\nassert f(1) == 2\\n\"\"\"\\n'})
    ('Write f.', 'assert f(1) == 2')
    """
    inner = problem["prompt"].strip()
    if inner.startswith('"""') and inner.endswith('"""'):
        inner = inner[3:-3]
    lines = [line for line in inner.strip().split("\n")]
    tests = [line for line in lines if line.lstrip().startswith("assert")]
    text = [line for line in lines if not line.lstrip().startswith("assert")]
    return "\n".join(text).strip(), "\n".join(tests)


def build_chat_prompt(model, problem: dict) -> str:
    text, tests = task_and_tests(problem)
    return chat.render_chat(model, chat.TASK_INSTRUCTION.format(text=text, tests=tests))


@register
class MBPPPlus(Evaluator):
    name = "mbpp_plus"
    version = VERSION  # VERSION + "-chat" once a run resolved to the chat mode
    suites = ("code",)
    description = "MBPP+ (EvalPlus v0.2.0): base and base+plus pass@k by differential testing in the sandbox"
    caption = ("base_pass@k: MBPP's own inputs; plus_pass@k: base + EvalPlus's extra inputs (the MBPP+ score); "
               "the gap is what the stricter tests take away")

    @dataclass
    class Config:
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
            try:
                validate_sampling_config(self)
                chat.validate_prompt_mode(self.prompt_mode)
            except ConfigError as e:
                raise ConfigError(f"mbpp_plus config: {e}") from None

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
            to_solution = lambda t, text: sanitize(extract_fenced(text), problems[t]["entry_point"])  # noqa: E731
        else:
            prompts = {t: build_prompt(problems[t]) for t in task_ids}
            stop = STOP_SEQUENCES
            to_solution = lambda t, text: prompts[t] + text  # noqa: E731
        records, metrics, info = evalplus.generate_check_score(self, model, ctx, DATASET, problems, task_ids, prompts,
                                                               stop, to_solution)
        info.update({"prompt_mode": mode, "chat_template_sha256": chat.template_sha256(template)})
        return EvalOutput(records=records, metrics=metrics, info=info)
