import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from mtp_bench.api.errors import DataError, UserError
from mtp_bench.api.registry import EvalOutput, Evaluator
from mtp_bench.reporting import provenance, results
from mtp_bench.scoring.metrics import mean_metric, point_metric
from mtp_bench.testing import FakeModel


class Ev(Evaluator):
    name, version, suites, description = "ev", "2.1", ("code",), "test evaluator"

    @dataclass
    class Config:
        ks: tuple[int, ...] = (1, 10)


def _doc(roles=("candidate", "baseline")):
    ev = Ev()
    outputs = {"ev": {r: EvalOutput([{"sample_id": "a", "score": 1}], {"acc": mean_metric([1, 0, 1], True),
                                                                      "tps": point_metric(12.5, 3, True)},
                                    {"isolation": "none"}) for r in roles}}
    models = {r: results.model_info(FakeModel(name=r)) for r in roles}
    prov = provenance.collect(seed=3, device="cpu", argv=["run", "--suite", "code"], start_time=provenance.utc_now(),
                              duration_s=1.5)
    return results.build_result(suite="code", evaluators=[ev], models=models, outputs=outputs, provenance=prov,
                                samples_file="x.samples.jsonl"), ev, outputs


def test_out_path_must_be_json_and_samples_go_beside_it(tmp_path):
    out, samples = results.check_output_path(tmp_path / "new" / "dir" / "r.json")
    assert out.parent.is_dir() and samples == tmp_path / "new" / "dir" / "r.samples.jsonl"
    with pytest.raises(UserError, match=r"\.json"):
        results.check_output_path(tmp_path / "r.txt")
    with pytest.raises(UserError, match="is a directory"):
        (tmp_path / "d.json").mkdir()
        results.check_output_path(tmp_path / "d.json")


def test_unwritable_output_dir_is_a_user_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(UserError, match="cannot create the output directory"):
        results.check_output_path(blocker / "r.json")
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root writes anywhere: make the write probe fail as a read-only mount would
        def denied(*a, **k):
            raise PermissionError(13, "Permission denied")

        from mtp_bench.api import files

        monkeypatch.setattr(files.tempfile, "mkstemp", denied)
    with pytest.raises(UserError, match="not writable: Permission denied"):
        results.check_output_path(ro / "r.json")
    monkeypatch.undo()
    assert not list(tmp_path.rglob(".mtp-bench-probe-*"))  # the write probe cleans up after itself


def test_atomic_write_leaves_old_file_and_no_temp_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "r.json"
    results.atomic_write_json(p, {"v": 1})

    def boom(src, dst):
        raise KeyboardInterrupt  # Ctrl-C at the worst moment

    from mtp_bench.api import atomic

    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        results.atomic_write_json(p, {"v": 2})
    assert json.loads(p.read_text()) == {"v": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["r.json"]


def test_result_roundtrip_has_the_documented_schema(tmp_path):
    doc, ev, outputs = _doc()
    p = tmp_path / "r.json"
    results.atomic_write_json(p, doc)
    back = results.load_result(p)
    assert back == json.loads(json.dumps(doc))
    assert back["schema_version"] == 1 and back["suite"] == "code" and back["evals"] == ["ev"]
    cand = back["models"]["candidate"]
    assert set(cand) == {"path", "format", "weights_sha256", "n_future", "num_params", "config"}
    assert cand["weights_sha256"] == FakeModel(name="candidate").weights_sha256
    block = back["results"]["ev"]["baseline"]
    assert block["version"] == "2.1" and block["config"] == {"ks": [1, 10]} and block["info"] == {"isolation": "none"}
    assert block["metrics"]["acc"]["ci95"][0] < 2 / 3 < block["metrics"]["acc"]["ci95"][1]
    assert block["metrics"]["tps"] == {"value": 12.5, "stderr": None, "ci95": None, "n": 3, "higher_is_better": True}
    assert results.metrics(back, "ev", "candidate")["acc"] == mean_metric([1, 0, 1], True)
    prov = back["provenance"]
    for key in ("mtp_bench_version", "git_commit", "python", "torch", "transformers", "platform", "device",
                "torch_threads", "seed", "command", "start_time", "duration_s"):
        assert key in prov, key
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", prov["start_time"])
    assert prov["seed"] == 3 and prov["command"] == "mtp-bench run --suite code"
    rows = list(results.sample_rows([ev], outputs))
    assert rows[0] == {"evaluator": "ev", "evaluator_version": "2.1", "role": "candidate", "sample_id": "a", "score": 1}
    assert [r["role"] for r in rows] == ["candidate", "baseline"]


def test_git_commit_is_the_checkout_head():
    root = Path(results.__file__).resolve().parents[2]
    head = (root / ".git" / "HEAD").read_text().strip() if (root / ".git" / "HEAD").is_file() else None
    if head is None:
        assert provenance.git_commit() is None
        return
    if head.startswith("ref: "):
        ref = head[5:]
        ref_file = root / ".git" / ref
        if ref_file.exists():
            expected = ref_file.read_text().strip()
        else:  # packed refs
            packed = (root / ".git" / "packed-refs").read_text().splitlines()
            expected = next(line.split()[0] for line in packed if line.endswith(" " + ref))
    else:
        expected = head
    assert provenance.git_commit() == expected
    assert provenance.git_commit(Path("/")) is None


@pytest.mark.parametrize("content, match", [
    (None, "no result file"),
    ("{not json", "not valid JSON"),
    ("[]", "not an mtp-bench result file"),
    ('{"schema_version": 99}', "schema_version is 99"),
])
def test_malformed_result_files_are_one_line_data_errors(tmp_path, content, match):
    p = tmp_path / "r.json"
    if content is not None:
        p.write_text(content)
    with pytest.raises(DataError, match=match) as e:
        results.load_result(p)
    assert "\n" not in str(e.value)


def test_broken_metric_in_result_file_is_rejected(tmp_path):
    doc, _, _ = _doc()
    del doc["results"]["ev"]["candidate"]["metrics"]["acc"]["stderr"]
    p = tmp_path / "r.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="metric needs exactly the keys"):
        results.load_result(p)


def test_check_output_catches_contract_violations():
    ev = Ev()
    ok = EvalOutput([{"sample_id": "a"}], {"m": point_metric(1, 1, True)})
    results.check_output(ev, ok)
    bad = [
        (EvalOutput([{"id": "a"}], ok.metrics), "sample_id"),
        (EvalOutput([{"sample_id": "a", "role": "x"}], ok.metrics), "reserved"),
        (EvalOutput([], {"m": 0.5}), "expected Metric"),
        (EvalOutput([{"sample_id": "a", "x": float("nan")}], ok.metrics), "strict JSON"),
        (EvalOutput([], ok.metrics, {"obj": object()}), "strict JSON"),
        ({"records": []}, "expected EvalOutput"),
    ]
    for out, match in bad:
        with pytest.raises(TypeError, match=match):
            results.check_output(ev, out)
