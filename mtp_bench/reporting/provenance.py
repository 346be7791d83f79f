"""Provenance: what produced a result, so that anyone can tell two result files apart and
rerun one. Recorded in every result file under "provenance"."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from mtp_bench.api.version import __version__
from mtp_bench.models.device import device_name


def git_commit(start: Path | None = None) -> str | None:
    """The commit of the mtp-bench checkout this code runs from; None when it is not a git
    checkout (a wheel install) or git is unavailable. Read-only: `git rev-parse HEAD` only."""
    here = Path(start or Path(__file__).resolve().parent)
    root = next((p for p in (here, *here.parents) if (p / ".git").exists()), None)
    if root is None:
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


def utc_now() -> str:
    """Current time, UTC, ISO 8601 with seconds: "2024-05-01T12:00:00Z"."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # not installed: recorded as None, never guessed
        return None


def collect(seed: int, device: Any, argv: list[str] | None, start_time: str, duration_s: float,
            devices: list[str] | None = None) -> dict[str, Any]:
    """The provenance block of a result file. `devices`: every rank's device under torchrun
    (world_size = their number); None for a single process (world size 1, `device`)."""
    import torch


    return {
        "mtp_bench_version": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "platform": platform.platform(),
        "device": device_name(device),
        "world_size": len(devices) if devices else 1,
        "devices": list(devices) if devices else [device_name(device)],
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "seed": int(seed),
        "command": shlex.join(["mtp-bench", *argv]) if argv is not None else shlex.join(sys.argv),
        "start_time": start_time,
        "duration_s": round(float(duration_s), 3),
    }
