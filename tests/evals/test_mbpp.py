"""MBPP evaluator: data loading (local files through `datasets`, clear errors), splits, the exact
prompt template, extraction, program layout, reference solutions through the sandbox, and
pass@k end to end with a scripted fake model."""

from __future__ import annotations

import json

import pytest

from mtp_bench.api.context import RunContext
from mtp_bench.api.errors import ConfigError, DataError
from mtp_bench.api.registry import REGISTRY, sample_seed
from mtp_bench.evals import mbpp
from mtp_bench.generation.engine import Generation
from mtp_bench.scoring.metrics import mean_metric
from mtp_bench.testing import FakeModel

# Task 11, the first of the test split, in the 3-shot template: written out by hand from
# mbpp.jsonl (tasks 2, 3, 4 as shots; "\r\n" in their code made "\n"; task 2's code keeps its
# trailing space; the test lines of task 4 keep their trailing spaces).
GOLDEN_PROMPT_11 = (
    "You are an expert Python programmer, and here is your task: Write a function to find the similar"
    " elements from the given two tuple lists. Your code should pass these tests:\n\n"
    "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)\n"
    "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)\n"
    "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)\n"
    "[BEGIN]\n"
    "def similar_elements(test_tup1, test_tup2):\n"
    "  res = tuple(set(test_tup1) & set(test_tup2))\n"
    "  return (res) \n"
    "[DONE]\n"
    "You are an expert Python programmer, and here is your task: Write a python function to identify"
    " non-prime numbers. Your code should pass these tests:\n\n"
    "assert is_not_prime(2) == False\n"
    "assert is_not_prime(10) == True\n"
    "assert is_not_prime(35) == True\n"
    "[BEGIN]\n"
    "import math\n"
    "def is_not_prime(n):\n"
    "    result = False\n"
    "    for i in range(2,int(math.sqrt(n)) + 1):\n"
    "        if n % i == 0:\n"
    "            result = True\n"
    "    return result\n"
    "[DONE]\n"
    "You are an expert Python programmer, and here is your task: Write a function to find the largest"
    " integers from a given list of numbers using heap queue algorithm. Your code should pass these tests:\n\n"
    "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] \n"
    "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] \n"
    "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35]\n"
    "[BEGIN]\n"
    "import heapq as hq\n"
    "def heap_queue_largest(nums,n):\n"
    "  largest_nums = hq.nlargest(n, nums)\n"
    "  return largest_nums\n"
    "[DONE]\n"
    "You are an expert Python programmer, and here is your task: Write a python function to remove first"
    " and last occurrence of a given character from the string. Your code should pass these tests:\n\n"
    'assert remove_Occ("hello","l") == "heo"\n'
    'assert remove_Occ("abcda","a") == "bcd"\n'
    'assert remove_Occ("PHP","P") == "H"\n'
    "[BEGIN]\n"
)

# Test-split tasks whose reference solution fails its own tests in our sandbox. Measured: none
# (full set 500/500, sanitized test split 257/257). A change here must be reported, not hidden.
# The timeout is generous because the test checks the programs, not speed: task 123's reference
# needs ~4.3 s of CPU alone (hence the evaluator's 10 s default) and the test machine is shared.
KNOWN_FAILING_REFERENCES: dict[str, list[str]] = {"full": [], "sanitized": []}


@pytest.fixture(autouse=True)
def _no_env_data(monkeypatch):
    monkeypatch.delenv("MTP_BENCH_DATA", raising=False)


@pytest.fixture(scope="module")
def everything(data_dir):
    return mbpp.load_all(data_dir, "full")


@pytest.mark.slow
def test_full_test_split_is_task_ids_11_to_510(data_dir):
    problems = mbpp.load_problems(data_dir)
    assert list(problems) == [str(i) for i in range(11, 511)]
    p = problems["11"]
    assert set(p) == {"task_id", "text", "code", "test_setup_code", "test_list", "challenge_test_list"}
    assert len(p["test_list"]) == 3 and "\r" not in p["code"]


