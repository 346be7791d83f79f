"""`mtp-bench compare`: columns per result file, paired tests on shared samples, Holm, fallbacks."""

import json
import shutil
from dataclasses import dataclass

import pytest

from mtp_bench.api.registry import EvalOutput, Evaluator
from mtp_bench.cli import main
from mtp_bench.reporting import pairing
from mtp_bench.reporting.results import atomic_write_json, atomic_write_jsonl, build_result, sample_rows
from mtp_bench.scoring import stats
from mtp_bench.scoring.metrics import mean_metric


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _row(table, evaluator, metric):
    return next(r for r in table["rows"] if r["evaluator"] == evaluator and r["metric"] == metric)


def _samples(path, evaluator, role="candidate"):
    rows = [json.loads(line) for line in path.with_name(path.name[:-5] + ".samples.jsonl").read_text().splitlines()]
    return [r for r in rows if r["evaluator"] == evaluator and r["role"] == role]


def test_three_shipped_results_print_the_table_with_p_values(shipped_results, capsys):
    files = [str(shipped_results[n]) for n in ("ntp-code", "mtp4-code", "mtp8-bytes")]
    assert main(["compare", *files]) == 0
    out = capsys.readouterr().out
    assert "ntp-code (ref)" in out and "Δ mtp4-code" in out and "Δ mtp8-bytes" in out
    assert "B = paired bootstrap (10000 resamples, seed 0)" in out
    assert "after Holm's correction" in out
    line = next(x for x in out.splitlines() if "head1_loss" in x)
    assert " B p" in line  # mtp4-code vs ntp-code: same tokenizer, same windows: paired

    table = _json(capsys, ["compare", *files, "--json"])
    assert [c["label"] for c in table["columns"]] == ["ntp-code", "mtp4-code", "mtp8-bytes"]
    loss = _row(table, "heads", "head1_loss")
    assert loss["comparisons"][0] is None  # the reference
    assert loss["comparisons"][1]["test"]["method"] == "bootstrap"
    # the byte-level model's windows are other text: paired by sample id they would not be the same samples
    assert loss["comparisons"][2]["test"]["method"] == "unpaired"
    assert "n_bytes_scored" in loss["comparisons"][2]["test"]["note"]
    assert _row(table, "humaneval", "pass@1")["comparisons"][1]["test"]["method"] == "mcnemar"
    assert _row(table, "specdec", "tau")["comparisons"][1]["test"]["method"] == "bootstrap"
    assert _row(table, "specdec", "degenerate_fraction")["comparisons"][1]["test"]["method"] == "mcnemar"
    # a metric only some columns have is shown but not compared
    assert _row(table, "heads", "head4_loss")["comparisons"] == [None, None, None]


def test_paired_test_is_the_bootstrap_of_the_per_sample_values(shipped_results, capsys):
    a, b = shipped_results["mtp4-code"], shipped_results["ntp-code"]
    table = _json(capsys, ["compare", str(a), str(b), "--json"])
    comp = _row(table, "heads", "head1_loss")["comparisons"][1]
    ra = {r["sample_id"]: r["loss"][0] for r in _samples(b, "heads")}  # column: ntp-code
    rb = {r["sample_id"]: r["loss"][0] for r in _samples(a, "heads")}  # reference: mtp4-code
    ids = sorted(ra)
    direct = stats.paired_bootstrap([ra[i] for i in ids], [1] * len(ids), [rb[i] for i in ids], [1] * len(ids))
    assert comp["test"]["p"] == direct.p and comp["test"]["ci95"] == list(direct.ci95)
    assert comp["delta"] == pytest.approx(sum(ra.values()) / len(ra) - sum(rb.values()) / len(rb))
    assert comp["better"] is True  # lower loss
    # tau is a ratio of totals over prompts: the bootstrap resamples prompts and recomputes the ratio
    tau = _row(table, "specdec", "tau")["comparisons"][1]
    steps = {r["sample_id"]: r["accepted_lengths"][1:] for r in _samples(b, "specdec")}
    steps_ref = {r["sample_id"]: r["accepted_lengths"][1:] for r in _samples(a, "specdec")}
    ids = sorted(steps)
    direct = stats.paired_bootstrap([sum(steps[i]) for i in ids], [len(steps[i]) for i in ids],
                                    [sum(steps_ref[i]) for i in ids], [len(steps_ref[i]) for i in ids])
    assert tau["test"]["p"] == direct.p and tau["delta"] == pytest.approx(direct.diff)


