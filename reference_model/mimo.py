"""Import Hugging Face checkpoints with sequential MTP modules: Xiaomi MiMo; recognise DeepSeek-V3 / GLM-4.5.

MiMo (model_type "mimo", MiMoForCausalLM) is a Qwen2 model (q/k/v biases, `attention_bias: true`
in its config) plus `num_nextn_predict_layers` MTP modules stored as model.mtp_layers.{j}.*. It
becomes a reference `Transformer` with head_type="sequential" and n_future = 1 + that number:

    main model   the Qwen2 conversion of hf_import.py (names, rotary rows, biases, tied embeddings)
    module j     token_layernorm -> enorm, hidden_layernorm -> hnorm, input_proj -> proj,
                 self_attn.* / mlp.* / input_layernorm / post_attention_layernorm -> block.*
                 (rotary rows unpermuted like the main blocks), final_layernorm -> norm;
                 the unembedding is the shared lm_head

Semantics, as MiMo's modeling_mimo.py (MiMoMTPLayers) and vLLM's mimo_mtp.py define them:
module j reads the main model's last block output before model.norm, concatenated as
[hidden_layernorm(h); token_layernorm(emb)] (mtp_concat="hidden_first"), and returns
final_layernorm of its block output, which feeds lm_head. Neither source chains two modules
(vLLM runs module 0 only); where our drafting chains them, module j+1 reads module j's returned,
normed output (mtp_chain_normed=True), the value MiMo's layer hands back.

Position 0: vLLM zeroes the token embedding a module reads at position 0 when drafting. The
import keeps the training semantics by default (every position reads its token,
mtp_zero_first_embedding=False); `zero_first_embedding=True` switches vLLM's masking on.

DeepSeek-V3 (model_type "deepseek_v3") and GLM-4.5 (model_type "glm4_moe") keep their MTP module
at model.layers.{num_hidden_layers + i} (enorm, hnorm, eh_proj with the embedding first,
shared_head.norm, shared_head.head) on top of blocks the reference model does not implement:
multi-head latent attention (DeepSeek-V3) and mixture-of-experts feed-forwards (both; GLM-4.5
also rotates only part of each head). They are refused with a line naming what is missing,
rather than loaded through transformers, which drops the MTP layer without a word.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from mtp_bench.api.errors import CheckpointError, ConfigError
from mtp_bench.reference_model import hf_import
from mtp_bench.reference_model.model import ModelConfig, Transformer

# MTP tensor names under model.mtp_layers.{j}. -> ours under extra_heads.{j}. (block tensors: hf_import's names)
_MODULE_NAMES = {"token_layernorm.weight": "enorm.weight", "hidden_layernorm.weight": "hnorm.weight",
                 "input_proj.weight": "proj.weight", "final_layernorm.weight": "norm.weight"}

# what the reference model lacks for each recognised-but-refused family
_REFUSED = {
    "deepseek_v3": ("DeepSeek-V3", "multi-head latent attention (MLA) and mixture-of-experts (MoE) blocks"),
    "glm4_moe": ("GLM-4.5", "mixture-of-experts (MoE) blocks and partial rotary embeddings"),
}


def n_mtp_modules(c: dict[str, Any]) -> int:
    n = c.get("num_nextn_predict_layers") or 0
    return n if isinstance(n, int) and n > 0 else 0


def is_mimo(c: dict[str, Any]) -> bool:
    """A MiMo-style config: model_type "mimo" (or MiMoForCausalLM), or a qwen2 config with MTP modules."""
    archs = c.get("architectures") or []
    return c.get("model_type") == "mimo" or "MiMoForCausalLM" in archs or (
        c.get("model_type") == "qwen2" and n_mtp_modules(c) > 0)


def refusal(c: dict[str, Any], where: str | Path) -> str | None:
    """The line that refuses a DeepSeek-V3 / GLM-4.5 directory with MTP layers, or None."""
    family = _REFUSED.get(c.get("model_type"))
    n = n_mtp_modules(c)
    if family is None or n == 0:
        return None
    name, missing = family
    first = c.get("num_hidden_layers", "num_hidden_layers")
    return (f"{where}: a {name} checkpoint with {n} MTP layer(s) (model.layers.{first}...: enorm, hnorm, eh_proj, "
            f"shared_head): the reference model does not implement its {missing}, so neither the model nor its "
            "MTP layers can be loaded (transformers would load the model and silently drop the MTP layers)")


def config_from_mimo(c: dict[str, Any], where: str | Path = "config.json", zero_first_embedding: bool = False
                     ) -> tuple[ModelConfig, ModelConfig]:
    """MiMo config.json -> (the sequential-model config, the main model's n_future=1 config)."""
    n = n_mtp_modules(c)
    if n == 0:
        raise ConfigError(f"{where}: num_nextn_predict_layers must be a positive integer for a MiMo checkpoint, "
                          f"got {c.get('num_nextn_predict_layers')!r}")
    if c.get("use_mrope"):
        raise ConfigError(f"{where}: cannot import into the reference model: use_mrope (multimodal rotary) is not implemented")
    # MiMo's attention_bias=true is Qwen2's q/k/v bias (Qwen2 has it always and no o_proj bias)
    qwen = {k: v for k, v in c.items() if k not in ("attention_bias", "num_nextn_predict_layers")}
    main = hf_import.config_from_hf({**qwen, "model_type": "qwen2"}, where)
    d = main.to_dict()
    d.update(n_future=1 + n, n_layers=main.n_layers + n, head_type="sequential", mtp_concat="hidden_first",
             mtp_chain_normed=True, mtp_zero_first_embedding=zero_first_embedding)
    return ModelConfig.from_dict(d), main


def state_dict_from_mimo(sd: dict[str, torch.Tensor], cfg: ModelConfig, main: ModelConfig, tie_word_embeddings: bool,
                         where: str | Path = "weights") -> dict[str, torch.Tensor]:
    """MiMo tensors -> the reference names: the main model as hf_import converts it, then the modules."""
    pattern = re.compile(r"^model\.mtp_layers\.(\d+)\.(.+)$")
    mtp: dict[int, dict[str, torch.Tensor]] = {}
    rest: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        m = pattern.match(k)
        if m:
            mtp.setdefault(int(m.group(1)), {})[m.group(2)] = v
        else:
            rest[k] = v
    out = hf_import.state_dict_from_hf(rest, main, tie_word_embeddings, where)
    n = cfg.n_future - 1
    if sorted(mtp) != list(range(n)):
        raise CheckpointError(f"{where}: config.json says num_nextn_predict_layers={n} but the weights hold MTP layers "
                              f"{sorted(mtp) or 'none'} (model.mtp_layers.{{j}}.*)")
    block_names = dict(hf_import._BLOCK_NAMES)
    for j in range(n):
        t = mtp[j]
        expected = set(_MODULE_NAMES) | {k for k in block_names if not k.endswith(".bias")} | (
            {k for k in block_names if k.endswith(".bias")} if cfg.qkv_bias else set())
        missing = sorted(expected - set(t))
        extra = sorted(set(t) - expected - {"self_attn.rotary_emb.inv_freq"})
        if missing or extra:
            what = "; ".join(p for p in (f"missing {', '.join(missing[:3])}" if missing else "",
                                         f"unexpected {', '.join(extra[:3])}" if extra else "") if p)
            raise CheckpointError(f"{where}: MTP layer model.mtp_layers.{j} is not in MiMo's layout: {what}")
        for hf, ours in _MODULE_NAMES.items():
            out[f"extra_heads.{j}.{ours}"] = t[hf]
        for hf, ours in block_names.items():
            if hf not in t:
                continue  # biases of a bias-free model
            w = t[hf]
            if hf.startswith(("self_attn.q_proj", "self_attn.k_proj")):
                w = hf_import._unpermute_rotary(w, cfg.n_heads if "q_proj" in hf else cfg.kv_heads)
            out[f"extra_heads.{j}.block.{ours}"] = w
    return {k: v.contiguous() for k, v in out.items()}


def load_mimo_module(d: Path, hf_cfg: dict[str, Any], zero_first_embedding: bool = False):
    """The reference Transformer of a MiMo directory (float32 on the CPU) and its weight files."""
    cfg, main = config_from_mimo(hf_cfg, d / "config.json", zero_first_embedding)
    tensors, files = hf_import.load_hf_tensors(d)
    sd = state_dict_from_mimo(tensors, cfg, main, bool(hf_cfg.get("tie_word_embeddings", False)), d)
    with torch.device("meta"):
        module = Transformer(cfg)
    try:
        module.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:  # shapes that config.json does not describe
        raise CheckpointError(f"{d}: weights do not match config.json: {str(e).splitlines()[-1].strip()}") from None
    return module, files
