"""Weight-only int8 storage for drafting heads: a quarter of float32 on disk, the same model in memory.

A heads checkpoint stored with `heads_dtype=int8` keeps every matrix (a tensor of 2 or more
dimensions) as int8 with one float32 scale per output row (symmetric absmax: w ~ q * scale,
q in [-127, 127]); vectors (norm gains, biases) stay float32. Loading dequantizes once, so the
model in memory is the dequantized one and everything downstream (drafting, evaluation) is
unchanged. Drafts come from these weights; verification stays with the untouched base model, so
speculative decoding is as lossless as with float32 heads. The rounding error per weight is at
most scale / 2 = absmax(row) / 254.

    >>> import torch
    >>> w = torch.tensor([[1.0, -0.5, 0.25], [0.0, 2.0, -2.0]])
    >>> sd = quantize_state_dict({"a.weight": w, "a.norm": torch.ones(3)})
    >>> sorted(sd), sd["a.weight"].dtype
    (['a.norm', 'a.weight', 'a.weight.scale'], torch.int8)
    >>> back = dequantize_state_dict(sd)
    >>> bool((back["a.weight"] - w).abs().max() <= 2.0 / 254), torch.equal(back["a.norm"], torch.ones(3))
    (True, True)
"""

from __future__ import annotations

import torch

SCALE_SUFFIX = ".scale"


def quantize_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Matrices to int8 + per-row float32 scales (key + '.scale'); everything else float32 as is."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.endswith(SCALE_SUFFIX):
            raise ValueError(f"{k}: a key may not end in {SCALE_SUFFIX!r} (reserved for int8 scales)")
        if v.dim() >= 2 and v.is_floating_point():
            w = v.detach().float().reshape(v.shape[0], -1)  # (rows, cols)
            scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (rows,)
            out[k] = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8).reshape(v.shape).contiguous()
            out[k + SCALE_SUFFIX] = scale.contiguous()
        else:
            out[k] = v.detach().float().contiguous() if v.is_floating_point() else v.detach().contiguous()
    return out


def dequantize_state_dict(sd: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The inverse of quantize_state_dict (up to rounding): int8 tensors with a '.scale' beside them
    become `dtype`; a state dict without int8 tensors comes back unchanged."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.endswith(SCALE_SUFFIX):
            continue
        scale = sd.get(k + SCALE_SUFFIX)
        if v.dtype == torch.int8:
            if scale is None or scale.shape != (v.shape[0],):
                raise ValueError(f"{k}: int8 weights without a per-row scale of shape ({v.shape[0]},)")
            out[k] = (v.float().reshape(v.shape[0], -1) * scale.float()[:, None]).reshape(v.shape).to(dtype)
        else:
            out[k] = v
    return out


def is_quantized(sd: dict[str, torch.Tensor]) -> bool:
    return any(v.dtype == torch.int8 for v in sd.values())
