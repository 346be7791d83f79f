"""Summarization evaluator: per-document ROUGE equals rouge-score called directly on the shared
XSum and SciTLDR data, the multi-reference rules, the sentence splitter, cleaning, templates and
truncation, data loading, and the evaluator end to end with a scripted fake model."""

from __future__ import annotations

import doctest
import importlib.util
import json

import numpy as np
import pytest
from rouge_score.rouge_scorer import RougeScorer

from mtp_bench.api.context import RunContext
from mtp_bench.api.errors import ConfigError, DataError
from mtp_bench.api.registry import REGISTRY
from mtp_bench.evals import summarization as S
from mtp_bench.scoring.metrics import mean_metric
from mtp_bench.testing import FakeModel, FakeTokenizer

TYPES = ["rouge1", "rouge2", "rougeL", "rougeLsum"]


def lead(doc: dict, n: int = 1) -> str:
    """A cheap stand-in summary with real overlap: the article's first n sentences."""
    return " ".join(S.split_sentences(doc["article"])[:n])


@pytest.fixture(scope="module")
def xsum(data_dir):
    return S.load_split("xsum", data_dir)[0]


@pytest.fixture(scope="module")
def scitldr(data_dir):
    return S.load_split("scitldr", data_dir)[0]


def test_doctests_run():
    failures, tried = doctest.testmod(S)
    assert failures == 0 and tried >= 4


@pytest.mark.slow
def test_xsum_per_document_scores_equal_rouge_score_called_directly(xsum):
    ref_scorer = RougeScorer(TYPES, use_stemmer=True)
    for doc in xsum[:150]:
        pred = lead(doc)
        ours = S.rouge_scores(pred, doc["references"])
        # rouge1/2/L on the raw texts; rougeLsum on the texts split one sentence a line
        direct = ref_scorer.score(doc["references"][0], pred)
        lsum = ref_scorer.score("\n".join(S.split_sentences(doc["references"][0])),
                                "\n".join(S.split_sentences(pred)))["rougeLsum"]
        for t in ("rouge1", "rouge2", "rougeL"):
            assert ours[t] == {"precision": direct[t].precision, "recall": direct[t].recall,
                               "fmeasure": direct[t].fmeasure}, (doc["doc_id"], t)
        assert ours["rougeLsum"]["fmeasure"] == lsum.fmeasure


@pytest.mark.slow
def test_scitldr_max_rule_equals_score_multi(scitldr):
    ref_scorer = RougeScorer(TYPES, use_stemmer=True)
    for doc in scitldr[:40]:
        pred = lead(doc, 2)  # two sentences, so ROUGE-Lsum differs from ROUGE-L
        refs = ["\n".join(S.split_sentences(r)) for r in doc["references"]]
        direct = ref_scorer.score_multi(refs, "\n".join(S.split_sentences(pred)))
        ours = S.rouge_scores(pred, doc["references"], "max")
        assert {t: ours[t]["fmeasure"] for t in TYPES} == {t: direct[t].fmeasure for t in TYPES}, doc["doc_id"]


@pytest.mark.slow
def test_scitldr_best_rouge1_rule_scores_one_reference(scitldr):
    ref_scorer = RougeScorer(TYPES, use_stemmer=True)
    differs = 0
    for doc in scitldr[:40]:
        pred = lead(doc, 2)
        per_ref = [ref_scorer.score("\n".join(S.split_sentences(r)), "\n".join(S.split_sentences(pred)))
                   for r in doc["references"]]
        best = per_ref[int(np.argmax([s["rouge1"].fmeasure for s in per_ref]))]
        ours = S.rouge_scores(pred, doc["references"], "best_rouge1")
        assert {t: ours[t]["fmeasure"] for t in TYPES} == {t: best[t].fmeasure for t in TYPES}
        differs += S.rouge_scores(pred, doc["references"], "max")["rouge2"]["fmeasure"] != ours["rouge2"]["fmeasure"]
    assert differs > 0  # the two rules are not the same rule on real data


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("rouge_score_rs") is None, reason="rouge-score-rs is not installed")
def test_rust_backend_is_bit_identical_on_the_shared_data(xsum, scitldr):
    for docs, n in ((xsum[:200], 1), (scitldr[:60], 2)):
        for doc in docs:
            pred = lead(doc, n)
            assert S.rouge_scores(pred, doc["references"], backend="rouge-score-rs") == \
                S.rouge_scores(pred, doc["references"], backend="rouge-score"), doc["doc_id"]


