"""`mtp-bench gate`: regressions beyond tolerance that a paired test calls significant fail the build;
JUnit XML, Markdown summaries and policy files for CI systems."""

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

from mtp_bench.api.registry import EvalOutput, Evaluator
from mtp_bench.cli import main
from mtp_bench.reporting.gate import load_policy
from mtp_bench.reporting.results import atomic_write_json, atomic_write_jsonl, build_result, sample_rows
from mtp_bench.scoring.metrics import mean_metric
from mtp_bench.scoring.stats import mcnemar_exact


def _write(path, passes, loss, version="1.0", with_samples=False, speed=None):
    class Ev(Evaluator):
        name, suites, description = "toy", ("code",), "toy"

        @dataclass
        class Config:
            pass

    Ev.version = version
    n = max(len(passes), len(loss))
    records = [{"sample_id": str(i), **({"passed": bool(passes[i]), "nll": loss[i]} if with_samples else {})}
               for i in range(n)]
    metrics = {"pass@1": mean_metric(passes, True), "loss": mean_metric(loss, False)}
    if speed is not None:
        metrics["tokens_per_s"] = mean_metric(speed, True)
    out = EvalOutput(records, metrics)
    samples = path.name[:-5] + ".samples.jsonl"
    doc = build_result(suite="code", evaluators=[Ev()], models={"candidate": {"path": "m", "weights_sha256": "ab"}},
                       outputs={"toy": {"candidate": out}}, provenance={}, samples_file=samples if with_samples else None)
    if with_samples:
        atomic_write_jsonl(path.with_name(samples), sample_rows([Ev()], {"toy": {"candidate": out}}))
    atomic_write_json(path, doc)
    return str(path)


def test_clear_regression_fails_with_exit_1(tmp_path, capsys):
    base = _write(tmp_path / "base.json", [1] * 90 + [0] * 10, [1.0, 1.1] * 50)
    cand = _write(tmp_path / "cand.json", [1] * 40 + [0] * 60, [1.0, 1.1] * 50)
    assert main(["gate", cand, "--baseline", base]) == 1
    assert "REGRESSED" in capsys.readouterr().out


def test_noise_passes_unless_significance_is_ignored(tmp_path):
    base = _write(tmp_path / "base.json", [1, 0] * 10, [1.0, 1.1] * 10)
    cand = _write(tmp_path / "cand.json", [1, 0] * 9 + [0, 0], [1.0, 1.1] * 10)  # 0.45 vs 0.5
    assert main(["gate", cand, "--baseline", base]) == 0
    assert main(["gate", cand, "--baseline", base, "--ignore-significance"]) == 1
    assert main(["gate", cand, "--baseline", base, "--ignore-intervals"]) == 1  # the old name still works
    assert main(["gate", cand, "--baseline", base, "--ignore-significance", "--tolerance", "0.06"]) == 0


def test_paired_test_catches_a_drop_on_the_same_problems_that_overlapping_intervals_hide(tmp_path, capsys):
    base_pass = [1] * 60 + [0] * 40
    cand_pass = [1] * 50 + [0] * 50  # fails 10 problems the baseline solved, solves nothing new
    loss = [1.0, 1.1] * 50
    unpaired_base = _write(tmp_path / "ub.json", base_pass, loss)
    unpaired_cand = _write(tmp_path / "uc.json", cand_pass, loss)
    base = _write(tmp_path / "base.json", base_pass, loss, with_samples=True)
    cand = _write(tmp_path / "cand.json", cand_pass, loss, with_samples=True)
    args = ["--metrics", "toy.pass@1", "--json"]
    assert main(["gate", unpaired_cand, "--baseline", unpaired_base, *args]) == 0  # 0.5 vs 0.6 ± 0.05: noise?
    (check,) = json.loads(capsys.readouterr().out)
    assert check["test"]["method"] == "unpaired" and check["test"]["p"] > 0.1
    assert main(["gate", cand, "--baseline", base, *args]) == 1  # 10 discordant pairs, all one way
    (check,) = json.loads(capsys.readouterr().out)
    assert check["test"]["method"] == "mcnemar" and check["test"]["p"] == pytest.approx(mcnemar_exact(0, 10))
    assert check["regressed"] is True


