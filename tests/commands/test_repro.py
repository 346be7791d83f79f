"""`mtp-bench repro`: the verdict rule on hand-made numbers, and the smoke budget end to end
(result directory, plot, verdict sentence, resuming a killed run)."""

import json

import pytest

from mtp_bench.cli import main
from mtp_bench.commands import repro
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


@pytest.mark.slow
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


@pytest.mark.slow
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

    from mtp_bench.api.errors import UserError

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


# ----------------------------------------------------------------------------- speedup (Table S2)

def _p(mean, spread=0.0, values=None, ci=None):
    """A pool_seeds-shaped dict on made-up numbers."""
    return {"mean": mean, "spread": spread, "values": values or [mean, mean], "ci95": ci}


def test_pool_seeds_combines_the_seeds_errors():
    p = repro.pool_seeds([{"value": 2.0, "stderr": 0.3}, {"value": 3.0, "stderr": 0.4}])
    assert p["mean"] == 2.5 and p["spread"] == 1.0 and p["stderr"] == pytest.approx(0.25)
    assert p["ci95"] == pytest.approx([2.5 - 1.959964 * 0.25, 2.5 + 1.959964 * 0.25])
    assert repro.pool_seeds([{"value": 1.0, "stderr": None}, {"value": 1.0, "stderr": 0.1}])["ci95"] is None


def test_speedup_rule_reaches_every_outcome():
    decide = repro.decide_speedup
    tau = {1: _p(1.0), 2: _p(1.6, 0.1), 3: _p(2.0, 0.1), 4: _p(2.3, 0.1)}
    fast = {1: _p(1.0), 2: _p(1.3, 0.1, [1.25, 1.35], [1.2, 1.4]), 3: _p(1.2, 0.0, [1.2, 1.2], [1.1, 1.3]),
            4: _p(1.1, 0.0, [1.1, 1.1], [0.95, 1.25])}
    d = decide(tau, fast, 0.1, 0.5)
    assert d["verdict"] == "reproduced" and d["best_k"] == 2 and d["tau_rises"] and d["faster"]
    # the same numbers from outputs that loop on one or two tokens say nothing
    d = decide(tau, fast, 0.6, 0.5)
    assert d["verdict"] == "inconclusive" and d["degenerate"]
    # tau rises, but by less than the seed spread
    noisy = {**tau, 2: _p(1.6, 0.5), 4: _p(1.9, 0.5)}
    assert decide(noisy, fast, 0.1, 0.5)["verdict"] == "inconclusive"
    # tau(2) not above 1 by more than its spread
    assert decide({**tau, 2: _p(1.05, 0.1)}, fast, 0.1, 0.5)["tau_rises"] is False
    # the best speedup's interval includes 1, or one seed is not faster
    wide = {**fast, 2: _p(1.3, 0.1, [1.25, 1.35], [0.9, 1.7])}
    assert decide(tau, wide, 0.1, 0.5)["verdict"] == "inconclusive"
    split = {**fast, 2: _p(1.3, 0.8, [0.9, 1.7], [1.2, 1.4])}
    assert decide(tau, split, 0.1, 0.5)["verdict"] == "inconclusive"
    # no k > 1 is faster on average: not reproduced, even though tau rises (k=1's 1.0 does not count)
    slow = {1: _p(1.0), 2: _p(0.9, 0.0, [0.9, 0.9], [0.8, 1.0]), 3: _p(1.0), 4: _p(0.7)}
    d = decide(tau, slow, 0.1, 0.5)
    assert d["verdict"] == "not_reproduced" and d["tau_rises"] and d["no_k_faster"]


