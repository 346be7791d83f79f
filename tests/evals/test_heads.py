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
