"""`mtp-bench run --suite code --model HF_DIR` on an instruct model (a tokenizer with a chat
template): the four code evaluators resolve to the chat prompt mode on their own (`auto`) and all
four report, HumanEval+ and MBPP+ beside HumanEval and MBPP."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

CODE = ("humaneval", "mbpp", "humaneval_plus", "mbpp_plus")
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|eos|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@pytest.mark.slow
def test_code_suite_on_an_instruct_model_uses_chat_prompts(tmp_path, data_dir, monkeypatch):
    from transformers import PreTrainedTokenizerFast

    from mtp_bench.cli import main
    from tests.reference_model.test_hf_import import tiny_hf

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _, d = tiny_hf(tmp_path, "llama")
    tok = PreTrainedTokenizerFast.from_pretrained(str(d))
    tok.chat_template = TEMPLATE
    tok.save_pretrained(str(d))
    out = tmp_path / "instruct.json"
    overrides = [a for e in CODE for a in ("--config", f"{e}.max_new_tokens=8")]
    rc = main(["run", "--suite", "code", "--model", str(d), "--limit", "1", "--data-dir", str(data_dir), "--quiet",
               "--config", "specdec.max_new_tokens=8", "--config", "specdec.peers=false", *overrides,
               "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert not doc["skipped"] and set(CODE) <= set(doc["results"])
    for e in CODE:
        block = doc["results"][e]["candidate"]
        assert block["info"]["prompt_mode"] == "chat", e
        assert block["version"].endswith("-chat") and block["info"]["chat_template_sha256"], e
    samples = [json.loads(line) for line in out.with_suffix(".samples.jsonl").read_text().splitlines()]
    assert {r["evaluator"] for r in samples} >= set(CODE)
    assert all(r["prompt"].startswith("<|user|>\n") for r in samples if r["evaluator"] in CODE)  # a user turn
    plus = doc["results"]["humaneval_plus"]["candidate"]
    assert {"base_pass@1", "plus_pass@1"} <= set(plus["metrics"]) and plus["info"]["single_process_problems"] == 0