@pytest.mark.slow
def test_smoke_speedup_end_to_end_held_out_prompts_and_reuse(tmp_path, data_dir, monkeypatch, capsys):
    from mtp_bench.evals.specdec import SpecDec

    work, out = tmp_path / "work", tmp_path / "out"
    args = ["repro", "speedup", "--budget", "smoke", "--work-dir", str(work), "--out", str(out),
            "--data-dir", str(data_dir), "--quiet"]
    # a worker trains and evaluates seed 1 alone: no result yet
    assert main([*args, "--seed", "1"]) == 0
    assert (work / "ckpt" / "n4-s1" / "training.json").is_file() and not (work / "ckpt" / "n4-s0").exists()
    assert not (out / "result.json").exists()
    capsys.readouterr()
    assert main(args) == 0
    doc = json.loads((out / "result.json").read_text())
    assert doc["schema"] == repro.SCHEMA and doc["finding"] == "speedup" and doc["budget"] == "smoke"
    assert doc["verdict"] == "inconclusive" and doc["rule"]["max_degenerate"] == 0.5
    assert doc["ks"] == [1, 2, 3, 4] and set(doc["per_k"]) == {"1", "2", "3", "4"}
    seeds = doc["arms"]["n=4"]["seeds"]
    assert set(seeds) == {"0", "1"}
    for k in doc["ks"]:
        pk = doc["per_k"][str(k)]
        assert {"tau", "speedup", "degenerate_fraction", "lossless_fraction"} <= set(pk)
        assert 1.0 <= pk["tau"]["mean"] <= k and pk["lossless_fraction"]["mean"] == 1.0  # fp32: exact
        assert pk["tau"]["values"] == [seeds[s]["per_k"][str(k)]["metrics"]["tau"]["value"] for s in ("0", "1")]
        for s in seeds.values():
            info = s["per_k"][str(k)]["info"]
            assert info["k"] == k and info["prompt_set"] == "text" and info["n_prompts"] == 2
    assert doc["per_k"]["1"]["speedup"]["mean"] == 1.0 and "alpha_uncond_2" in doc["per_k"]["4"]
    # prompts come from stories the model never trained on (checked here from the files themselves)
    train = {json.loads(line)["text"] for line in next((work / "data").glob("speedup-*-train.jsonl")).read_text().splitlines()}
    held = [s.strip() for s in repro.speedup_prompt_file(work).read_text().split("<|endoftext|>") if s.strip()]
    assert len(held) == doc["data"]["n_eval_stories"] > 0 and not set(held) & train
    assert doc["data"]["train_eval_overlap"] == 0
    for s in seeds.values():
        for x in s["samples"]:
            assert held[int(x["sample_id"].split("/")[1])].startswith(x["prompt"])
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "proves the pipeline only" in capsys.readouterr().out

    # a rerun trains nothing and decodes nothing: checkpoints and evaluations are reused
    def boom(*a, **k):
        raise AssertionError("rerun must reuse what it has")

    monkeypatch.setattr(T, "train", boom)
    monkeypatch.setattr(SpecDec, "run", boom)
    assert main(args) == 0
    again = json.loads((out / "result.json").read_text())
    assert again["per_k"] == doc["per_k"] and again["verdict"] == "inconclusive"


# ----------------------------------------------------------------------------- memory (sequential backward)

def test_memory_rule_reaches_every_outcome():
    decide = repro.decide_memory
    assert decide(100, 110, 400, 10, 0.15)["verdict"] == "reproduced"
    assert decide(100, 395, 400, 10, 0.15)["verdict"] == "not_reproduced"
    # sequential saves some, but stays above the tolerance
    d = decide(100, 250, 400, 10, 0.15)
    assert d["verdict"] == "inconclusive" and d["discriminates"] and not d["seq_within_tolerance"]
    # the naive backward costs no more than the tolerance (logits do not dominate): cannot tell
    d = decide(100, 100, 112, 1, 0.15)
    assert d["verdict"] == "inconclusive" and not d["discriminates"]
    # ... or no more than the repeat spread
    assert decide(100, 100, 200, 150, 0.15)["verdict"] == "inconclusive"
    # a peak that was not reset measures the setup too
    assert decide(100, 110, 400, 10, 0.15, peak_reset=False)["verdict"] == "inconclusive"


@pytest.mark.slow
def test_smoke_memory_end_to_end_and_reuse(tmp_path, monkeypatch, capsys):
    from mtp_bench.commands.bench import train as B

    work, out = tmp_path / "work", tmp_path / "out"
    args = ["repro", "memory", "--budget", "smoke", "--work-dir", str(work), "--out", str(out), "--quiet"]
    assert main(args) == 0
    doc = json.loads((out / "result.json").read_text())
    assert doc["finding"] == "memory" and doc["budget"] == "smoke" and doc["verdict"] == "inconclusive"
    assert doc["size"] == repro.PLANS["memory"]["smoke"]["size"] and doc["rule"]["tolerance"] == 0.15
    configs = doc["configs"]
    assert [(c["n_future"], c["mode"]) for c in configs.values()] == [(1, "sequential"), (4, "sequential"), (4, "naive")]
    for c in configs.values():
        reps = c["repeats"]
        assert len(reps) == 2 and all(r["peak_bytes"] >= r["baseline_bytes"] > 0 for r in reps)
        assert c["step_mem_bytes"]["values"] == [r["step_mem_bytes"] for r in reps]
        assert reps[0]["losses"] != reps[1]["losses"]  # two measurements (seeds 0, 1), not one copied
    means = {k: c["step_mem_bytes"]["mean"] for k, c in configs.items()}
    assert doc["ratios"]["mem_naive_over_n1"] == pytest.approx(means["n=4 naive"] / means["n=1"])
    assert doc["checks"]["repeat_spread_bytes"] == max(c["step_mem_bytes"]["spread"] for c in configs.values())
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "proves the pipeline only" in capsys.readouterr().out

    # a rerun measures nothing again
    def boom(*a, **k):
        raise AssertionError("rerun must reuse the measurements")

    monkeypatch.setattr(B, "run_in_subprocess", boom)
    assert main(args) == 0
    assert json.loads((out / "result.json").read_text())["configs"] == configs
    # parallel workers would disturb the timings: refused
    assert main([*args, "--seed", "0"]) == 2