def test_empty_summary_scores_zero():
    s = S.rouge_scores("", ["The cat sat on the mat."])
    assert all(s[t]["fmeasure"] == 0.0 for t in TYPES)
    assert all(v == 0.0 for t in TYPES for v in S.rouge_scores("  ...  ", ["A b."])[t].values())


def test_sentence_splitter_rules():
    assert S.split_sentences("It rained. (Then it stopped.) \"Why?\" she asked.") == \
        ["It rained.", "(Then it stopped.)", "\"Why?\" she asked."]
    assert S.split_sentences("Costs rose 2.5% in 2016. Prices fell.") == ["Costs rose 2.5% in 2016.", "Prices fell."]
    assert S.split_sentences("one\n\ntwo three") == ["one", "two three"]
    assert S.split_sentences("") == []


def test_clean_summary_takes_the_first_paragraph_before_a_stop():
    assert S.clean_summary("\n  A summary.\nSecond line.\n\nNext") == "A summary.\nSecond line."
    assert S.clean_summary(" Short.###\nArticle: x", (S.BLANK_LINE, S.KSHOT_SEPARATOR)) == "Short."
    assert S.clean_summary("") == ""
    assert S.clean_summary("\n   \n   \n    # the the") == "# the the"  # whitespace-only lines are blank
    assert S.clean_summary("First.\n \t \nSecond.") == "First."


# ----------------------------------------------------------------------------- data, templates


def test_local_files_load_with_their_ids(xsum, scitldr):
    assert len(xsum) == 1000 and xsum[0]["id"] == "38295789" and xsum[0]["doc_id"] == 0
    assert xsum[0]["references"][0].startswith("Former Premier League footballer Sam Sodje")
    assert len(scitldr) == 618 and scitldr[0]["id"] == "SJ1Xmf-Rb" and len(scitldr[0]["references"]) == 2
    assert scitldr[0]["article"].startswith("Incremental class learning involves sequentially learning")


def test_missing_dataset_offline_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.delenv("MTP_BENCH_DATA", raising=False)
    with pytest.raises(DataError, match="cnn_dailymail not found.*hub was not tried"):
        S.load_split("cnn_dailymail", tmp_path)


def test_templates():
    assert S.render_zeroshot("An article.") == "An article.\n\nTL;DR:"
    shots = [{"article": "Shot one.", "references": ["S1."]}]
    assert S.render_kshot("Doc.", shots, 1) == ("###\nArticle: Shot one.\n\nSummarize the above article in 1 sentence.\n"
                                               "S1.\n###\nArticle: Doc.\n\nSummarize the above article in 1 sentence.\n")
    assert "in 3 sentences.\n" in S.render_kshot("Doc.", [], 3)


def test_fit_prompt_cuts_the_article_from_its_end():
    tok = FakeTokenizer()
    article = " ".join(f"w{i}" for i in range(100))
    prompt, dropped = S.fit_prompt(tok.encode, tok.decode, S.render_zeroshot, article, budget=60)
    assert len(tok.encode(prompt)) <= 60 and dropped > 0
    kept = prompt[: -len("\n\nTL;DR:")]
    assert article.startswith(kept) and len(tok.encode(S.render_zeroshot(article[: len(kept) + 2]))) > 60
    assert S.fit_prompt(tok.encode, tok.decode, S.render_zeroshot, "short", 60) == ("short\n\nTL;DR:", 0)
    with pytest.raises(ConfigError, match="template alone"):
        S.fit_prompt(tok.encode, tok.decode, S.render_zeroshot, article, budget=5)


# ----------------------------------------------------------------------------- end to end


def _write_xsum(tmp_path, docs):
    d = tmp_path / "summarization" / "xsum"
    d.mkdir(parents=True)
    (d / "XSum-test-1000.jsonl").write_text("".join(json.dumps(x) + "\n" for x in docs))
    return tmp_path


DOCS = [{"id": "a1", "document": "The mayor opened a bridge.\nCrowds cheered.", "summary": "A mayor opened a new bridge."},
        {"id": "b2", "document": "Rain fell all week in the city.", "summary": "It rained for a week."},
        {"id": "c3", "document": " ".join(["Very long text."] * 200), "summary": "Long."}]