def test_lower_is_better_metrics_are_read_in_their_direction(tmp_path, capsys):
    base = _write(tmp_path / "base.json", [1] * 10, [1.0, 1.01] * 50)
    worse = _write(tmp_path / "worse.json", [1] * 10, [2.0, 2.01] * 50)
    better = _write(tmp_path / "better.json", [1] * 10, [0.5, 0.51] * 50)
    assert main(["gate", worse, "--baseline", base, "--metrics", "toy.loss"]) == 1
    assert main(["gate", better, "--baseline", base, "--metrics", "toy.loss"]) == 0


def test_json_output_and_relative_tolerance(tmp_path, capsys):
    base = _write(tmp_path / "base.json", [1] * 10, [1.0, 1.01] * 50)
    cand = _write(tmp_path / "cand.json", [1] * 10, [1.05, 1.06] * 50)  # 5% worse, clearly significant
    assert main(["gate", cand, "--baseline", base, "--metrics", "toy.loss", "--tolerance", "0.1",
                 "--relative", "--json"]) == 0
    (check,) = json.loads(capsys.readouterr().out)
    assert check["metric"] == "toy.loss" and check["worse_by"] == pytest.approx(0.05)
    assert check["allowed"] == pytest.approx(0.1005) and check["significant"] is True and check["regressed"] is False


