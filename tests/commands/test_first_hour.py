"""A new user's first hour (issue 24): mistakes a newcomer makes get one line and exit 2, before any work."""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from mtp_bench.api.errors import CheckpointError, DataError
from mtp_bench.api.registry import EvalOutput, Evaluator, GenRequest, register
from mtp_bench.cli import main as cli_main
from mtp_bench.generation.engine import GenerationConfig
from mtp_bench.reporting.results import load_result
from mtp_bench.scoring.metrics import mean_metric, point_metric
from mtp_bench.testing import FakeModel, isolated_registry

ROOT = Path(__file__).resolve().parents[2]


def _one_line(capsys) -> tuple[str, str]:
    cap = capsys.readouterr()
    assert len(cap.err.strip().splitlines()) == 1, cap.err
    return cap.out, cap.err


def test_exec_out_under_a_file_fails_before_executing(tmp_path, capsys, monkeypatch):
    from mtp_bench.commands import exec as exec_cmd

    def no_work(*a, **k):
        raise AssertionError("executed although --out cannot be written")
    monkeypatch.setattr(exec_cmd, "describe_isolation", no_work)
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    return True\n"}) + "\n")
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    assert cli_main(["exec", str(samples), "--dataset", "humaneval", "--out", str(blocker / "out.jsonl")]) == 2
    _, err = _one_line(capsys)
    assert "--out" in err and "file.txt" in err
    assert blocker.read_text() == "a file, not a folder"


def test_exec_out_that_is_a_directory(tmp_path, capsys):
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    return True\n"}) + "\n")
    assert cli_main(["exec", str(samples), "--dataset", "humaneval", "--out", str(tmp_path)]) == 2
    _, err = _one_line(capsys)
    assert "is a directory" in err


def test_report_html_under_a_file_fails_before_rendering(tmp_path, capsys, monkeypatch):
    from mtp_bench.commands import report as report_cmd

    def no_work(*a, **k):
        raise AssertionError("rendered although --html cannot be written")
    monkeypatch.setattr(report_cmd, "columns_from_files", no_work)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    rc = cli_main(["report", str(ROOT / "results" / "code-default.json"), "--html", str(blocker / "r.html")])
    assert rc == 2
    _, err = _one_line(capsys)
    assert "--html" in err and "file.txt" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


# ----------------------------------------------------------------------------- runs: default result file,
# exit codes, offline, threads (tiny evaluators on the deterministic FakeModel)

PROBLEMS = {f"q{i}": (f"Q{i}: {i} + {i} =", f" {2 * i}") for i in range(4)}


class Sums(Evaluator):
    name = "sums"
    version = "1.0"
    suites = ("synthetic",)
    description = "exact match of 4 sums"

    @dataclass
    class Config:
        max_new_tokens: int = 4

    def run(self, model, ctx):
        reqs = [GenRequest(pid, 0, p) for pid, (p, _) in PROBLEMS.items()]
        gens = ctx.generate(model, reqs, GenerationConfig(max_new_tokens=self.config.max_new_tokens), self)
        recs = [{"sample_id": r.sample_id, "correct": g.text == PROBLEMS[r.sample_id][1]} for r, g in zip(reqs, gens)]
        return EvalOutput(recs, {"exact_match": mean_metric([r["correct"] for r in recs], True)}, {})


class NeedsData(Evaluator):
    name = "needs_data"
    version = "1.0"
    suites = ("synthetic", "datasets")
    description = "reads a file from the data dir"

    @dataclass
    class Config:
        pass

    def run(self, model, ctx):
        if ctx.data_dir is None or not (ctx.data_dir / "d.txt").is_file():
            raise DataError("needs_data: d.txt not found")
        return EvalOutput([{"sample_id": "d"}], {"found": point_metric(1.0, 1, True)}, {})


