"""Every docstring example in the package runs: the doctests of each module of mtp_bench,
mtp_bench.evals and mtp_bench.reference_model (one test per module that has any)."""

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"mtp_bench": ROOT / "mtp_bench", "mtp_bench.evals": ROOT / "evals",
            "mtp_bench.reference_model": ROOT / "reference_model"}
# deprecated aliases warn on import and hold no code of their own
ALIASES = {"registry", "metrics", "results", "vllm_backend", "speculative", "evalplus", "chat", "code_extract", "wire",
           "runner", "repro"}


def _modules() -> list[str]:
    out = []
    for pkg, d in PACKAGES.items():
        for p in sorted(d.rglob("*.py")):
            rel = p.relative_to(d)
            if pkg == "mtp_bench" and (rel.parts[0] in ("evals", "reference_model") or
                                       (len(rel.parts) == 1 and rel.stem in ALIASES)):
                continue
            if ">>>" not in p.read_text(encoding="utf-8"):
                continue
            parts = [x for x in rel.with_suffix("").parts if x != "__init__"]
            out.append(".".join([pkg, *parts]))
    return out


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert failures == 0, f"{failures} of {tried} examples failed in {name}"
