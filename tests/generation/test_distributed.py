"""Data-parallel evaluation under torchrun (mtp_bench.distributed): two CPU ranks with gloo, a
tiny real model, HumanEval with sampling, against a single-process run of the same command."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mtp_bench.api.errors import ConfigError
from mtp_bench.cli import main
from mtp_bench.generation.cache import GENERATIONS_FILE, JsonlCache, open_run_cache
from mtp_bench.generation.distributed import rank_device, shard_of
from mtp_bench.reporting import results

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 6  # HumanEval/0..5: sha256 puts 3 on each of 2 ranks (the tests check that both have work)
N = 2  # samples per problem, at T=0.8: per-sample seeds must survive the split
ARGS = ["--evals", "humaneval", "--limit", str(LIMIT), "--device", "cpu", "--seed", "3",
        "--config", "humaneval.temperatures=0.8", "--config", f"humaneval.n={N}", "--config", "humaneval.k=1",
        "--config", "humaneval.max_new_tokens=12", "--config", "humaneval.batch_size=2"]

# The killed run: rank 1 SIGKILLs itself when it starts its second batch, after the first is in its cache.
KILL_SCRIPT = """
import os, signal, sys
import mtp_bench.generation.engine as G
real, calls = G.generate, [0]
def generate(*a, **k):
    calls[0] += 1
    if os.environ["RANK"] == "1" and calls[0] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*a, **k)