@pytest.mark.parametrize("argv_tail, message", [
    (["--metrics", "toy.nope"], "not in both result files"),
    (["--tolerance", "-1"], "--tolerance must be >= 0"),
    (["--alpha", "2"], "--alpha must be in (0, 1)"),
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


# ----------------------------------------------------------------------------- JUnit, Markdown

def test_junit_xml_has_one_case_per_metric_and_failures_with_numbers(tmp_path):
    base = _write(tmp_path / "base.json", [1] * 90 + [0] * 10, [1.0, 1.1] * 50, speed=[100.0, 101.0] * 5)
    cand = _write(tmp_path / "cand.json", [1] * 40 + [0] * 60, [1.0, 1.1] * 50, speed=[50.0, 51.0] * 5)
    policy = tmp_path / "gate.toml"
    policy.write_text("[gate]\nskip_timing = true\n")
    xml_path = tmp_path / "out" / "gate.xml"
    assert main(["gate", cand, "--baseline", base, "--policy", str(policy), "--junit", str(xml_path)]) == 1
    root = ET.parse(xml_path).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "3" and root.get("failures") == "1"
    (suite,) = root.findall("testsuite")
    assert suite.get("skipped") == "1" and suite.get("errors") == "0"
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert set(cases) == {"pass@1", "loss", "tokens_per_s"}
    assert all(c.get("classname") == "mtp-bench.gate.toy" for c in cases.values())
    fail = cases["pass@1"].find("failure")
    assert fail is not None and fail.get("type") == "regression"
    assert "worse by +0.5" in fail.get("message") and "candidate 0.4, baseline 0.9" in fail.text
    assert cases["loss"].find("failure") is None and cases["loss"].find("skipped") is None
    assert cases["tokens_per_s"].find("skipped").get("message") == "timing metric, skip_timing"
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["candidate_result"] == cand and props["correction"] == "holm"


def test_markdown_summary_table(tmp_path):
    base = _write(tmp_path / "base.json", [1] * 90 + [0] * 10, [1.0, 1.1] * 50)
    cand = _write(tmp_path / "cand.json", [1] * 40 + [0] * 60, [1.0, 1.1] * 50)
    md = tmp_path / "gate.md"
    assert main(["gate", cand, "--baseline", base, "--markdown", str(md)]) == 1
    text = md.read_text()
    assert text.startswith("### mtp-bench gate: 1 of 2 gated metrics regressed")
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert table[0] == "| metric | candidate | baseline | Δ | worse by | allowed | p (test) | verdict |"
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert cells[0] == "toy.pass@1 ↑" and cells[1] == "0.4000 ± 0.0492" and cells[3] == "-0.5000"
    assert cells[6].endswith("U*") and cells[7] == "**REGRESSED**"
    assert [c.strip() for c in table[3].strip("|").split("|")][-1] == "ok"


def test_nothing_is_written_on_bad_input(tmp_path):
    base = _write(tmp_path / "base.json", [1, 0], [1.0, 1.1])
    assert main(["gate", base, "--baseline", base, "--metrics", "toy.nope", "--junit", str(tmp_path / "g.xml"),
                 "--markdown", str(tmp_path / "g.md")]) == 2
    assert not (tmp_path / "g.xml").exists() and not (tmp_path / "g.md").exists()


# ----------------------------------------------------------------------------- policy files

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "gate.example.toml"


def test_the_documented_example_policy_gates_the_shipped_results(shipped_results, capsys):
    pol = load_policy(EXAMPLE)
    assert pol.skip_timing is True and pol.correction == "holm"
    assert pol.rule("humaneval.pass@1").tolerance == 0.02
    loss = pol.rule("heads.head3_loss")
    assert loss.relative is True and loss.tolerance == 0.02 and loss.require_significance is True
    bpb = pol.rule("heads.head1_bits_per_byte")
    assert bpb.require_significance is False and bpb.tolerance == 0.01
    ntp, mtp4 = str(shipped_results["ntp-code"]), str(shipped_results["mtp4-code"])
    assert main(["gate", ntp, "--baseline", ntp, "--policy", str(EXAMPLE)]) == 0  # a file against itself
    capsys.readouterr()
    # mbpp.pass@* matches nothing (not run): fine for a glob
    assert main(["gate", mtp4, "--baseline", ntp, "--policy", str(EXAMPLE), "--json"]) == 1
    checks = {c["metric"]: c for c in json.loads(capsys.readouterr().out)}
    assert set(checks) == {"humaneval.pass@1", "heads.head1_loss", "heads.head1_top1", "heads.head1_bits_per_byte",
                           "heads.tau_proxy", "specdec.tau", "specdec.degenerate_fraction"}
    assert checks["heads.head1_loss"]["regressed"] and checks["heads.head1_loss"]["allowed"] == pytest.approx(
        0.02 * checks["heads.head1_loss"]["baseline"]["value"])
    assert not checks["specdec.tau"]["regressed"]  # better


def test_policy_thresholds_per_metric_and_flags_override_them(tmp_path, capsys):
    base = _write(tmp_path / "base.json", [1] * 90 + [0] * 10, [1.0, 1.01] * 50)
    cand = _write(tmp_path / "cand.json", [1] * 80 + [0] * 20, [1.05, 1.06] * 50)  # both worse, both significant
    policy = tmp_path / "gate.toml"
    policy.write_text('[defaults]\ntolerance = 0.0\n\n[metric."toy.pass@1"]\ntolerance = 0.15\n\n'
                      '[metric."toy.l*"]\ntolerance = 0.1\nrelative = true\n')
    assert main(["gate", cand, "--baseline", base, "--policy", str(policy), "--json"]) == 0
    checks = {c["metric"]: c for c in json.loads(capsys.readouterr().out)}
    assert checks["toy.pass@1"]["allowed"] == pytest.approx(0.15)
    assert checks["toy.loss"]["allowed"] == pytest.approx(0.1005)  # 10% of the baseline's 1.005
    # a flag on the command line wins over the file, for every metric
    assert main(["gate", cand, "--baseline", base, "--policy", str(policy), "--tolerance", "0.01", "--json"]) == 1
    checks = {c["metric"]: c for c in json.loads(capsys.readouterr().out)}
    assert checks["toy.pass@1"]["allowed"] == pytest.approx(0.01) and checks["toy.pass@1"]["regressed"]
    assert checks["toy.loss"]["allowed"] == pytest.approx(0.01 * 1.005)  # relative still from the file


def test_policy_selects_metrics_skips_and_waives_significance(tmp_path, capsys):
    base = _write(tmp_path / "base.json", [1, 0] * 10, [1.0, 1.1] * 10, speed=[100.0, 101.0] * 5)
    cand = _write(tmp_path / "cand.json", [1, 0] * 9 + [0, 0], [1.0, 1.1] * 10, speed=[10.0, 11.0] * 5)
    policy = tmp_path / "gate.toml"
    policy.write_text('[gate]\nmetrics = ["toy.*"]\nskip_timing = true\n\n'
                      '[metric."toy.pass@1"]\nrequire_significance = false\n\n[metric."toy.loss"]\nskip = true\n')
    assert main(["gate", cand, "--baseline", base, "--policy", str(policy), "--json"]) == 1
    checks = {c["metric"]: c for c in json.loads(capsys.readouterr().out)}
    assert checks["toy.pass@1"]["regressed"] and checks["toy.pass@1"]["significant"] is False  # noise, but no waiver
    assert checks["toy.loss"]["skipped"] == "policy: skip"
    assert checks["toy.tokens_per_s"]["skipped"] == "timing metric, skip_timing"


@pytest.mark.parametrize("text, message", [
    ("[gate]\nmetrics = 3\n", "gate.metrics must be a list"),
    ("[gate]\nfoo = 1\n", "unknown key gate.foo"),
    ("[defaults]\ntolerence = 0.1\n", "unknown key 'tolerence'; valid: tolerance, relative"),
    ("[defaults]\nalpha = 1.5\n", "alpha must be in (0, 1)"),
    ("[metric.\"toy.pass@1\"]\nrelative = 1\n", "must be true or false"),
    ('[metric."toy.nope"]\ntolerance = 1\n', "policy metric 'toy.nope' is not in both result files"),
    ("[gate\n", "is not valid TOML"),
    ("[gates]\n", "unknown table(s) gates"),
])
def test_bad_policy_is_one_line_exit_2(tmp_path, capsys, text, message):
    base = _write(tmp_path / "base.json", [1, 0], [1.0, 1.1])
    policy = tmp_path / "gate.toml"
    policy.write_text(text)
    assert main(["gate", base, "--baseline", base, "--policy", str(policy)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_gate_on_shipped_results_pairs_their_samples(shipped_results, tmp_path, capsys):
    cand, base = shipped_results["mtp4-code"], shipped_results["ntp-code"]
    xml_path = tmp_path / "g.xml"
    rc = main(["gate", str(cand), "--baseline", str(base), "--metrics", "heads.head1_*,humaneval.pass@1",
               "--junit", str(xml_path), "--json"])
    checks = {c["metric"]: c for c in json.loads(capsys.readouterr().out)}
    assert rc == 1 and checks["heads.head1_loss"]["regressed"]  # mtp4-code's next-token loss is clearly worse
    assert checks["heads.head1_loss"]["test"]["method"] == "bootstrap"
    assert checks["humaneval.pass@1"]["test"]["method"] == "mcnemar" and not checks["humaneval.pass@1"]["regressed"]
    assert ET.parse(xml_path).getroot().get("failures") == str(sum(c["regressed"] for c in checks.values()))


def _heads_result(path, tau_proxy: list[float]):
    """A result file of a `heads` evaluator with per-window tau_proxy values (paired by window)."""
    class Heads(Evaluator):
        name, version, suites, description = "heads", "1.0", ("code",), "toy heads"

        @dataclass
        class Config:
            pass

    records = [{"sample_id": f"window-{i}", "tau_proxy": v} for i, v in enumerate(tau_proxy)]
    out = EvalOutput(records, {"tau_proxy": mean_metric(tau_proxy, True)})
    samples = path.name[:-5] + ".samples.jsonl"
    doc = build_result(suite="code", evaluators=[Heads()], models={"candidate": {"path": "m", "weights_sha256": "ab"}},
                       outputs={"heads": {"candidate": out}}, provenance={}, samples_file=samples)
    atomic_write_jsonl(path.with_name(samples), sample_rows([Heads()], {"heads": {"candidate": out}}))
    atomic_write_json(path, doc)
    return str(path)


def test_the_acceptance_policy_fails_a_drop_in_the_acceptance_proxy_beyond_five_percent(tmp_path, capsys):
    base = [1.8 + 0.01 * (i % 7) for i in range(64)]
    b = _heads_result(tmp_path / "base.json", base)
    small = _heads_result(tmp_path / "small.json", [v * 0.97 for v in base])  # 3% lower: within the margin
    big = _heads_result(tmp_path / "big.json", [v * 0.9 for v in base])  # 10% lower, on every window
    policy = EXAMPLE.with_name("gate.acceptance.toml")
    assert load_policy(policy).rule("heads.tau_proxy").tolerance == pytest.approx(0.05)
    gate = ["--policy", str(policy)]  # a CI job that runs the proxy alone: the specdec globs match nothing
    assert main(["gate", small, "--baseline", b, *gate]) == 0
    capsys.readouterr()
    assert main(["gate", big, "--baseline", b, *gate, "--json"]) == 1
    check = {c["metric"]: c for c in json.loads(capsys.readouterr().out)}["heads.tau_proxy"]
    assert check["regressed"] and check["test"]["method"] == "bootstrap" and check["test"]["n"] == 64  # paired windows