def test_sanitized_set_keeps_its_own_task_ids_in_the_test_range(data_dir):
    everything = mbpp.load_all(data_dir, "sanitized")
    test = mbpp.load_problems(data_dir, variant="sanitized")
    raw = json.loads((data_dir / "mbpp" / "sanitized-mbpp.json").read_text())
    assert len(everything) == 427
    assert list(test) == [str(i) for i in sorted(r["task_id"] for r in raw if 11 <= r["task_id"] <= 510)]
    assert len(test) == 257
    by_id = {str(r["task_id"]): r for r in raw}
    t = next(iter(test))
    assert test[t]["text"] == by_id[t]["prompt"] and test[t]["test_list"] == by_id[t]["test_list"]
    assert all(tid in everything for tid in mbpp.FEW_SHOT_IDS)


def test_data_dir_may_be_the_mbpp_folder_or_the_file_or_the_env_var(data_dir, monkeypatch):
    assert len(mbpp.load_problems(data_dir / "mbpp")) == 500
    assert len(mbpp.load_problems(data_dir / "mbpp" / "mbpp.jsonl")) == 500
    monkeypatch.setenv("MTP_BENCH_DATA", str(data_dir))
    assert len(mbpp.load_problems()) == 500


def test_missing_data_is_one_error_saying_where_it_looked_and_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        mbpp.load_problems(tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "mbpp" / "mbpp.jsonl") in msg and str(tmp_path / "mbpp.jsonl") in msg
    assert "--data-dir" in msg and "MTP_BENCH_DATA" in msg and "\n" not in msg
    with pytest.raises(DataError, match="no local directory was given"):
        mbpp.load_problems(None, variant="sanitized")


def test_malformed_data_is_a_data_error(tmp_path):
    (tmp_path / "mbpp.jsonl").write_text('{"task_id": 1, "question": "no text or tests"}\n')
    with pytest.raises(DataError, match="malformed MBPP"):
        mbpp.load_problems(tmp_path)
    (tmp_path / "mbpp.jsonl").write_text("this is not json\n")
    with pytest.raises(DataError, match="could not read MBPP"):
        mbpp.load_problems(tmp_path)


def test_unknown_variant_or_split_is_a_config_error(data_dir):
    with pytest.raises(ConfigError, match="full, sanitized"):
        mbpp.load_problems(data_dir, variant="plus")
    with pytest.raises(ConfigError, match="valid: prompt, test"):
        mbpp.load_problems(data_dir, split="dev")
    with pytest.raises(ConfigError):
        mbpp.MBPP.Config(variant="tiny")


def test_prompt_template_is_exactly_the_papers_three_shot_format(everything):
    shots = [everything[t] for t in mbpp.FEW_SHOT_IDS]
    assert mbpp.build_prompt(everything["11"], shots) == GOLDEN_PROMPT_11


def test_extract_code_strips_done_fences_and_blank_lines():
    assert mbpp.extract_code("\ndef f(x):\n    return x\n[DONE]\nYou are") == "def f(x):\n    return x"
    assert mbpp.extract_code("```python\ndef f():\n    return 1\n```\nmore text") == "def f():\n    return 1"
    assert mbpp.extract_code("```\nx = 1\n") == "x = 1"  # an unclosed fence
    assert mbpp.extract_code("    indented = True\n\n") == "    indented = True"


def test_program_is_completion_then_setup_then_asserts(everything):
    p = everything["367"]  # the one test task with test_setup_code (it builds trees with the solution's Node)
    program = mbpp.build_program(p, "CODE")
    assert program == "CODE\n" + p["test_setup_code"] + "\n" + "\n".join(p["test_list"]) + "\n"
    with_challenge = next(q for q in everything.values() if q["challenge_test_list"])
    assert with_challenge["challenge_test_list"][0] in mbpp.build_program(with_challenge, "", include_challenge=True)
    assert with_challenge["challenge_test_list"][0] not in mbpp.build_program(with_challenge, "")


