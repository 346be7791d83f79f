"""`mtp-bench bench gpu` (issue 20): its refusal without CUDA, and each step's bookkeeping on a CPU at
tiny sizes (the figures themselves need a GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtp_bench.cli import main
from mtp_bench.commands.bench import gpu

MODEL = Path(__file__).resolve().parents[2] / "reference_model" / "checkpoints" / "mtp4-code"
CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


def test_refuses_without_cuda_in_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(["bench", "gpu", "--out", str(tmp_path / "g.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a GPU" in err[0]
    assert not (tmp_path / "g.json").exists()


@pytest.mark.slow
def test_generation_step_compares_the_evaluator_path_with_the_engine():
    r = gpu.step_generation(MODEL, CPU, prompts=3, max_new_tokens=6, batch_size=2, hf=True)
    d = r["float32"]
    assert "bfloat16" not in r  # not measured on a CPU
    assert d["identical"] == 3  # the evaluator's path generates what the engine does
    assert d["evaluator_over_engine"] == pytest.approx(d["evaluator_s"] / d["engine_s"])
    assert 3 <= d["tokens"] <= 18 and r["hf"]["greedy_prefix_agrees"] == 3


@pytest.mark.slow
def test_decode_train_and_repro_steps_report_their_figures():
    d = gpu.step_decode(MODEL, CPU, n_prompts=1, max_new_tokens=8)
    assert d["k"] == 4 and d["cuda_graphs_apply"] is False  # a CPU: the graph is CUDA's
    assert d["graphs"]["lossless_fraction"] == d["no_graphs"]["lossless_fraction"] == 1.0
    assert d["plain_graphs_over_no_graphs"] == pytest.approx(d["graphs"]["plain_tokens_per_s"]
                                                             / d["no_graphs"]["plain_tokens_per_s"])
    size = dict(dim=32, n_layers=4, n_heads=2, vocab_size=256, seq_len=32, batch_size=2, warmup=1, steps=1, threads=1)
    t = gpu.step_train(CPU, size, timeout_s=300)
    assert set(t["median_step_s"]) == {"n=1", "n=4 sequential", "n=4 naive"}
    assert t["ratios"]["time_seq_over_n1"] == pytest.approx(t["median_step_s"]["n=4 sequential"] / t["median_step_s"]["n=1"])
    train = dict(dim=32, n_layers=2, n_heads=2, seq_len=32, batch_size=2)
    r = gpu.step_repro(CPU, dict(warmup=1, steps=1), timeout_s=300, train=train)
    assert r["measured_over_sized"] == pytest.approx(r["tokens_per_s"] / r["sized_on_tokens_per_s"])
    assert r["gpu_budget_training_tokens"] == 4 * 2400 * 32 * 512  # 2 arms x 2 seeds of the gpu plan
    doc = {"steps": {"decode": d, "train": t, "repro": r, "generation": {"skipped": "1 s left"}}}
    lines = dict(gpu.rows(doc))
    assert lines["generation"] == "skipped: 1 s left" and "batch-1 plain greedy: graphs / no graphs" in lines
