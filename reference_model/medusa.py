"""Import Medusa-1 heads (FasterDecoding/Medusa) on a Llama-family base into the reference transformer.

A Medusa directory holds `medusa_lm_head.pt` (the state dict of an nn.ModuleList of heads, each an
nn.Sequential of `medusa_num_layers` ResBlocks x + SiLU(W x + b), keys `{i}.{j}.linear.weight/bias`,
then a Linear to the vocabulary without bias, key `{i}.{medusa_num_layers}.weight`) and a
`config.json` with `medusa_num_heads`, `medusa_num_layers` and `base_model_name_or_path`. The base
must be a local Hugging Face Llama-family directory that hf_import.py converts exactly (an absolute
path, or one relative to the Medusa directory; hub ids are not fetched).

The result is a `Transformer` with head_type="medusa" and n_future = 1 + medusa_num_heads: head 0 is
the base model, Medusa head i (our head i+1) reads the base's final-normed last hidden state, as
Medusa's MedusaModel does, and predicts token t+2+i. Drafting is one token per head, verified by
the same lossless check as every other drafter; Medusa's tree attention over top-k candidates
(medusa_choices) and its typical-acceptance sampling are out of scope.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mtp_bench.api.errors import CheckpointError, ConfigError
from mtp_bench.reference_model import hf_import
from mtp_bench.reference_model.model import ModelConfig, Transformer

HEAD_FILE = "medusa_lm_head.pt"


def is_medusa_dir(d: Path) -> bool:
    return (d / HEAD_FILE).is_file()


def read_medusa_config(d: Path) -> dict[str, Any]:
    try:
        c = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{d / 'config.json'}: cannot read the Medusa config: {e}") from None
    if not isinstance(c, dict):
        raise CheckpointError(f"{d / 'config.json'}: not a JSON object")
    for key in ("medusa_num_heads", "medusa_num_layers"):
        v = c.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{d / 'config.json'}: {key} must be a positive integer, got {v!r}")
    if not isinstance(c.get("base_model_name_or_path"), str):
        raise ConfigError(f"{d / 'config.json'}: base_model_name_or_path (the base model's directory) is missing")
    return c


def base_dir(d: Path, c: dict[str, Any]) -> Path:
    """The base model's local directory: absolute, or relative to the Medusa directory."""
    b = Path(c["base_model_name_or_path"]).expanduser()
    b = b if b.is_absolute() else d / b
    if not (b / "config.json").is_file():
        raise CheckpointError(f"{d}: the Medusa base model {c['base_model_name_or_path']!r} is not a local Hugging Face "
                              f"directory (looked for {b / 'config.json'}); hub ids are not fetched, point it at a copy")
    return b


def heads_state_dict(sd: dict[str, torch.Tensor], n_heads: int, n_layers: int, dim: int, vocab: int,
                     where: Path) -> dict[str, torch.Tensor]:
    """medusa_lm_head.pt tensors -> extra_heads.{i}.res.{j}.* and extra_heads.{i}.output.weight."""
    out: dict[str, torch.Tensor] = {}
    expected: dict[str, tuple[int, ...]] = {}
    for i in range(n_heads):
        for j in range(n_layers):
            expected[f"{i}.{j}.linear.weight"] = (dim, dim)
            expected[f"{i}.{j}.linear.bias"] = (dim,)
            out[f"extra_heads.{i}.res.{j}.weight"] = f"{i}.{j}.linear.weight"
            out[f"extra_heads.{i}.res.{j}.bias"] = f"{i}.{j}.linear.bias"
        expected[f"{i}.{n_layers}.weight"] = (vocab, dim)
        out[f"extra_heads.{i}.output.weight"] = f"{i}.{n_layers}.weight"
    missing = sorted(set(expected) - set(sd))
    extra = sorted(set(sd) - set(expected))
    if missing or extra:
        what = "; ".join(p for p in (f"missing {', '.join(missing[:3])}" if missing else "",
                                     f"unexpected {', '.join(extra[:3])}" if extra else "") if p)
        raise CheckpointError(f"{where}: not {n_heads} Medusa-1 heads of {n_layers} ResBlock(s) each: {what}")
    for k, shape in expected.items():
        if tuple(sd[k].shape) != shape:
            raise CheckpointError(f"{where}: {k} has shape {tuple(sd[k].shape)}, the base model needs {shape}")
    return {ours: sd[theirs].contiguous() for ours, theirs in out.items()}


def load_medusa_module(d: Path):
    """(Transformer, base directory, weight files) for a Medusa directory, float32 on the CPU."""
    c = read_medusa_config(d)
    b = base_dir(d, c)
    base_cfg = hf_import.read_hf_config(b)
    reason = hf_import.unsupported_reason(base_cfg)
    if reason:
        raise ConfigError(f"{b}: Medusa heads load on a Llama-family base the reference model implements; this one: {reason}")
    main = hf_import.config_from_hf(base_cfg, b / "config.json")
    n, L = c["medusa_num_heads"], c["medusa_num_layers"]
    cfg = ModelConfig.from_dict({**main.to_dict(), "n_future": 1 + n, "n_layers": main.n_layers + n,
                                 "head_type": "medusa", "medusa_layers": L})
    tensors, files = hf_import.load_hf_tensors(b)
    sd = hf_import.state_dict_from_hf(tensors, main, bool(base_cfg.get("tie_word_embeddings", False)), b)
    try:
        heads = torch.load(str(d / HEAD_FILE), map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types on a damaged file
        raise CheckpointError(f"cannot read {d / HEAD_FILE}: {str(e).splitlines()[0]}") from None
    if not isinstance(heads, dict) or not all(isinstance(v, torch.Tensor) for v in heads.values()):
        raise CheckpointError(f"{d / HEAD_FILE} does not hold a state dict of tensors")
    sd.update(heads_state_dict(heads, n, L, cfg.dim, cfg.vocab_size, d / HEAD_FILE))
    with torch.device("meta"):
        module = Transformer(cfg)
    module.load_state_dict(sd, strict=True, assign=True)
    return module, b, [*files, d / HEAD_FILE]
