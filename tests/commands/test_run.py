"""`mtp-bench run` / `ls` driven by the deterministic FakeModel and small evaluators defined here.

The subprocess test imports this file as a module (`install()`), so the killed run and the
rerun use exactly the same evaluators and models.
"""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import mtp_bench
from mtp_bench import evaluation
from mtp_bench.api import config, registry
from mtp_bench.api.errors import CheckpointError
from mtp_bench.api.registry import EvalOutput, Evaluator, GenRequest, register
from mtp_bench.cli import main
from mtp_bench.commands import run as runner
from mtp_bench.generation.engine import GenerationConfig
from mtp_bench.reporting import results
from mtp_bench.scoring.metrics import mean_metric, point_metric
from mtp_bench.testing import FakeModel, isolated_registry

ROOT = Path(__file__).resolve().parents[2]
PROBLEMS = {f"q{i}": (f"Q{i}: what is {i} + {i}?\nA:", f" {2 * i}") for i in range(8)}


class QA(Evaluator):
    name = "qa"
    version = "1.0"
    suites = ("synthetic",)
    description = "exact-match answers to 8 sums"
    caption = "exact match of the first line"

    @dataclass
    class Config:
        temperature: float = 0.0
        n: int = 1  # samples per problem
        max_new_tokens: int = 6
        batch_size: int = 2

    def run(self, model, ctx):
        items = list(PROBLEMS.items())[: ctx.limit]
        reqs = [GenRequest(pid, j, prompt) for pid, (prompt, _) in items for j in range(self.config.n)]
        cfg = GenerationConfig(max_new_tokens=self.config.max_new_tokens, temperature=self.config.temperature,
                               batch_size=self.config.batch_size)
        gens = ctx.generate(model, reqs, cfg, self)
        recs = [{"sample_id": r.sample_id, "sample_index": r.sample_index, "prompt": r.prompt, "completion": g.text,
                 "correct": g.text == PROBLEMS[r.sample_id][1]} for r, g in zip(reqs, gens)]
        first = [(g.token_ids[0] if g.token_ids else 0) / 255 for g in gens]  # moves with every sample drawn
        return EvalOutput(recs, {"exact_match": mean_metric([r["correct"] for r in recs], True),
                                 "first_byte": mean_metric(first, True)}, {"limit": ctx.limit})


class Heads(Evaluator):
    name = "nfut"
    version = "0.2"
    suites = ("speed",)
    description = "not generation-based: reports n_future"

    def run(self, model, ctx):
        return EvalOutput([{"sample_id": "model"}], {"n_future": point_metric(model.n_future, 1, True)})


class Interrupt(Evaluator):
    name = "interrupt"
    version = "1.0"
    suites = ("speed",)
    description = "Ctrl-C in the middle of a run"

    def run(self, model, ctx):
        raise KeyboardInterrupt


def load(path, device=None, dtype=None):
    """"good" answers everything, "half" the odd problems; anything else is not a model."""
    if path not in ("good", "half"):
        raise CheckpointError(f"{path}: not a model (looked for config.json, params.json)")
    responses = {p: a for pid, (p, a) in PROBLEMS.items() if path == "good" or int(pid[1:]) % 2}
    return FakeModel(responses=responses, name=path, sharpness=4.0, n_future=4 if path == "good" else 1,
                     delay_s=float(os.environ.get("MTPB_TEST_DELAY", "0")))


EVALUATORS = (QA, Heads, Interrupt)


def install():
    """For the subprocess of the kill test: only these evaluators, and the fake loader."""
    registry.REGISTRY.clear()
    registry._plugins_loaded = True
    for cls in EVALUATORS:
        register(cls)
    evaluation.load = load


@pytest.fixture
def env(monkeypatch):
    calls = []

    def counting_load(path, device=None, dtype=None):
        calls.append(path)
        return load(path, device, dtype)

    with isolated_registry():
        for cls in EVALUATORS:
            register(cls)
        monkeypatch.setattr(evaluation, "load", counting_load)
        yield calls


def run(tmp_path, *extra, out="r.json", work="wd"):
    argv = ["run", "--quiet", "--work-dir", str(tmp_path / work), *extra]
    if out:
        argv += ["--out", str(tmp_path / out)]
    return main(argv)


