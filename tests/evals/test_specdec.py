"""The specdec evaluator: tau/acceptance on oracle and adversarial drafters, the lossless check,
records that let anyone re-check it, the n_future=1 convention, prompt sets and bad config."""

from __future__ import annotations

import json

import pytest
import torch

from mtp_bench.api.context import RunContext
from mtp_bench.api.errors import ConfigError, DataError, UnknownNameError
from mtp_bench.evals.specdec import SpecDec, code_prompts, ratio_metric, text_prompts
from mtp_bench.generation.speculative import DecodeResult, LosslessError, acceptance_stats
from mtp_bench.testing import FakeCache, FakeModel

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def greedy_reference(model: FakeModel, prompt_ids: list[int], max_new: int) -> list[int]:
    """Greedy decoding by the fake model's own rule, without any model call or cache."""
    ctx, out = bytes(prompt_ids), []
    while len(out) < max_new:
        t = model.next_token(ctx)
        out.append(t)
        if t == model.tokenizer.eos_id:
            break
        ctx += bytes([t])
    return out


def run(model, tmp_path, **cfg):
    cfg = {"n_prompts": 2, "max_new_tokens": 13, "peers": False, "warmup": 0, **cfg}
    return SpecDec(SpecDec.Config(**cfg)).run(model, RunContext(seed=0, work_dir=tmp_path))


def test_oracle_drafts_give_tau_k_and_identical_tokens(tmp_path):
    model = FakeModel(n_future=4)
    out = run(model, tmp_path, max_new_tokens=1 + 4 * 3)  # prefill token + 3 full blocks
    assert out.metrics["tau"].value == 4.0
    assert out.metrics["forwards_per_token"].value == pytest.approx(4 / 13)
    for i in (2, 3, 4):
        assert out.metrics[f"alpha_cond_{i}"].value == 1.0 and out.metrics[f"alpha_uncond_{i}"].value == 1.0
    assert out.metrics["lossless_fraction"].value == 1.0
    prompts = code_prompts()[:2]
    for rec, (sid, text) in zip(out.records, prompts):
        assert rec["sample_id"] == sid
        assert rec["prompt_ids"] == list(text.encode())
        assert rec["output_ids"] == greedy_reference(model, rec["prompt_ids"], 13)
        assert rec["accepted_lengths"] == [1, 4, 4, 4]
    json.dumps(out.records), json.dumps(out.info)  # records go to the samples file as JSON


def test_wrong_drafts_give_tau_one_and_identical_tokens(tmp_path):
    model = FakeModel(n_future=3, wrong_drafts=True)
    out = run(model, tmp_path)
    assert out.metrics["tau"].value == 1.0
    assert out.metrics["alpha_cond_2"].value == 0.0 and "alpha_cond_3" not in out.metrics  # never reached
    assert out.metrics["alpha_uncond_3"].value == 0.0
    for rec in out.records:
        assert rec["output_ids"] == greedy_reference(model, rec["prompt_ids"], 13)
        assert rec["accepted_lengths"] == [1] * 13


def test_k_limits_heads_used(tmp_path):
    out = run(FakeModel(n_future=4), tmp_path, k=2, max_new_tokens=1 + 2 * 4)
    assert out.metrics["tau"].value == 2.0 and "alpha_cond_3" not in out.metrics
    assert out.info["k"] == 2


def test_ntp_baseline_reports_tau_and_speedup_one(tmp_path):
    out = run(FakeModel(n_future=1), tmp_path, k=4)  # the candidate's k: capped at the baseline's one head
    assert out.info["k"] == 1 and out.info["k_requested"] == 4
    for name in ("tau", "speedup", "speedup_decode"):
        assert out.metrics[name].value == 1.0
    assert not any(name.startswith("alpha") for name in out.metrics)
    assert all(rec["accepted_lengths"] == [1] * 13 for rec in out.records)


class NoRollbackCache(FakeCache):
    def truncate(self, length: int) -> None:  # a broken cache: rejected drafts stay in the context
        pass


