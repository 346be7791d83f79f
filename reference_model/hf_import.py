"""Import Llama-family Hugging Face checkpoints into the reference transformer.

A Hugging Face Llama, Mistral (without sliding windows) or Qwen2 directory becomes a one-head
(n_future=1) `Transformer` of model.py, so the fast KV cache, cache rollback and batched extra
heads apply to real models too, and extra heads can be trained on top (`mtp-bench train --init`).

What changes on the way in:
    names      model.embed_tokens -> tok_embeddings, model.layers.i.self_attn.{q,k,v,o}_proj ->
               layers.i.attention.w{q,k,v,o}, mlp.{gate,down,up}_proj -> feed_forward.w{1,2,3},
               input_layernorm -> attention_norm, post_attention_layernorm -> ffn_norm,
               model.norm -> norm, lm_head -> output
    rotary     HF rotates halves of each head, we rotate interleaved pairs (Meta's layout): q/k rows
               (and Qwen2's q/k biases) are permuted, the inverse of transformers'
               convert_llama_weights_to_hf.py (and of our own export)
    tied       tie_word_embeddings: output.weight is a copy of the embedding
    widths     intermediate_size -> ffn_hidden (HF gives it explicitly); Qwen2 -> qkv_bias

Refused with a clear line (ConfigError), rather than loaded approximately: rope scaling of any
kind other than "default", sliding-window attention, attention/MLP biases other than Qwen2's
q/k/v, head_dim != hidden_size / num_attention_heads, activations other than SiLU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mtp_bench.api.errors import CheckpointError, ConfigError
from mtp_bench.reference_model.model import ModelConfig

MODEL_TYPES = ("llama", "mistral", "qwen2")

_BLOCK_NAMES = {  # HF name under model.layers.i. -> ours under layers.i.
    "self_attn.q_proj.weight": "attention.wq.weight", "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight", "self_attn.o_proj.weight": "attention.wo.weight",
    "self_attn.q_proj.bias": "attention.wq.bias", "self_attn.k_proj.bias": "attention.wk.bias",
    "self_attn.v_proj.bias": "attention.wv.bias",
    "mlp.gate_proj.weight": "feed_forward.w1.weight", "mlp.down_proj.weight": "feed_forward.w2.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight", "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}


def _rope_theta(c: dict[str, Any]) -> float:
    """rope_theta from the top level (transformers 4.x, vLLM) or rope_parameters (transformers 5)."""
    rp = c.get("rope_parameters") or {}
    theta = c.get("rope_theta", rp.get("rope_theta", 10000.0))
    return float(theta)


def unsupported_reason(c: dict[str, Any]) -> str | None:
    """Why this HF config cannot become a reference Transformer exactly, or None when it can."""
    mt = c.get("model_type")
    if mt not in MODEL_TYPES:
        return f"model_type {mt!r} is not one of {', '.join(MODEL_TYPES)}"
    for key in ("rope_scaling", "rope_parameters"):
        rs = c.get(key)
        if isinstance(rs, dict):
            kind = rs.get("rope_type", rs.get("type", "default"))
            if kind not in (None, "default"):
                return f"rope scaling {kind!r} is not implemented in the reference model"
    if c.get("hidden_act", "silu") != "silu":
        return f"hidden_act {c.get('hidden_act')!r} (only silu)"
    if c.get("attention_bias") or c.get("mlp_bias"):
        return "attention_bias/mlp_bias (biases on o_proj or the MLP) are not implemented"
    if mt == "qwen2" and c.get("use_sliding_window"):
        return "Qwen2 sliding-window attention is not implemented"
    if mt == "mistral" and c.get("sliding_window") not in (None, 0):
        win, ctx = c.get("sliding_window"), c.get("max_position_embeddings")
        if not (isinstance(win, int) and isinstance(ctx, int) and win >= ctx):
            return f"sliding_window={win} attention is not implemented"
    hd = c.get("head_dim")
    if hd is not None and hd != c["hidden_size"] // c["num_attention_heads"]:
        return f"head_dim={hd} differs from hidden_size/num_attention_heads"
    return None


def config_from_hf(c: dict[str, Any], where: str | Path = "config.json") -> ModelConfig:
    """HF config.json (as a dict) -> ModelConfig with n_future=1; ConfigError naming what is not supported."""
    try:
        reason = unsupported_reason(c)
        if reason:
            raise ConfigError(f"{where}: cannot import into the reference model: {reason}")
        return ModelConfig(
            vocab_size=int(c["vocab_size"]),
            dim=int(c["hidden_size"]),
            n_layers=int(c["num_hidden_layers"]),
            n_heads=int(c["num_attention_heads"]),
            n_kv_heads=int(c.get("num_key_value_heads") or c["num_attention_heads"]),
            ffn_hidden=int(c["intermediate_size"]),
            norm_eps=float(c.get("rms_norm_eps", 1e-6)),
            rope_theta=_rope_theta(c),
            max_seq_len=int(c.get("max_position_embeddings", 2048)),
            qkv_bias=c.get("model_type") == "qwen2",
            n_future=1,
        )
    except KeyError as e:
        raise ConfigError(f"{where}: missing required key {e.args[0]!r}") from None
    except ConfigError as e:
        if str(e).startswith(str(where)):
            raise
        raise ConfigError(f"{where}: {e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: bad value: {e}") from None


def _unpermute_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF's rotate-half rows -> interleaved-pair rows: the inverse of checkpoint._permute_rotary.
    Works for a weight (out, in) and a bias (out,)."""
    shape = w.shape
    w2 = w.reshape(shape[0], -1)
    rows = shape[0] // n_heads // 2
    return w2.view(n_heads, 2, rows, w2.shape[1]).transpose(1, 2).reshape(shape)