@pytest.mark.slow
def test_every_reference_solution_passes_its_own_tests_in_the_sandbox(data_dir):
    from mtp_bench.execution.pool import SandboxConfig, run_programs

    # both variants' test splits in one parallel batch (full with its challenge tests)
    jobs = [(variant, tid, mbpp.build_split(p, p["code"], include_challenge=(variant == "full")))
            for variant in ("full", "sanitized") for tid, p in mbpp.load_problems(data_dir, variant=variant).items()]
    assert len(jobs) == 500 + 257
    results = run_programs([program for *_, program in jobs], config=SandboxConfig(timeout_s=60.0))
    failing = {v: [tid for (variant, tid, _), r in zip(jobs, results) if variant == v and not r.passed]
               for v in ("full", "sanitized")}
    details = {f"{v}/{tid}": f"{r.status}: {r.detail}" for (v, tid, _), r in zip(jobs, results) if not r.passed}
    assert failing == KNOWN_FAILING_REFERENCES, details
    assert all(r.status == "passed" for r in results if r.passed)
    # every one judged apart from the program, task 367 too (its setup builds the solution's Node
    # objects in the candidate; the asserts run in the judge)
    assert {r.isolation for r in results} == {"judge"}


def _scripted(texts):
    def generate_fn(model, prompts, config, seeds=None):
        return [Generation(text=texts[(p, s)], token_ids=[], prompt_ids=[], finish_reason="stop")
                for p, s in zip(prompts, seeds)]
    return generate_fn


def test_registered_in_the_code_suite():
    assert REGISTRY["mbpp"] is mbpp.MBPP and mbpp.MBPP.suites == ("code",)


def test_quick_pass_at_1_counts_reference_answers_and_not_wrong_ones(data_dir, tmp_path):
    everything = mbpp.load_all(data_dir)
    shots = [everything[t] for t in mbpp.FEW_SHOT_IDS]
    ids = [str(i) for i in range(11, 16)]
    solved = [True, False, False, True, True]
    texts = {}
    for tid, ok in zip(ids, solved):
        p = everything[tid]
        # right answers arrive the way models write them: fenced, then [DONE] and chatter
        text = f"```python\n{p['code']}\n```\n[DONE]\nbye" if ok else "def nothing():\n    return None\n"
        texts[(mbpp.build_prompt(p, shots), sample_seed(0, tid, 0))] = text
    ctx = RunContext(seed=0, limit=5, data_dir=data_dir, work_dir=tmp_path, generate_fn=_scripted(texts))
    out = mbpp.MBPP().run(FakeModel(), ctx)

    assert [r["task_id"] for r in out.records] == ids
    assert [r["passed"] for r in out.records] == solved
    assert out.records[0]["completion"] == everything["11"]["code"].strip("\n").rstrip()
    assert out.records[0]["prompt"] == GOLDEN_PROMPT_11
    assert out.metrics["pass@1"] == mean_metric([float(s) for s in solved], higher_is_better=True)
    assert out.info["variant"] == "full" and out.info["sandbox"]


