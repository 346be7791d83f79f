import os
import tempfile
from pathlib import Path

import pytest

# Nothing in the tests reaches the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `mtp-bench run` without --out writes under ./mtp-bench-results: not into the checkout from tests
os.environ.setdefault("MTP_BENCH_RESULTS_DIR", tempfile.mkdtemp(prefix="mtp-bench-results-"))


def pytest_configure(config):
    """transformers binds its log handler to sys.stderr the first time it logs; bind it now, to the
    session's stderr, not to a test's capsys stream that is closed when that test ends (a later
    warning would then print "--- Logging error ---" into whichever test runs next)."""
    from transformers.utils import logging as hf_logging

    hf_logging.get_logger("transformers")

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The read-only benchmark data beside the checkout (../shared/data)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread is fastest and spares the shared cores.
    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def shipped_results(tmp_path_factory) -> dict[str, Path]:
    """Small result files (heads, specdec, humaneval; 6 samples each) of the shipped ntp-code,
    mtp4-code and mtp8-bytes, candidate only, with their samples files; made once per session
    (about 15 s) for the compare, report and gate tests."""
    import torch

    from mtp_bench.cli import main

    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest and spares the shared cores
    out = tmp_path_factory.mktemp("shipped-results")
    ckpts = ROOT / "reference_model" / "checkpoints"
    paths = {}
    for name in ("ntp-code", "mtp4-code", "mtp8-bytes"):
        paths[name] = out / f"{name}.json"
        rc = main(["run", "--quiet", "--evals", "heads,specdec,humaneval", "--limit", "6", "--model", str(ckpts / name),
                   "--config", "specdec.peers=false", "--config", "specdec.max_new_tokens=16",
                   "--config", "heads.n_windows=8", "--config", "humaneval.max_new_tokens=32",
                   "--work-dir", str(out / "work"), "--out", str(paths[name])])
        assert rc == 0
    torch.set_num_threads(saved)
    return paths