def test_broken_rollback_is_an_error_not_a_metric(tmp_path):
    model = FakeModel(n_future=3, wrong_drafts=True)
    model.new_cache = lambda batch_size, max_len, device=None, dtype=None: NoRollbackCache(batch_size, max_len)
    with pytest.raises(LosslessError, match="HumanEval/0 at generated token 2"):
        run(model, tmp_path)


def test_low_precision_mismatch_is_counted_not_raised(tmp_path):
    model = FakeModel(n_future=3, wrong_drafts=True)
    model.new_cache = lambda batch_size, max_len, device=None, dtype=None: NoRollbackCache(batch_size, max_len)
    model.dtype = torch.bfloat16  # near-ties may flip in bf16: the check reports instead of failing
    out = run(model, tmp_path)
    assert out.metrics["lossless_fraction"].value == 0.0 and out.info["lossless_strict"] is False
    assert all(r["plain_output_ids"] != r["output_ids"] for r in out.records)


def test_sampling_records_both_outputs_and_skips_lossless(tmp_path):
    model = FakeModel(n_future=2, sharpness=1.0)
    out = run(model, tmp_path, temperature=1.0, n_prompts=1)
    rec = out.records[0]
    assert "lossless_fraction" not in out.metrics and out.info["lossless_checked"] is False
    assert len(rec["output_ids"]) == len(rec["plain_output_ids"]) == 13
    again = run(model, tmp_path, temperature=1.0, n_prompts=1)
    assert again.records[0]["output_ids"] == rec["output_ids"]  # per-sample seeds: reproducible


def test_batches_are_lossless(tmp_path):
    model = FakeModel(n_future=3)
    out = run(model, tmp_path, n_prompts=3, batch_size=2)
    for rec in out.records:
        assert rec["output_ids"] == greedy_reference(model, rec["prompt_ids"], 13)


def test_text_prompts_are_deterministic_sentences(data_dir):
    a, b = text_prompts(data_dir), text_prompts(data_dir)
    assert a == b and len(a) > 1000
    sid, text = a[0]
    assert sid == "tinystories/0" and text.startswith("One day, a little girl named Lily") and text.endswith(".")
    assert len(text) <= 200


def test_text_prompts_from_a_source_file_keep_every_story(tmp_path):
    f = tmp_path / "held-out.txt"
    f.write_text("First one. It ends here.<|endoftext|>\n  Second story, no period<|endoftext|>\nThird. Last")
    assert text_prompts(None, str(f)) == [("held-out.txt/0", "First one."),  # cut at the last ". " within 200
                                          ("held-out.txt/1", "Second story, no period"),
                                          ("held-out.txt/2", "Third.")]
    with pytest.raises(DataError, match="not found"):
        text_prompts(None, str(tmp_path / "missing.txt"))
    with pytest.raises(ConfigError, match="prompt_set=text"):
        SpecDec.Config(prompt_set="code", source=str(f))


def test_text_prompts_need_the_data_dir(tmp_path):
    with pytest.raises(DataError, match="--data-dir"):
        run(FakeModel(n_future=2), tmp_path, prompt_set="text")


def test_bad_config_is_a_user_error(tmp_path):
    with pytest.raises(UnknownNameError, match="code, text"):
        SpecDec.Config(prompt_set="poetry")
    with pytest.raises(ConfigError, match="max_new_tokens"):
        SpecDec.Config(max_new_tokens=0)
    for kw, match in (({"temperature": -0.5}, "temperature"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.2}, "top_p"),
                      ({"draft": "beam"}, "argmax, sample"), ({"draft": "sample"}, "temperature > 0"),
                      ({"position_bin": 0}, "position_bin")):
        with pytest.raises((ConfigError, UnknownNameError), match=match):
            SpecDec.Config(**kw)


def test_bad_sampling_config_exits_2_through_the_cli(capsys):
    from mtp_bench.cli import main

    for cfg in ("specdec.top_p=0", "specdec.position_bin=0", "specdec.temperature=-1", "specdec.draft=beam"):
        assert main(["run", "--evals", "specdec", "--config", cfg]) == 2
        err = capsys.readouterr().err
        assert err.count("mtp-bench: error:") == 1 and "Traceback" not in err


