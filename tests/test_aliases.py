"""The old import paths the README documented keep working for one release, with a deprecation warning."""

import importlib
import sys
import warnings

import pytest

ALIASES = {  # old module -> a name it must still give, and where that name lives now
    "mtp_bench.registry": ("RunContext", "mtp_bench.api.context"),
    "mtp_bench.metrics": ("mean_metric", "mtp_bench.scoring.metrics"),
    "mtp_bench.results": ("load_result", "mtp_bench.reporting.results"),
    "mtp_bench.vllm_backend": ("greedy_agreement", "mtp_bench.generation.vllm"),
    "mtp_bench.speculative": ("speculative_decode", "mtp_bench.generation.speculative"),
    "mtp_bench.evalplus": ("load_problems", "mtp_bench.scoring.evalplus"),
    "mtp_bench.chat": ("render_chat", "mtp_bench.generation.chat"),
    "mtp_bench.code_extract": ("sanitize", "mtp_bench.scoring.code_extract"),
    "mtp_bench.wire": ("encode", "mtp_bench.execution.wire"),
    "mtp_bench.runner": ("DEFAULT_RUN_CONFIG", "mtp_bench.commands.run"),
    "mtp_bench.repro": ("RULES", "mtp_bench.commands.repro"),
}


@pytest.mark.parametrize("old", sorted(ALIASES))
def test_old_path_imports_with_a_deprecation_warning(old):
    name, home = ALIASES[old]
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match="moved to"):
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(home), name)


def test_execution_and_generation_keep_their_old_paths_as_packages():
    from mtp_bench.execution import hidden_paths, run_programs  # noqa: F401
    from mtp_bench.generation import GenerationConfig, encode_prompt, uses_bos  # noqa: F401


def test_pretrained_heads_loaders_forward_to_models_heads():
    from mtp_bench.models import heads
    from mtp_bench.reference_model import pretrained_heads

    for name in ("load_base", "load_heads", "init_model", "export_heads"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert getattr(pretrained_heads, name) is getattr(heads, name)
        assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    with pytest.raises(AttributeError):
        pretrained_heads.no_such_name  # noqa: B018
