"""MBPP+ (EvalPlus, Liu et al. 2023): 378 hand-verified MBPP tasks with about 35x more test inputs,
judged by differential testing against the canonical solution (`mtp_bench.scoring.evalplus`).

Data: MbppPlus-v0.2.0.jsonl.gz (EvalPlus's release), found as DIR/evalplus/FILE or DIR/FILE under
--data-dir / $MTP_BENCH_DATA (or the config field `data_dir`); not found -> the suite run skips it
and says why.

Prompt modes (config field `prompt_mode`, `mtp_bench.generation.chat`; `auto`, the default, is chat when the
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

from mtp_bench.api import register
from mtp_bench.generation import chat
from mtp_bench.scoring import evalplus
from mtp_bench.scoring.code_extract import extract_fenced, sanitize

VERSION = "1.1"  # 1.1: verdicts judged apart (the comparison in a judge process, mtp_bench.scoring.evalplus)
DATASET = "mbpp_plus"
# EvalPlus's stops for direct completion on MBPP (its generic ones first)
STOP_SEQUENCES = ("<|endoftext|>", "<|endofmask|>", "</s>", "\nif __name__", "\ndef main(", "\nprint(",
                  '\n"""', "\nassert")


def load_problems(data_dir=None) -> dict[str, dict]:
    """task_id ("Mbpp/2") -> problem of MbppPlus-v0.2.0 (prompt, entry_point, canonical_solution, inputs, atol)."""
    return evalplus.load_problems(DATASET, data_dir)


build_prompt = evalplus.completion_prompt  # completion mode: EvalPlus's docstring prompt as given


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
class MBPPPlus(evalplus.PlusEvaluator):
    name = "mbpp_plus"
    version = VERSION  # VERSION + "-chat" once a run resolved to the chat mode
    base_version = VERSION
    dataset = DATASET
    stop_sequences = STOP_SEQUENCES
    suites = ("code",)
    description = "MBPP+ (EvalPlus v0.2.0): base and base+plus pass@k by differential testing in the sandbox"
    caption = ("base_pass@k: MBPP's own inputs; plus_pass@k: base + EvalPlus's extra inputs (the MBPP+ score); "
               "the gap is what the stricter tests take away")

    class Config(evalplus.PlusConfig):
        owner = "mbpp_plus"

    def build_chat_prompt(self, model, problem: dict) -> str:
        return build_chat_prompt(model, problem)

    def chat_solution(self, problem: dict, text: str) -> str:
        return sanitize(extract_fenced(text), problem["entry_point"])