def test_acceptance_histogram_positions_and_vllm_length_agree_with_the_records(tmp_path):
    model = FakeModel(n_future=4, wrong_drafts=False)
    out = run(model, tmp_path, max_new_tokens=40, n_prompts=3, position_bin=8)
    steps = [a for r in out.records for a in r["draft_accepts"]]
    hist = out.info["acceptance_histogram"]
    assert len(hist) == out.info["k"] and sum(hist) == len(steps)
    assert hist == [steps.count(a) for a in range(out.info["k"])]
    assert out.metrics["mean_acceptance_length"].value == pytest.approx(1 + sum(steps) / len(steps))
    assert out.metrics["draft_acceptance_rate"].value == pytest.approx(sum(steps) / ((out.info["k"] - 1) * len(steps)))
    prof = out.info["acceptance_by_position"]
    assert prof["bin"] == 8 and sum(prof["steps"]) == len(steps) and prof["starts"] == sorted(prof["starts"])
    assert sum(m * n for m, n in zip(prof["mean_accepted"], prof["steps"])) == pytest.approx(sum(steps))


def test_ratio_metric_matches_a_hand_computation():
    m = ratio_metric([3.0, 5.0, 4.0], [1.0, 2.0, 2.0], True)
    R = 12.0 / 5.0
    resid = [3 - R, 5 - 2 * R, 4 - 2 * R]
    assert m.value == pytest.approx(R)
    assert m.stderr == pytest.approx((3 / 2 * sum(r * r for r in resid)) ** 0.5 / 5.0)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A saved random reference checkpoint (byte vocabulary, n_future=3)."""
    from mtp_bench.reference_model.checkpoint import save_checkpoint
    from mtp_bench.reference_model.model import ModelConfig, Transformer
    from mtp_bench.reference_model.tokenizer import byte_tokenizer

    torch.manual_seed(0)
    tok = byte_tokenizer()
    cfg = ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=4, n_heads=2, multiple_of=16, max_seq_len=96,
                      n_future=3)
    return save_checkpoint(tmp_path_factory.mktemp("specdec") / "ckpt", Transformer(cfg), tok, {})


@pytest.mark.slow
def test_real_checkpoint_against_hf_peers(tiny_ckpt, tmp_path):
    """End to end on a saved reference checkpoint: lossless, and the HF peers (the same weights
    exported as LlamaForCausalLM) produce the very same greedy tokens, prompt lookup included."""
    import mtp_bench

    model = mtp_bench.load(tiny_ckpt, device="cpu", dtype="float32")
    out = run(model, tmp_path, peers=True, n_prompts=2, max_new_tokens=16, warmup=1)
    assert out.info["peers"] == "ran" and out.info["hf_greedy_agreement"] == 1.0
    assert all(r["hf_prompt_lookup_agrees"] for r in out.records)
    assert out.info["prompts_truncated"] == 2  # HumanEval prompts are longer than 96 - 16 - 3 bytes
    assert all(len(r["prompt_ids"]) == 96 - 16 - 3 for r in out.records)
    for name in ("hf_greedy_tokens_per_s", "hf_prompt_lookup_tokens_per_s", "speedup_vs_hf_prompt_lookup",
                 "speedup", "verify_cost"):
        assert out.metrics[name].value > 0
    assert 0 <= out.metrics["draft_cost"].value < out.metrics["verify_cost"].value
    assert (tmp_path / "specdec-hf-llama" / model.weights_sha256[:16] / "config.json").is_file()
    # the pooled metrics agree with the library's own aggregation of the saved records
    stats = acceptance_stats([DecodeResult(r["prompt_ids"], r["output_ids"], r["accepted_lengths"], r["draft_accepts"],
                                           r["finish_reason"], 0.0, 0.0, k=3) for r in out.records], k=3)
    assert out.metrics["tau"].value == pytest.approx(stats.tau)
    assert out.metrics["forwards_per_token"].value == pytest.approx(stats.forwards_per_token)
    assert out.metrics["alpha_uncond_2"].value == pytest.approx(stats.alpha_uncond[0])


def test_bench_writes_medians_per_k(tiny_ckpt, tmp_path):
    from mtp_bench.cli import main

    out = tmp_path / "bench.json"
    rc = main(["bench", "specdec", "--model", str(tiny_ckpt), "--k", "1,3", "--n-prompts", "1", "--max-new-tokens", "8",
               "--repeats", "2", "--warmup", "0", "--no-peers", "--out", str(out)])
    res = json.loads(out.read_text())
    assert rc == 0 and set(res["by_k"]) == {"1", "3"}
    k3 = res["by_k"]["3"]
    assert len(k3["repeats"]) == 2 and k3["median"]["lossless_fraction"] == 1.0
    assert res["by_k"]["1"]["median"]["speedup"] == 1.0 and "alpha_uncond_3" in k3["median"]
    assert k3["median"]["speedup"] == pytest.approx(sum(r["speedup"] for r in k3["repeats"]) / 2)  # median of 2
    assert main(["bench", "specdec", "--model", str(tiny_ckpt), "--k", "4", "--no-peers"]) == 2  # k > n_future


def test_degenerate_outputs_are_flagged():
    from mtp_bench.evals.specdec import is_degenerate

    assert is_degenerate([32] * 40) and is_degenerate([3, 4] * 16 + [3])
    assert not is_degenerate([3, 4, 5] * 12)  # three distinct tokens: a loop, but not flagged
    assert not is_degenerate([7] * 5)  # too short to tell


@pytest.mark.slow
def test_sequential_checkpoint_drafts_by_chaining_and_reuses_the_last_module(tmp_path):
    import mtp_bench
    from mtp_bench.reference_model.checkpoint import save_checkpoint
    from mtp_bench.reference_model.model import ModelConfig, Transformer
    from mtp_bench.reference_model.tokenizer import byte_tokenizer

    torch.manual_seed(0)
    tok = byte_tokenizer()
    cfg = ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=4, n_heads=2, multiple_of=16, max_seq_len=96,
                      n_future=3, head_type="sequential")
    model = mtp_bench.load(save_checkpoint(tmp_path / "ckpt", Transformer(cfg), tok, {}), device="cpu", dtype="float32")
    out = run(model, tmp_path, k=5, reuse_last_module=True)  # lossless or LosslessError
    assert out.info["drafting"] == "chained" and out.info["k"] == 5 and out.metrics["lossless_fraction"].value == 1.0
    assert "alpha_uncond_5" in out.metrics and all(max(r["accepted_lengths"]) <= 5 for r in out.records)
    assert run(model, tmp_path, k=5).info["k"] == 3  # without reuse, capped at n_future


def test_chat_prompts_are_gsm8k_test_questions_in_the_models_chat_template(data_dir):
    from types import SimpleNamespace

    from transformers import PreTrainedTokenizerFast

    from mtp_bench.evals.specdec import chat_prompts
    from mtp_bench.reference_model.tokenizer import byte_tokenizer

    tok = PreTrainedTokenizerFast(tokenizer_object=byte_tokenizer().hf, eos_token="<|eos|>")
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    prompts = chat_prompts(data_dir, SimpleNamespace(tokenizer=SimpleNamespace(tok=tok)))
    first = json.loads((data_dir / "gsm8k" / "test.jsonl").read_text().splitlines()[0])["question"]
    assert len(prompts) == 1319 and prompts[0] == ("gsm8k-test/0", f"<user>{first}</user><assistant>")
    tok.chat_template = None
    with pytest.raises(ConfigError, match="chat template"):
        chat_prompts(data_dir, SimpleNamespace(tokenizer=SimpleNamespace(tok=tok)))


# ----------------------------------------------------------------------------- your own prompts


def _chat_tok():
    from transformers import PreTrainedTokenizerFast

    from mtp_bench.reference_model.tokenizer import byte_tokenizer

    tok = PreTrainedTokenizerFast(tokenizer_object=byte_tokenizer().hf, eos_token="<|eos|>")
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    return tok


def test_prompt_file_takes_raw_prompts_and_chat_messages(tmp_path):
    from types import SimpleNamespace

    from mtp_bench.evals.specdec import file_prompts

    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "def f(x):\\n"}\n\n{"id": "q1", "messages": [{"role": "user", "content": "Hi?"}]}\n')
    model = SimpleNamespace(tokenizer=SimpleNamespace(tok=_chat_tok()))
    assert file_prompts(str(f), model) == [("p.jsonl:1", "def f(x):\n"), ("q1", "<user>Hi?</user><assistant>")]
    plain = SimpleNamespace(tokenizer=SimpleNamespace(tok=None))
    raw = tmp_path / "raw.jsonl"
    raw.write_text('{"prompt": "x = 1\\n"}\n')
    assert file_prompts(str(raw), plain) == [("raw.jsonl:1", "x = 1\n")]  # raw prompts need no chat template
    with pytest.raises(ConfigError, match=r"p.jsonl:3: a \"messages\" line needs a model whose tokenizer has a chat template"):
        file_prompts(str(f), plain)


@pytest.mark.parametrize("content, match", [
    ('{"prompt": "a"}\n{"prompt": "b"\n', r"bad.jsonl:2: not valid JSON"),
    ('{"prompt": "a", "messages": []}\n', r"bad.jsonl:1: each line must be an object with exactly one of"),
    ('["x"]\n', r"bad.jsonl:1: each line must be"),
    ('{"prompt": ""}\n', r"bad.jsonl:1: \"prompt\" must be a non-empty string"),
    ('{"messages": [{"role": "user"}]}\n', r"bad.jsonl:1: \"messages\" must be a non-empty list"),
    ('\n\n', r"holds no prompts"),
])
def test_prompt_file_errors_name_the_line(tmp_path, content, match):
    from types import SimpleNamespace

    from mtp_bench.evals.specdec import file_prompts

    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(DataError, match=match):
        file_prompts(str(f), SimpleNamespace(tokenizer=SimpleNamespace(tok=_chat_tok())))


def test_run_with_a_prompt_file_and_bad_files_exit_2(tiny_ckpt, tmp_path, capsys):
    from mtp_bench.cli import main

    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text('{"prompt": "import os\\n"}\n{"prompt": "def add(a, b):\\n"}\n')
    bad.write_text('{"prompt": "x"}\n{oops}\n')
    base = ["run", "--evals", "specdec", "--model", str(tiny_ckpt), "--config", "specdec.prompt_set=file",
            "--config", "specdec.max_new_tokens=8", "--config", "specdec.peers=false", "--config", "specdec.warmup=0"]
    out = tmp_path / "r.json"
    assert main(base + ["--config", f"specdec.source={good}", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    info = res["results"]["specdec"]["candidate"]["info"]
    assert info["n_prompts"] == 2 and info["prompt_set"] == "file" and info["training_prompts_recorded"] is False
    capsys.readouterr()
    out2 = tmp_path / "r2.json"
    assert main(base + ["--config", f"specdec.source={bad}", "--out", str(out2)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("mtp-bench: error:")]
    assert len(errors) == 1 and "bad.jsonl:2: not valid JSON" in errors[0] and "Traceback" not in err
    assert not out2.exists()
    assert main(base + ["--config", f"specdec.source={tmp_path / 'missing.jsonl'}"]) == 2
    assert main(["run", "--evals", "specdec", "--model", str(tiny_ckpt), "--config", "specdec.prompt_set=file"]) == 2


def test_prompts_found_in_the_heads_training_data_are_counted(tiny_ckpt, tmp_path):
    import hashlib
    import shutil

    import mtp_bench

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    prompts = ["import os\n", "def add(a, b):\n", "x = 1\n"]
    (ckpt / "training.json").write_text(json.dumps({"corpus": {"prompt_sha256s": [
        hashlib.sha256(p.encode()).hexdigest() for p in prompts[:2]]}}))
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    model = mtp_bench.load(ckpt, device="cpu", dtype="float32")
    out = run(model, tmp_path, prompt_set="file", source=str(f), n_prompts=3, max_new_tokens=4)
    assert out.info["training_prompts_recorded"] is True and out.info["prompts_in_training"] == 2
