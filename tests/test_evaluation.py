"""`mtp_bench.evaluate`: the Python API of a run, the same run `mtp-bench run` makes."""

import json
from dataclasses import dataclass

import pytest

import mtp_bench
from mtp_bench import evaluation
from mtp_bench.api import EvalOutput, Evaluator, GenRequest, register
from mtp_bench.api.errors import ConfigError, UserError
from mtp_bench.cli import main
from mtp_bench.generation import GenerationConfig
from mtp_bench.reporting import results
from mtp_bench.scoring.metrics import mean_metric
from mtp_bench.testing import FakeModel, isolated_registry

ANSWERS = {f"q{i}": (f"Q{i}: {i} + {i} =", f" {2 * i}") for i in range(6)}


class Sums(Evaluator):
    name, version, suites, description = "sums", "1.0", ("synthetic",), "exact match on six sums"

    @dataclass
    class Config:
        max_new_tokens: int = 4
        batch_size: int = 2

    def run(self, model, ctx):
        items = list(ANSWERS.items())[: ctx.limit]
        reqs = [GenRequest(pid, 0, prompt) for pid, (prompt, _) in items]
        gens = ctx.generate(model, reqs, GenerationConfig(max_new_tokens=self.config.max_new_tokens,
                                                          batch_size=self.config.batch_size), self)
        recs = [{"sample_id": r.sample_id, "completion": g.text, "correct": g.text == ANSWERS[r.sample_id][1]}
                for r, g in zip(reqs, gens)]
        return EvalOutput(recs, {"exact_match": mean_metric([r["correct"] for r in recs], True)},
                          {"max_new_tokens": self.config.max_new_tokens})


def fake(name, every=1):
    return FakeModel(responses={p: a for i, (p, a) in enumerate(ANSWERS.values()) if i % every == 0}, name=name)


@pytest.fixture
def sums():
    with isolated_registry():
        register(Sums)
        yield


def test_evaluate_runs_on_model_objects_and_returns_the_result(sums, tmp_path):
    res = mtp_bench.evaluate(fake("good"), ["sums"], baseline=fake("half", every=2), work_dir=tmp_path / "wd")
    assert res.metrics("sums")["exact_match"].value == 1.0
    assert res.metrics("sums", "baseline")["exact_match"].value == 0.5
    assert res.doc["evals"] == ["sums"] and res.doc["suite"] is None and res.doc["samples_file"] is None
    assert res.doc["results"]["sums"]["candidate"]["config"] == {"max_new_tokens": 4, "batch_size": 2}
    assert len(res.samples()[("sums", "candidate")]) == 6
    assert res.stats == {"cache_hits": 0, "generated": 12}


def test_config_as_a_dict_or_as_cli_strings_and_defaults_under_it(sums, tmp_path):
    a = mtp_bench.evaluate(fake("good"), "sums", config={"sums": {"batch_size": 3}}, cache=False,
                           defaults={"sums": {"max_new_tokens": 5, "batch_size": 1}}, work_dir=tmp_path)
    b = mtp_bench.evaluate(fake("good"), "sums", config=["sums.batch_size=3"], cache=False,
                           defaults={"sums": {"max_new_tokens": 5, "batch_size": 1}}, work_dir=tmp_path)
    for r in (a, b):
        assert r.doc["results"]["sums"]["candidate"]["config"] == {"max_new_tokens": 5, "batch_size": 3}
    with pytest.raises(ConfigError, match="sums has no field 'bogus'"):
        mtp_bench.evaluate(fake("good"), "sums", config=["sums.bogus=1"], work_dir=tmp_path)
    with pytest.raises(UserError, match="give evaluators by name or a suite"):
        mtp_bench.evaluate(fake("good"), work_dir=tmp_path)


def test_limit_suite_and_cache_resume(sums, tmp_path):
    first = mtp_bench.evaluate(fake("good"), suite="synthetic", limit=2, work_dir=tmp_path / "wd")
    assert first.doc["suite"] == "synthetic" and first.metrics("sums")["exact_match"].n == 2
    again = mtp_bench.evaluate(fake("good"), suite="synthetic", limit=2, work_dir=tmp_path / "wd")
    assert again.stats == {"cache_hits": 2, "generated": 0}
    assert results.metric_values(again.doc) == results.metric_values(first.doc)


def test_write_gives_the_result_file_and_samples_the_cli_writes(sums, tmp_path, monkeypatch):
    models = {"good": fake("good"), "half": fake("half", every=2)}
    monkeypatch.setattr(evaluation, "load", lambda path, device=None, dtype=None: models[path])
    res = mtp_bench.evaluate("good", ["sums"], baseline="half", work_dir=tmp_path / "api")
    out, samples = res.write(tmp_path / "api.json")
    assert main(["run", "--quiet", "--evals", "sums", "--model", "good", "--baseline", "half",
                 "--work-dir", str(tmp_path / "cli"), "--out", str(tmp_path / "cli.json")]) == 0
    api, cli = results.load_result(out), results.load_result(tmp_path / "cli.json")
    assert api["samples_file"] == "api.samples.jsonl" and samples.is_file()
    for key in ("evals", "evaluators", "models", "results", "skipped"):
        assert api[key] == cli[key], key
    assert samples.read_text() == (tmp_path / "cli.samples.jsonl").read_text()


def test_out_is_written_by_evaluate_itself(sums, tmp_path):
    mtp_bench.evaluate(fake("good"), ["sums"], out=tmp_path / "r.json", work_dir=tmp_path / "wd")
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["samples_file"] == "r.samples.jsonl" and (tmp_path / "r.samples.jsonl").is_file()
