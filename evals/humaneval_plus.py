"""HumanEval+ (EvalPlus, Liu et al. 2023): HumanEval's 164 problems with about 80x more test inputs,
judged by differential testing against the canonical solution (`mtp_bench.scoring.evalplus`).

Data: HumanEvalPlus-v0.1.10.jsonl.gz (EvalPlus's release), found as DIR/evalplus/FILE or DIR/FILE
under --data-dir / $MTP_BENCH_DATA (or the config field `data_dir`); not found -> the suite run
skips it and says why.

Prompt modes (config field `prompt_mode`, `mtp_bench.generation.chat`; `auto`, the default, is chat when the
tokenizer has a chat template):
    completion  EvalPlus's direct-completion protocol for base models: the prompt stripped plus
                "\\n", generation stopped at STOP_SEQUENCES (EvalPlus's humaneval stops), and the
                solution = prompt + completion
    chat        `chat.FUNCTION_INSTRUCTION` around the prompt in the chat template, no stop
                sequence, and the solution taken out of the answer by `code_extract.chat_solution`
                (first Python block, longest valid span, sanitized; prompt kept in front)

Each solution runs on the base inputs and on the plus inputs in the sandbox; outputs are compared
with the canonical solution's, exactly or within the problem's atol, with EvalPlus's per-input time
limits (`mtp_bench.scoring.evalplus` docstring). Metrics, side by side: `base_pass@k` (the original
inputs) and `plus_pass@k` (base + plus: the HumanEval+ score); `info.passes_taken_away_by_plus`
counts the samples that pass the base inputs but not the plus ones. Protocols are humaneval's
(quick: greedy pass@1; standard; paper). Version VERSION, VERSION + "-chat" in chat mode.
"""

from __future__ import annotations

from mtp_bench.api import register
from mtp_bench.generation import chat
from mtp_bench.scoring import evalplus
from mtp_bench.scoring.code_extract import chat_solution

VERSION = "1.1"  # 1.1: verdicts judged apart (the comparison in a judge process, mtp_bench.scoring.evalplus)
DATASET = "humaneval_plus"
# EvalPlus's stops for direct completion on HumanEval (its generic ones first)
STOP_SEQUENCES = ("<|endoftext|>", "<|endofmask|>", "</s>", "\nif __name__", "\ndef main(", "\nprint(",
                  "\ndef ", "\nclass ", "\nimport ", "\nfrom ", "\nassert ")


def load_problems(data_dir=None) -> dict[str, dict]:
    """task_id -> problem of HumanEvalPlus-v0.1.10 (prompt, entry_point, canonical_solution, inputs, atol)."""
    return evalplus.load_problems(DATASET, data_dir)


build_prompt = evalplus.completion_prompt  # completion mode: EvalPlus's direct-completion prompt


def build_chat_prompt(model, problem: dict) -> str:
    return chat.render_chat(model, chat.FUNCTION_INSTRUCTION.format(prompt=problem["prompt"]))


@register
class HumanEvalPlus(evalplus.PlusEvaluator):
    name = "humaneval_plus"
    version = VERSION  # VERSION + "-chat" once a run resolved to the chat mode
    base_version = VERSION
    dataset = DATASET
    stop_sequences = STOP_SEQUENCES
    suites = ("code",)
    description = "HumanEval+ (EvalPlus v0.1.10): base and base+plus pass@k by differential testing in the sandbox"
    caption = ("base_pass@k: HumanEval's own inputs; plus_pass@k: base + EvalPlus's extra inputs (the HumanEval+ "
               "score); the gap is what the stricter tests take away")

    class Config(evalplus.PlusConfig):
        owner = "humaneval_plus"

    def build_chat_prompt(self, model, problem: dict) -> str:
        return build_chat_prompt(model, problem)

    def chat_solution(self, problem: dict, text: str) -> str:
        return chat_solution(problem["prompt"], text, problem["entry_point"])
