"""Checkpoints: the native mtp-bench format, Meta's release format, and the Hugging Face export.

Native (what the trainer writes), a directory:
    config.json        ModelConfig.to_dict() + {"format": "mtp-bench", "format_version": 1}
    model.safetensors  the state dict (fp32, fp16 or bf16), Meta's parameter names
    tokenizer.json     Hugging Face `tokenizers` JSON
    training.json      whatever the trainer reports (steps, losses, data, seed, ...)

Meta (facebook/multi-token-prediction), a directory:
    params.json        dim, n_layers, n_heads, n_kv_heads, vocab_size, multiple_of, ffn_dim_multiplier,
                       norm_eps, rope_theta, n_future_tokens. n_layers counts EVERY block, extra heads
                       included, as ours does: `layers` holds n_layers - n_future_tokens + 1 blocks
                       (trunk + next-token head), `extra_heads` the other n_future_tokens - 1
                       (the 7B_*_4 releases: n_layers 32, 29 blocks in `layers`, 3 extra heads)
    consolidated.pth   the state dict, same parameter names as ours
    tokenizer.model    SentencePiece

HF export (`mtp-bench export CKPT --format hf-llama --out DIR`): the next-token model (trunk +
head 0 + norm + output) as a LlamaForCausalLM directory anyone can serve. Our rotary rotates
interleaved pairs (Meta's convention); HF Llama rotates halves, so wq/wk rows are permuted on
export exactly as transformers' convert_llama_weights_to_hf.py does.

Every directory is written to a sibling temp directory, fsynced, then renamed into place; an
existing directory is replaced only once the new one is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtp_bench.api.errors import CheckpointError, ConfigError, UnknownNameError
from mtp_bench.reference_model.model import ModelConfig, Transformer
from mtp_bench.reference_model.tokenizer import load_tokenizer as load_json_tokenizer

FORMAT_NAME = "mtp-bench"
FORMAT_VERSION = 1
EXPORT_FORMATS = ("hf-llama",)
META_PARAM_KEYS = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "ffn_dim_multiplier",
                   "norm_eps", "rope_theta", "n_future_tokens", "max_seq_len", "max_batch_size")
META_DEFAULT_MAX_SEQ_LEN = 2048  # Meta's ModelArgs default; params.json does not record one


# -----------------------------------------------------------------------------
# atomic directory writes


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_dir_atomically(out_dir: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Call fill(tmp_dir) on a fresh sibling temp dir, fsync every file, then rename it to out_dir.
    An existing out_dir is moved aside only after the new one is complete, then removed."""
    out = Path(out_dir).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"output path exists and is not a directory: {out}")
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the final directory gets normal permissions
        fill(tmp)
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync_path(f)
        _fsync_path(tmp)
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
        os.replace(tmp, out)
        _fsync_path(out.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"missing file: {path}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(obj).__name__}")
    return obj


# -----------------------------------------------------------------------------
# tokenizers


class SentencePieceTokenizer:
    """Meta's tokenizer.model behind mtp_bench.api.protocols.Tokenizer."""

    def __init__(self, path: str | os.PathLike):
        import sentencepiece as spm

        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"missing file: {self.path}")
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(self.path))
        except (OSError, RuntimeError) as e:
            raise CheckpointError(f"cannot read SentencePiece model {self.path}: {str(e).splitlines()[0]}") from None
        self.vocab_size: int = self.sp.GetPieceSize()
        self.bos_id = self._id(self.sp.bos_id())
        self.eos_id = self._id(self.sp.eos_id())
        self.pad_id = self._id(self.sp.pad_id())

    @staticmethod
    def _id(i: int) -> int | None:
        return None if i < 0 else int(i)  # SentencePiece says -1 for "none"

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = list(self.sp.EncodeAsIds(text))
        if add_bos:
            if self.bos_id is None:
                raise ConfigError(f"add_bos=True but {self.path} has no BOS piece")
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids) -> str:
        return self.sp.DecodeIds([int(i) for i in ids])

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({self.path.name}, vocab_size={self.vocab_size})"


def load_tokenizer(path: str | os.PathLike):
    """tokenizer.json (native, via the trainer's tokenizer module) or tokenizer.model (SentencePiece)."""
    path = Path(path)
    if path.suffix == ".model":
        return SentencePieceTokenizer(path)

    return load_json_tokenizer(path)


# -----------------------------------------------------------------------------
# reading weights


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"missing file: {path}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot read {path} (truncated or not safetensors?): {str(e).splitlines()[0]}") from None


