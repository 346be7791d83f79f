import importlib.metadata
import sys
from dataclasses import dataclass

import pytest

from mtp_bench.api import registry
from mtp_bench.api.context import RunContext
from mtp_bench.api.errors import ConfigError, UnknownNameError
from mtp_bench.api.registry import DuplicateNameError, EvalOutput, Evaluator, GenRequest, register, sample_seed
from mtp_bench.generation.engine import GenerationConfig, generate
from mtp_bench.scoring.metrics import mean_metric
from mtp_bench.testing import FakeModel, isolated_registry


@pytest.fixture
def reg():
    with isolated_registry() as r:
        yield r


def make_eval(name, suites=("code",), version="1.0"):
    @dataclass
    class Config:
        protocol: str = "quick"
        n: int = 1

    cls = type(name.title(), (Evaluator,), {
        "name": name, "version": version, "suites": suites, "description": f"{name} test evaluator",
        "Config": Config, "run": lambda self, model, ctx: EvalOutput([], {"m": mean_metric([1.0], True)}),
    })
    return register(cls)


def test_duplicate_name_is_an_error(reg):
    a = make_eval("dup")
    assert register(a) is a  # re-registering the same class is harmless
    with pytest.raises(DuplicateNameError, match="dup"):
        make_eval("dup")


def test_unknown_evaluator_lists_known_ones(reg):
    make_eval("alpha")
    make_eval("beta")
    with pytest.raises(UnknownNameError) as e:
        registry.get("gamma")
    assert "gamma" in str(e.value) and "alpha, beta" in str(e.value)


def test_suites_are_computed_from_registered_evaluators(reg):
    make_eval("he", ("code",))
    make_eval("sd", ("speed", "code"))
    make_eval("ind", ("synthetic",))
    s = registry.suites()
    assert s == {"code": ["he", "sd"], "synthetic": ["ind"], "speed": ["sd"], "all": ["he", "ind", "sd"]}
    assert "nl" not in s  # a suite with no built evaluator is not listed
    with pytest.raises(UnknownNameError, match="known suites: code, synthetic, speed, all"):
        registry.resolve(suite="nl")


def test_resolve_evals_keeps_order_and_drops_repeats(reg):
    make_eval("a")
    make_eval("b")
    assert [c.name for c in registry.resolve(evals=["b", "a", "b"])] == ["b", "a"]
    with pytest.raises(UnknownNameError, match="known evaluators: a, b"):
        registry.resolve(evals=["a", "zzz"])


def test_config_from_dict_is_typed_and_rejects_unknown_fields(reg):
    cls = make_eval("cfg")
    ev = cls({"protocol": "standard"})
    assert ev.config == cls.Config(protocol="standard", n=1)
    assert ev.config_dict() == {"protocol": "standard", "n": 1}
    with pytest.raises(ConfigError, match=r"unknown config field\(s\) \['protokol'\]; valid fields: \['protocol', 'n'\]"):
        cls({"protokol": "x"})


def test_register_rejects_config_fields_without_defaults(reg):
    @dataclass
    class Config:
        k: int

    with pytest.raises(TypeError, match="need defaults"):
        register(type("Bad", (Evaluator,), {"name": "bad", "version": "1", "suites": ("code",),
                                              "description": "d", "Config": Config}))
    assert "bad" not in registry.REGISTRY


