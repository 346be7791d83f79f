"""`mtp-bench repro`: the verdict rule on hand-made numbers, and the smoke budget end to end
(result directory, plot, verdict sentence, resuming a killed run)."""

import json

import pytest

from mtp_bench import repro
from mtp_bench.cli import main
from mtp_bench.reference_model import train as T

pytestmark = pytest.mark.usefixtures("one_thread")


def test_compare_outcomes_follow_the_stated_rule():
    # clear gain: gap 0.3 > spread 0.05, paired interval above 0
    assert repro.compare([0.50, 0.55], [0.20, 0.25], (0.2, 0.4), 0.05)["outcome"] == "better"
    # the gap is inside the seed spread: not better, whatever the paired interval says
    assert repro.compare([0.50, 0.10], [0.20, 0.25], (0.01, 0.2), 0.05)["outcome"] == "unclear"
    # clearly worse
    assert repro.compare([0.10, 0.12], [0.40, 0.41], (-0.35, -0.25), 0.05)["outcome"] == "worse"
    # an effect of min_effect is ruled out
    assert repro.compare([0.30, 0.31], [0.30, 0.31], (-0.02, 0.03), 0.05)["outcome"] == "no_gain"
    c = repro.compare([0.5, 0.6], [0.2, 0.3], None, 0.05)
    assert c["outcome"] == "unclear" and c["gap"] == pytest.approx(0.3) and c["spread"] == pytest.approx(0.1)


def test_decide_needs_every_mtp_arm_and_a_learnt_task():
    means = {"n=1": 0.3, "n=2": 0.5, "n=4": 0.6}
    assert repro.decide(means, {"a": {"outcome": "better"}, "b": {"outcome": "better"}}, 0.1) == "reproduced"
    assert repro.decide(means, {"a": {"outcome": "better"}, "b": {"outcome": "worse"}}, 0.1) == "inconclusive"
    assert repro.decide(means, {"a": {"outcome": "no_gain"}, "b": {"outcome": "worse"}}, 0.1) == "not_reproduced"
    assert repro.decide({"n=1": 0.01, "n=2": 0.04}, {"a": {"outcome": "better"}}, 0.1) == "inconclusive"


def test_paired_interval_averages_seeds_and_pairs_samples():
    a = [{"x": (1.0, 1), "y": (1.0, 1)}, {"x": (1.0, 1), "y": (0.0, 1)}]
    b = [{"x": (0.0, 1), "y": (0.0, 1)}, {"x": (0.0, 1), "y": (0.0, 1)}]
    m = repro.paired_interval(a, b)
    assert m.value == pytest.approx(0.75) and m.n == 2  # per sample: x 1.0, y 0.5


def test_smoke_arithmetic_end_to_end_and_resume(tmp_path, monkeypatch, capsys):
    work, out = tmp_path / "work", tmp_path / "out"
    # a crash in the second arm's training after its state was saved at step 2 (ckpt_interval=2)
    real_train, calls = T.train, []

    def crashing_train(cfg, **kw):
        calls.append((cfg.out, kw.get("resume")))
        if cfg.out.endswith("n1-s1") and not kw.get("resume"):
            def boom(step, model):
                if step == 3:
                    raise RuntimeError("killed")
            return real_train(cfg, step_callback=boom, **kw)
        return real_train(cfg, **kw)

    monkeypatch.setattr(T, "train", crashing_train)
    args = ["repro", "arithmetic", "--budget", "smoke", "--work-dir", str(work), "--out", str(out), "--quiet"]
    # a worker trains the n=4 arm alone into the same work dir: no result yet
    assert main([*args, "--arm", "4"]) == 0
    assert (work / "ckpt" / "n4-s1" / "training.json").is_file() and not (work / "ckpt" / "n1-s0").exists()
    assert not (out / "result.json").exists()
    with pytest.raises(RuntimeError, match="killed"):
        main(args)
    assert (work / "ckpt" / "n1-s0" / "training.json").is_file()
    assert T.state_path(work / "ckpt" / "n1-s1").is_file() and not (out / "result.json").exists()
    done_before = (work / "ckpt" / "n1-s0" / "training.json").stat().st_mtime_ns

    calls.clear()
    assert main(args) == 0
    # the finished arm is reused, the killed one resumed, the rest trained
    assert (str(work / "ckpt" / "n1-s1"), True) in calls
    assert all(not p.endswith(("n1-s0", "n4-s0", "n4-s1")) for p, _ in calls)
    assert (work / "ckpt" / "n1-s0" / "training.json").stat().st_mtime_ns == done_before
    assert json.loads((work / "ckpt" / "n1-s1" / "training.json").read_text())["steps"] == 4

    doc = json.loads((out / "result.json").read_text())
    assert doc["schema"] == repro.SCHEMA and doc["budget"] == "smoke" and doc["verdict"] == "inconclusive"
    assert set(doc["arms"]) == {"n=1", "n=2", "n=4"}
    assert all(len(a["seeds"]) == 2 for a in doc["arms"].values())
    assert doc["data"]["train_test_overlap"] == 0
    assert set(doc["comparisons"]) == {"n=2 vs n=1", "n=4 vs n=1"}
    assert doc["provenance"]["git_commit"] is None or len(doc["provenance"]["git_commit"]) == 40
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "proves the pipeline only" in printed and "inconclusive" in printed


def test_smoke_induction_end_to_end(tmp_path, data_dir, capsys):
    out = tmp_path / "out"
    assert main(["repro", "induction", "--budget", "smoke", "--work-dir", str(tmp_path / "w"), "--out", str(out),
                 "--data-dir", str(data_dir), "--quiet"]) == 0
    doc = json.loads((out / "result.json").read_text())
    assert doc["verdict"] == "inconclusive" and doc["data"]["train_eval_overlap"] == 0
    seed0 = doc["arms"]["n=2"]["seeds"]["0"]["metrics"]
    assert {"induction.second_token_acc", "induction.first_token_acc", "induction_random.copy_acc"} <= set(seed0)
    assert seed0["induction.second_token_acc"]["n"] > 0
    assert "proves the pipeline only" in capsys.readouterr().out


def test_unknown_finding_exits_2(tmp_path, capsys):
    assert main(["repro", "nonsense", "--work-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "unknown finding" in capsys.readouterr().err


def test_an_arm_in_training_is_locked_and_a_dead_lock_is_taken_over(tmp_path):
    import os
    import subprocess
    import sys

    from mtp_bench.errors import UserError

    out = tmp_path / "ckpt" / "n1-s0"
    lock = tmp_path / "ckpt" / "n1-s0.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(str(os.getpid()))  # a live process holds it
    with pytest.raises(UserError, match="being trained by process"):
        with repro._arm_lock(out):
            pass
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(dead.stdout.strip())  # its holder has exited
    with repro._arm_lock(out):
        assert lock.read_text() == str(os.getpid())
    assert not lock.exists()