def test_end_to_end_with_a_scripted_model(tmp_path):
    data = _write_xsum(tmp_path, DOCS)
    model = FakeModel(max_seq_len=256, responses={
        "The mayor opened a bridge.\nCrowds cheered.\n\nTL;DR:": " The mayor opened a bridge.\n\nNext story",
        "Rain fell all week in the city.\n\nTL;DR:": "\n\n",  # an empty summary
    })
    ev = REGISTRY["summarization"](S.Summarization.Config(max_new_tokens=32))
    out = ev.run(model, RunContext(seed=0, work_dir=tmp_path, data_dir=data))
    r = {x["doc_id"]: x for x in out.records}
    assert r[0]["summary"] == "The mayor opened a bridge." and r[0]["id"] == "a1"
    want = RougeScorer(TYPES, use_stemmer=True).score("A mayor opened a new bridge.", "The mayor opened a bridge.")
    assert r[0]["rouge1"] == want["rouge1"].fmeasure and r[0]["rouge2_recall"] == want["rouge2"].recall
    assert r[1]["summary"] == "" and r[1]["empty"] and r[1]["rougeL"] == 0.0
    assert r[2]["article_tokens_dropped"] > 0 and r[0]["article_tokens_dropped"] == 0
    assert out.info["articles_truncated"] == 1 and out.info["template"] == "zeroshot"
    expected = mean_metric([x["rougeL"] for x in out.records], higher_is_better=True)
    assert out.metrics["rougeL"] == expected and out.metrics["rougeL"].n == 3
    assert out.metrics["empty_fraction"].value == pytest.approx(1 / 3) and not out.metrics["empty_fraction"].higher_is_better
    rerun = REGISTRY["summarization"](ev.config).run(model, RunContext(seed=0, work_dir=tmp_path, data_dir=data))
    assert rerun.records == out.records and rerun.metrics == out.metrics


def test_kshot_takes_its_examples_from_the_end_of_the_split(tmp_path):
    data = _write_xsum(tmp_path, DOCS[:2] + [{"id": "s9", "document": "Shot doc.", "summary": "Shot sum."}])
    ev = S.Summarization(S.Summarization.Config(template="kshot", num_shots=1, max_new_tokens=8))
    out = ev.run(FakeModel(max_seq_len=512), RunContext(seed=0, work_dir=tmp_path, data_dir=data))
    assert out.info["shot_ids"] == ["s9"] and [x["id"] for x in out.records] == ["a1", "b2"]


def test_config_errors():
    with pytest.raises(ConfigError, match="dataset 'cnn'"):
        S.Summarization.Config(dataset="cnn")
    with pytest.raises(ConfigError, match="template"):
        S.Summarization.Config(template="fewshot")
    with pytest.raises(ConfigError, match="no chat template"):
        S.Summarization(S.Summarization.Config(template="chat")).run(FakeModel(), RunContext(data_dir=None))


# ----------------------------------------------------------------------------- fine-tuning option


def _pairs_file(tmp_path, n=24):
    rows = [{"prompt": f"Story {i}: the {'red' if i % 2 else 'blue'} fox ran far.\n\nTL;DR:",
             "target": f" a {'red' if i % 2 else 'blue'} fox ran."} for i in range(n)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_tokenize_pairs_masks_everything_but_the_target():
    from mtp_bench.reference_model import data as D
    from mtp_bench.reference_model.tokenizer import byte_tokenizer

    tok = byte_tokenizer()
    docs = [D.Document("a", " xy", prompt="long prompt"), D.Document("b", "z" * 20, prompt="p")]
    tokens, mask = D.tokenize_pairs(docs, tok, seq_len=8)
    rows, masks = tokens.reshape(2, 8), mask.reshape(2, 8)
    # row 0: the prompt cut from its start to fit, then target + EOS, no padding needed
    assert tok.decode(rows[0][:4].tolist()) == "ompt" and tok.decode(rows[0][4:7].tolist()) == " xy"
    assert rows[0][7] == tok.eos_id and masks[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    # row 1: a target longer than the row keeps its first seq_len - 1 tokens and the EOS, no prompt
    assert masks[1].tolist() == [1] * 8 and rows[1][-1] == tok.eos_id


@pytest.mark.slow
def test_target_only_loss_equals_the_masked_cross_entropy_and_both_backwards_agree():
    import torch

    from mtp_bench.reference_model import train as T
    from mtp_bench.reference_model.model import Transformer

    torch.manual_seed(0)
    model = Transformer(T.make_config("debug", {"out": "x"}).model_config(vocab_size=259))
    x = torch.randint(0, 256, (3, 16))
    mask = torch.zeros(3, 16, dtype=torch.long)
    mask[:, 9:] = 1
    logits = model(x, return_all_heads=True)  # (B, T, n_future, V)
    want = []
    for i in range(model.n_future):
        lg, tgt, keep = logits[:, : 16 - 1 - i, i], x[:, 1 + i :], mask[:, 1 + i :].bool()
        want.append(torch.nn.functional.cross_entropy(lg[keep], tgt[keep]))
    grads = {}
    for mode in ("sequential", "naive"):
        model.zero_grad()
        loss, per_head = T.target_only_forward_backward(model, x, mask, [1.0, 0.5], mode=mode)
        assert torch.allclose(per_head, torch.stack(want).detach(), atol=1e-5)
        assert torch.isclose(loss, want[0].detach() + 0.5 * want[1].detach(), atol=1e-5)
        grads[mode] = [p.grad.clone() for p in model.parameters()]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads["sequential"], grads["naive"]))


