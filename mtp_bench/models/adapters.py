"""Model adapters: `mtp_bench.load(path)` turns any supported checkpoint into a `protocols.Model`.

Formats, detected from what the directory holds:
    native  config.json with "format": "mtp-bench" (+ model.safetensors, tokenizer.json)
    gguf    a llama.cpp .gguf file (or "gguf:PATH") of a Llama-family model: dequantized once,
            cached as an HF directory keyed by the file's sha256 (reference_model/gguf_import.py)
    heads   config.json with "format": "mtp-bench-heads": extra heads on a pretrained base
            (reference_model/pretrained_heads.py); the base is found by its recorded path, an
            installed package holding its file, or `base=`
    meta    params.json + consolidated.pth + tokenizer.model (facebook/multi-token-prediction)
    hf      a Hugging Face causal-LM directory (config.json with model_type/architectures), or a hub
            id when the path is not a directory and HF_HUB_OFFLINE is not set; always n_future=1.
            Llama-family models (llama, mistral, qwen2; reference_model/hf_import.py) load into the
            reference transformer (`backend` "reference"); any other causal LM, or a Llama-family
            feature the reference model does not implement (rope scaling, sliding windows), runs
            through transformers (`backend` "transformers", with the reason in `backend_note`).
            MiMo directories (Qwen2 + model.mtp_layers.*; reference_model/mimo.py) load with their
            MTP modules as a sequential-head model (format "mimo", n_future = 1 + modules);
            DeepSeek-V3 / GLM-4.5 directories with MTP layers are refused, naming what is missing
    medusa  medusa_lm_head.pt + config.json (medusa_num_heads, medusa_num_layers, base_model_name_or_path
            = a local Llama-family HF directory): Medusa-1 heads as head_type "medusa" (reference_model/medusa.py)

Whatever the format, the model answers the protocol: `model(input_ids, cache, return_all_heads,
attention_mask)` -> float logits (B, T, n, V), left padding marked by attention_mask, a token's
rotary position = number of real tokens before it in its row. For HF models that means passing
explicit position_ids and the accumulated attention mask on every call, which HFCache keeps.

Device default: cuda if available, else cpu. dtype default: float32 on cpu, bfloat16 on cuda.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

import torch

from mtp_bench.api.errors import CheckpointError, ConfigError
from mtp_bench.api.files import weights_sha256
from mtp_bench.models.device import DTYPES, device_name, resolve_device, resolve_dtype  # noqa: F401  (re-exported)
from mtp_bench.reference_model import gguf_import, hf_import, medusa, mimo
from mtp_bench.reference_model.checkpoint import build_model, detect_format, read_checkpoint
from mtp_bench.reference_model.model import Transformer

FORMATS = ("native", "meta", "hf", "mimo", "medusa", "gguf", "heads")


# -----------------------------------------------------------------------------
# native and Meta checkpoints: the reference transformer


class MTPModel:
    """A reference-model checkpoint (native or Meta) behind protocols.Model."""

    backend = "reference"
    backend_note: str | None = None

    def __init__(self, module, tokenizer, path: str, format: str, weight_files: list[Path], info: dict | None = None):
        self.module = module  # the mtp_bench.reference_model.model.Transformer
        self.tokenizer = tokenizer
        self.path = path
        self.format = format
        self.info = info or {}
        self._weight_files = weight_files
        self._sha: str | None = None
        cfg = module.config
        self.n_future: int = cfg.n_future
        self.max_seq_len: int = cfg.max_seq_len
        self.config: dict[str, Any] = cfg.to_dict()
        # tied embeddings (info["tied_embeddings"]): the reference model holds the unembedding as a copy
        # of the embedding; the model has one such matrix, so it is counted once (as transformers does)
        tied = self.info.get("tied_embeddings") and module.output.weight is not module.tok_embeddings.weight
        self.num_params: int = module.num_params() - (module.output.weight.numel() if tied else 0)
        self.device: torch.device = module.device
        self.dtype: torch.dtype = module.dtype

    @property
    def weights_sha256(self) -> str:
        if self._sha is None:  # lazily: loading a model should not cost a full read of its weights
            self._sha = weights_sha256(self._weight_files)
        return self._sha

    def new_cache(self, batch_size: int, max_len: int, device=None, dtype=None):
        return self.module.new_cache(batch_size, max_len, device=device, dtype=dtype)

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, cache=None, return_all_heads: bool = False,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        input_ids = input_ids.to(self.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        return self.module(input_ids, cache=cache, return_all_heads=return_all_heads, attention_mask=attention_mask)

    def draft(self, cache, next_token: torch.Tensor, n_draft: int, reuse_last: bool = False, sample=None) -> torch.Tensor:
        """Chained drafts of sequential MTP modules (reference_model.model.Transformer.draft)."""
        return self.module.draft(cache, next_token.to(self.device), n_draft, reuse_last=reuse_last, sample=sample)

    def __repr__(self) -> str:
        return f"MTPModel({self.path!r}, format={self.format}, n_future={self.n_future}, params={self.num_params:,})"


# -----------------------------------------------------------------------------
# Hugging Face causal LMs


class HFTokenizer:
    """A transformers tokenizer behind protocols.Tokenizer (no special tokens unless asked)."""

    def __init__(self, tok):
        self.tok = tok
        self.vocab_size: int = len(tok)
        self.bos_id: int | None = tok.bos_token_id
        self.eos_id: int | None = tok.eos_token_id
        self.pad_id: int | None = tok.pad_token_id

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = list(self.tok(text, add_special_tokens=False)["input_ids"])
        if add_bos:
            if self.bos_id is None:
                raise ConfigError("add_bos=True but this tokenizer has no BOS token")
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)


class HFCache:
    """transformers' DynamicCache plus the attention mask of every stored position, so each call
    can pass the full mask and explicit position ids (= real tokens before each position)."""

    def __init__(self, batch_size: int, max_len: int, hf_config, device: torch.device):
        from transformers import DynamicCache

        self.dc = DynamicCache(config=hf_config)
        self.batch_size, self.max_len = batch_size, max_len
        self.mask = torch.zeros(batch_size, 0, dtype=torch.long, device=device)  # (B, length)
        self.length = 0

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ConfigError(f"cannot truncate a cache of length {self.length} to {length}")
        if length < self.length:  # a negative count = "drop that many" in transformers 4.x and 5.x alike
            self.dc.crop(length - self.length)
        self.mask = self.mask[:, :length]
        self.length = length


class HFModel:
    """A Hugging Face causal LM behind protocols.Model, as a one-head model (n_future=1)."""

    format = "hf"
    n_future = 1
    backend = "transformers"
    backend_note: str | None = None

    def __init__(self, model, tokenizer, path: str, weight_files: list[Path]):
        self.module = model
        self.tokenizer = HFTokenizer(tokenizer)
        self.path = path
        self._weight_files = weight_files
        self._sha: str | None = None
        self.config: dict[str, Any] = json.loads(model.config.to_json_string(use_diff=False))
        c = model.config
        msl = next((getattr(c, k) for k in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")
                    if isinstance(getattr(c, k, None), int)), None)
        if msl is None:
            raise CheckpointError(f"{path}: config.json gives no max_position_embeddings/n_positions; cannot tell the context length")
        self.max_seq_len: int = msl
        self.num_params: int = sum(p.numel() for p in model.parameters())
        self.device: torch.device = next(model.parameters()).device
        self.dtype: torch.dtype = next(model.parameters()).dtype
        # transformers 5.x renames forward's `past_key_values` to `cache`; accept both
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params and "past_key_values" not in params else "past_key_values"

    @property
    def weights_sha256(self) -> str:
        if self._sha is None:
            self._sha = weights_sha256(self._weight_files)
        return self._sha

    def new_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> HFCache:
        if max_len < 1 or max_len > self.max_seq_len:
            raise ConfigError(f"cache max_len must be in [1, max_seq_len={self.max_seq_len}], got {max_len}")
        return HFCache(batch_size, max_len, self.module.config, self.device)

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, cache: HFCache | None = None, return_all_heads: bool = False,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        input_ids = input_ids.to(self.device)
        B, T = input_ids.shape
        new = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(self.device).long()
        if new.shape != input_ids.shape:
            raise ConfigError(f"attention_mask must have the shape of input_ids {(B, T)}, got {tuple(new.shape)}")
        if cache is not None:
            if B != cache.batch_size:
                raise ConfigError(f"batch of {B} rows does not match the cache's batch size {cache.batch_size}")
            if cache.length + T > cache.max_len:
                raise ConfigError(f"cache overflow: {cache.length} + {T} positions > cache max_len={cache.max_len}")
            full = torch.cat([cache.mask, new], dim=1)  # (B, length + T)
        else:
            if T > self.max_seq_len:
                raise ConfigError(f"sequence of {T} tokens is longer than max_seq_len={self.max_seq_len}")
            full = new
        # 1) rotary position = number of real tokens before each position in its row
        positions = (full.cumsum(1) - full)[:, -T:]  # (B, T)
        # 2) one forward with the full mask; the DynamicCache appends the new keys/values
        kw = {self._cache_kw: cache.dc} if cache is not None else {}
        out = self.module(input_ids=input_ids, attention_mask=full, position_ids=positions, use_cache=cache is not None, **kw)
        if cache is not None:
            cache.mask, cache.length = full, cache.length + T
        return out.logits.float()[:, :, None, :]  # (B, T, 1, V)

    def __repr__(self) -> str:
        return f"HFModel({self.path!r}, params={self.num_params:,})"


def _hf_weight_files(d: Path) -> list[Path]:
    for pattern in ("*.safetensors", "pytorch_model*.bin", "*.bin", "*.pth", "*.pt"):
        files = sorted(d.glob(pattern))
        if files:
            return files
    raise CheckpointError(f"{d}: no weight files (*.safetensors, pytorch_model*.bin) found")


def load_hf(path: str, device: torch.device, dtype: torch.dtype, hub: bool = False) -> HFModel | MTPModel:
    """A local HF causal-LM directory (local files only), or a hub id when hub=True: into the reference
    transformer when it is a Llama-family model it implements exactly, else through transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    src = path
    if hub:  # fetch the snapshot once, then load it like a local directory
        from huggingface_hub import snapshot_download

        try:
            src = snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"])
        except Exception as e:  # hub errors come in many types (network, auth, missing repo)
            raise CheckpointError(f"cannot fetch {path!r} from the Hugging Face hub: {str(e).splitlines()[0]}") from None
    d = Path(src)
    hf_logging.disable_progress_bar()
    try:
        tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{d}: cannot load its tokenizer: {str(e).splitlines()[0]}") from None
    hf_cfg = hf_import.read_hf_config(d)
    refused = mimo.refusal(hf_cfg, d)
    if refused:
        raise ConfigError(refused)
    if mimo.is_mimo(hf_cfg):
        module, files = mimo.load_mimo_module(d, hf_cfg)
        return MTPModel(module.to(device=device, dtype=dtype).eval(), HFTokenizer(tok), path, "mimo", files,
                        {"hf_model_type": hf_cfg.get("model_type"), "mtp_zero_first_embedding": False,
                         "tied_embeddings": bool(hf_cfg.get("tie_word_embeddings", False))})
    reason = hf_import.unsupported_reason(hf_cfg)
    if reason is None:
        return _load_hf_into_reference(path, d, hf_cfg, HFTokenizer(tok), device, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(d), dtype=dtype, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{d}: cannot load it as a causal LM: {str(e).splitlines()[0]}") from None
    model = model.to(device).eval()
    wrapped = HFModel(model, tok, path, _hf_weight_files(d))
    wrapped.backend_note = f"not loaded into the reference model: {reason}"
    return wrapped


def _load_hf_into_reference(path: str, d: Path, hf_cfg: dict, tokenizer: HFTokenizer, device: torch.device,
                            dtype: torch.dtype) -> MTPModel:

    cfg = hf_import.config_from_hf(hf_cfg, d / "config.json")
    tensors, files = hf_import.load_hf_tensors(d)
    sd = hf_import.state_dict_from_hf(tensors, cfg, bool(hf_cfg.get("tie_word_embeddings", False)), d)
    with torch.device("meta"):
        module = Transformer(cfg)
    try:
        module.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:  # shape mismatches between config.json and the tensors
        raise CheckpointError(f"{d}: weights do not match config.json: {str(e).splitlines()[-1].strip()}") from None
    module = module.to(device=device, dtype=dtype).eval()
    return MTPModel(module, tokenizer, path, "hf", files, {"hf_model_type": hf_cfg.get("model_type"),
                                                           "tied_embeddings": bool(hf_cfg.get("tie_word_embeddings", False))})


def load_gguf(path: str, device: torch.device, dtype: torch.dtype) -> MTPModel:
    """A llama.cpp GGUF file: dequantized and converted once (cached as an HF directory keyed by the
    file's sha256, reference_model/gguf_import.py), then imported into the reference transformer.
    Its weights_sha256 is the GGUF file's."""
    from transformers import AutoTokenizer


    f = Path(path).expanduser()
    d = gguf_import.cached_hf_dir(f)
    try:
        tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{d}: cannot load the tokenizer converted from {f}: {str(e).splitlines()[0]}") from None
    m = _load_hf_into_reference(path, d, hf_import.read_hf_config(d), HFTokenizer(tok), device, dtype)
    m.format, m._weight_files = "gguf", [f]
    m.info = {**m.info, "gguf": str(f), "converted_dir": str(d)}
    return m


# -----------------------------------------------------------------------------
# every format but heads-only checkpoints (models/heads.py; all of them: models/loader.py)


def is_gguf(path: str | os.PathLike) -> bool:
    """A GGUF file: "gguf:PATH", or a path ending in .gguf that is not a directory."""
    return str(path).startswith("gguf:") or (str(path).endswith(".gguf") and not Path(path).is_dir())


def load_checkpoint(path: str | os.PathLike, device: str | torch.device | None = None,
                    dtype: str | torch.dtype | None = None):
    """Load a checkpoint of any format but heads-only ones (those need their base:
    `mtp_bench.models.loader.load`) as a protocols.Model (see the module docstring)."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if is_gguf(path):
        return load_gguf(str(path).removeprefix("gguf:"), dev, dt)
    p = Path(path)
    fmt = detect_format(p)
    if fmt == "heads":
        raise CheckpointError(f"{p}: a heads-only checkpoint; load it with mtp_bench.load, which finds its base")
    if fmt in ("native", "meta"):
        raw = read_checkpoint(p)
        module = build_model(raw, dev, dt)
        return MTPModel(module, raw.tokenizer, str(path), fmt, raw.weight_files, raw.info)
    if fmt == "hf":
        return load_hf(str(path), dev, dt)
    if fmt == "medusa":
        from transformers import AutoTokenizer


        module, base, files = medusa.load_medusa_module(p)
        try:
            tok = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{base}: cannot load the Medusa base model's tokenizer: {str(e).splitlines()[0]}") from None
        return MTPModel(module.to(device=dev, dtype=dt).eval(), HFTokenizer(tok), str(path), "medusa", files,
                        {"medusa_base": str(base)})
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")
    if not p.exists() and not offline and str(path).count("/") == 1 and not str(path).startswith((".", "/", "~")):
        return load_hf(str(path), dev, dt, hub=True)
    what = "no such file or directory" if not p.exists() else ("not a directory" if not p.is_dir() else "not a model")
    raise CheckpointError(f"cannot load {str(path)!r} ({what}): looked for a native mtp-bench checkpoint "
                          "(config.json with format 'mtp-bench'), a Meta checkpoint (params.json + consolidated.pth) "
                          "or a Hugging Face causal-LM directory (config.json with model_type)"
                          + ("; hub ids need HF_HUB_OFFLINE unset" if offline and not p.exists() else ""))
