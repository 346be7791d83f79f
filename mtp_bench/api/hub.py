"""The Hugging Face hub, reachable or not: one short probe instead of a dozen retries.

Offline, `datasets` and `huggingface_hub` retry every request for tens of seconds before they give
up (the quick start spent 23 s and 12 log lines on it). `go_offline_if_unreachable` probes the hub
once (a TCP connection to its host, 2 s at most) and, when it does not answer, puts the process in
the libraries' own offline mode (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE, TRANSFORMERS_OFFLINE, also in
those modules if already imported), so every later lookup fails at once with a local message.
Imports only the standard library.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from urllib.parse import urlparse

OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def is_offline(env=os.environ) -> bool:
    """Whether the user (or an earlier probe) already put the hub libraries offline.

    >>> is_offline({"HF_HUB_OFFLINE": "1"}), is_offline({"HF_HUB_OFFLINE": "0"}), is_offline({})
    (True, False, False)
    """
    return any(env.get(v, "").strip().lower() not in ("", "0", "false", "no", "off") for v in OFFLINE_VARS)


def hub_host(env=os.environ) -> tuple[str, int]:
    """(host, port) of the hub: $HF_ENDPOINT's (a mirror) or huggingface.co:443.

    >>> hub_host({}), hub_host({"HF_ENDPOINT": "http://mirror.local:8080"})
    (('huggingface.co', 443), ('mirror.local', 8080))
    """
    url = urlparse(env.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def hub_reachable(timeout: float = 2.0, env=os.environ) -> bool:
    """One TCP connection to the hub's host (DNS included), `timeout` seconds at most."""
    try:
        socket.create_connection(hub_host(env), timeout=timeout).close()
        return True
    except OSError:
        return False


def set_offline() -> None:
    """The libraries' offline mode, in the environment and in those already imported."""
    for v in OFFLINE_VARS:
        os.environ[v] = "1"
    for module, attrs in (("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
                          ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))):
        mod = sys.modules.get(module)
        for a in attrs:
            if mod is not None and hasattr(mod, a):
                setattr(mod, a, True)


def go_offline_if_unreachable(say: Callable[[str], None], probe: Callable[[], bool] | None = None) -> bool:
    """Unless already offline: probe the hub once (`probe`, default `hub_reachable`); unreachable ->
    offline mode and one line through `say`. Returns whether the run is offline now."""
    if is_offline():
        return True
    if (probe or hub_reachable)():
        return False
    set_offline()
    host, _ = hub_host()
    say(f"the Hugging Face hub ({host}) is unreachable: running offline (no downloads; benchmark data "
        "comes from --data-dir or $MTP_BENCH_DATA)")
    return True


HUB_EXTRA = "pip install 'mtp-bench[hub]'"  # the optional extra that brings `datasets`


def import_datasets(what: str, local: str):
    """The `datasets` package, for reading `what` from the hub: the only use the project makes of it
    (local files are read with the standard library), so it is an optional extra. Missing, it is a
    DataError of one line naming both ways out (`local`: the file to give instead), which a suite
    run turns into a skipped evaluator and the CLI into exit 2."""
    from mtp_bench.api.errors import DataError

    try:
        import datasets
    except ImportError:
        raise DataError(f"{what} has no local copy, and reading it from the Hugging Face hub needs the optional "
                        f"package datasets, which is not installed: {HUB_EXTRA}, or give {local} "
                        "with --data-dir DIR (or MTP_BENCH_DATA=DIR)") from None
    return datasets