def _load_pth(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"missing file: {path}")
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch.load raises many types (RuntimeError, UnpicklingError, EOFError, zip errors)
        raise CheckpointError(f"cannot read {path} (truncated or not a torch state dict?): {str(e).splitlines()[0]}") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return sd


def _check_state_dict(cfg: ModelConfig, sd: dict[str, torch.Tensor], where: Path) -> None:
    """Same keys and shapes as the model the config describes, or one line saying what differs."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Transformer(cfg).state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s) e.g. {', '.join(unexpected[:3])}")
        raise CheckpointError(f"{where} does not match its config: {'; '.join(parts)}")
    for k, shape in expected.items():
        if tuple(sd[k].shape) != shape:
            raise CheckpointError(f"{where} does not match its config: {k} has shape {tuple(sd[k].shape)}, config needs {shape}")
        if not sd[k].is_floating_point():
            raise CheckpointError(f"{where}: {k} has non-float dtype {sd[k].dtype}")


@dataclass
class RawCheckpoint:
    """A checkpoint read from disk but not yet turned into a model (export keeps the stored dtype)."""

    format: str  # "native" | "meta"
    path: Path
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    tokenizer: Any
    info: dict[str, Any]
    weight_files: list[Path]


def detect_format(path: str | os.PathLike) -> str | None:
    """"native" | "meta" | "hf" | "medusa" | "heads" | None for a directory."""
    p = Path(path)
    if not p.is_dir():
        return None
    if (p / "medusa_lm_head.pt").is_file():  # Medusa heads on a base model (reference_model/medusa.py)
        return "medusa"
    if (p / "config.json").is_file():
        try:
            cfg = json.loads((p / "config.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "native" if (p / "model.safetensors").is_file() else None
        if isinstance(cfg, dict) and cfg.get("format") == FORMAT_NAME:
            return "native"
        if isinstance(cfg, dict) and cfg.get("format") == "mtp-bench-heads":  # pretrained_heads.py
            return "heads"
        if isinstance(cfg, dict) and ("model_type" in cfg or "architectures" in cfg):
            return "hf"
    if (p / "params.json").is_file() and any(p.glob("consolidated*.pth")):
        return "meta"
    return None


def read_native(path: str | os.PathLike) -> RawCheckpoint:
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {p}")
    cfg_path = p / "config.json"
    d = _read_json(cfg_path)
    if d.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{cfg_path}: not an mtp-bench checkpoint (format={d.get('format')!r})")
    if d.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{cfg_path}: unsupported format_version {d.get('format_version')!r} (this mtp-bench reads {FORMAT_VERSION})")
    d = {k: v for k, v in d.items() if k not in ("format", "format_version")}
    try:
        cfg = ModelConfig.from_dict(d)
    except ConfigError as e:
        raise ConfigError(f"{cfg_path}: {e}") from None
    except TypeError as e:
        raise ConfigError(f"{cfg_path}: {e}") from None
    weights = p / "model.safetensors"
    sd = _load_safetensors(weights)
    _check_state_dict(cfg, sd, weights)
    tok = load_tokenizer(p / "tokenizer.json")
    info = _read_json(p / "training.json")
    return RawCheckpoint("native", p, cfg, sd, tok, info, [weights])


def meta_params_to_config(params: dict, where: Path, vocab_size: int | None = None) -> ModelConfig:
    """Meta's params.json -> ModelConfig. Meta's n_layers counts every transformer block, extra heads
    included (facebook/multi-token-prediction llama/model.py builds `layers` from
    n_layers - n_future_tokens + 1 blocks), which is exactly what our n_layers counts."""
    unknown = sorted(set(params) - set(META_PARAM_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(META_PARAM_KEYS)}")
    try:
        n_future = int(params.get("n_future_tokens", 1))
        v = params.get("vocab_size", -1)
        if v is None or int(v) <= 0:  # Meta's releases may say -1: "take it from the tokenizer"
            if vocab_size is None:
                raise ConfigError(f"{where}: vocab_size is {v!r} and no tokenizer/weights to take it from")
            v = vocab_size
        return ModelConfig(
            vocab_size=int(v),
            dim=int(params["dim"]),
            n_layers=int(params["n_layers"]),
            n_heads=int(params["n_heads"]),
            n_kv_heads=None if params.get("n_kv_heads") is None else int(params["n_kv_heads"]),
            multiple_of=int(params.get("multiple_of", 256)),
            ffn_dim_multiplier=params.get("ffn_dim_multiplier"),
            norm_eps=float(params.get("norm_eps", 1e-5)),
            rope_theta=float(params.get("rope_theta", 10000.0)),
            max_seq_len=int(params.get("max_seq_len", META_DEFAULT_MAX_SEQ_LEN)),
            n_future=n_future,
            head_type="parallel",
        )
    except KeyError as e:
        raise ConfigError(f"{where}: missing required key {e.args[0]!r}") from None
    except ConfigError as e:
        if str(e).startswith(str(where)):
            raise
        raise ConfigError(f"{where}: {e}") from None
    except (TypeError, ValueError) as e:  # e.g. "dim": "large"
        raise ConfigError(f"{where}: bad value: {e}") from None


def _check_meta_layout(cfg: ModelConfig, sd: dict[str, torch.Tensor], where: Path) -> None:
    """Block counts of consolidated.pth against params.json, said in Meta's terms (the usual mistake
    is an n_layers that counts only `layers`, or a missing n_future_tokens)."""
    def count(prefix: str) -> int:
        return len({k.split(".")[1] for k in sd if k.startswith(prefix)})

    n_layers, n_extra = count("layers."), count("extra_heads.")
    if (n_layers, n_extra) != (cfg.n_trunk_layers + 1, cfg.n_future - 1):
        raise CheckpointError(
            f"{where}: params.json says n_layers={cfg.n_layers} (every block, extra heads included) and "
            f"n_future_tokens={cfg.n_future}, so `layers` should hold {cfg.n_trunk_layers + 1} blocks and `extra_heads` "
            f"{cfg.n_future - 1}; consolidated.pth has {n_layers} and {n_extra}")


def read_meta(path: str | os.PathLike) -> RawCheckpoint:
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {p}")
    params = _read_json(p / "params.json")
    shards = sorted(p.glob("consolidated*.pth"))
    if not shards:
        raise CheckpointError(f"missing file: {p / 'consolidated.pth'}")
    if len(shards) > 1:
        raise CheckpointError(f"{p}: {len(shards)} model-parallel shards found; merge them into one consolidated.pth first")
    sd = _load_pth(shards[0])
    sd.pop("rope.freqs", None)  # Llama-1 style checkpoints store the rotary table; ours is computed
    tok = load_tokenizer(p / "tokenizer.model")
    emb = sd.get("tok_embeddings.weight")
    cfg = meta_params_to_config(params, p / "params.json", vocab_size=emb.shape[0] if emb is not None else tok.vocab_size)
    _check_meta_layout(cfg, sd, p)
    _check_state_dict(cfg, sd, shards[0])
    return RawCheckpoint("meta", p, cfg, sd, tok, {"params": params}, shards)


def read_checkpoint(path: str | os.PathLike) -> RawCheckpoint:
    """A native or Meta checkpoint, by what the directory holds."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    fmt = detect_format(p)
    if fmt == "native":
        return read_native(p)
    if fmt == "meta":
        return read_meta(p)
    if fmt == "hf":
        raise CheckpointError(f"{p} is a Hugging Face model, not an mtp-bench or Meta checkpoint")
    raise CheckpointError(f"{p} is not a checkpoint: looked for config.json with format 'mtp-bench' "
                          "(native) or params.json + consolidated.pth (Meta)")


