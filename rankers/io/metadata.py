"""Reading the small JSON metadata files rankers writes (index, export, chunk manifests), one way."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["read_json"]


def read_json(path: str | Path, missing: str = "", invalid: str = "") -> Any:
    """The JSON value stored in ``path``.

    A missing file raises ``ValueError("PATH: not found; <missing>")``, a malformed one
    ``ValueError("PATH:LINE: invalid JSON (<reason>)<; invalid>")`` -- the file and line, never a
    ``json`` traceback. ``missing`` / ``invalid`` say what the file should have been or what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: not found" + (f"; {missing}" if missing else ""))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: invalid JSON ({err.msg})" + (f"; {invalid}" if invalid else "")) from None