def state_dict_from_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig, tie_word_embeddings: bool,
                       where: str | Path = "weights") -> dict[str, torch.Tensor]:
    """HF Llama/Qwen2 tensors -> the reference model's names (layers.*, tok_embeddings, norm, output)."""
    sd = {k.removeprefix("model.") if k.startswith("model.") else k: v for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {}
    try:
        out["tok_embeddings.weight"] = sd["embed_tokens.weight"]
        out["norm.weight"] = sd["norm.weight"]
        if "lm_head.weight" in sd and not tie_word_embeddings:
            out["output.weight"] = sd["lm_head.weight"]
        else:  # tied: one matrix embeds and unembeds
            out["output.weight"] = sd["embed_tokens.weight"].clone()
        for i in range(cfg.n_layers):
            for hf, ours in _BLOCK_NAMES.items():
                key = f"layers.{i}.{hf}"
                if key not in sd:
                    if hf.endswith(".bias") and not cfg.qkv_bias:
                        continue
                    raise KeyError(key)
                t = sd[key]
                if hf.startswith(("self_attn.q_proj", "self_attn.k_proj")):
                    t = _unpermute_rotary(t, cfg.n_heads if "q_proj" in hf else cfg.kv_heads)
                out[f"layers.{i}.{ours}"] = t
    except KeyError as e:
        raise CheckpointError(f"{where}: missing tensor {e.args[0]!r} for a {cfg.n_layers}-layer Llama-family model") from None
    used = {"embed_tokens.weight", "norm.weight", "lm_head.weight"} | {
        f"layers.{i}.{hf}" for i in range(cfg.n_layers) for hf in _BLOCK_NAMES}
    extra = sorted(k for k in sd if k not in used and not k.endswith("rotary_emb.inv_freq"))
    if extra:
        raise CheckpointError(f"{where}: {len(extra)} tensor(s) the reference model has no place for, e.g. "
                              f"{', '.join(extra[:3])} (not a plain Llama-family model?)")
    return {k: v.contiguous() for k, v in out.items()}


def read_hf_config(d: Path) -> dict[str, Any]:
    try:
        c = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{d / 'config.json'}: cannot read: {e}") from None
    if not isinstance(c, dict):
        raise CheckpointError(f"{d / 'config.json'}: not a JSON object")
    return c


def load_hf_tensors(d: Path) -> tuple[dict[str, torch.Tensor], list[Path]]:
    """Every tensor of a HF directory (model.safetensors, sharded safetensors, or pytorch_model*.bin)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    files = sorted(d.glob("*.safetensors"))
    sd: dict[str, torch.Tensor] = {}
    if files:
        for f in files:
            try:
                sd.update(load_file(str(f)))
            except (SafetensorError, OSError) as e:
                raise CheckpointError(f"cannot read {f} (truncated or not safetensors?): {e}") from None
        return sd, files
    files = sorted(d.glob("pytorch_model*.bin"))
    if not files:
        raise CheckpointError(f"{d}: no weight files (*.safetensors, pytorch_model*.bin) found")
    for f in files:
        try:
            part = torch.load(str(f), map_location="cpu", weights_only=True)
        except Exception as e:  # torch.load raises many types on a damaged file
            raise CheckpointError(f"cannot read {f}: {str(e).splitlines()[0]}") from None
        sd.update(part)
    return sd, files
