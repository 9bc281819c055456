"""Content hashes of configuration values (recipes, plans)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def hash_config(obj: Any) -> str:
    """sha256 of the canonical JSON form of ``obj``."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
