"""`mtp-bench data distill`: a base model's greedy continuations as drafter training data, with the
evaluation prompts kept out, a manifest of sources and prompt hashes, resumable, and the trainer
recording the prompt hashes so specdec can tell a trained-on prompt."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|eos|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@pytest.fixture(scope="module")
def instruct_model(tmp_path_factory):
    from transformers import PreTrainedTokenizerFast

    from tests.reference_model.test_hf_import import tiny_hf

    tmp = tmp_path_factory.mktemp("distill-model")
    _, d = tiny_hf(tmp, "llama")
    tok = PreTrainedTokenizerFast.from_pretrained(str(d))
    tok.chat_template = TEMPLATE
    tok.save_pretrained(str(d))
    return d


@pytest.fixture
def small_data(tmp_path, data_dir):
    """A data folder with the real MBPP file, a GSM8K train file of 6 questions, one of them a
    GSM8K *test* question (it must be kept out), and the real test split."""
    d = tmp_path / "data"
    (d / "mbpp").mkdir(parents=True)
    (d / "gsm8k").mkdir()
    shutil.copy(data_dir / "mbpp" / "mbpp.jsonl", d / "mbpp" / "mbpp.jsonl")
    shutil.copy(data_dir / "gsm8k" / "test.jsonl", d / "gsm8k" / "test.jsonl")
    test_q = json.loads((data_dir / "gsm8k" / "test.jsonl").read_text().splitlines()[0])["question"]
    rows = [{"question": f"What is {i} + {i}?", "answer": f"#### {2 * i}"} for i in range(5)]
    rows.insert(2, {"question": test_q, "answer": "#### 0"})
    (d / "gsm8k" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d, test_q


def test_distill_writes_completions_manifest_and_keeps_evaluation_prompts_out(tmp_path, instruct_model, small_data):
    from mtp_bench.cli import main

    data, test_q = small_data
    out = tmp_path / "out"
    rc = main(["data", "distill", "--model", str(instruct_model), "--data-dir", str(data), "--out", str(out),
               "--max-prompts", "code=3,chat=6", "--max-new-tokens", "6", "--batch-size", "4"])
    assert rc == 0
    rows = [json.loads(line) for line in (out / "distill.jsonl").read_text().splitlines()]
    m = json.loads((out / "manifest.json").read_text())
    kinds = [r["kind"] for r in rows]
    assert kinds.count("code") == 3 and kinds.count("chat") == 6
    assert all(r["text"] == r["prompt"] + r["completion"] and r["completion_tokens"] <= 6 for r in rows)
    assert all(r["prompt_sha256"] == hashlib.sha256(r["prompt"].encode()).hexdigest() for r in rows)
    assert not any(test_q in r["prompt"] for r in rows)  # the GSM8K test question was dropped
    assert m["evaluation_prompts_excluded"]["contains_eval_text"] == 1
    assert sorted(m["prompt_sha256s"]) == sorted(r["prompt_sha256"] for r in rows)
    assert m["sha256"] == hashlib.sha256((out / "distill.jsonl").read_bytes()).hexdigest()
    assert m["base"]["weights_sha256"] and m["generation"]["temperature"] == 0.0
    assert set(m["sources"]) >= {"mbpp/mbpp.jsonl", "gsm8k/train.jsonl"}
    # resumable: the completions are reused, not regenerated (the same file comes out)
    first = (out / "distill.jsonl").read_bytes()
    assert main(["data", "distill", "--model", str(instruct_model), "--data-dir", str(data), "--out", str(out),
                 "--max-prompts", "code=3,chat=6", "--max-new-tokens", "6"]) == 0
    assert (out / "distill.jsonl").read_bytes() == first


def test_the_trainer_records_the_prompt_hashes_and_refuses_a_stale_manifest(tmp_path):
    from mtp_bench.api.errors import DataError
    from mtp_bench.reference_model.train import distill_record

    corpus = tmp_path / "distill.jsonl"
    corpus.write_text('{"text": "a"}\n')
    digest = hashlib.sha256(corpus.read_bytes()).hexdigest()
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "mtp-bench-distill", "sha256": digest,
                                                        "prompt_sha256s": ["ab", "cd"], "kinds": ["code"]}))
    rec = distill_record(str(corpus))
    assert rec["prompt_sha256s"] == ["ab", "cd"] and rec["distill"]["sha256"] == digest
    corpus.write_text('{"text": "b"}\n')
    with pytest.raises(DataError, match="does not match"):
        distill_record(str(corpus))
    assert distill_record(str(tmp_path / "other.txt")) == {}


def test_bad_distill_input_is_one_line_and_exit_2(tmp_path, instruct_model, small_data, capsys):
    from mtp_bench.cli import main

    data, _ = small_data
    cases = [["--max-prompts", "code=x"], ["--max-prompts", "poems=3"], ["--kinds", "poems"],
             ["--model", str(tmp_path / "missing")]]
    for extra in cases:
        args = ["data", "distill", "--model", str(instruct_model), "--data-dir", str(data), "--out", str(tmp_path / "o")]
        if extra[0] == "--model":
            args[3] = extra[1]
        else:
            args += extra
        assert main(args) == 2, extra
        err = capsys.readouterr().err
        assert err.count("mtp-bench: error:") == 1 and "Traceback" not in err, extra
    assert main(["data", "distill", "--model", str(instruct_model), "--data-dir", str(tmp_path / "nodata"),
                 "--out", str(tmp_path / "o")]) == 2
    (tmp_path / "file").write_text("x")
    assert main(["data", "distill", "--model", str(instruct_model), "--data-dir", str(data),
                 "--out", str(tmp_path / "file")]) == 2
