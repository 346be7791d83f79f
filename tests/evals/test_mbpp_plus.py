"""MBPP+ evaluator: prompts in both modes, base and base+plus pass@k with a scripted fake model and
the real sandbox. (Verdicts against EvalPlus's own evaluator: tests/scoring/test_evalplus.py.)"""

from __future__ import annotations

import os

import pytest

from mtp_bench.api.context import RunContext
from mtp_bench.api.registry import REGISTRY
from mtp_bench.evals import mbpp_plus as mp
from mtp_bench.generation import chat
from mtp_bench.generation.engine import Generation
from mtp_bench.testing import FakeModel

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@pytest.fixture(scope="module", autouse=True)
def cache_home(tmp_path_factory):
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg"))
    yield
    os.environ.pop("XDG_CACHE_HOME") if saved is None else os.environ.update(XDG_CACHE_HOME=saved)


@pytest.fixture(scope="module")
def problems(data_dir):
    return mp.load_problems(data_dir)


def scripted(answers: dict[str, str]):
    def generate_fn(model, prompts, config, seeds=None):
        return [Generation(text=answers[p], token_ids=[], prompt_ids=[], finish_reason="stop") for p in prompts]
    return generate_fn


def test_378_problems_registered_in_the_code_suite(problems):
    assert len(problems) == 378 and next(iter(problems)) == "Mbpp/2"
    assert REGISTRY["mbpp_plus"] is mp.MBPPPlus and mp.MBPPPlus.suites == ("code",)


def test_prompt_is_split_into_task_and_test(problems):
    text, tests = mp.task_and_tests(problems["Mbpp/2"])
    assert text == "Write a function to find the shared elements from the given two lists."
    assert tests == "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))"


@pytest.mark.slow
def test_completion_mode_base_and_plus(data_dir, tmp_path, problems):
    p2, p3, p4 = (problems[t] for t in ("Mbpp/2", "Mbpp/3", "Mbpp/4"))
    # Mbpp/3 (is_not_prime): divisors tried below 50 only, enough for MBPP's own inputs (1, 2, 10, 35,
    # 37), not for 7921 = 89 * 89 among the plus inputs
    not_prime_from_2 = ("def is_not_prime(n):\n    if n == 1:\n        return True\n    for i in range(2, min(n, 50)):\n"
                        "        if n % i == 0:\n            return True\n    return False\n")
    answers = {mp.build_prompt(p2): p2["canonical_solution"], mp.build_prompt(p3): not_prime_from_2,
               mp.build_prompt(p4): "def heap_queue_largest(nums, n):\n    return sorted(nums)[:n]\n"}
    ctx = RunContext(seed=0, limit=3, data_dir=data_dir, work_dir=tmp_path, generate_fn=scripted(answers))
    out = mp.MBPPPlus(mp.MBPPPlus.Config(prompt_mode="completion")).run(FakeModel(), ctx)
    assert [(r["base_passed"], r["passed"]) for r in out.records] == [(True, True), (True, False), (False, False)]
    assert out.metrics["base_pass@1"].value == pytest.approx(2 / 3)
    assert out.metrics["plus_pass@1"].value == pytest.approx(1 / 3)


@pytest.mark.slow
def test_chat_mode_prompt_and_sanitized_solution(data_dir, tmp_path, problems):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    model = FakeModel()
    hf = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")))
    hf.chat_template = CHAT_TEMPLATE
    model.tokenizer.tok = hf
    p = problems["Mbpp/2"]
    prompt = mp.build_chat_prompt(model, p)
    text, tests = mp.task_and_tests(p)
    assert prompt == "<|user|>\n" + chat.TASK_INSTRUCTION.format(text=text, tests=tests) + "<|end|>\n<|assistant|>\n"
    answer = f"```python{p['canonical_solution']}\nassert similar_elements((1,), (1,)) == (1,)\n```"
    ctx = RunContext(seed=0, limit=1, data_dir=data_dir, work_dir=tmp_path, generate_fn=scripted({prompt: answer}))
    out = mp.MBPPPlus().run(model, ctx)
    assert out.records[0]["passed"] and "assert" not in out.records[0]["solution"]
    assert out.info["prompt_mode"] == "chat"
