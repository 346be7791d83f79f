"""The per-head evaluator against an independent reference: the model's own mtp_loss."""

import math

import numpy as np
import pytest
import torch

import mtp_bench
from mtp_bench.api.context import RunContext
from mtp_bench.api.errors import DataError
from mtp_bench.evals.heads import Heads
from mtp_bench.reference_model import data as D
from mtp_bench.reference_model.checkpoint import save_checkpoint
from mtp_bench.reference_model.model import ModelConfig, Transformer, mtp_loss
from mtp_bench.reference_model.tokenizer import byte_tokenizer


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        words = " ".join(f"w{int(x)}" for x in rng.integers(0, 50, size=60))
        (root / f"doc{i:02d}.py").write_text(f"def f{i}():\n    return '{words}'\n")
    return root


def _model(tmp_path, n_future):
    torch.manual_seed(0)
    tok = byte_tokenizer()
    cfg = ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=4, n_heads=4, max_seq_len=64, n_future=n_future)
    path = save_checkpoint(tmp_path / f"ckpt{n_future}", Transformer(cfg), tok, {})
    return mtp_bench.load(path, device="cpu")


@pytest.mark.parametrize("n_future", [1, 3])
def test_per_head_loss_equals_mtp_loss_on_the_held_out_windows(tmp_path, corpus, n_future):
    model = _model(tmp_path, n_future)
    ev = Heads({"corpus": str(corpus), "val_fraction": 0.3, "seq_len": 32, "n_windows": 6, "batch_size": 4})
    out = ev.run(model, RunContext(seed=0, work_dir=tmp_path))

    # independent reference: the same windows through the reference model's training loss
    docs = D.load_corpus(str(corpus), "**/*.py")
    _, val = D.split_documents(docs, 0.3)
    tok = model.tokenizer
    stream = [t for d in val for t in tok.encode(d.text) + [tok.eos_id]]
    windows = D.eval_windows(np.asarray(stream), 32, 6)
    with torch.no_grad():
        _, per_head = mtp_loss(model.module, windows)
    assert len(out.records) == len(windows) == 6
    for i in range(n_future):
        assert out.metrics[f"head{i + 1}_loss"].value == pytest.approx(float(per_head[i]), rel=1e-5)
        assert not out.metrics[f"head{i + 1}_loss"].higher_is_better
        assert out.metrics[f"head{i + 1}_top1"].higher_is_better
    assert f"head{n_future + 1}_loss" not in out.metrics
    # bits per byte: a byte tokenizer scores one byte per token here (ASCII text)
    bpb = out.metrics["head1_bits_per_byte"].value
    assert bpb == pytest.approx(out.metrics["head1_loss"].value / math.log(2), rel=1e-5)


@pytest.mark.slow
def test_limit_caps_windows(tmp_path, corpus):
    model = _model(tmp_path, 2)
    ev = Heads({"corpus": str(corpus), "val_fraction": 0.3, "seq_len": 32, "n_windows": 6})
    out = ev.run(model, RunContext(seed=0, limit=2, work_dir=tmp_path))
    assert len(out.records) == 2 and out.metrics["head2_top1"].n == 2


def test_too_little_held_out_text_is_a_data_error(tmp_path, corpus):
    model = _model(tmp_path, 1)
    ev = Heads({"corpus": str(corpus), "val_fraction": 0.01, "seq_len": 64, "n_windows": 4})
    # one held-out document of ~300 bytes: still >= one 64-token window, so shrink the text
    for p in corpus.iterdir():
        p.write_text("x = 1\n")
    with pytest.raises(DataError, match="fewer than one window"):
        ev.run(model, RunContext(seed=0, work_dir=tmp_path))


def test_tau_proxy_chain_is_what_greedy_speculative_steps_accept_on_the_models_own_text(tmp_path):
    """On the model's own greedy continuation, the agreement chain at the position where a decoding
    step starts equals the drafts that step accepted (every step, not just on average)."""
    from mtp_bench.evals.heads import agreement_chain
    from mtp_bench.generation.speculative import speculative_decode

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, dim=32, n_layers=5, n_heads=2, multiple_of=16, max_seq_len=128, n_future=4)
    m = Transformer(cfg).eval()
    with torch.no_grad():  # extra heads = copies of head 1's block: right exactly where greedy output repeats
        for h in m.extra_heads:
            h.load_state_dict(m.layers[-1].state_dict())
    m.max_seq_len = cfg.max_seq_len  # the Model protocol's attribute
    prompt = [3, 1, 4, 1, 5]
    res = speculative_decode(m, [prompt], k=4, max_new_tokens=60)[0]
    text = torch.tensor([prompt + res.output_ids])
    with torch.no_grad():
        chain = agreement_chain(m(text, return_all_heads=True))[0]  # (T-3, 3)
    pos = len(prompt) - 1  # the first step's drafts come from the heads at the prompt's last position
    checked = 0
    for a, emitted in zip(res.draft_accepts, res.accepted_lengths[1:]):
        if pos < chain.shape[0] and emitted == a + 1:  # a step not cut short by max_new_tokens
            assert int(chain[pos].long().cumprod(0).sum()) == a
            checked += 1
        pos += emitted
    assert checked >= 5 and len(set(res.draft_accepts)) > 1


def test_tau_proxy_metrics(tmp_path, corpus):
    model = _model(tmp_path, 3)
    out = Heads({"corpus": str(corpus), "val_fraction": 0.3, "seq_len": 32, "n_windows": 4}).run(
        model, RunContext(seed=0, work_dir=tmp_path))
    a2, a3 = out.metrics["alpha_proxy_2"].value, out.metrics["alpha_proxy_3"].value
    assert 0.0 <= a3 <= a2 <= 1.0 and out.metrics["tau_proxy"].value == pytest.approx(1 + a2 + a3)
    assert out.metrics["tau_proxy"].higher_is_better
    one = Heads({"corpus": str(corpus), "val_fraction": 0.3, "seq_len": 32, "n_windows": 2}).run(
        _model(tmp_path, 1), RunContext(seed=0, work_dir=tmp_path))
    assert one.metrics["tau_proxy"].value == 1.0 and "alpha_proxy_2" not in one.metrics