G.generate = generate
from mtp_bench.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny random-init native checkpoints (candidate n_future=2, baseline n_future=1)."""
    import torch

    from mtp_bench.reference_model import checkpoint, model, tokenizer

    root = tmp_path_factory.mktemp("ckpt")
    tok = tokenizer.byte_tokenizer()
    paths = []
    for n_future in (2, 1):
        torch.manual_seed(n_future)
        cfg = model.ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=2, multiple_of=16,
                                max_seq_len=128, n_future=n_future)
        paths.append(str(checkpoint.save_checkpoint(root / f"nf{n_future}", model.Transformer(cfg), tok, {})))
    return paths


@pytest.fixture(scope="module")
def reference(models, tmp_path_factory):
    """The single-process run: its result and samples are what every multi-rank run must equal."""
    d = tmp_path_factory.mktemp("single")
    argv = ["run", "--quiet", *ARGS, "--model", models[0], "--baseline", models[1],
            "--out", str(d / "r.json"), "--work-dir", str(d / "wd")]
    assert main(argv) == 0
    return d / "r.json"


def torchrun(script_or_module, argv, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           *script_or_module, "run", "--quiet", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def same_as_reference(out: Path, reference: Path) -> dict:
    doc, ref = results.load_result(out), results.load_result(reference)
    assert results.metric_values(doc) == results.metric_values(ref)
    assert doc["results"] == ref["results"]  # configs, info, n_records: all of it
    assert results.samples_path(out).read_text() == results.samples_path(reference).read_text()
    return doc


def rank_of_requests(world_size):
    per_rank = [0] * world_size
    for i in range(LIMIT):
        per_rank[shard_of(f"HumanEval/{i}", world_size)] += N
    return per_rank


@pytest.mark.slow
def test_two_gloo_ranks_give_the_single_process_result(models, reference, tmp_path):
    per_rank = rank_of_requests(2)
    assert min(per_rank) >= 2  # both ranks have work, or the test proves nothing
    argv = [*ARGS, "--model", models[0], "--baseline", models[1], "--out", str(tmp_path / "r.json"),
            "--work-dir", str(tmp_path / "wd")]
    proc = torchrun(["-m", "mtp_bench"], argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = same_as_reference(tmp_path / "r.json", reference)
    prov = doc["provenance"]
    assert prov["world_size"] == 2 and len(prov["devices"]) == 2
    assert all(d.startswith("cpu (") for d in prov["devices"])
    # every rank generated its own shard (candidate and baseline), and cached it in its own file
    assert prov["distributed"]["generated_per_rank"] == [2 * n for n in per_rank]
    lines = [len(JsonlCache(tmp_path / "wd" / f)) for f in (GENERATIONS_FILE, "generations.rank1.jsonl")]
    assert lines == [2 * n for n in per_rank]
    from mtp_bench.evals.humaneval import VERSION

    assert proc.stdout.count(f"humaneval v{VERSION}") == 1  # one report, from rank 0


@pytest.mark.slow
def test_a_killed_rank_resumes_with_two_ranks_then_with_one(models, reference, tmp_path):
    per_rank = rank_of_requests(2)
    assert per_rank[1] >= 4  # rank 1 has a second batch to be killed in
    (tmp_path / "kill.py").write_text(KILL_SCRIPT)
    wd = tmp_path / "wd"
    argv = [*ARGS, "--model", models[0], "--baseline", models[1], "--out", str(tmp_path / "r.json"),
            "--work-dir", str(wd)]
    proc = torchrun([str(tmp_path / "kill.py")], argv)
    assert proc.returncode != 0
    assert "Signals.SIGKILL" in proc.stderr or "SIGKILL" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "r.samples.jsonl").exists()
    done = len(open_run_cache(wd))
    assert len(JsonlCache(wd / "generations.rank1.jsonl")) == 2  # rank 1's first batch survived it
    total = 2 * LIMIT * N  # both roles
    assert 2 <= done < total
    # resumed with two ranks: only what is missing is generated, and the result is the single run's
    proc = torchrun(["-m", "mtp_bench"], argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    gc = same_as_reference(tmp_path / "r.json", reference)["provenance"]["generation_cache"]
    assert (gc["cache_hits"], gc["generated"]) == (done, total - done)
    # and once more as a single process: every rank's file is read, nothing is generated
    assert main(["run", "--quiet", *argv]) == 0
    gc = same_as_reference(tmp_path / "r.json", reference)["provenance"]["generation_cache"]
    assert (gc["cache_hits"], gc["generated"]) == (total, 0)


def test_shard_depends_on_the_sample_id_only():
    ids = [f"HumanEval/{i}" for i in range(164)]
    for n in (1, 2, 3, 8):
        ranks = [shard_of(s, n) for s in ids]
        assert ranks == [shard_of(s, n) for s in reversed(ids)][::-1]
        assert set(ranks) == set(range(n))  # every rank gets work on 164 problems
    assert all(shard_of(s, 1) == 0 for s in ids)


def test_rank_zero_reads_every_ranks_cache_and_writes_its_own(tmp_path):
    open_run_cache(tmp_path, rank=1).put("a", {"text": "from rank 1"})
    open_run_cache(tmp_path, rank=3).put("b", {"text": "from rank 3"})
    lead = open_run_cache(tmp_path)
    assert lead.get("a") == {"text": "from rank 1"} and lead.get("b") == {"text": "from rank 3"}
    lead.put("c", {"text": "from rank 0"})
    assert len(JsonlCache(tmp_path / GENERATIONS_FILE)) == 1  # the other files are read, never written
    assert len(JsonlCache(tmp_path / "generations.rank1.jsonl")) == 1
    assert open_run_cache(tmp_path, rank=1).get("b") is None  # workers read only their own


def test_device_per_rank():
    assert str(rank_device("cpu", 3)) == "cpu"
    with pytest.raises(ConfigError, match="give --device cuda, not cuda:1"):
        rank_device("cuda:1", 0)
    with pytest.raises(ConfigError, match="not supported under torchrun"):
        rank_device("meta", 0)


def test_single_process_provenance_says_world_size_one(reference):
    prov = json.loads(reference.read_text())["provenance"]
    assert prov["world_size"] == 1 and len(prov["devices"]) == 1 and "distributed" not in prov


def test_doctests_run():
    import doctest

    from mtp_bench.generation import distributed

    failures, tried = doctest.testmod(distributed)
    assert failures == 0 and tried > 0