def test_sampled_pass_at_k_per_problem_counts(data_dir, tmp_path):
    everything = mbpp.load_all(data_dir)
    shots = [everything[t] for t in mbpp.FEW_SHOT_IDS]
    ids = ["11", "12"]
    counts = [3, 1]  # of n=4 samples at T=0.6
    texts = {}
    for tid, c in zip(ids, counts):
        p = everything[tid]
        for i in range(4):
            texts[(mbpp.build_prompt(p, shots), sample_seed(7, tid, i))] = p["code"] if i < c else "x = 1"
    ctx = RunContext(seed=7, limit=2, data_dir=data_dir, work_dir=tmp_path, generate_fn=_scripted(texts))
    cfg = mbpp.MBPP.Config(protocol="quick", n=4, temperatures=(0.6,), k=(1, 2, 8))
    out = mbpp.MBPP(cfg).run(FakeModel(), ctx)

    # pass@1 = mean(3/4, 1/4); pass@2 = mean(1 - C(1,2)/C(4,2), 1 - C(3,2)/C(4,2)) = mean(1, 1/2)
    assert out.metrics["pass@1"].value == pytest.approx(0.5, abs=1e-12)
    assert out.metrics["pass@2"].value == pytest.approx(0.75, abs=1e-12)
    assert "pass@8" not in out.metrics and out.info["k_skipped_above_n"] == [8]
    assert {r["task_id"]: r["problem_num_correct"] for r in out.records} == {"11": 3, "12": 1}


def test_end_to_end_with_the_generation_engine_stopping_at_done(data_dir, tmp_path):
    everything = mbpp.load_all(data_dir)
    shots = [everything[t] for t in mbpp.FEW_SHOT_IDS]
    p = everything["11"]
    model = FakeModel(responses={build: p["code"] + "\n[DONE]\nYou are an expert" for build in
                                 [mbpp.build_prompt(p, shots)]})
    ctx = RunContext(seed=0, limit=1, data_dir=data_dir, work_dir=tmp_path)
    out = mbpp.MBPP(mbpp.MBPP.Config(max_new_tokens=400)).run(model, ctx)
    assert out.records[0]["finish_reason"] == "stop"
    assert out.records[0]["completion"] == p["code"].rstrip()
    assert out.records[0]["passed"] is True and out.metrics["pass@1"].value == 1.0


# ----------------------------------------------------------------------------- prompt modes

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def chat_model() -> FakeModel:
    """The fake model with a transformers tokenizer beside its byte tokenizer, for its chat template."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    model = FakeModel()
    hf = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")))
    hf.chat_template = CHAT_TEMPLATE
    model.tokenizer.tok = hf
    return model


def test_chat_prompt_holds_the_task_and_its_tests(everything):
    from mtp_bench.generation import chat

    p = everything["11"]
    got = mbpp.build_chat_prompt(chat_model(), p)
    user = chat.TASK_INSTRUCTION.format(text=p["text"], tests="\n".join(p["test_list"]))
    assert got == "<|user|>\n" + user + "<|end|>\n<|assistant|>\n"
    assert "Tests:\n```python\n" + p["test_list"][0] in got and "[BEGIN]" not in got  # zero-shot, no 3-shot format


def test_chat_mode_takes_the_code_out_of_the_answer(data_dir, tmp_path, everything):
    model = chat_model()
    ids = ["11", "12", "13"]
    p11, p12, p13 = (everything[t] for t in ids)
    answers = {  # fenced with a test print after it; prose around bare code; a wrong function
        mbpp.build_chat_prompt(model, p11): f"```python\n{p11['code']}\n\nprint(remove_Occ('hello', 'l'))\n```\nDone.",
        mbpp.build_chat_prompt(model, p12): f"Here is the code:\n{p12['code']}\nThis sorts the rows.",
        mbpp.build_chat_prompt(model, p13): "```python\ndef count_common(words):\n    return []\n```",
    }

    def generate_fn(m, prompts, config, seeds=None):
        assert config.stop == ()
        return [Generation(text=answers[p], token_ids=[], prompt_ids=[], finish_reason="eos") for p in prompts]

    ev = mbpp.MBPP()
    out = ev.run(model, RunContext(seed=0, limit=3, data_dir=data_dir, work_dir=tmp_path, generate_fn=generate_fn))
    assert [r["passed"] for r in out.records] == [True, True, False]
    assert out.info["prompt_mode"] == "chat" and ev.version == mbpp.VERSION + "-chat"
    assert "print(" not in mbpp.chat_code(p11, out.records[0]["completion"])  # sanitized to the tested function
