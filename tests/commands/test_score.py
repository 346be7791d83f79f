"""`mtp-bench score`: generations made elsewhere are scored with the evaluators' own extraction and
metrics; bad input is one line, exit 2, and no output file."""

from __future__ import annotations

import json

import pytest
from rouge_score.rouge_scorer import RougeScorer

from mtp_bench.cli import main
from mtp_bench.evals import gsm8k
from mtp_bench.evals import summarization as S
from mtp_bench.reporting.results import load_result, metrics


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_gsm8k_good_input_keeps_keys_and_adds_scores(tmp_path, data_dir, capsys):
    gens = _write(tmp_path / "gens.jsonl", [
        {"doc_id": 0, "completion": " 16 - 3 - 4 = 9. 9 * 2 = 18. The answer is 18.\n\nQ: Next?", "engine": "vllm"},
        {"doc_id": 1, "completion": " 2 / 2 = 1 and 2 + 1 = 3. The answer is $3"},
        {"doc_id": 2, "completion": "I am not sure."},
    ])
    out, res = tmp_path / "scored.jsonl", tmp_path / "r.json"
    rc = main(["score", "gsm8k", str(gens), "--out", str(out), "--result", str(res), "--data-dir", str(data_dir)])
    assert rc == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["doc_id"] for r in rows] == [0, 1, 2] and rows[0]["engine"] == "vllm"
    assert rows[0]["completion"].endswith("Q: Next?")  # the input is kept as given
    assert [r["target"] for r in rows] == ["18", "3", "70000"]
    assert [r["extracted_strict"] for r in rows] == ["18", gsm8k.INVALID, gsm8k.INVALID]
    assert [r["extracted_flexible"] for r in rows] == ["18.", "$3", gsm8k.INVALID]
    assert [r["exact_match_strict"] for r in rows] == [True, False, False]
    assert [r["exact_match_flexible"] for r in rows] == [True, True, False]
    doc = load_result(res)
    m = metrics(doc, "gsm8k", "candidate")
    assert m["exact_match_strict"].value == pytest.approx(1 / 3) and m["exact_match_flexible"].value == pytest.approx(2 / 3)
    assert doc["models"]["candidate"]["format"] == "generations"
    assert "exact_match_flexible" in capsys.readouterr().out  # the table on the console


def test_gsm8k_several_samples_per_problem_give_majority_and_pass_at_k(tmp_path, data_dir):
    rows = [{"doc_id": 0, "completion": c} for c in ("The answer is 18.", "The answer is 17.", "The answer is 18.")]
    rows += [{"doc_id": 1, "completion": c} for c in ("The answer is 4.", "The answer is 3.", "The answer is 4.")]
    gens, res = _write(tmp_path / "g.jsonl", rows), tmp_path / "r.json"
    assert main(["score", "gsm8k", str(gens), "--out", str(tmp_path / "s.jsonl"), "--result", str(res),
                 "--data-dir", str(data_dir), "--config", "gsm8k.k=1,2"]) == 0
    m = metrics(load_result(res), "gsm8k", "candidate")
    assert m["maj@3_flexible"].value == 0.5  # problem 0 right by vote, problem 1 wrong
    assert m["exact_match_flexible"].value == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert m["pass@2_flexible"].value == pytest.approx((1.0 + 2 / 3) / 2)  # 1 - C(1,2)/C(3,2), 1 - C(2,2)/C(3,2)


def test_summarization_scores_equal_rouge_score(tmp_path, data_dir):
    docs = S.load_split("xsum", data_dir)[0]
    gens = _write(tmp_path / "g.jsonl", [{"doc_id": 3, "completion": " " + docs[3]["article"].split("\n")[0] + "\n\nmore"},
                                         {"doc_id": 7, "completion": ""}])
    out = tmp_path / "s.jsonl"
    assert main(["score", "summarization", str(gens), "--out", str(out), "--data-dir", str(data_dir)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    summary = docs[3]["article"].split("\n")[0]
    want = RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True).score(docs[3]["references"][0], summary)
    assert rows[0]["summary"] == summary
    assert [rows[0][t] for t in ("rouge1", "rouge2", "rougeL")] == [want[t].fmeasure for t in ("rouge1", "rouge2", "rougeL")]
    assert rows[1]["empty"] and rows[1]["rougeLsum"] == 0.0


@pytest.mark.parametrize("line, message", [
    ('{"doc_id": 1319, "completion": "x"}', "doc_id 1319 is outside the gsm8k test split"),
    ('{"doc_id": -1, "completion": "x"}', "doc_id -1 is outside"),
    ('{"doc_id": 3}', "has no 'completion'"),
    ('{"doc_id": 3, "completion": 7}', "int completion"),
    ('{"doc_id": "3", "completion": "x"}', "integer 'doc_id'"),
    ('{"doc_id": 3, "completion": "x"', "not valid JSON"),
    ('[1, 2]', "expected a JSON object"),
])
def test_bad_input_is_one_line_exit_2_and_no_output(tmp_path, data_dir, capsys, line, message):
    gens = _write(tmp_path / "g.jsonl", [{"doc_id": 0, "completion": "The answer is 18."}, line])
    out, res = tmp_path / "s.jsonl", tmp_path / "r.json"
    rc = main(["score", "gsm8k", str(gens), "--out", str(out), "--result", str(res), "--data-dir", str(data_dir)])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "g.jsonl:2" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not res.exists()


def test_an_evaluator_that_does_not_score_text_is_refused(tmp_path, capsys):
    gens = _write(tmp_path / "g.jsonl", [{"doc_id": 0, "completion": "x"}])
    assert main(["score", "humaneval", str(gens), "--out", str(tmp_path / "s.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "gsm8k, summarization" in err and "mtp-bench exec" in err
    assert main(["score", "nope", str(gens), "--out", str(tmp_path / "s.jsonl")]) == 2
    assert "unknown evaluator 'nope'" in capsys.readouterr().err


def test_missing_file_and_bad_config(tmp_path, capsys, data_dir):
    assert main(["score", "gsm8k", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "s.jsonl")]) == 2
    assert "generations file not found" in capsys.readouterr().err
    gens = _write(tmp_path / "g.jsonl", [{"doc_id": 0, "completion": "x"}])
    assert main(["score", "gsm8k", str(gens), "--out", str(tmp_path / "s.jsonl"), "--config", "gsm8k.protocol=x"]) == 2
    assert "unknown protocol" in capsys.readouterr().err
    assert not (tmp_path / "s.jsonl").exists()