@pytest.mark.slow
def test_fine_tune_a_debug_model_on_a_prompt_target_file(tmp_path):
    from mtp_bench.reference_model import train as T

    cfg = T.make_config("debug", {"corpus": str(_pairs_file(tmp_path)), "corpus_field": "prompt",
                                  "target_field": "target", "seq_len": 48, "max_steps": 6, "lr": 1e-2,
                                  "eval_interval": 3, "val_fraction": 0.2, "cache_dir": str(tmp_path / "c"),
                                  "out": str(tmp_path / "ft")})
    out = T.train(cfg, preset="debug", verbose=False)
    info = json.loads((out / "training.json").read_text())
    assert info["config"]["target_field"] == "target" and info["corpus"]["target_field"] == "target"
    first, last = info["evals"][0]["val"], info["evals"][-1]["val"]
    # validation counts the target tokens only (bytes of the target + EOS; head 1 reaches all of them)
    from mtp_bench.reference_model import data as D

    _, val = D.split_documents(D.load_corpus(cfg.corpus, field="prompt", target_field="target"), cfg.val_fraction)
    assert len(val) == info["corpus"]["n_val_docs"] >= 1
    assert first["tokens"][0] == last["tokens"][0] == sum(len(d.text) + 1 for d in val)
    assert info["history"][-1]["loss"] < info["history"][0]["loss"]


def test_prompt_target_corpus_errors(tmp_path):
    from mtp_bench.reference_model import data as D
    from mtp_bench.reference_model import train as T

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p"}\n')
    with pytest.raises(DataError, match="bad.jsonl:1: no string field 'target'"):
        D.load_corpus(str(bad), field="prompt", target_field="target")
    with pytest.raises(DataError, match="must be a .jsonl file"):
        D.load_corpus("stdlib", target_field="target")
    with pytest.raises(ConfigError, match="backward=naive"):
        T.make_config("debug", {"target_field": "t", "head_type": "causal"})


def test_zero_config_nl_settings_are_valid_subsets():
    from mtp_bench.api.config import config_from_dict
    from mtp_bench.commands.run import DEFAULT_RUN_CONFIG

    for name in ("gsm8k", "summarization"):
        cfg = config_from_dict(REGISTRY[name].Config, DEFAULT_RUN_CONFIG[name], owner=name)
        assert 1 <= cfg.limit <= 100  # a small subset, recorded in the result's config


def test_auto_template_uses_the_tokenizers_chat_template():
    from transformers import PreTrainedTokenizerFast

    from mtp_bench.commands.run import default_checkpoints_dir
    from mtp_bench.evals.summarization import chat_tokenizer, render_chat
    from mtp_bench.models.adapters import HFTokenizer

    tok = PreTrainedTokenizerFast(tokenizer_file=str(default_checkpoints_dir() / "ntp-code" / "tokenizer.json"))

    class Model:  # only the tokenizer matters here
        tokenizer = HFTokenizer(tok)

    assert chat_tokenizer(Model) is None  # no chat template: auto -> zeroshot
    tok.chat_template = ("{% for m in messages %}<user>{{ m['content'] }}</user>{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert chat_tokenizer(Model) is tok
    assert render_chat("The article.", tok, 1) == \
        "<user>Summarize the following article in 1 sentence.\n\nThe article.</user><assistant>"