def test_per_sample_values_reproduce_every_metric_they_are_used_for(shipped_results):
    from mtp_bench.reporting.results import load_result

    path = shipped_results["mtp4-code"]
    doc = load_result(path)
    samples, why = pairing.load_samples(path, doc)
    assert why is None
    found, missing = {}, []
    for ev in doc["evals"]:
        block = doc["results"][ev]["candidate"]
        for name in block["metrics"]:
            u = pairing.sample_units(name, block, samples[(ev, "candidate")])
            (found.__setitem__(f"{ev}.{name}", u) if u else missing.append(f"{ev}.{name}"))
    # lossless_fraction's per-prompt verdict is not in the records (and the constant `degenerate`
    # field, all 1 like it, must not be taken for it); verify_cost and draft_cost are ratios of
    # per-batch times
    assert sorted(missing) == ["specdec.draft_cost", "specdec.lossless_fraction", "specdec.verify_cost"]
    assert found["heads.head3_top1"].rule == "top1[2]" and not found["heads.head3_top1"].binary
    assert found["humaneval.pass@1"].binary and found["specdec.alpha_cond_3"].rule == "ratio rule alpha_cond_3"
    assert found["specdec.mean_acceptance_length"].rule == "ratio rule mean_acceptance_length"
    assert found["specdec.draft_acceptance_rate"].rule == "ratio rule draft_acceptance_rate"
    assert found["heads.alpha_proxy_3"].rule == "ratio rule alpha_proxy_3"


@pytest.mark.slow
def test_samples_not_shared_fall_back_to_unpaired_and_say_so(shipped_results, tmp_path, capsys):
    ckpts = shipped_results["ntp-code"].parent
    short = tmp_path / "short.json"
    assert main(["run", "--quiet", "--evals", "heads", "--limit", "4", "--model",
                 str(pairing.Path(__file__).resolve().parents[2] / "reference_model" / "checkpoints" / "ntp-code"),
                 "--config", "heads.n_windows=8", "--work-dir", str(ckpts / "work"), "--out", str(short)]) == 0
    capsys.readouterr()
    assert main(["compare", str(shipped_results["ntp-code"]), str(short)]) == 0
    out = capsys.readouterr().out
    assert "U p=" in next(x for x in out.splitlines() if "head1_loss" in x)
    assert "unpaired (short vs ntp-code): heads head1_loss, head1_top1, head1_bits_per_byte, tau_proxy: samples not shared " \
           "(4 vs 6 sample ids, 4 in common)" in " ".join(out.split())


def test_no_samples_file_is_unpaired_not_an_error(shipped_results, tmp_path, capsys):
    lone = tmp_path / "lone.json"
    shutil.copy(shipped_results["mtp4-code"], lone)  # without its samples file
    table = _json(capsys, ["compare", str(shipped_results["ntp-code"]), str(lone), "--json"])
    comp = _row(table, "heads", "head1_loss")["comparisons"][1]
    assert comp["test"]["method"] == "unpaired" and "no samples file mtp4-code.samples.jsonl beside lone.json" in comp["test"]["note"]


def test_holm_marks_match_the_adjusted_p_values(shipped_results, capsys):
    files = [str(shipped_results[n]) for n in ("ntp-code", "mtp4-code", "mtp8-bytes")]
    table = _json(capsys, ["compare", *files, "--json"])
    comps = [c for r in table["rows"] for c in r["comparisons"] if c]
    ps = [c["test"]["p"] for c in comps]
    assert table["n_tests"] == sum(p is not None for p in ps)
    assert [c["p_holm"] for c in comps] == stats.holm(ps)
    assert [c["significant"] for c in comps] == [p is not None and p < 0.05 for p in stats.holm(ps)]