def build_model(raw: RawCheckpoint, device=None, dtype: torch.dtype | None = None) -> Transformer:
    """Instantiate without a random init (meta device), then take the checkpoint's tensors."""
    with torch.device("meta"):
        model = Transformer(raw.config)
    model.load_state_dict(raw.state_dict, strict=True, assign=True)
    model = model.to(device=device or "cpu", dtype=dtype or torch.float32)
    return model.eval()


# -----------------------------------------------------------------------------
# native save / load


def save_checkpoint(out_dir: str | os.PathLike, model: Transformer, tokenizer, training_info: dict,
                    dtype: torch.dtype | None = None) -> Path:
    """Write a native checkpoint directory atomically. dtype: store the weights in this dtype
    (e.g. torch.bfloat16 to halve the size); None keeps the model's."""
    from safetensors.torch import save_file

    if dtype is not None and dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ConfigError(f"checkpoint dtype must be float32, float16 or bfloat16, got {dtype}")
    if not isinstance(training_info, dict):
        raise ConfigError(f"training_info must be a dict, got {type(training_info).__name__}")
    try:
        info_json = json.dumps(training_info, indent=2)
    except TypeError as e:
        raise ConfigError(f"training_info must be JSON-serialisable: {e}") from None
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper: save the plain module's names
    sd = {k: v.detach().to("cpu", dtype=dtype or v.dtype).contiguous() for k, v in model.state_dict().items()}

    def fill(tmp: Path) -> None:
        _write_json(tmp / "config.json", {**model.config.to_dict(), "format": FORMAT_NAME, "format_version": FORMAT_VERSION})
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save(tmp / "tokenizer.json")
        (tmp / "training.json").write_text(info_json + "\n", encoding="utf-8")

    return write_dir_atomically(out_dir, fill)