def test_help_lists_every_finding(capsys):
    with pytest.raises(SystemExit) as e:
        main(["repro", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert all(name in text for name in ("induction", "arithmetic", "speedup", "memory"))


def test_doctests_of_the_rules_run():
    import doctest

    from mtp_bench.commands.repro import rules

    failures, tried = doctest.testmod(rules)
    assert tried >= 10 and failures == 0


# ----------------------------------------------------------------------------- budgets and --plan (issue 20)


@pytest.mark.parametrize("finding", ["induction", "arithmetic"])
@pytest.mark.parametrize("budget", ["quick", "gpu", "full"])
def test_no_arm_trains_more_than_two_epochs_over_the_same_text(finding, budget):
    from mtp_bench.commands.repro.plan import describe

    plan = describe(finding, budget)
    for arm in plan["arms"]:
        assert arm["epochs"] <= repro.findings.MAX_EPOCHS, arm
        assert arm["training_tokens"] == plan["train"]["max_steps"] * plan["train"]["batch_size"] * plan["train"]["seq_len"]


@pytest.mark.parametrize("finding", ["induction", "arithmetic", "speedup"])
def test_gpu_budget_trains_every_arm_and_seed_within_the_minutes_on_an_h200(finding):
    """Sized on the measured H200 throughput: training takes at most 6 of the 8 minutes, leaving
    the rest to evaluation."""
    from mtp_bench.commands.repro.plan import describe

    plan = describe(finding, "gpu")
    assert plan["estimated_train_s_all_runs"]["h200"] <= 6 * 60
    assert plan["gpu_budget_minutes"] == 8 and len(plan["seeds"]) >= 2


def test_plan_prints_json_and_trains_nothing(tmp_path, capsys):
    import json

    assert main(["repro", "induction", "--budget", "gpu", "--plan", "--work-dir", str(tmp_path / "w")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["finding"] == "induction" and doc["budget"] == "gpu" and doc["runs"] == 4
    assert [a["arm"] for a in doc["arms"]] == ["n=1", "n=2"]
    assert all(a["names_redrawn_each_pass"] and a["name_passes"] == 11 for a in doc["arms"])
    assert doc["arms"][0]["parameters"] == doc["arms"][1]["parameters"]  # compute matched: the same depth
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("argv, message", [
    (["repro", "induction", "--budget", "huge"], "unknown budget 'huge'; budgets: smoke, quick, gpu, full"),
    (["repro", "memory", "--plan"], "repro memory trains nothing, so it has no plan"),
    (["repro", "arithmetic", "--budget", "smoke", "--device", "cuda"], "CUDA is not available"),
])
def test_bad_repro_input_is_one_line_exit_2(argv, message, tmp_path, capsys):
    import torch

    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main([*argv, "--work-dir", str(tmp_path / "w"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "w").exists()


def test_induction_names_are_redrawn_on_every_pass(tmp_path):
    """Two passes: every training story twice, with different names, never the same text twice."""
    import json
    import os
    from pathlib import Path

    data_dir = Path(os.environ.get("MTP_BENCH_TEST_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")
    if not (data_dir / "tinystories").is_dir():
        pytest.skip(f"benchmark data not found at {data_dir}")

    plan = {**repro.PLANS["induction"]["smoke"], "data": {"max_train_stories": 30, "name_passes": 2}}
    corpus, info = repro.prepare_data("induction", plan, tmp_path, str(data_dir / "tinystories" /
                                                                       "TinyStories-train_first2MiB.txt"))
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    assert info["name_passes"] == 2 and len(texts) == 2 * info["n_train_stories"] == 60
    first, second = texts[:30], texts[30:]
    assert sum(a != b for a, b in zip(first, second)) >= 20  # the names changed (a story may have none)
    plan["data"] = {"max_train_stories": 30, "name_passes": 5}
    corpus, info = repro.prepare_data("induction", plan, tmp_path, str(data_dir / "tinystories" /
                                                                       "TinyStories-train_first2MiB.txt"))
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    assert max(texts.count(t) for t in texts) <= 2  # a story without names is kept twice, not five times
    assert len(texts) > 4 * 30
