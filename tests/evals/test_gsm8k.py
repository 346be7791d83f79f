"""GSM8K evaluator: lm-evaluation-harness's extraction and exact-match normalisation pinned on a
table of tricky outputs, the prompt templates, data loading, and the evaluator end to end with a
scripted fake model (metrics, determinism on rerun, the paper protocol's pass@k and maj@n)."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest

from mtp_bench.api.context import RunContext
from mtp_bench.api.errors import ConfigError, DataError
from mtp_bench.api.registry import REGISTRY
from mtp_bench.evals import gsm8k
from mtp_bench.testing import FakeModel

INV = gsm8k.INVALID

# (style, completion, strict, flexible, target, exact_match_strict, exact_match_flexible)
# Expected values worked out by hand from lm-evaluation-harness's definitions (module docstring).
TABLE = [
    ("cot", " 2 + 3 = 5. The answer is 5.", "5", "5.", "5", True, True),
    # the cot regex ends in an unescaped "." (any character): at the very end it eats a digit
    ("cot", "The answer is 18", "1", "18", "18", False, True),
    ("cot", "The answer is 18.", "18", "18.", "18", True, True),
    ("cot", "The answer is 1,000.", "1,000", "1,000.", "1000", True, True),  # thousands separator
    ("cot", "The answer is 1,234,567.", "1,234,567", "1,234,567.", "1234567", True, True),
    ("cot", "The answer is $18.", INV, "$18.", "18", False, True),  # "$" is not in the strict class
    ("cot", "The answer is -3.", "-3", "-3.", "-3", True, True),  # negative
    ("cot", "The answer is -0.5.", "-0.5", "-0.5.", "-0.5", True, True),
    ("cot", "The answer is 2.5.", "2.5", "2.5.", "2.5", True, True),  # decimal
    ("cot", "The answer is 12.50.", "12.50", "12.50.", "12.5", False, False),  # no numeric parse
    ("cot", "The answer is .5.", ".5", ".5.", "0.5", False, False),
    ("cot", "The answer is 0.", "0", "0.", "0", True, True),
    ("cot", "The answer is 7.\n\nQ: Tom has 3 apples. How many?", "7", "7.", "7", True, True),  # a new Q: cut
    ("cot", "The answer is 6.</s>junk 99", "6", "6.", "6", True, True),
    ("cot", "The answer is 3.<|im_end|>\nThe answer is 4.", "3", "3.", "3", True, True),
    ("cot", "The answer is 8.\n", "8", "8.", "8", True, True),  # "." cannot match the newline
    # "6. T": the greedy group takes "6." and the final "." takes the space
    ("cot", "There are 4 cars. Then 2 more. The answer is 6. Then 10 more arrive.", "6.", "10", "6", True, False),
    ("cot", "The answer is 3. The answer is 4.", "3.", "4.", "4", False, True),  # several answers
    ("cot", "5 + 5 = 10 The answer is 10", "1", "10", "10", False, True),
    ("cot", "So the total is 4... The answer is 4", INV, "4", "4", False, True),  # nothing after the 4
    ("cot", "The answer is 5 apples.", "5", "5", "5", True, True),
    ("cot", "the answer is 5.", INV, "5.", "5", False, True),  # the regex is case-sensitive
    ("cot", "The answer is 10%.", "10", "10", "10", True, True),
    ("cot", "The answer is 42!", "42", "42", "42", True, True),
    ("cot", "The answer is 5,.", "5,", "5,.", "5", True, True),
    ("cot", "The answer is -$5.", INV, "-$5.", "-5", False, True),
    ("cot", "It costs $2,000 dollars. The answer is 2000.", "2000", "2000.", "2000", True, True),
    ("cot", "I don't know.", INV, INV, "3", False, False),  # no number
    ("cot", "", INV, INV, "3", False, False),  # empty output
    ("cot", "wait...", INV, "...", "3", False, False),  # dots alone are "number-like" to flexible
    ("cot", "Answer: 1.5e3", INV, "3", "1500", False, False),
    ("cot", "Result: 3\n#### 3", INV, "3", "3", False, True),
    ("hash", " Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs.\n#### 9", "9", "9", "9", True, True),
    ("hash", "#### 1,000", "1,000", "1,000", "1000", True, True),
    ("hash", "#### $50", INV, "$50", "50", False, True),
    ("hash", "The total is 5.\n#### 5\n\nQuestion: What is 2+2?\nAnswer: 4", "5", "5", "5", True, True),
    ("hash", "#### -7", "-7", "-7", "-7", True, True),
    ("hash", "#### 5.00", "5.00", "5.00", "5", False, False),
    ("hash", "####5", INV, "5", "5", False, True),  # no space after ####
    ("hash", "#### 12 #### 13", "12", "13", "13", False, True),
]


@pytest.mark.parametrize("style, completion, strict, flexible, target, em_strict, em_flexible", TABLE)
def test_extraction_table(style, completion, strict, flexible, target, em_strict, em_flexible):
    s = gsm8k.score_completion(completion, target, style)
    assert (s["extracted_strict"], s["extracted_flexible"]) == (strict, flexible)
    assert (s["exact_match_strict"], s["exact_match_flexible"]) == (em_strict, em_flexible)


def test_extraction_table_is_big_enough():
    assert len(TABLE) >= 30


def test_normalisation_strips_the_worked_solution_of_a_reference():
    # fewshot5's references in lm-eval are whole solutions; "(?s).*#### " leaves the number
    answer = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72"
    assert gsm8k.exact_match("72", answer)
    assert gsm8k.normalize("The ANSWER") == "the answer"  # ignore_case


def test_doctests_run():
    failures, tried = doctest.testmod(gsm8k)
    assert failures == 0 and tried >= 8


def test_majority_vote_ties_go_to_the_first_answer_and_invalid_never_wins():
    assert gsm8k.majority(["7", "5", "5", "7"]) == "7"
    assert gsm8k.majority([INV, INV, "4"]) == "4"
    assert gsm8k.majority([INV]) == INV


# ----------------------------------------------------------------------------- data and prompts


def test_test_split_loads_in_file_order(data_dir):
    docs = gsm8k.GSM8K().load_docs(data_dir)
    assert len(docs) == 1319
    assert docs[0]["doc_id"] == 0 and docs[0]["question"].startswith("Janet\u2019s ducks lay 16 eggs")
    assert docs[0]["target"] == "18" and docs[-1]["doc_id"] == 1318


def test_every_test_target_is_its_own_exact_match(data_dir):
    # the normalised reference equals the reference's #### number for all 1319 problems
    for d in gsm8k.GSM8K().load_docs(data_dir):
        assert gsm8k.exact_match(d["target"], d["answer"]), d["doc_id"]


def test_cot8_prompt_layout():
    p = gsm8k.build_prompt("What is 1+1?", list(gsm8k.COT_EXEMPLARS), "cot")
    assert p.startswith("Q: There are 15 trees in the grove.")
    assert "\nA: There are 15 trees originally." in p
    assert p.count("The answer is") == 8 and p.count("\n\nQ: ") == 8
    assert p.endswith("The answer is 8.\n\nQ: What is 1+1?\nA:")


def test_fewshot5_exemplars_are_fixed_by_the_seed(data_dir):
    a = gsm8k.exemplars("train5", data_dir, 1234)
    assert a == gsm8k.exemplars("train5", data_dir, 1234) and len(a) == 5
    assert a != gsm8k.exemplars("train5", data_dir, 1)
    p = gsm8k.build_prompt("What is 1+1?", a, "hash")
    assert p.startswith("Question: ") and p.count("\n#### ") == 5 and p.endswith("Question: What is 1+1?\nAnswer:")


def test_missing_data_offline_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.delenv("MTP_BENCH_DATA", raising=False)
    with pytest.raises(DataError, match="GSM8K \\(test\\) not found.*hub was not tried"):
        gsm8k.load_split(tmp_path, "test")


def test_malformed_line_names_the_file_and_line(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{oops\n')
    with pytest.raises(DataError, match="test.jsonl:2: not valid JSON"):
        gsm8k.load_split(tmp_path, "test")


def test_config_rejects_unknown_protocol_and_greedy_n():
    with pytest.raises(ConfigError, match="unknown protocol"):
        gsm8k.GSM8K.Config(protocol="cot9")
    with pytest.raises(ConfigError, match="greedy"):
        gsm8k.GSM8K.Config(n=4)


# ----------------------------------------------------------------------------- end to end


def _fake_data(tmp_path, problems):
    d = tmp_path / "gsm8k"
    d.mkdir()
    (d / "test.jsonl").write_text("".join(json.dumps({"question": q, "answer": f"Work.\n#### {a}"}) + "\n"
                                          for q, a in problems))
    (d / "train.jsonl").write_text("".join(json.dumps({"question": f"t{i}?", "answer": f"#### {i}"}) + "\n"
                                           for i in range(10)))
    return tmp_path


PROBLEMS = [("What is 2+3?", 5), ("What is 10-4?", 6), ("What is 3*3?", 9), ("What is 8/2?", 4)]


def test_cot8_end_to_end_with_a_scripted_model(tmp_path):
    data = _fake_data(tmp_path, PROBLEMS)
    shots = list(gsm8k.COT_EXEMPLARS)
    prompt = lambda q: gsm8k.build_prompt(q, shots, "cot")  # noqa: E731
    model = FakeModel(responses={
        prompt("What is 2+3?"): " 2 + 3 = 5. The answer is 5.\n\nQ: What is 7+7?",  # right, then a new Q:
        prompt("What is 10-4?"): " It is 6 The answer is 6",  # one digit at the very end: strict finds nothing
        prompt("What is 3*3?"): " 3 * 3 = 9. The answer is 8.",  # wrong
        prompt("What is 8/2?"): " I think $4.",  # flexible only
    })
    ev = REGISTRY["gsm8k"]()
    out = ev.run(model, RunContext(seed=0, work_dir=tmp_path, data_dir=data))
    by_id = {r["doc_id"]: r for r in out.records}
    assert by_id[0]["completion"] == " 2 + 3 = 5. The answer is 5.\n\n" and by_id[0]["finish_reason"] == "stop"
    assert [by_id[i]["extracted_strict"] for i in range(4)] == ["5", INV, "8", INV]
    assert [by_id[i]["exact_match_flexible"] for i in range(4)] == [True, True, False, True]
    assert out.metrics["exact_match_strict"].value == 0.25
    assert out.metrics["exact_match_flexible"].value == 0.75
    assert out.metrics["exact_match_flexible"].n == 4 and out.metrics["exact_match_flexible"].higher_is_better
    assert out.info["num_test_problems"] == 4 and "maj@1_flexible" not in out.metrics
    rerun = REGISTRY["gsm8k"]().run(model, RunContext(seed=0, work_dir=tmp_path, data_dir=data))
    assert {k: m.to_dict() for k, m in rerun.metrics.items()} == {k: m.to_dict() for k, m in out.metrics.items()}
    assert rerun.records == out.records


@pytest.mark.slow
def test_paper_protocol_reports_pass_at_k_and_majority(tmp_path):
    data = _fake_data(tmp_path, PROBLEMS[:2])
    shots = list(gsm8k.COT_EXEMPLARS)
    model = FakeModel(sharpness=0.5, responses={gsm8k.build_prompt("What is 2+3?", shots, "cot"): " The answer is 5."})
    ev = gsm8k.GSM8K(gsm8k.GSM8K.Config(protocol="paper", n=4, temperatures=(0.5, 1.0), k=(1, 2), max_new_tokens=12))
    out = ev.run(model, RunContext(seed=0, work_dir=tmp_path, data_dir=data))
    assert len(out.records) == 2 * 4 * 2  # problems x n x temperatures
    assert {"pass@1_flexible", "pass@2_flexible", "pass@1_strict", "maj@4_flexible", "maj@4_strict"} <= set(out.metrics)
    p1, p2 = out.metrics["pass@1_flexible"].value, out.metrics["pass@2_flexible"].value
    assert 0.0 <= p1 <= p2 <= 1.0
    again = gsm8k.GSM8K(ev.config).run(model, RunContext(seed=0, work_dir=tmp_path, data_dir=data))
    assert [r["completion"] for r in again.records] == [r["completion"] for r in out.records]


@pytest.mark.slow
def test_zero_config_nl_suite_runs_end_to_end(tmp_path, data_dir, monkeypatch):
    from mtp_bench.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "nl.json"
    rc = main(["run", "--suite", "nl", "--limit", "2", "--data-dir", str(data_dir), "--quiet",
               "--config", "gsm8k.max_new_tokens=4", "--config", "summarization.max_new_tokens=4", "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert set(doc["evals"]) == {"gsm8k", "summarization"} and not doc["skipped"]
    for ev, metric in (("gsm8k", "exact_match_flexible"), ("summarization", "rougeL")):
        for role in ("candidate", "baseline"):
            block = doc["results"][ev][role]
            assert block["config"]["limit"] == 50 and block["metrics"][metric]["n"] == 2  # --limit 2 wins
    committed = json.loads((Path(__file__).resolve().parents[2] / "results" / "nl-default.json").read_text())
    assert {m["weights_sha256"] for m in committed["models"].values()} == \
        {m["weights_sha256"] for m in doc["models"].values()}
    assert {ev: committed["results"][ev]["candidate"]["version"] for ev in committed["evals"]} == \
        {"gsm8k": gsm8k.GSM8K.version, "summarization": REGISTRY["summarization"].version}