def test_reference_by_label_or_number(shipped_results, capsys):
    files = [str(shipped_results[n]) for n in ("ntp-code", "mtp4-code")]
    by_label = _json(capsys, ["compare", *files, "--reference", "mtp4-code", "--json"])
    by_number = _json(capsys, ["compare", *files, "--reference", "2", "--json"])
    assert by_label == by_number and by_label["reference"] == 1
    d = _row(by_label, "heads", "head1_loss")["comparisons"][0]["delta"]
    d0 = _row(_json(capsys, ["compare", *files, "--json"]), "heads", "head1_loss")["comparisons"][1]["delta"]
    assert d == pytest.approx(-d0)
    assert main(["compare", *files, "--reference", "nope"]) == 2
    err = capsys.readouterr().err
    assert "columns: ntp-code, mtp4-code" in err and err.count("\n") == 1


def test_mixed_evaluator_versions_mark_the_row_and_compare_the_rest(shipped_results, tmp_path, capsys):
    src = shipped_results["mtp4-code"]
    doc = json.loads(src.read_text())
    doc["results"]["heads"]["candidate"]["version"] = "9.9"
    doc["samples_file"] = "bumped.samples.jsonl"
    rows = [json.loads(x) for x in src.with_name("mtp4-code.samples.jsonl").read_text().splitlines()]
    for r in rows:
        if r["evaluator"] == "heads":
            r["evaluator_version"] = "9.9"
    atomic_write_json(tmp_path / "bumped.json", doc)
    atomic_write_jsonl(tmp_path / "bumped.samples.jsonl", rows)
    assert main(["compare", str(shipped_results["ntp-code"]), str(tmp_path / "bumped.json")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "heads.head1_loss: not compared, evaluator versions differ (ntp-code v1.0, bumped v9.9)" in out
    table = _json(capsys, ["compare", str(shipped_results["ntp-code"]), str(tmp_path / "bumped.json"), "--json"])
    assert _row(table, "heads", "head1_loss")["mixed_versions"] is True
    assert _row(table, "heads", "head1_loss")["comparisons"] == [None, None]
    assert _row(table, "specdec", "tau")["comparisons"][1]["test"]["method"] == "bootstrap"


@pytest.mark.parametrize("damage, message", [
    ("missing", "no result file"),
    ("bad-json-line", "line 2 is not JSON"),
    ("wrong-count", "does not belong to"),
])
def test_bad_files_are_one_line_exit_2(shipped_results, tmp_path, capsys, damage, message):
    src = shipped_results["ntp-code"]
    shutil.copy(src, tmp_path / "x.json")
    lines = src.with_name("ntp-code.samples.jsonl").read_text().splitlines()
    doc = json.loads(src.read_text())
    doc["samples_file"] = "x.samples.jsonl"
    (tmp_path / "x.json").write_text(json.dumps(doc))
    if damage == "bad-json-line":
        lines[1] = lines[1][:20]
    elif damage == "wrong-count":
        lines = lines[:-1]
    (tmp_path / "x.samples.jsonl").write_text("\n".join(lines) + "\n")
    target = tmp_path / ("nope.json" if damage == "missing" else "x.json")
    assert main(["compare", str(src), str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mtp-bench: error:") and message in err and err.count("\n") == 1


def test_include_baselines_adds_a_column_per_baseline(tmp_path, capsys):
    a = _write_toy(tmp_path / "a.json", {"candidate": [1, 1, 0, 1], "baseline": [0, 1, 0, 0]})
    table = _json(capsys, ["compare", a, "--include-baselines", "--json"])
    assert [c["label"] for c in table["columns"]] == ["a", "a/baseline"]
    comp = _row(table, "toy", "exact_match")["comparisons"][1]
    assert comp["test"]["method"] == "mcnemar" and comp["delta"] == pytest.approx(-0.5)
    assert main(["compare", a]) == 2  # one column: nothing to compare
    assert "nothing to compare" in capsys.readouterr().err


# ----------------------------------------------------------------------------- new evaluators

@dataclass
class _NoConfig:
    pass


def _write_toy(path, per_role, make_record=None, metrics=None):
    """A result + samples file of an evaluator that did not exist when compare was written."""
    ev = type("Toy", (Evaluator,), {"name": "toy", "version": "1.0", "suites": ("nl",), "description": "toy",
                                    "Config": _NoConfig})()
    make_record = make_record or (lambda i, v: {"sample_id": f"doc-{i}", "correct": bool(v)})
    metrics = metrics or (lambda vals: {"exact_match": mean_metric(vals, True)})
    outputs = {"toy": {role: EvalOutput([make_record(i, v) for i, v in enumerate(vals)], metrics(vals))
                       for role, vals in per_role.items()}}
    models = {role: {"path": role} for role in per_role}
    doc = build_result(suite="nl", evaluators=[ev], models=models, outputs=outputs, provenance={},
                       samples_file=path.name[:-5] + ".samples.jsonl")
    atomic_write_jsonl(path.with_name(path.name[:-5] + ".samples.jsonl"), sample_rows([ev], outputs))
    atomic_write_json(path, doc)
    return str(path)


def test_a_new_evaluators_pass_fail_field_gets_mcnemar(tmp_path, capsys):
    a = _write_toy(tmp_path / "a.json", {"candidate": [1] * 10 + [0] * 10})
    b = _write_toy(tmp_path / "b.json", {"candidate": [0] * 3 + [1] * 7 + [0] * 10})  # b = 3 discordant, c = 0
    comp = _row(_json(capsys, ["compare", a, b, "--json"]), "toy", "exact_match")["comparisons"][1]
    assert comp["test"]["method"] == "mcnemar" and comp["test"]["p"] == pytest.approx(2 / 8)
    assert comp["delta"] == pytest.approx(-0.15)


def test_a_new_evaluators_nested_continuous_field_gets_the_bootstrap(tmp_path, capsys):
    rec = lambda i, v: {"sample_id": f"doc-{i}", "scores": {"rouge1": v, "rouge2": v / 2}, "n_words": 12}
    met = lambda vals: {"rouge1": mean_metric(vals, True), "rouge2": mean_metric([v / 2 for v in vals], True)}
    a = _write_toy(tmp_path / "a.json", {"candidate": [0.1 * (i % 7) for i in range(30)]}, rec, met)
    b = _write_toy(tmp_path / "b.json", {"candidate": [0.1 * (i % 7) + 0.02 for i in range(30)]}, rec, met)
    table = _json(capsys, ["compare", a, b, "--json"])
    for name, shift in (("rouge1", 0.02), ("rouge2", 0.01)):
        comp = _row(table, "toy", name)["comparisons"][1]
        assert comp["test"]["method"] == "bootstrap" and comp["delta"] == pytest.approx(shift)
        assert comp["test"]["p"] < 0.001 and comp["significant"]  # the same shift on every sample


def test_two_fields_that_both_reproduce_a_metric_are_not_guessed_between(tmp_path, capsys):
    # "x" and "y" have the same mean on every file but different per-sample values: which is the metric?
    rec = lambda i, v: {"sample_id": f"s{i}", "x": v, "y": 1 - v}
    met = lambda vals: {"score": mean_metric(vals, True)}
    a = _write_toy(tmp_path / "a.json", {"candidate": [1, 0] * 5}, rec, met)
    b = _write_toy(tmp_path / "b.json", {"candidate": [1, 1, 0, 0] * 2 + [1, 0]}, rec, met)
    comp = _row(_json(capsys, ["compare", a, b, "--json"]), "toy", "score")["comparisons"][1]
    assert comp["test"]["method"] == "unpaired" and comp["test"]["note"] == "no per-sample values reproduce this metric"


def test_show_baseline_pairs_two_files(shipped_results, capsys):
    a, b = shipped_results["mtp4-code"], shipped_results["ntp-code"]
    comp = _json(capsys, ["show", str(a), "--baseline", str(b), "--json"])
    row = next(r for r in comp["rows"] if r["metric"] == "head1_loss")
    assert row["test"]["method"] == "bootstrap" and row["significant"] in (True, False)
    assert main(["show", str(a), "--baseline", str(b)]) == 0
    assert "p (test)" in capsys.readouterr().out