def _load(path, device=None, dtype=None):
    if path != "good":
        raise CheckpointError(f"{path}: not a model")
    return FakeModel(responses={p: a for p, a in PROBLEMS.values()}, name=path)


@pytest.fixture
def runs(monkeypatch, tmp_path):
    """Only Sums and NeedsData, the fake loader, no data dir, no default data folder, torch's threads restored."""
    import torch

    from mtp_bench import evaluation

    monkeypatch.delenv("MTP_BENCH_DATA", raising=False)
    monkeypatch.setenv("MTP_BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MTP_BENCH_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setattr(evaluation, "load", _load)
    threads = torch.get_num_threads()
    with isolated_registry():
        register(Sums)
        register(NeedsData)
        yield tmp_path
    torch.set_num_threads(threads)


def test_run_without_out_writes_a_named_result_and_a_rerun_resumes(runs, capsys):
    assert cli_main(["run", "--quiet", "--evals", "sums", "--model", "good"]) == 0
    written = sorted((runs / "results").iterdir())
    assert [p.name.endswith(".samples.jsonl") for p in written] == [False, True]
    result = written[0]
    assert result.name.startswith("sums-good-") and result.suffix == ".json"
    assert f"wrote {result}" in capsys.readouterr().err
    doc = load_result(result)
    assert doc["results"]["sums"]["candidate"]["metrics"]["exact_match"]["value"] == 1.0
    assert doc["provenance"]["generation_cache"]["generated"] == 4
    # the same command again: another timestamped file, but the generations come from the cache
    assert cli_main(["run", "--quiet", "--evals", "sums", "--model", "good"]) == 0
    newest = max((p for p in (runs / "results").glob("*.json")), key=lambda p: p.stat().st_mtime_ns)
    assert load_result(newest)["provenance"]["generation_cache"]["cache_hits"] == 4


def test_a_run_where_everything_was_skipped_exits_3(runs, capsys):
    assert cli_main(["run", "--suite", "datasets", "--model", "good"]) == 3
    err = capsys.readouterr().err
    assert "skipped needs_data: needs_data: d.txt not found; to run it, pass --data-dir DIR" in err
    assert err.strip().splitlines()[-1] == "mtp-bench run: nothing was evaluated: every evaluator was skipped (exit 3)"
    doc = load_result(next((runs / "results").glob("*.json")))
    assert doc["evals"] == [] and "needs_data" in doc["skipped"]


def test_strict_fails_on_any_skip_and_data_dir_is_recorded(runs, capsys):
    assert cli_main(["run", "--quiet", "--suite", "synthetic", "--model", "good", "--out", str(runs / "a.json")]) == 0
    assert load_result(runs / "a.json")["evals"] == ["sums"]
    rc = cli_main(["run", "--quiet", "--suite", "synthetic", "--model", "good", "--strict", "--out", str(runs / "b.json")])
    assert rc == 3
    assert capsys.readouterr().err.strip().splitlines()[-1] == "mtp-bench run: --strict: skipped needs_data (exit 3)"
    data = runs / "data"
    data.mkdir()
    (data / "d.txt").write_text("x")
    args = ["run", "--quiet", "--suite", "synthetic", "--model", "good", "--strict", "--data-dir", str(data)]
    assert cli_main([*args, "--out", str(runs / "c.json")]) == 0
    doc = load_result(runs / "c.json")
    assert sorted(doc["evals"]) == ["needs_data", "sums"] and doc["provenance"]["data_dir"] == str(data)


def test_the_default_data_folder_is_found(runs):
    default = runs / "cache" / "data"
    default.mkdir(parents=True)
    (default / "d.txt").write_text("x")
    assert cli_main(["run", "--quiet", "--evals", "needs_data", "--model", "good", "--out", str(runs / "r.json")]) == 0
    assert load_result(runs / "r.json")["provenance"]["data_dir"] == str(default)


def test_unreachable_hub_switches_the_run_offline_in_one_line(runs, capsys, monkeypatch):
    from mtp_bench.api import hub

    for v in hub.OFFLINE_VARS:
        monkeypatch.delenv(v, raising=False)
    probes = []
    monkeypatch.setattr(hub, "hub_reachable", lambda: probes.append(1) or False)
    assert cli_main(["run", "--suite", "synthetic", "--model", "good", "--out", str(runs / "r.json")]) == 0
    err = capsys.readouterr().err
    assert probes == [1] and all(os.environ[v] == "1" for v in hub.OFFLINE_VARS)
    assert sum("unreachable: running offline" in line for line in err.splitlines()) == 1
    # offline already (or a data dir given and local models): no probe
    assert cli_main(["run", "--quiet", "--evals", "sums", "--model", "good", "--out", str(runs / "s.json")]) == 0
    assert probes == [1]


def test_reachable_hub_leaves_the_run_online(runs, monkeypatch):
    from mtp_bench.api import hub

    for v in hub.OFFLINE_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    assert cli_main(["run", "--quiet", "--evals", "sums", "--model", "good", "--out", str(runs / "r.json")]) == 0
    assert not any(v in os.environ for v in hub.OFFLINE_VARS)


def test_threads_are_set_and_recorded(runs):
    import torch

    assert cli_main(["run", "--quiet", "--evals", "sums", "--model", "good", "--threads", "1",
                     "--out", str(runs / "r.json")]) == 0
    prov = load_result(runs / "r.json")["provenance"]
    assert prov["threads"] == {"torch": 1, "chosen_by": "--threads"} and prov["torch_threads"] == 1
    assert cli_main(["run", "--quiet", "--evals", "sums", "--model", "good", "--out", str(runs / "a.json")]) == 0
    prov = load_result(runs / "a.json")["provenance"]
    assert prov["threads"]["chosen_by"].startswith("auto: ") and prov["threads"]["torch"] == torch.get_num_threads()
    assert 1 <= prov["threads"]["torch"] <= (os.cpu_count() or 1)


def test_bad_threads_is_one_line(runs, capsys):
    assert cli_main(["run", "--quiet", "--evals", "sums", "--model", "good", "--threads", "0"]) == 2
    _one_line(capsys)
    assert not (runs / "results").exists()


# ----------------------------------------------------------------------------- smaller items

@pytest.mark.parametrize("argv, hint", [
    (["run", "--evals", "humanevl"], "did you mean 'humaneval'?"),
    (["run", "--suite", "cod"], "did you mean 'code'?"),
    (["score", "gsm8kk", "g.jsonl", "--out", "o.jsonl"], "did you mean 'gsm8k'?"),
    (["run", "--evals", "gsm8k", "--config", "gsm8k.max_new_tokenz=3"], "did you mean 'max_new_tokens'?"),
])
def test_unknown_names_suggest_the_closest(argv, hint, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.jsonl").write_text(json.dumps({"task_id": "HumanEval/0", "completion": "x"}) + "\n")
    assert cli_main(argv) == 2
    _, err = _one_line(capsys)
    assert hint in err


def test_score_lists_only_the_evaluators_it_can_score(capsys, tmp_path):
    assert cli_main(["score", "gsm8kk", str(tmp_path / "g.jsonl"), "--out", str(tmp_path / "o.jsonl")]) == 2
    _, err = _one_line(capsys)
    listed = err.split("evaluators that score generations: ")[1].strip().split(", ")
    assert "gsm8k" in listed and "humaneval" not in listed and "mbpp" not in listed


def test_a_json_error_reads_whole(tmp_path, capsys):
    samples = tmp_path / "s.jsonl"
    samples.write_text('{"task_id": "HumanEval/0", "completion": "a\tb"}\n')
    assert cli_main(["exec", str(samples), "--dataset", "humaneval"]) == 2
    _, err = _one_line(capsys)
    assert f"{samples}:1: not valid JSON (Invalid control character at column 44)" in err