def load_checkpoint(path: str | os.PathLike, device=None, dtype: torch.dtype | None = None):
    """-> (model, tokenizer, info) from a native (or Meta) checkpoint directory.
    device default cpu, dtype default float32 (whatever the stored dtype)."""
    raw = read_checkpoint(path)
    return build_model(raw, device, dtype), raw.tokenizer, raw.info


# -----------------------------------------------------------------------------
# Hugging Face export


def _permute_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Interleaved-pair rotary rows -> HF's rotate-half rows (transformers' convert_llama_weights_to_hf)."""
    dim1, dim2 = w.shape
    return w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)


def hf_llama_state_dict(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our next-token model (layers + norm + output; extra heads dropped) under LlamaForCausalLM names."""
    out = {"model.embed_tokens.weight": sd["tok_embeddings.weight"], "model.norm.weight": sd["norm.weight"],
           "lm_head.weight": sd["output.weight"]}
    names = {"attention.wv.weight": "self_attn.v_proj.weight", "attention.wo.weight": "self_attn.o_proj.weight",
             "feed_forward.w1.weight": "mlp.gate_proj.weight", "feed_forward.w2.weight": "mlp.down_proj.weight",
             "feed_forward.w3.weight": "mlp.up_proj.weight", "attention_norm.weight": "input_layernorm.weight",
             "ffn_norm.weight": "post_attention_layernorm.weight"}
    for i in range(cfg.n_trunk_layers + 1):
        src, dst = f"layers.{i}.", f"model.layers.{i}."
        out[dst + "self_attn.q_proj.weight"] = _permute_rotary(sd[src + "attention.wq.weight"], cfg.n_heads)
        out[dst + "self_attn.k_proj.weight"] = _permute_rotary(sd[src + "attention.wk.weight"], cfg.kv_heads)
        for a, b in names.items():
            out[dst + b] = sd[src + a]
    return {k: v.contiguous() for k, v in out.items()}


def _hf_tokenizer(raw: RawCheckpoint):
    """A transformers tokenizer object with save_pretrained()."""
    tok = raw.tokenizer
    if isinstance(tok, SentencePieceTokenizer):
        return _spm_to_hf(tok, raw.config.max_seq_len)
    from transformers import PreTrainedTokenizerFast

    kw = {}
    for name, tid in (("bos_token", tok.bos_id), ("eos_token", tok.eos_id), ("pad_token", tok.pad_id)):
        if tid is not None:
            kw[name] = tok.hf.id_to_token(tid)
    return PreTrainedTokenizerFast(tokenizer_object=tok.hf, model_max_length=raw.config.max_seq_len, **kw)


