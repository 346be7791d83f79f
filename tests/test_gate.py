"""`mtp-bench gate`: regressions beyond tolerance and outside the 95% intervals fail the build."""

import json
from dataclasses import dataclass

import pytest

from mtp_bench.cli import main
from mtp_bench.metrics import mean_metric
from mtp_bench.registry import EvalOutput, Evaluator
from mtp_bench.results import atomic_write_json, build_result


def _write(path, passes, loss, version="1.0"):
    class Ev(Evaluator):
        name, suites, description = "toy", ("code",), "toy"

        @dataclass
        class Config:
            pass

    Ev.version = version
    out = EvalOutput([{"sample_id": str(i)} for i in range(len(passes))],
                     {"pass@1": mean_metric(passes, True), "loss": mean_metric(loss, False)})
    doc = build_result(suite="code", evaluators=[Ev()], models={"candidate": {"path": "m"}},
                       outputs={"toy": {"candidate": out}}, provenance={}, samples_file=None)
    atomic_write_json(path, doc)
    return str(path)


def test_clear_regression_fails_with_exit_1(tmp_path, capsys):
    base = _write(tmp_path / "base.json", [1] * 90 + [0] * 10, [1.0, 1.1] * 50)
    cand = _write(tmp_path / "cand.json", [1] * 40 + [0] * 60, [1.0, 1.1] * 50)
    assert main(["gate", cand, "--baseline", base]) == 1
    assert "REGRESSED" in capsys.readouterr().out


def test_noise_within_overlapping_intervals_passes(tmp_path):
    base = _write(tmp_path / "base.json", [1, 0] * 10, [1.0, 1.1] * 10)
    cand = _write(tmp_path / "cand.json", [1, 0] * 9 + [0, 0], [1.0, 1.1] * 10)  # 0.45 vs 0.5
    assert main(["gate", cand, "--baseline", base]) == 0
    assert main(["gate", cand, "--baseline", base, "--ignore-intervals"]) == 1
    assert main(["gate", cand, "--baseline", base, "--ignore-intervals", "--tolerance", "0.06"]) == 0


def test_lower_is_better_metrics_are_read_in_their_direction(tmp_path, capsys):
    base = _write(tmp_path / "base.json", [1] * 10, [1.0, 1.01] * 50)
    worse = _write(tmp_path / "worse.json", [1] * 10, [2.0, 2.01] * 50)
    better = _write(tmp_path / "better.json", [1] * 10, [0.5, 0.51] * 50)
    assert main(["gate", worse, "--baseline", base, "--metrics", "toy.loss"]) == 1
    assert main(["gate", better, "--baseline", base, "--metrics", "toy.loss"]) == 0


def test_json_output_and_relative_tolerance(tmp_path, capsys):
    base = _write(tmp_path / "base.json", [1] * 10, [1.0, 1.01] * 50)
    cand = _write(tmp_path / "cand.json", [1] * 10, [1.05, 1.06] * 50)  # 5% worse, intervals apart
    assert main(["gate", cand, "--baseline", base, "--metrics", "toy.loss", "--tolerance", "0.1",
                 "--relative", "--json"]) == 0
    (check,) = json.loads(capsys.readouterr().out)
    assert check["metric"] == "toy.loss" and check["worse_by"] == pytest.approx(0.05)
    assert check["intervals_overlap"] is False and check["regressed"] is False


@pytest.mark.parametrize("argv_tail, message", [
    (["--metrics", "toy.nope"], "not in both result files"),
    (["--tolerance", "-1"], "--tolerance must be >= 0"),
])
def test_bad_input_exits_2(tmp_path, capsys, argv_tail, message):
    base = _write(tmp_path / "base.json", [1, 0], [1.0, 1.1])
    assert main(["gate", base, "--baseline", base, *argv_tail]) == 2
    assert message in capsys.readouterr().err


def test_version_mismatch_is_refused(tmp_path, capsys):
    base = _write(tmp_path / "base.json", [1, 0], [1.0, 1.1], version="1.0")
    cand = _write(tmp_path / "cand.json", [1, 0], [1.0, 1.1], version="2.0")
    assert main(["gate", cand, "--baseline", base]) == 2
    assert "different evaluator versions" in capsys.readouterr().err


def test_missing_file_exits_2(tmp_path, capsys):
    assert main(["gate", str(tmp_path / "nope.json"), "--baseline", str(tmp_path / "nope.json")]) == 2
    assert "no result file" in capsys.readouterr().err
