"""Optional packages (issue 20): `datasets` (the `hub` extra) and `vllm` are never needed for local
data, and their absence is one line, never a traceback. Each package is made unimportable by
putting None in sys.modules (what `import` then refuses with ModuleNotFoundError)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mtp_bench.api.errors import DataError
from mtp_bench.cli import OPTIONAL_PACKAGES

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "reference_model" / "checkpoints" / "mtp4-code"


def _data_dir() -> Path:
    d = Path(os.environ.get("MTP_BENCH_TEST_DATA") or ROOT.parent / "shared" / "data")
    if not d.is_dir():
        pytest.skip(f"benchmark data not found at {d}")
    return d


@pytest.fixture
def no_optional(monkeypatch):
    """Every optional package unimportable, and the hub libraries online (so a loader without a
    local file goes for the hub, and has to find `datasets` missing)."""
    for name in OPTIONAL_PACKAGES:
        monkeypatch.setitem(sys.modules, name, None)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


def _loaders(tmp_path):
    from mtp_bench.evals import gsm8k, induction, mbpp, summarization

    return {
        "mbpp": lambda: mbpp.load_all(tmp_path, "full"),
        "mbpp sanitized": lambda: mbpp.load_all(tmp_path, "sanitized"),
        "gsm8k": lambda: gsm8k.load_split(tmp_path, "test"),
        "summarization": lambda: summarization.load_split("xsum", tmp_path),
        "induction": lambda: induction.resolve_source("", tmp_path),
    }


@pytest.mark.parametrize("name", ["mbpp", "mbpp sanitized", "gsm8k", "summarization", "induction"])
def test_no_local_file_and_no_datasets_is_one_line_naming_the_extra(name, tmp_path, no_optional):
    with pytest.raises(DataError) as e:
        _loaders(tmp_path)[name]()
    msg = str(e.value)
    assert "\n" not in msg and "mtp-bench[hub]" in msg and "--data-dir" in msg


def test_mbpp_reads_local_files_without_datasets(no_optional):
    """Issue 20: `run --suite code --data-dir` crashed in mbpp.load_all without `datasets`."""
    from mtp_bench.evals import mbpp

    data = _data_dir()
    full, sanitized = mbpp.load_all(data, "full"), mbpp.load_all(data, "sanitized")
    assert len(full) == 974 and len(sanitized) == 427
    assert full["11"]["test_list"] and sanitized["11"]["test_setup_code"] == ""


def test_mbpp_local_rows_are_what_datasets_reads(tmp_path):
    """The standard-library reader gives the rows `datasets`' json builder gives (both layouts)."""
    datasets = pytest.importorskip("datasets")
    from mtp_bench.evals import mbpp

    data = _data_dir()
    for variant, name in mbpp.FILES.items():
        ds = datasets.load_dataset("json", data_files=str(data / "mbpp" / name), split="train",
                                   cache_dir=str(tmp_path / "hf"))
        expected = sorted((mbpp._normalise(r, variant) for r in ds), key=lambda p: int(p["task_id"]))
        assert list(mbpp.load_all(data, variant).values()) == expected


def test_mbpp_malformed_local_file_is_one_line(tmp_path):
    from mtp_bench.evals import mbpp

    (tmp_path / "mbpp.jsonl").write_text('{"task_id": 1}\n{not json\n')
    with pytest.raises(DataError, match=r"mbpp.jsonl:2: not valid JSON"):
        mbpp.load_all(tmp_path, "full")


def test_cli_turns_a_missing_optional_package_into_one_line(monkeypatch, capsys):
    import mtp_bench.commands.ls as ls
    from mtp_bench.cli import main

    def needs_datasets(args):
        raise ModuleNotFoundError("No module named 'datasets'", name="datasets")

    monkeypatch.setattr(ls, "main", needs_datasets)
    assert main(["ls"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mtp-bench: error: this needs the Python package datasets, which is not installed: "
                   "pip install 'mtp-bench[hub]'"]


@pytest.mark.slow
def test_every_evaluator_runs_with_every_optional_package_unimportable(tmp_path):
    """Each evaluator but the vLLM ones (which exist to use it), one sample, from local data, with
    `datasets` and `vllm` unimportable: all run, none is skipped, no traceback."""
    from mtp_bench.api.registry import suites

    data = _data_dir()
    names = [name for name in suites()["all"] if "vllm" not in name]
    out = tmp_path / "r.json"
    script = (f"import sys\nfor m in {sorted(OPTIONAL_PACKAGES)!r}: sys.modules[m] = None\n"
              "from mtp_bench.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    small = [f"--config={n}.max_new_tokens=8" for n in ("gsm8k", "summarization", "humaneval", "mbpp", "specdec")]
    proc = subprocess.run([sys.executable, "-c", script, "run", "--evals", ",".join(names), "--model", str(MODEL),
                           "--limit", "1", "--data-dir", str(data), "--out", str(out), "--work-dir",
                           str(tmp_path / "work"), "--quiet", "--threads", "1", *small],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    doc = json.loads(out.read_text())
    assert doc["skipped"] == {} and sorted(doc["evaluators"]) == names


@pytest.mark.slow
def test_a_vllm_evaluator_without_vllm_is_one_line(tmp_path):
    script = "import sys\nsys.modules['vllm'] = None\nfrom mtp_bench.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    proc = subprocess.run([sys.executable, "-c", script, "run", "--evals", "specdec_vllm", "--model", str(MODEL),
                           "--limit", "1", "--work-dir", str(tmp_path), "--out", str(tmp_path / "r.json"), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.startswith("mtp-bench: error:")]) == 1
