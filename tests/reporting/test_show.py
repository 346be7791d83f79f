import io
import json

import pytest
from rich.console import Console

from mtp_bench.api.registry import EvalOutput, Evaluator
from mtp_bench.cli import main
from mtp_bench.reporting import provenance, results
from mtp_bench.reporting.show import VersionMismatchError, comparison, render
from mtp_bench.scoring.metrics import mean_metric, point_metric
from mtp_bench.testing import FakeModel


def _ev(name, suites, version="1.0", caption=None):
    return type(name, (Evaluator,), {"name": name, "version": version, "suites": suites, "description": name,
                                     "caption": caption})()


def _doc(evs_metrics, suite=None, roles=("candidate", "baseline")):
    """evs_metrics: [(evaluator, {role: {metric: Metric}})]"""
    evs = [e for e, _ in evs_metrics]
    outputs = {e.name: {r: EvalOutput([], ms[r]) for r in roles if r in ms} for e, ms in evs_metrics}
    models = {r: results.model_info(FakeModel(name=r)) for r in roles}
    prov = provenance.collect(0, "cpu", ["run"], provenance.utc_now(), 0.1)
    return json.loads(json.dumps(results.build_result(suite=suite, evaluators=evs, models=models, outputs=outputs,
                                                      provenance=prov, samples_file=None)))


def _text(doc, baseline_doc=None, **samples):
    buf = io.StringIO()
    render(doc, Console(file=buf, width=200, color_system=None), baseline_doc, **samples)
    return buf.getvalue()


def _row(text, start):
    return next(line for line in text.splitlines() if start in line)


def test_side_by_side_table_shows_delta_and_an_unpaired_test_without_samples():
    he = _ev("humaneval", ("code",), caption="pass@1 over 164 problems, greedy")
    doc = _doc([(he, {"candidate": {"pass@1": mean_metric([1] * 30 + [0] * 10, True),
                                    "loss": mean_metric([1.0, 1.2, 1.1, 0.9], False)},
                      "baseline": {"pass@1": mean_metric([1] * 5 + [0] * 35, True),
                                   "loss": mean_metric([1.05, 1.15, 1.1, 0.95], False)}})], suite="code")
    text = _text(doc)
    assert "suite: code" in text
    row = _row(text, "pass@1 ↑")
    cells = [c.strip() for c in row.split("│")[1:-1]]
    # no samples: z = 0.625 / sqrt(0.0693^2 + 0.0530^2) = 7.2, far beyond any threshold
    assert cells == ["humaneval v1.0", "pass@1 ↑", "0.7500 ± 0.0693", "0.1250 ± 0.0530", "+0.6250", "<1e-4 U*"]
    loss = [c.strip() for c in _row(text, "loss ↓").split("│")[1:-1]]
    assert loss[1:5] == ["loss ↓", "1.0500 ± 0.0645", "1.0625 ± 0.0427", "-0.0125"]
    assert loss[5].endswith(" U") and float(loss[5].split()[0]) > 0.8
    flat = " ".join(text.split())  # captions wrap at the table's width
    assert "humaneval: pass@1 over 164 problems, greedy" in flat
    assert "M = exact McNemar (pass/fail, paired)" in flat
    assert "unpaired: every compared metric: no samples" in flat
    comp = comparison(doc)
    assert [(r["metric"], r["better"], r["test"]["method"], r["significant"]) for r in comp["rows"]] == [
        ("pass@1", True, "unpaired", True), ("loss", True, "unpaired", False)]


def test_side_by_side_table_pairs_the_samples_both_models_answered():
    he = _ev("humaneval", ("code",))
    cand = [1] * 12 + [0] * 8  # 0.6
    base = [1] * 6 + [0] * 6 + [1] * 2 + [0] * 6  # 0.4; discordant: b = 6, c = 2
    doc = _doc([(he, {"candidate": {"pass@1": mean_metric(cand, True)},
                      "baseline": {"pass@1": mean_metric(base, True)}})], suite="code")
    samples = {("humaneval", role): [{"sample_id": f"t{i}", "passed": bool(v)} for i, v in enumerate(vals)]
               for role, vals in (("candidate", cand), ("baseline", base))}
    (row,) = comparison(doc, samples=samples)["rows"]
    assert row["test"]["method"] == "mcnemar" and row["test"]["n"] == 20
    assert row["test"]["p"] == pytest.approx(2 * (1 + 8 + 28) / 256)  # 2 P(X <= 2), X ~ Bin(8, 1/2)
    assert row["test"]["diff"] == pytest.approx(0.2)
    text = _text(doc, samples=samples)
    assert _row(text, "pass@1 ↑").split("│")[-2].strip() == "0.289 M"