def test_run_writes_result_and_samples(env, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")  # rich wraps cells to the terminal width
    assert run(tmp_path, "--evals", "qa,nfut", "--model", "good", "--baseline", "half") == 0
    doc = results.load_result(tmp_path / "r.json")
    assert doc["evals"] == ["qa", "nfut"] and doc["suite"] is None
    qa = doc["results"]["qa"]
    assert qa["candidate"]["metrics"]["exact_match"]["value"] == 1.0
    assert qa["baseline"]["metrics"]["exact_match"]["value"] == 0.5  # the odd problems
    assert qa["candidate"]["metrics"]["exact_match"]["n"] == 8
    assert qa["candidate"]["config"] == {"temperature": 0.0, "n": 1, "max_new_tokens": 6, "batch_size": 2}
    assert doc["results"]["nfut"]["candidate"]["metrics"]["n_future"]["value"] == 4
    assert doc["models"]["candidate"]["n_future"] == 4 and doc["models"]["baseline"]["path"] == "fake://half"
    assert doc["samples_file"] == "r.samples.jsonl"
    rows = [json.loads(line) for line in (tmp_path / "r.samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 8 + 2
    q5 = next(r for r in rows if r["role"] == "candidate" and r["sample_id"] == "q5")
    assert q5 == {"evaluator": "qa", "evaluator_version": "1.0", "role": "candidate", "sample_id": "q5",
                  "sample_index": 0, "prompt": PROBLEMS["q5"][0], "completion": " 10", "correct": True}
    assert doc["provenance"]["generation_cache"]["generated"] == 16
    out = capsys.readouterr().out
    assert "qa v1.0" in out and "exact_match ↑" in out and "suite: synthetic" in out and "suite: speed" in out


def test_limit_and_typed_config_overrides(env, tmp_path):
    assert run(tmp_path, "--evals", "qa", "--model", "good", "--limit", "3", "--config", "qa.n=2",
               "--config", "qa.temperature=0.5") == 0
    doc = results.load_result(tmp_path / "r.json")
    block = doc["results"]["qa"]["candidate"]
    assert block["config"]["n"] == 2 and block["config"]["temperature"] == 0.5
    assert block["n_records"] == 6 and block["info"] == {"limit": 3}
    assert "baseline" not in doc["models"]  # --model without --baseline: no baseline


def test_same_command_twice_gives_identical_metrics(env, tmp_path):
    args = ["--evals", "qa", "--model", "good", "--baseline", "half", "--config", "qa.temperature=3", "--no-cache"]
    assert run(tmp_path, *args, out="a.json", work="wa") == 0
    assert run(tmp_path, *args, out="b.json", work="wb") == 0
    assert run(tmp_path, *args, "--seed", "1", out="c.json", work="wc") == 0
    a, b, c = (results.metric_values(results.load_result(tmp_path / f"{x}.json")) for x in "abc")
    assert a == b
    assert a != c  # sampled: another seed draws other samples, so the test can fail
    assert not (tmp_path / "wa" / "generations.jsonl").exists()  # --no-cache writes nothing


def test_rerun_is_served_from_the_cache(env, tmp_path):
    args = ["--evals", "qa", "--model", "good", "--config", "qa.temperature=3"]
    assert run(tmp_path, *args) == 0
    first = results.load_result(tmp_path / "r.json")
    assert run(tmp_path, *args) == 0
    second = results.load_result(tmp_path / "r.json")
    assert second["provenance"]["generation_cache"]["cache_hits"] == 8
    assert second["provenance"]["generation_cache"]["generated"] == 0
    assert results.metric_values(first) == results.metric_values(second)


def _cache_lines(path):
    return [line for line in path.read_bytes().split(b"\n") if line.strip()] if path.exists() else []


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_does_only_missing_work(env, tmp_path):
    args = ["--evals", "qa,nfut", "--model", "good", "--baseline", "half", "--config", "qa.temperature=3"]
    # reference: one uninterrupted run without cache
    assert run(tmp_path, *args, "--no-cache", out="ref.json", work="ref") == 0
    ref = results.metric_values(results.load_result(tmp_path / "ref.json"))
    # the same command in a subprocess with a slow model, SIGKILLed once some batches are cached
    script = (f"import sys; sys.path.insert(0, {str(ROOT / 'tests' / 'commands')!r}); import test_run; test_run.install(); "
              "from mtp_bench.cli import main; raise SystemExit(main(sys.argv[1:]))")
    cache = tmp_path / "wd" / "generations.jsonl"
    argv = ["run", "--quiet", "--work-dir", str(tmp_path / "wd"), "--out", str(tmp_path / "r.json"), *args]
    proc = subprocess.Popen([sys.executable, "-c", script, *argv], env={**os.environ, "MTPB_TEST_DELAY": "0.08"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(_cache_lines(cache)) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    done = len(_cache_lines(cache))
    assert 4 <= done < 16  # killed mid-run
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "r.samples.jsonl").exists()
    with open(cache, "ab") as f:  # and as if the kill had landed in the middle of a write
        f.write(b'{"key": "0123", "value": {"text": "tor')
    # started again: only the missing generations run, and the result is the reference's
    assert run(tmp_path, *args) == 0
    doc = results.load_result(tmp_path / "r.json")
    gc = doc["provenance"]["generation_cache"]
    assert (gc["cache_hits"], gc["generated"]) == (done, 16 - done)
    assert results.metric_values(doc) == ref
    assert len(_cache_lines(cache)) == 16 + 1  # every generation once, plus the torn line


@pytest.mark.parametrize("extra, message", [
    (["--suite", "nope"], "unknown suite 'nope'; known suites: synthetic, speed, all"),
    (["--evals", "qa,nope"], "unknown evaluator 'nope'; known evaluators: interrupt, nfut, qa"),
    (["--evals", "qa", "--config", "qa.bogus=1"], "qa has no field 'bogus'; valid fields: temperature, n, "
                                                  "max_new_tokens, batch_size"),
    (["--evals", "qa", "--config", "qa.n=two"], "'two' is not an integer"),
    (["--evals", "qa", "--config", "nfut.x=1"], "'nfut' is not in this run"),
    (["--evals", "qa", "--config", "qa.n"], "expects EVALUATOR.FIELD=VALUE"),
    (["--evals", "qa", "--limit", "0"], "--limit must be >= 1"),
    (["--model", "good"], "give --suite NAME or --evals A,B; known suites: synthetic, speed, all"),
    (["--evals", "qa", "--data-dir", "/no/such/dir"], "--data-dir '/no/such/dir' is not a directory"),
])
def test_bad_input_is_one_line_and_exit_2_before_any_work(env, tmp_path, capsys, extra, message):
    argv = [*extra] + ([] if "--model" in extra else ["--model", "good"])
    assert run(tmp_path, *argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert env == []  # no model was loaded
    assert not (tmp_path / "r.json").exists()


def test_unwritable_output_fails_before_loading_models(env, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["run", "--quiet", "--evals", "qa", "--model", "good", "--out", str(tmp_path / "file" / "r.json")]) == 2
    assert "cannot create the output directory" in capsys.readouterr().err and env == []


def test_bad_model_path_is_a_checkpoint_error(env, tmp_path, capsys):
    assert run(tmp_path, "--evals", "qa", "--model", "good", "--baseline", "nowhere") == 2
    err = capsys.readouterr().err
    assert err == "mtp-bench: error: nowhere: not a model (looked for config.json, params.json)\n"
    assert not (tmp_path / "r.json").exists()


def test_real_loader_rejects_a_directory_that_is_not_a_model(tmp_path, capsys):
    pytest.importorskip("mtp_bench.models.adapters")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    with isolated_registry():
        register(QA)
        assert run(tmp_path, "--evals", "qa", "--model", str(tmp_path / "notes")) == 2
    err = capsys.readouterr().err
    assert err.startswith("mtp-bench: error:") and err.count("\n") == 1 and "notes" in err


def test_missing_default_checkpoints_say_so(env, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runner, "default_checkpoints_dir", lambda: tmp_path / "checkpoints")
    assert main(["run", "--quiet", "--evals", "qa"]) == 2
    err = capsys.readouterr().err
    assert "shipped default checkpoint mtp4-code is not at" in err and "--model" in err


def test_ctrl_c_leaves_no_result_file(env, tmp_path, capsys):
    assert run(tmp_path, "--evals", "qa,interrupt", "--model", "good") == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wd"]


def test_progress_bars_show_generation(env, tmp_path, capsys):
    assert main(["run", "--evals", "qa", "--model", "good", "--work-dir", str(tmp_path / "wd")]) == 0
    err = capsys.readouterr().err
    assert "qa [candidate]: generate" in err and "8/8" in err and "ETA" in err


def test_ls_lists_evaluators_with_suites_and_versions(env, capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "exact-match answers" in x)
    assert [c.strip() for c in line.split("│")[1:-1]] == ["qa", "synthetic", "1.0", "exact-match answers to 8 sums"]
    assert "speed: interrupt, nfut" in out
    assert main(["ls", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["suites"] == {"synthetic": ["qa"], "speed": ["interrupt", "nfut"], "all": ["interrupt", "nfut", "qa"]}


def test_parse_value_types():
    from typing import Literal

    assert config.parse_value("3", int) == 3 and config.parse_value("yes", bool) is True
    assert config.parse_value("0.2,0.8", tuple[float, ...]) == (0.2, 0.8)
    assert config.parse_value("1,10", list[int]) == [1, 10]
    assert config.parse_value("null", int | None) is None and config.parse_value("4", int | None) == 4
    assert config.parse_value("full", Literal["full", "sanitized"]) == "full"
    with pytest.raises(ValueError, match="not one of full, sanitized"):
        config.parse_value("half", Literal["full", "sanitized"])
    with pytest.raises(ValueError, match="not a boolean"):
        config.parse_value("maybe", bool)


def test_default_work_dir_is_keyed_by_out_path(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    a = evaluation.resolve_work_dir(None, tmp_path / "results" / "a.json", {})
    assert a == evaluation.resolve_work_dir(None, tmp_path / "results" / "a.json", {"other": 1})
    assert a != evaluation.resolve_work_dir(None, tmp_path / "results" / "b.json", {})
    assert a.parent == tmp_path / "xdg" / "mtp-bench" / "runs" and a.is_dir()


def test_end_to_end_with_a_tiny_real_model(tmp_path, monkeypatch):
    """Real checkpoints on disk, the real loader and generation engine, the `mtp-bench run` CLI."""
    torch = pytest.importorskip("torch")
    checkpoint = pytest.importorskip("mtp_bench.reference_model.checkpoint")
    model_mod = pytest.importorskip("mtp_bench.reference_model.model")
    tok_mod = pytest.importorskip("mtp_bench.reference_model.tokenizer")
    from mtp_bench.generation.engine import generate

    monkeypatch.setenv("COLUMNS", "160")
    tok = tok_mod.byte_tokenizer()
    paths = {}
    for n_future in (2, 1):
        torch.manual_seed(n_future)
        cfg = model_mod.ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=2, multiple_of=16,
                                    max_seq_len=128, n_future=n_future)
        paths[n_future] = checkpoint.save_checkpoint(tmp_path / f"ckpt{n_future}", model_mod.Transformer(cfg), tok,
                                                     {"note": "random init"})
    with isolated_registry():
        register(QA)
        argv = ["run", "--quiet", "--evals", "qa", "--model", str(paths[2]), "--baseline", str(paths[1]),
                "--config", "qa.max_new_tokens=5", "--limit", "3", "--device", "cpu", "--dtype", "float32"]
        assert main([*argv, "--out", str(tmp_path / "a.json"), "--work-dir", str(tmp_path / "wa")]) == 0
        assert main([*argv, "--out", str(tmp_path / "b.json"), "--work-dir", str(tmp_path / "wb")]) == 0
    a, b = results.load_result(tmp_path / "a.json"), results.load_result(tmp_path / "b.json")
    assert results.metric_values(a) == results.metric_values(b)
    assert a["models"]["candidate"]["n_future"] == 2 and a["models"]["baseline"]["n_future"] == 1
    assert a["models"]["candidate"]["format"] == "native" and len(a["models"]["candidate"]["weights_sha256"]) == 64
    assert a["models"]["candidate"]["num_params"] == a["models"]["baseline"]["num_params"] > 0  # compute matching
    # the completions in the samples file are what the engine gives on the loaded weights
    rows = [json.loads(x) for x in (tmp_path / "a.samples.jsonl").read_text().splitlines()]
    prompts = [p for p, _ in list(PROBLEMS.values())[:3]]
    for role, n_future in (("candidate", 2), ("baseline", 1)):
        expected = [g.text for g in generate(mtp_bench.load(str(paths[n_future]), device="cpu"), prompts,
                                             GenerationConfig(max_new_tokens=5, batch_size=2))]
        assert [r["completion"] for r in rows if r["role"] == role] == expected
    cand = [r for r in rows if r["role"] == "candidate"]
    assert a["results"]["qa"]["candidate"]["metrics"]["exact_match"]["value"] == sum(r["correct"] for r in cand) / 3


class NeedsData(Evaluator):
    name = "needsdata"
    version = "1.0"
    suites = ("synthetic",)
    description = "its dataset is never there"

    def run(self, model, ctx):
        from mtp_bench.api.errors import DataError

        raise DataError("NEEDS not found: looked in /nowhere; provide it with --data-dir")


def test_suite_run_skips_an_evaluator_whose_data_is_missing_and_says_so(env, tmp_path, capsys):
    register(NeedsData)
    assert run(tmp_path, "--suite", "synthetic", "--model", "good", "--baseline", "half") == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["evals"] == ["qa"] and "needsdata" not in doc["results"]
    assert doc["skipped"] == {"needsdata": "NEEDS not found: looked in /nowhere; provide it with --data-dir"}
    assert "not run: needsdata: NEEDS not found" in capsys.readouterr().out
    results.load_result(tmp_path / "r.json")  # still a valid result file


def test_evaluator_named_explicitly_with_missing_data_is_an_error(env, tmp_path, capsys):
    register(NeedsData)
    assert run(tmp_path, "--evals", "qa,needsdata", "--model", "good") == 2
    assert "NEEDS not found" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_zero_config_speed_run_on_a_real_model_decodes_longer(env, tmp_path, monkeypatch):
    monkeypatch.setattr(QA, "suites", ("synthetic", "speed"))
    monkeypatch.setattr(Interrupt, "suites", ("interrupts",))
    monkeypatch.setattr(runner, "speed_model_paths", lambda baseline: ("good", "half"))
    monkeypatch.setattr(runner, "DEFAULT_RUN_CONFIG", {"qa": {"max_new_tokens": 3, "batch_size": 4}})
    monkeypatch.setattr(runner, "REAL_MODEL_SPEED_CONFIG", {"qa": {"max_new_tokens": 5}})
    assert run(tmp_path, "--suite", "speed") == 0
    cfg = json.loads((tmp_path / "r.json").read_text())["results"]["qa"]["candidate"]["config"]
    assert cfg["max_new_tokens"] == 5 and cfg["batch_size"] == 4


def test_zero_config_run_applies_shipped_settings_under_user_config(env, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "resolve_model_paths", lambda model, baseline: ("good", "half"))
    monkeypatch.setattr(runner, "DEFAULT_RUN_CONFIG", {"qa": {"max_new_tokens": 3, "batch_size": 4}})
    assert run(tmp_path, "--suite", "synthetic", "--config", "qa.batch_size=1") == 0
    cfg = json.loads((tmp_path / "r.json").read_text())["results"]["qa"]["candidate"]["config"]
    assert cfg["max_new_tokens"] == 3 and cfg["batch_size"] == 1  # the user's --config wins
    # with an explicit --model the evaluator's own defaults apply
    assert run(tmp_path, "--suite", "synthetic", "--model", "good", out="r2.json", work="wd2") == 0
    cfg = json.loads((tmp_path / "r2.json").read_text())["results"]["qa"]["candidate"]["config"]
    assert cfg["max_new_tokens"] == 6 and cfg["batch_size"] == 2
