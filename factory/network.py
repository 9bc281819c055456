"""Reachability checks, so that a source or weights asked for by name fail within seconds when offline
(no retries against an unreachable host) with a message saying how to use local files instead."""

from __future__ import annotations

import os
import socket
import sys
from contextlib import contextmanager
from urllib.parse import urlparse

CHANGES_NO_RESULT = True

TIMEOUT_S = 3.0


def reachable(host: str, port: int = 443, timeout: float = TIMEOUT_S) -> bool:
    """True when ``host`` answers a TCP connect on ``port`` within ``timeout`` seconds."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_host() -> str:
    """The Hugging Face hub's host name (``HF_ENDPOINT`` when set)."""
    return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"


def hub_reachable(timeout: float = TIMEOUT_S) -> bool:
    """True when the Hugging Face hub answers a TCP connect within ``timeout`` and offline mode is off."""
    import huggingface_hub.constants as hf_constants

    return not hf_constants.HF_HUB_OFFLINE and reachable(hub_host(), timeout=timeout)


@contextmanager
def offline(active: bool = True):
    """Inside the block (when ``active``), huggingface_hub and the datasets library (when imported) use only
    their local caches; their settings are restored afterwards, so the rest of the process is unchanged."""
    if not active:
        yield
        return
    import huggingface_hub.constants as hf_constants

    datasets_config = sys.modules["datasets"].config if "datasets" in sys.modules else None
    saved = (os.environ.get("HF_HUB_OFFLINE"), hf_constants.HF_HUB_OFFLINE,
             datasets_config.HF_HUB_OFFLINE if datasets_config else None)
    os.environ["HF_HUB_OFFLINE"] = "1"
    hf_constants.HF_HUB_OFFLINE = True
    if datasets_config:
        datasets_config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved[0]
        hf_constants.HF_HUB_OFFLINE = saved[1]
        if datasets_config:
            datasets_config.HF_HUB_OFFLINE = saved[2]
