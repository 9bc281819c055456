"""Reachability checks, so that a source or weights asked for by name fail within seconds when offline
(no retries against an unreachable host) with a message saying how to use local files instead."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

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


def go_offline() -> None:
    """Make huggingface_hub (and the datasets library, when imported) use only their local caches."""
    import sys

    import huggingface_hub.constants as hf_constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    hf_constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        sys.modules["datasets"].config.HF_HUB_OFFLINE = True