def test_entry_point_plugins_are_registered(reg, tmp_path, monkeypatch):
    (tmp_path / "mtpb_plugin_mod.py").write_text(
        "from mtp_bench.api import Evaluator\n"
        "class Plug(Evaluator):\n"
        "    name = 'plug'; version = '0.3'; suites = ('nl',); description = 'a third-party evaluator'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint(name="plug", value="mtpb_plugin_mod:Plug", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry.importlib.metadata, "entry_points",
                        lambda group=None: [ep] if group == registry.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(registry, "_import_builtins", lambda: None)
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    assert registry.get("plug").version == "0.3"
    assert registry.suites()["nl"] == ["plug"]
    sys.modules.pop("mtpb_plugin_mod", None)


def test_sample_seed_depends_only_on_identity():
    seeds = {sample_seed(s, i, j) for s in (0, 1) for i in ("a", "b") for j in (0, 1)}
    assert len(seeds) == 8
    assert sample_seed(3, "HumanEval/7", 2) == sample_seed(3, "HumanEval/7", 2)
    assert 0 <= sample_seed(3, "x", 0) < 2**63


class _Counting:
    """Wraps the generation engine and records every prompt it was asked to generate."""

    def __init__(self):
        self.prompts = []

    def __call__(self, model, prompts, config, seeds=None, progress=None):
        self.prompts += prompts
        return generate(model, prompts, config, seeds=seeds)


class _Ev(Evaluator):
    name, version, suites, description = "ctxgen", "1.0", ("code",), "ctx.generate test"


def _requests(n=5):
    return [GenRequest(f"p{i}", 0, f"prompt number {i}:" + " x" * i) for i in range(n)]


def test_ctx_generate_serves_cache_hits_and_generates_only_misses(tmp_path):
    from mtp_bench.generation.cache import JsonlCache

    model = FakeModel(responses={"prompt number 1: x": " ONE"})
    cfg = GenerationConfig(max_new_tokens=6, batch_size=2)
    first = _Counting()
    ctx = RunContext(seed=0, work_dir=tmp_path, cache=JsonlCache(tmp_path / "g.jsonl"), generate_fn=first)
    reqs = _requests(3)
    gens = ctx.generate(model, reqs, cfg, _Ev())
    assert gens[1].text == " ONE" and gens[1].finish_reason == "eos"
    assert sorted(first.prompts) == sorted(r.prompt for r in reqs)
    # a second context on the same file: 3 hits, only the 2 new requests reach the engine
    second = _Counting()
    ctx2 = RunContext(seed=0, work_dir=tmp_path, cache=JsonlCache(tmp_path / "g.jsonl"), generate_fn=second)
    gens2 = ctx2.generate(model, _requests(5), cfg, _Ev())
    assert sorted(second.prompts) == sorted(r.prompt for r in _requests(5)[3:])
    assert [g.text for g in gens2[:3]] == [g.text for g in gens]
    assert ctx2.stats == {"cache_hits": 3, "generated": 2}


def test_ctx_generate_sampling_is_independent_of_batch_size(tmp_path):
    model = FakeModel(sharpness=0.5)  # flat logits: samples differ from greedy
    reqs = [GenRequest(f"s{i // 2}", i % 2, f"abc {i // 2}") for i in range(8)]
    outs = []
    for bs in (1, 3, 8):
        ctx = RunContext(seed=7, work_dir=tmp_path)
        outs.append([g.token_ids for g in ctx.generate(model, reqs, GenerationConfig(
            max_new_tokens=5, temperature=1.0, batch_size=bs), _Ev())])
    assert outs[0] == outs[1] == outs[2]
    greedy = RunContext(seed=7, work_dir=tmp_path).generate(model, reqs, GenerationConfig(max_new_tokens=5), _Ev())
    assert [g.token_ids for g in greedy] != outs[0]
    assert outs[0][0] != outs[0][1]  # two samples of one problem differ (index is in the seed)


def test_ctx_generate_sampled_cache_key_includes_seed(tmp_path):
    from mtp_bench.generation.cache import JsonlCache

    model = FakeModel(sharpness=0.5)
    cfg = GenerationConfig(max_new_tokens=5, temperature=1.0)
    reqs = _requests(2)
    a = RunContext(seed=1, work_dir=tmp_path, cache=JsonlCache(tmp_path / "g.jsonl"))
    a.generate(model, reqs, cfg, _Ev())
    b = RunContext(seed=2, work_dir=tmp_path, cache=JsonlCache(tmp_path / "g.jsonl"))
    b.generate(model, reqs, cfg, _Ev())
    assert b.stats == {"cache_hits": 0, "generated": 2}  # another run seed is other samples
    g = RunContext(seed=3, work_dir=tmp_path, cache=JsonlCache(tmp_path / "g.jsonl"))
    g.generate(model, reqs, GenerationConfig(max_new_tokens=5), _Ev())
    g2 = RunContext(seed=4, work_dir=tmp_path, cache=JsonlCache(tmp_path / "g.jsonl"))
    g2.generate(model, reqs, GenerationConfig(max_new_tokens=5), _Ev())
    assert g2.stats == {"cache_hits": 2, "generated": 0}  # greedy output does not depend on the seed


def test_runcontext_progress_is_a_noop_by_default(tmp_path):
    with RunContext(work_dir=tmp_path).progress("x", 3) as bar:
        bar.advance()
        bar.advance(2)
    with pytest.raises(ValueError, match="role"):
        RunContext(role="teacher")


def test_ctx_generate_cache_is_shared_across_batch_sizes(tmp_path):
    from mtp_bench.generation.cache import JsonlCache

    model = FakeModel(sharpness=0.5)
    reqs = _requests(4)
    a = RunContext(seed=1, work_dir=tmp_path, cache=JsonlCache(tmp_path / "g.jsonl"))
    ga = a.generate(model, reqs, GenerationConfig(max_new_tokens=4, temperature=1.0, batch_size=4), _Ev())
    b = RunContext(seed=1, work_dir=tmp_path, cache=JsonlCache(tmp_path / "g.jsonl"))
    gb = b.generate(model, reqs, GenerationConfig(max_new_tokens=4, temperature=1.0, batch_size=1), _Ev())
    assert b.stats == {"cache_hits": 4, "generated": 0} and ga == gb
    c = RunContext(seed=1, work_dir=tmp_path, cache=JsonlCache(tmp_path / "g.jsonl"))
    c.generate(model, reqs, GenerationConfig(max_new_tokens=5, temperature=1.0, batch_size=1), _Ev())
    assert c.stats == {"cache_hits": 0, "generated": 4}  # any other generation setting is a miss


def test_doctests_of_the_core_modules_run():
    import doctest

    from mtp_bench import testing
    from mtp_bench.api import config
    from mtp_bench.generation import cache

    for mod in (registry, cache, config, testing):
        failures, tried = doctest.testmod(mod)
        assert tried > 0 and failures == 0, mod.__name__


def test_isolated_registry_restores_and_keeps_late_builtins():
    before = dict(registry.REGISTRY)
    with isolated_registry() as r:
        assert r == {}
        make_eval("temp_eval")
        late = type("Late", (Evaluator,), {"name": "late_builtin", "version": "1", "suites": ("code",),
                                           "description": "d", "__module__": "mtp_bench.evals.late_builtin"})
        register(late)
    assert "temp_eval" not in registry.REGISTRY and registry.REGISTRY.pop("late_builtin") is late
    assert registry.REGISTRY == before
