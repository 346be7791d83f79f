"""HumanEval+ evaluator: prompts in both modes, base and base+plus pass@k side by side with a
scripted fake model and the real sandbox, registration. (Verdicts against EvalPlus's own
evaluator: tests/scoring/test_evalplus.py.)"""

from __future__ import annotations

import json
import os

import pytest

from mtp_bench.api.context import RunContext
from mtp_bench.api.errors import DataError
from mtp_bench.api.registry import REGISTRY
from mtp_bench.evals import humaneval_plus as hp
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
    return hp.load_problems(data_dir)


def chat_model() -> FakeModel:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    model = FakeModel()
    hf = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")))
    hf.chat_template = CHAT_TEMPLATE
    model.tokenizer.tok = hf
    return model


def scripted(answers: dict[str, str]):
    def generate_fn(model, prompts, config, seeds=None):
        return [Generation(text=answers[p], token_ids=[], prompt_ids=[], finish_reason="stop") for p in prompts]
    return generate_fn


def base_only(problem: dict) -> str:
    """A completion right on HumanEval's own inputs and wrong (None) on every other one."""
    base = json.dumps(problem["base_input"])
    return (f"    import json as _j\n    _ref = {{}}\n    exec({(problem['prompt'] + problem['canonical_solution'])!r}, _ref)\n"
            f"    args = [v for v in locals().values() if v is not _j and v is not _ref]\n"
            f"    if _j.loads(_j.dumps(args)) in _j.loads({base!r}):\n"
            f"        return _ref[{problem['entry_point']!r}](*args)\n    return None\n")


def test_registered_in_the_code_suite():
    assert REGISTRY["humaneval_plus"] is hp.HumanEvalPlus and hp.HumanEvalPlus.suites == ("code",)


def test_completion_prompt_and_stops_are_evalplus_direct_completion(problems):
    p = problems["HumanEval/0"]
    assert hp.build_prompt(p) == p["prompt"].strip() + "\n"
    assert {"\ndef ", "\nclass ", "\nimport ", "\nfrom ", "\nassert ", "\nif __name__", "\nprint("} <= set(hp.STOP_SEQUENCES)


@pytest.mark.slow
def test_base_and_plus_pass_at_1_side_by_side(data_dir, tmp_path, problems):
    p0, p1, p2 = (problems[t] for t in ("HumanEval/0", "HumanEval/1", "HumanEval/2"))
    answers = {hp.build_prompt(p0): p0["canonical_solution"],  # right everywhere
               hp.build_prompt(p1): base_only(p1),  # right on the base inputs only
               hp.build_prompt(p2): "    return None\n"}  # wrong everywhere
    ctx = RunContext(seed=0, limit=3, data_dir=data_dir, work_dir=tmp_path, generate_fn=scripted(answers))
    out = hp.HumanEvalPlus(hp.HumanEvalPlus.Config(prompt_mode="completion")).run(FakeModel(), ctx)

    assert list(out.metrics) == ["base_pass@1", "plus_pass@1"]
    assert out.metrics["base_pass@1"].value == pytest.approx(2 / 3)
    assert out.metrics["plus_pass@1"].value == pytest.approx(1 / 3)
    assert [(r["base_passed"], r["passed"]) for r in out.records] == [(True, True), (True, False), (False, False)]
    assert out.records[1]["solution"] == hp.build_prompt(p1) + base_only(p1)
    assert "plus input" in out.records[1]["detail"]
    assert out.info["passes_taken_away_by_plus"] == 1 and out.info["prompt_mode"] == "completion"
    assert out.info["data_sha256"] == p0["sha256"]
    json.dumps([out.records, out.info])


@pytest.mark.slow
def test_chat_mode_extracts_the_function(data_dir, tmp_path, problems):
    model = chat_model()
    p = problems["HumanEval/0"]
    prompt = hp.build_chat_prompt(model, p)
    assert prompt == "<|user|>\n" + chat.FUNCTION_INSTRUCTION.format(prompt=p["prompt"]) + "<|end|>\n<|assistant|>\n"
    answer = "Sure:\n```python\n" + p["prompt"] + p["canonical_solution"] + "\nprint(has_close_elements([1.0], 0.5))\n```"
    ctx = RunContext(seed=0, limit=1, data_dir=data_dir, work_dir=tmp_path, generate_fn=scripted({prompt: answer}))
    ev = hp.HumanEvalPlus()
    out = ev.run(model, ctx)
    assert out.records[0]["passed"] and out.records[0]["generation"] == answer
    assert "print(" not in out.records[0]["solution"]
    assert out.info["prompt_mode"] == "chat" and ev.version == hp.VERSION + "-chat"


def test_missing_data_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.delenv("MTP_BENCH_DATA", raising=False)
    ctx = RunContext(seed=0, limit=1, data_dir=tmp_path, work_dir=tmp_path, generate_fn=scripted({}))
    with pytest.raises(DataError, match="HumanEvalPlus-v0.1.10.jsonl.gz"):
        hp.HumanEvalPlus().run(FakeModel(), ctx)
