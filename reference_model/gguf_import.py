"""GGUF files (llama.cpp's format) as Hugging Face directories the reference model imports.

transformers reads a GGUF file (`from_pretrained(dir, gguf_file=name)`, with the `gguf`
package): it dequantizes every tensor (Q4_1, Q8_0, F16, ... -> float32) and undoes llama.cpp's
rotary row permutation of q/k, so the result is an ordinary HF Llama state dict. That takes
tens of seconds to minutes, so it is done once per file and cached as an HF directory:

    $MTP_BENCH_CACHE_DIR/gguf/<sha256 of the .gguf file>/
        config.json         the HF config transformers derived from the GGUF metadata
        model.safetensors   the dequantized tensors (float32: 4 bytes a parameter, so SmolLM2-135M's
                            98 MB Q4_1 file becomes 517 MB; Q4_1 dequantizes to d*q + m with float16
                            d and m, which bfloat16 holds exactly for 3% of the embedding's values
                            and float16 for 21%, so any smaller storage would change the logits)
        tokenizer.json ...  the tokenizer stored in the GGUF, saved by transformers
        gguf.json           where it came from: file name, size, sha256, tensor types

The directory is written to a temp sibling and renamed into place (checkpoint.write_dir_atomically),
so a crash or a bad file never leaves a half-written cache entry. Later loads go through
hf_import like any HF directory (rotary unpermutation, tied embeddings, refusals).

Needs the `gguf` and `accelerate` packages (dependencies of mtp-bench); where one is missing, one
line names the `pip install` that fixes it (MissingPackageError). Refused with a clear line
(CheckpointError): a file that is not GGUF (bad magic), a truncated
or corrupt file, an architecture other than the Llama family hf_import implements.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from mtp_bench.api.errors import CheckpointError, require_packages
from mtp_bench.api.files import weights_sha256
from mtp_bench.api.paths import cache_root
from mtp_bench.reference_model.checkpoint import write_dir_atomically

GGUF_MAGIC = b"GGUF"
PACKAGES = ("gguf", "accelerate")  # transformers reads GGUF with gguf and asks for accelerate (both dependencies)
ARCHITECTURES = ("llama", "mistral", "qwen2")  # general.architecture values hf_import can take


def default_cache_dir() -> Path:
    """The cache root (`mtp_bench.api.paths.cache_root`: $MTP_BENCH_CACHE_DIR, else ~/.cache/mtp-bench)."""
    return cache_root()


def read_metadata(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The GGUF key/value metadata and {tensor name: quantization type}; CheckpointError on a bad file.
    Reads the header only (memory-mapped), and checks every tensor's data lies inside the file."""
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise CheckpointError(f"{path}: not a GGUF file (no GGUF magic bytes)")
    try:
        from gguf import GGUFReader

        r = GGUFReader(str(path))
    except (ValueError, struct.error, IndexError, KeyError, OSError, EOFError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated GGUF file: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    meta: dict[str, Any] = {}
    for name, field in r.fields.items():
        if name.startswith("tokenizer.ggml.") and name not in ("tokenizer.ggml.model", "tokenizer.ggml.pre"):
            continue  # the vocabulary itself: large, not needed here
        try:
            v = field.contents()
        except Exception:  # a field type this gguf version cannot decode: skip it (metadata only)
            continue
        if isinstance(v, (str, int, float, bool)) or (isinstance(v, list) and len(v) < 64):
            meta[name] = v
    size = path.stat().st_size
    types: dict[str, str] = {}
    for t in r.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise CheckpointError(f"{path}: truncated GGUF file: tensor {t.name!r} ends at byte {end:,} of {size:,}")
        types[t.name] = t.tensor_type.name
    if not types:
        raise CheckpointError(f"{path}: GGUF file holds no tensors")
    return meta, types


def file_sha256(path: Path) -> str:
    return weights_sha256([path])  # cached per (path, mtime, size)


def cached_hf_dir(gguf_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """The HF directory holding this GGUF file's dequantized model; converted on first use."""
    p = Path(gguf_path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"GGUF file not found: {p}")
    require_packages(PACKAGES, "loading a .gguf file")  # one line naming the pip install, not a traceback
    meta, types = read_metadata(p)
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{p}: GGUF architecture {arch!r} is not implemented in the reference model "
                              f"(supported: {', '.join(ARCHITECTURES)})")
    sha = file_sha256(p)
    out = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    out = out / "gguf" / sha
    if (out / "gguf.json").is_file() and (out / "model.safetensors").is_file():
        return out
    _convert(p, out, sha, meta, types)
    return out


def _convert(p: Path, out: Path, sha: str, meta: dict, types: dict[str, str]) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging


    hf_logging.disable_progress_bar()
    try:
        tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
        model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
    except Exception as e:  # gguf/transformers raise many types on a damaged or unusual file
        raise CheckpointError(f"{p}: transformers cannot read this GGUF file: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from None
    cfg = json.loads(model.config.to_json_string(use_diff=False))
    cfg.pop("quantization_config", None)  # the cached tensors are plain float32
    cfg.pop("_name_or_path", None)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if cfg.get("tie_word_embeddings") and "lm_head.weight" in sd:
        del sd["lm_head.weight"]  # the same matrix as the embedding; safetensors refuses shared storage

    def fill(d: Path) -> None:
        (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
        tok.save_pretrained(str(d))
        info = {"source": str(p.resolve()), "file_name": p.name, "size": p.stat().st_size, "sha256": sha,
                "architecture": meta.get("general.architecture"), "name": meta.get("general.name"),
                "tensor_types": sorted(set(types.values()))}
        (d / "gguf.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")

    write_dir_atomically(out, fill)
