"""The trainer: golden debug losses, exact resume after a crash, DDP equivalence, config handling.

Regenerate the golden fixture (only after an intended change of the numerics):
    python tests/reference_model/test_train.py --regen
"""

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from mtp_bench.api.errors import ConfigError, DataError, UnknownNameError
from mtp_bench.commands import train as train_cmd
from mtp_bench.reference_model import data as D
from mtp_bench.reference_model import train as T
from mtp_bench.reference_model.checkpoint import load_checkpoint
from mtp_bench.reference_model.model import mtp_loss

GOLDEN = Path(__file__).resolve().parent.parent / "fixtures" / "golden_debug_losses.json"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: intra-op threads only add contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def debug_config(tmp: Path, name: str = "run", **kw) -> T.TrainConfig:
    return T.make_config("debug", {"cache_dir": str(tmp / "cache"), "out": str(tmp / name), **kw})


@pytest.fixture(scope="module")
def debug_run(tmp_path_factory):
    """One uninterrupted debug-preset run, shared by the tests below."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("debug")
    cfg = debug_config(tmp)
    out = T.train(cfg, preset="debug", verbose=False)
    return cfg, out, json.loads((out / "training.json").read_text())


def golden_record(info: dict) -> dict:
    return {"corpus_sha256": info["corpus"]["sha256"], "torch": info["torch"],
            "train_loss": [h["loss"] for h in info["history"]],
            "train_per_head": [h["per_head"] for h in info["history"]],
            "val_loss": info["final"]["val"]["loss"], "val_acc": info["final"]["val"]["acc"]}


def test_debug_preset_reproduces_golden_losses(debug_run):
    _, _, info = debug_run
    golden = json.loads(GOLDEN.read_text())
    got = golden_record(info)
    if got["corpus_sha256"] != golden["corpus_sha256"]:
        pytest.skip("this interpreter's stdlib json/ sources differ from the ones the golden losses were recorded on")
    np.testing.assert_allclose(got["train_loss"], golden["train_loss"], rtol=0, atol=2e-4)
    np.testing.assert_allclose(got["train_per_head"], golden["train_per_head"], rtol=0, atol=2e-4)
    np.testing.assert_allclose(got["val_loss"], golden["val_loss"], rtol=0, atol=2e-4)
    # and it learns: the loss falls well below uniform guessing over 259 ids
    assert got["train_loss"][-1] < got["train_loss"][0] - 0.5
    assert all(x < math.log(259) - 0.3 for x in got["val_loss"])


def test_checkpoint_records_provenance_and_true_val_metrics(debug_run):
    cfg, out, info = debug_run
    model, tok, saved = load_checkpoint(out)
    assert saved == info and model.n_future == 2 and tok.vocab_size == 259
    assert info["steps"] == 8 and info["tokens_seen"] == 8 * 4 * 32
    assert info["config"] == cfg.to_dict() and info["preset"] == "debug" and info["seed"] == cfg.seed
    assert len(info["history"]) == 8 and [e["step"] for e in info["evals"]] == [4, 8]
    docs = D.load_corpus("stdlib", "json/*.py")
    assert info["corpus"]["sha256"] == D.corpus_sha256(docs)
    # the recorded command line rebuilds exactly this config
    argv = T.shlex.split(info["command"])
    assert argv[:2] == ["mtp-bench", "train"]
    overrides = train_cmd.parse_overrides([argv[i + 1] for i, a in enumerate(argv) if a == "--set"])
    overrides["out"] = argv[argv.index("--out") + 1]
    assert T.make_config(None, overrides) == cfg
    # final validation metrics, recomputed independently from the saved weights
    _, val_docs = D.split_documents(docs, cfg.val_fraction)
    windows = D.eval_windows(D.tokenize_documents(val_docs, tok), cfg.seq_len, cfg.eval_batches * cfg.batch_size)
    with torch.no_grad():
        _, per_head = mtp_loss(model, windows)
        logits = model(windows, return_all_heads=True)  # (B, T, 2, V)
    np.testing.assert_allclose(info["final"]["val"]["loss"], per_head.tolist(), atol=1e-5)
    for i in range(2):
        acc = (logits[:, : cfg.seq_len - 1 - i, i].argmax(-1) == windows[:, 1 + i :]).float().mean().item()
        assert info["final"]["val"]["acc"][i] == pytest.approx(acc, abs=1e-6)


@pytest.mark.slow
def test_resume_after_crash_matches_uninterrupted_run(debug_run, tmp_path):
    _, ref_out, ref_info = debug_run
    cfg = debug_config(tmp_path, ckpt_interval=3)

    def crash(step, model):
        if step == 5:  # after the state save at step 3: steps 4-5 are lost and must be redone
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        T.train(cfg, step_callback=crash, verbose=False)
    assert T.state_path(cfg.out).is_file() and not Path(cfg.out).exists()
    with pytest.raises(ConfigError, match="--resume"):
        T.train(cfg, verbose=False)  # would silently clobber the unfinished run
    with pytest.raises(ConfigError, match="lr"):
        T.train(debug_config(tmp_path, ckpt_interval=3, lr=1e-3), resume=True, verbose=False)
    out = T.train(cfg, resume=True, verbose=False)
    info = json.loads((out / "training.json").read_text())
    assert info["history"] == ref_info["history"]  # exact on CPU
    assert info["evals"] == ref_info["evals"]
    a, _, _ = load_checkpoint(out)
    b, _, _ = load_checkpoint(ref_out)
    for (k, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), k
    assert not T.state_path(cfg.out).exists()  # finished: nothing left to resume


@pytest.mark.slow
def test_ctrl_c_saves_state_at_a_step_boundary_and_resume_matches(tmp_path):
    import signal

    cfg = debug_config(tmp_path, max_steps=25, eval_interval=0)
    cmd = [sys.executable, "-m", "mtp_bench", "train", "--out", cfg.out]
    for k, v in cfg.to_dict().items():
        if k != "out" and v != getattr(T.TrainConfig(), k):
            cmd += ["--set", f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("step 2/25"):
            proc.send_signal(signal.SIGINT)
            break
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(lines) + rest
    assert "state saved" in rest and not Path(cfg.out).exists()
    state = torch.load(T.state_path(cfg.out), weights_only=False)
    assert 2 <= state["step"] < 25 and len(state["history"]) == state["step"]
    resumed = json.loads((T.train(cfg, resume=True, verbose=False) / "training.json").read_text())
    straight = json.loads((T.train(debug_config(tmp_path, "straight", max_steps=25, eval_interval=0),
                                   verbose=False) / "training.json").read_text())
    assert resumed["history"] == straight["history"]


def test_lr_schedule_warms_up_then_decays_to_min_ratio():
    cfg = T.TrainConfig(warmup_steps=10, max_steps=110, lr=1.0, min_lr_ratio=0.03)
    m = [T.lr_multiplier(s, cfg, 110) for s in range(111)]
    assert m[0] == pytest.approx(0.1) and m[9] == pytest.approx(1.0)
    assert m[60] == pytest.approx(0.03 + 0.97 * 0.5)  # half-way through the cosine
    assert m[110] == pytest.approx(0.03)
    assert all(a >= b for a, b in zip(m[9:], m[10:]))


def test_weight_decay_applies_to_matrices_only():
    from mtp_bench.reference_model.model import Transformer

    cfg = T.make_config("debug")
    model = Transformer(cfg.model_config(259))
    opt = T.make_optimizer(model, cfg)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert opt.defaults["betas"] == (0.9, 0.95)


def test_overrides_are_typed_and_bad_names_are_user_errors():
    o = train_cmd.parse_overrides(["lr=6e-4", "n_future=1", "n_kv_heads=none", "head_weights=1,0.5", "corpus=x.jsonl"])
    assert o == {"lr": 6e-4, "n_future": 1, "n_kv_heads": None, "head_weights": (1.0, 0.5), "corpus": "x.jsonl"}
    with pytest.raises(ConfigError, match="valid keys: dim, n_layers"):
        train_cmd.parse_overrides(["learning_rate=1"])
    with pytest.raises(ConfigError, match="not a valid int"):
        train_cmd.parse_overrides(["n_future=two"])
    with pytest.raises(UnknownNameError, match="presets: debug, tiny, small"):
        T.make_config("huge")
    with pytest.raises(ConfigError, match="backward"):
        T.make_config("debug", {"backward": "fast"})
    with pytest.raises(ConfigError, match="head_weights"):
        T.make_config("debug", {"head_weights": (1.0,)})


def test_cli_prints_one_line_errors_and_the_resolved_config(capsys):
    from mtp_bench.cli import main

    assert main(["train", "--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert main(["train", "--preset", "debug", "--set", "lr=0.5", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["lr"] == 0.5 and printed["dim"] == 32


def test_too_small_validation_split_is_a_data_error(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("x = 1\n" * 500)
    (src / "b.py").write_text("y\n")
    cfg = debug_config(tmp_path, corpus=str(src), corpus_glob="*.py", val_fraction=0.5)
    with pytest.raises(DataError, match="split has"):
        T.train(cfg, verbose=False)


# -----------------------------------------------------------------------------
# data parallel: 2 CPU processes (gloo)

WORKER = textwrap.dedent("""
    import json, sys, torch
    from mtp_bench.reference_model import train as T
    torch.set_num_threads(1)
    cfg = T.TrainConfig.from_dict(json.loads(sys.argv[1]))
    rank = T.setup_distributed("cpu").rank
    snaps = []
    def watch(step, model):  # every parameter after every step, exactly
        snaps.append(torch.cat([p.detach().flatten() for p in model.parameters()]).clone())
    T.train(cfg, step_callback=watch, verbose=False)
    torch.save(torch.stack(snaps), sys.argv[2] + f"/params-rank{rank}.pt")
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_ranks_stay_identical_and_match_grad_accumulation(tmp_path):
    cfg = debug_config(tmp_path, "ddp", max_steps=4, eval_interval=0)
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(cfg.to_dict()), str(tmp_path)],
                                      env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out[-3000:]
    r0, r1 = (torch.load(tmp_path / f"params-rank{r}.pt") for r in range(2))
    assert r0.shape[0] == 4 and torch.equal(r0, r1)  # identical on both ranks after every step
    assert not torch.equal(r0[0], r0[-1])
    # one process accumulating 2 micro-batches sees the same windows: same training up to float order
    single = []
    T.train(debug_config(tmp_path, "single", max_steps=4, eval_interval=0, grad_accum=2),
            step_callback=lambda s, m: single.append(torch.cat([p.detach().flatten() for p in m.parameters()]).clone()),
            verbose=False)
    torch.testing.assert_close(torch.stack(single), r0, rtol=0, atol=1e-5)
    ddp = json.loads((tmp_path / "ddp" / "training.json").read_text())
    one = json.loads((tmp_path / "single" / "training.json").read_text())
    assert ddp["world_size"] == 2 and ddp["tokens_seen"] == one["tokens_seen"] == 4 * 2 * 4 * 32
    np.testing.assert_allclose([h["loss"] for h in ddp["history"]], [h["loss"] for h in one["history"]], atol=1e-5)
    # validation is split over the ranks and all-reduced: same numbers as one process scoring it all
    np.testing.assert_allclose(ddp["final"]["val"]["loss"], one["final"]["val"]["loss"], atol=1e-5)
    assert ddp["final"]["val"]["tokens"] == one["final"]["val"]["tokens"]


