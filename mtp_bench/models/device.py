"""Devices and dtypes: what `--device` / `--dtype` resolve to, and a device in words for provenance.

Device default: cuda when available, else cpu. dtype default: float32 on cpu, bfloat16 on cuda.
"""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from mtp_bench.api.errors import ConfigError, UnknownNameError, UserError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64}


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"invalid device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ConfigError(f"unsupported dtype {dtype}; use one of {', '.join(DTYPES)}")
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise UnknownNameError(f"unknown dtype {dtype!r}; known dtypes: {', '.join(DTYPES)}")
    return DTYPES[name]


def device_name(device: Any) -> str:
    """The device in words: "cpu (x86_64)" or "cuda:0 (NVIDIA H100 80GB HBM3)"."""
    d = torch.device(device)
    if d.type == "cuda" and torch.cuda.is_available():
        return f"{d} ({torch.cuda.get_device_name(d)})"
    return f"{d} ({platform.machine()})"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def choose_threads(requested: int | None, load: float | None = None, cores: int | None = None) -> tuple[int, str]:
    """torch's intra-op threads for a run, and why. `requested` (--threads) wins; else the cores
    that other processes are not already using (usable cores minus the 1-minute load average,
    rounded, at least 1): on a shared machine, one thread a core that is free does not collapse
    the way oversubscribed threads do (measured in the README, Performance).

    >>> choose_threads(None, load=0.1, cores=8)
    (8, 'auto: 8 cores, load average 0.1')
    >>> choose_threads(None, load=1.7, cores=2)
    (1, 'auto: 2 cores, load average 1.7')
    >>> choose_threads(3)
    (3, '--threads')
    """
    if requested is not None:
        if requested < 1:
            raise UserError(f"--threads must be >= 1, got {requested}")
        return requested, "--threads"
    cores = cores if cores is not None else usable_cores()
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average (Windows): all cores
            return cores, f"auto: {cores} cores"
    return max(1, min(cores, cores - round(load))), f"auto: {cores} cores, load average {load:.1f}"
