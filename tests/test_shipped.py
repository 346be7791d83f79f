"""The shipped checkpoints and the zero-config run (`mtp-bench run --suite code`, no --model)."""

import json
from pathlib import Path

import pytest

import mtp_bench
from mtp_bench.cli import main
from mtp_bench.commands.run import DEFAULT_BASELINE, DEFAULT_CANDIDATE, default_checkpoints_dir

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = {"ntp-code": 1, "mtp4-code": 4, "mtp8-bytes": 8}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_checkpoint_loads_with_its_provenance(name):
    path = default_checkpoints_dir() / name
    model = mtp_bench.load(path, device="cpu")
    assert model.n_future == SHIPPED[name]
    info = json.loads((path / "training.json").read_text())
    assert info["command"].startswith("mtp-bench train ") and f"--out reference_model/checkpoints/{name}" in info["command"]
    assert info["config"]["n_future"] == SHIPPED[name] and info["corpus"]["sha256"] and info["git_commit"]
    assert len(info["final"]["val"]["loss"]) == SHIPPED[name]


def test_committed_baseline_result_was_made_with_the_shipped_weights():
    doc = json.loads((ROOT / "results" / "code-default.json").read_text())
    for role, name in (("candidate", DEFAULT_CANDIDATE), ("baseline", DEFAULT_BASELINE)):
        model = mtp_bench.load(default_checkpoints_dir() / name, device="cpu")
        assert doc["models"][role]["weights_sha256"] == model.weights_sha256


@pytest.mark.slow
def test_zero_config_code_suite_runs_end_to_end(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "code.json"
    rc = main(["run", "--suite", "code", "--limit", "2", "--data-dir", str(data_dir), "--quiet",
               "--config", "specdec.max_new_tokens=16", "--config", "specdec.peers=false",
               "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["models"]["candidate"]["n_future"] == 4 and doc["models"]["baseline"]["n_future"] == 1
    assert set(doc["evals"]) == {"heads", "humaneval", "mbpp", "humaneval_plus", "mbpp_plus", "specdec"}
    assert not doc["skipped"]
    # no chat template in the shipped models: `auto` keeps the paper's completion protocol
    assert all(doc["results"][e]["candidate"]["info"]["prompt_mode"] == "completion"
               for e in ("humaneval", "mbpp", "humaneval_plus", "mbpp_plus"))
    cand = doc["results"]["specdec"]["candidate"]
    assert cand["metrics"]["lossless_fraction"]["value"] == 1.0 and cand["info"]["k"] == 4
    assert doc["results"]["humaneval"]["candidate"]["config"]["max_new_tokens"] == 128  # the zero-config settings
    assert "head4_top1" in doc["results"]["heads"]["candidate"]["metrics"]
    assert "head2_top1" not in doc["results"]["heads"]["baseline"]["metrics"]