if __name__ == "__main__" and "--regen" in sys.argv:
    import tempfile

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        out = T.train(debug_config(Path(d)), preset="debug", verbose=False)
        rec = golden_record(json.loads((out / "training.json").read_text()))
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(rec, indent=1) + "\n")
    print(f"wrote {GOLDEN}")


# -----------------------------------------------------------------------------
# `mtp-bench bench train`: the per-process worker at a tiny size (fields, not timings)


def test_bench_train_worker_reports_memory_time_and_loss():
    import statistics

    from mtp_bench.commands.bench.train import measure_step, ratios
    from mtp_bench.reference_model.model import ModelConfig, Transformer

    spec = dict(dim=32, n_layers=4, n_heads=2, vocab_size=128, seq_len=16, batch_size=2, warmup=1, steps=2,
                n_future=4, mode="sequential", device="cpu", seed=0, threads=1)
    res = measure_step(spec)
    json.dumps(res)  # plain JSON
    assert (res["n_future"], res["mode"], res["device"], res["memory_metric"]) == (4, "sequential", "cpu", "rss_vmhwm")
    expected_params = Transformer(ModelConfig(vocab_size=128, dim=32, n_layers=4, n_heads=2, max_seq_len=16,
                                              n_future=4, multiple_of=32)).num_params()
    assert res["num_params"] == expected_params
    assert len(res["step_times_s"]) == 2 and res["median_step_s"] == statistics.median(res["step_times_s"])
    assert res["tokens_per_s"] == pytest.approx(2 * 16 / res["median_step_s"])
    assert res["peak_bytes"] >= res["baseline_bytes"] > 0
    assert res["step_mem_bytes"] == res["peak_bytes"] - res["baseline_bytes"]
    blocks = expected_params - 2 * 128 * 32 - 32  # minus embedding, unembedding, final norm
    assert res["flops_per_token"] == 6 * blocks + 6 * 4 * 16 * 32 + 6 * 4 * 32 * 128
    # first step at init: every head is near uniform over 128 ids, loss = sum of 4 heads
    assert len(res["losses"]) == 3 and res["losses"][0] == pytest.approx(4 * math.log(128), abs=0.1)
    fake = {k: {"step_mem_bytes": m, "median_step_s": t} for k, m, t in
            [("n=1", 100, 1.0), ("n=4 sequential", 110, 1.2), ("n=4 naive", 300, 2.0)]}
    for k, f in (("n=1", 10), ("n=4 sequential", 15), ("n=4 naive", 15)):
        fake[k]["flops_per_token"] = f
    r = ratios(fake)
    assert r["mem_seq_over_n1"] == pytest.approx(1.1) and r["time_naive_over_n1"] == pytest.approx(2.0)
