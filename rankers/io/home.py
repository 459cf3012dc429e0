"""The cache root every generated or derived artefact lives under."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["rankers_home"]


def rankers_home() -> Path:
    """The cache root: ``$RANKERS_HOME`` if set, else ``~/.cache/rankers``."""
    env = os.environ.get("RANKERS_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rankers"