def _spm_to_hf(tok: SentencePieceTokenizer, tok_max_len: int | None = None):
    """SentencePiece BPE -> a `tokenizers` pipeline (PreTrainedTokenizerFast), without the protobuf
    dependency transformers' own converter needs. Vocab comes from the processor; merges are
    rebuilt from the vocab (every split of a piece into two pieces, ranked by the merged piece's
    id, as transformers' SentencePieceExtractor does); the normaliser is the original HF Llama
    one (prepend "▁", spaces -> "▁"), which matches SentencePiece on leading spaces where the
    newer Metaspace pre-tokenizer does not. Checked against SentencePiece on sample text."""
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    sp = tok.sp
    vocab = {sp.IdToPiece(i): i for i in range(sp.GetPieceSize())}
    merges = sorted((pid, vocab[p[:i]], vocab[p[i:]], p[:i], p[i:])
                    for p, pid in vocab.items() for i in range(1, len(p)) if p[:i] in vocab and p[i:] in vocab)
    unk = sp.IdToPiece(sp.unk_id()) if sp.unk_id() >= 0 else None
    raw = RawTokenizer(models.BPE(vocab=vocab, merges=[(a, b) for *_, a, b in merges], unk_token=unk, fuse_unk=True,
                                  byte_fallback=True))
    raw.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    raw.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    if tok.bos_id is not None:  # like HF Llama: tokenizer(text) starts with BOS
        bos = sp.IdToPiece(tok.bos_id)
        raw.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.bos_id)])
    samples = ["Hello world", "def add(a, b):\n    return a + b\n", "  x = [1, 2, 3]  # spaces", "\tTab and \u00fcn\u00efc\u00f6d\u00e9"]
    samples += [sp.DecodeIds(list(range(i, min(i + 50, sp.GetPieceSize())))) for i in range(0, sp.GetPieceSize(), 50)]
    for text in samples:
        if raw.encode(text, add_special_tokens=False).ids != sp.EncodeAsIds(text):
            raise CheckpointError(f"{tok.path}: cannot convert this SentencePiece model to a Hugging Face tokenizer "
                                  f"(encodings differ on {text[:40]!r}); only BPE models with Llama's settings export")
    kw = {name: sp.IdToPiece(i) for name, i in (("unk_token", sp.unk_id()), ("bos_token", tok.bos_id),
                                                 ("eos_token", tok.eos_id), ("pad_token", tok.pad_id)) if i is not None and i >= 0}
    return PreTrainedTokenizerFast(tokenizer_object=raw, model_max_length=tok_max_len, **kw)


def check_export_format(format: str) -> None:
    if format not in EXPORT_FORMATS:
        raise UnknownNameError(f"unknown export format {format!r}; known formats: {', '.join(EXPORT_FORMATS)}")


def export_checkpoint(path: str | os.PathLike, out: str | os.PathLike, format: str = "hf-llama") -> Path:
    """Write the next-token model of a native or Meta checkpoint as a LlamaForCausalLM directory.
    (A heads-only checkpoint exports its base's model, which needs the framework's loaders:
    `mtp_bench.models.loader.export_checkpoint`, what `mtp-bench export` runs.)"""
    check_export_format(format)
    if detect_format(path) == "heads":
        raise CheckpointError(f"{path}: a heads-only checkpoint exports its base's next-token model, which needs "
                              "its base loaded: use `mtp-bench export` (mtp_bench.models.loader.export_checkpoint)")
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    raw = read_checkpoint(path)
    cfg = raw.config
    if cfg.head_type == "anticausal" and cfg.n_future > 1:
        raise ConfigError(f"{raw.path}: cannot export an anticausal model as a Llama: its next-token head reads the "
                          "other heads' output, so trunk + head 1 alone is not the model")
    if cfg.qkv_bias:
        raise ConfigError(f"{raw.path}: cannot export as a Llama: it has q/k/v biases (an imported Qwen2-family model); "
                          "serve the original Hugging Face directory instead")
    sd = hf_llama_state_dict(cfg, raw.state_dict)
    stored = {v.dtype for v in sd.values()}
    dtype = stored.pop() if len(stored) == 1 else torch.float32
    sd = {k: v.to(dtype) for k, v in sd.items()}
    tok = raw.tokenizer
    hf_cfg = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.dim,
        intermediate_size=cfg.ffn_hidden_dim,
        num_hidden_layers=cfg.n_trunk_layers + 1,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.kv_heads,
        hidden_act="silu",
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_id,
        eos_token_id=tok.eos_id,
        pad_token_id=tok.pad_id,
        architectures=["LlamaForCausalLM"],
    )
    hf_cfg.dtype = dtype
    hf_tok = _hf_tokenizer(raw)

    def fill(tmp: Path) -> None:
        hf_cfg.save_pretrained(str(tmp))
        # transformers 5 writes rope_theta inside rope_parameters only; 4.x and vLLM read it top-level
        c = _read_json(tmp / "config.json")
        _write_json(tmp / "config.json", {**c, "rope_theta": cfg.rope_theta})
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        hf_tok.save_pretrained(str(tmp))
        # name the generic fast class (transformers 5 writes its internal "TokenizersBackend"),
        # so older transformers and serving stacks load the directory too
        tc = _read_json(tmp / "tokenizer_config.json")
        _write_json(tmp / "tokenizer_config.json", {**tc, "tokenizer_class": "PreTrainedTokenizerFast"})
        _write_json(tmp / "mtp_bench_export.json", {"source": str(raw.path), "source_format": raw.format,
                                                   "n_future_dropped": cfg.n_future - 1, "format": format})

    return write_dir_atomically(out, fill)