def test_candidate_only_report_has_no_baseline_columns():
    doc = _doc([(_ev("gsm8k", ("nl",)), {"candidate": {"acc": point_metric(0.5, 10, True)}})],
               suite="nl", roles=("candidate",))
    text = _text(doc)
    assert "baseline" not in text and "Δ" not in text
    assert [c.strip() for c in _row(text, "acc ↑").split("│")[1:-1]] == ["gsm8k v1.0", "acc ↑", "0.5000"]


def test_one_table_per_suite_and_no_row_twice():
    m = {"candidate": {"m": point_metric(1, 1, True)}, "baseline": {"m": point_metric(2, 1, True)}}
    doc = _doc([(_ev("gsm8k", ("nl",)), m), (_ev("specdec", ("speed", "code")), m), (_ev("mbpp", ("code",)), m)])
    text = _text(doc)
    assert [line.strip() for line in text.splitlines() if line.strip().startswith("suite:")] == [
        "suite: code", "suite: nl", "suite: speed"]  # specdec sits under its first suite only
    assert text.count("specdec v1.0") == 1


def test_mixing_evaluator_versions_is_refused(tmp_path, capsys):
    m = {"candidate": {"m": point_metric(1, 1, True)}}
    a = _doc([(_ev("mbpp", ("code",), "1.0"), m)], roles=("candidate",))
    b = _doc([(_ev("mbpp", ("code",), "1.1"), m)], roles=("candidate",))
    with pytest.raises(VersionMismatchError, match="mbpp: candidate scored with evaluator version 1.0, baseline with 1.1"):
        comparison(a, b)
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert main(["show", str(tmp_path / "a.json"), "--baseline", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err
    assert "refusing to compare" in err and err.count("\n") == 1
    # the same file as its own baseline is fine and shows zero deltas
    assert main(["show", str(tmp_path / "a.json"), "--baseline", str(tmp_path / "a.json")]) == 0
    assert "+0" not in capsys.readouterr().out


def test_show_json_prints_the_result_file(tmp_path, capsys):
    doc = _doc([(_ev("mbpp", ("code",)), {"candidate": {"m": point_metric(1, 1, True)},
                                          "baseline": {"m": point_metric(0, 1, True)}})])
    p = tmp_path / "r.json"
    results.atomic_write_json(p, doc)
    assert main(["show", str(p), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == doc
    assert main(["show", str(p)]) == 0
    assert "mbpp v1.0" in capsys.readouterr().out


@pytest.mark.parametrize("content", [None, "{", '{"schema_version": 1}'])
def test_show_bad_file_is_one_line_exit_2(tmp_path, capsys, content):
    p = tmp_path / "r.json"
    if content is not None:
        p.write_text(content)
    assert main(["show", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mtp-bench: error:") and err.count("\n") == 1 and "Traceback" not in err


def test_report_shows_the_sandbox_isolation_in_force():
    from mtp_bench.reporting.show import sandbox_lines

    sb = {"in_force": ["pid_namespace", "network_namespace"], "not_in_force": ["user_namespace"]}
    doc = {"results": {"humaneval": {"candidate": {"info": {"sandbox": sb}}, "baseline": {"info": {"sandbox": sb}}},
                       "mbpp": {"candidate": {"info": {"sandbox": sb}}},
                       "heads": {"candidate": {"info": {}}}}}
    assert sandbox_lines(doc) == ["sandbox (humaneval, mbpp): in force: pid_namespace, network_namespace; "
                                  "NOT in force: user_namespace"]
    assert sandbox_lines({"results": {"heads": {"candidate": {"info": {}}}}}) == []


def test_run_side_by_side_table_pairs_the_records_in_memory(tmp_path, capsys, monkeypatch):
    """`mtp-bench run` with a baseline: the p (test) column is McNemar on the records it just made."""
    from dataclasses import dataclass

    from mtp_bench import evaluation
    from mtp_bench.api.registry import register
    from mtp_bench.testing import isolated_registry

    class Right(Evaluator):
        name, version, suites, description = "right", "1.0", ("synthetic",), "which model is 'good'"

        @dataclass
        class Config:
            pass

        def run(self, model, ctx):
            # the good model answers all 12 problems, the other only the first 2: 10 discordant pairs
            good = model.path == "fake://good"
            recs = [{"sample_id": f"p{i}", "correct": good or i < 2} for i in range(12)]
            return EvalOutput(recs, {"accuracy": mean_metric([r["correct"] for r in recs], True)})

    monkeypatch.setattr(evaluation, "load", lambda path, device=None, dtype=None: FakeModel(name=path))
    with isolated_registry():
        register(Right)
        assert main(["run", "--quiet", "--evals", "right", "--model", "good", "--baseline", "bad",
                     "--work-dir", str(tmp_path / "wd")]) == 0
    row = _row(capsys.readouterr().out, "accuracy ↑")
    assert [c.strip() for c in row.split("│")[1:-1]][-2:] == ["+0.8333", "0.0020 M*"]  # 2 * 2**-10
