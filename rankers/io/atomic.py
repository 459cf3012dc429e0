"""Atomic writes: a file or a directory appears complete under its final name, or not at all.

* :func:`atomic_write` -- a file written through a temporary sibling and ``os.replace``-d into place.
* :func:`materialize` -- a directory artefact built in a staging sibling, finished by a
  ``manifest.json`` (kind + parameters) and renamed into place; a directory whose manifest records the
  same parameters is reused (idempotent), a concurrent builder that wins the race is accepted.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["MANIFEST", "atomic_write", "materialize", "read_manifest", "short_hash", "staging_dir"]

MANIFEST = "manifest.json"


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on a clean exit it replaces ``path``, on an
    exception it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with open(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def short_hash(params: dict[str, Any]) -> str:
    blob = json.dumps(params, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:12]


def read_manifest(root: Path) -> dict[str, Any] | None:
    path = root / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def is_complete(root: Path, kind: str, params: dict[str, Any]) -> bool:
    manifest = read_manifest(root)
    return bool(manifest) and manifest.get("kind") == kind and manifest.get("params") == params


@contextmanager
def staging_dir(root: Path) -> Iterator[Path]:
    """A fresh temporary sibling of ``root``, removed afterwards unless it was renamed away."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def materialize(root: Path, kind: str, params: dict[str, Any],
                 build: Callable[[Path], dict[str, Any]]) -> Path:
    """Make ``root`` hold the artefact ``build`` writes, unless it already holds it.

    ``build(tmp)`` fills an empty staging directory and returns the manifest, which is written
    last; the staging directory is then renamed to ``root``. An existing ``root`` is replaced only
    if it is empty or holds a manifest of the same ``kind`` (other parameters); anything else is
    refused with :class:`FileExistsError` rather than deleted.
    """
    if is_complete(root, kind, params):
        return root
    if root.exists():
        manifest = read_manifest(root)
        if not root.is_dir() or (any(root.iterdir()) and (manifest or {}).get("kind") != kind):
            raise FileExistsError(f"{root}: exists and is not a {kind} directory; refusing to overwrite it")
    with staging_dir(root) as tmp:
        manifest = build(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n",
                                     encoding="utf-8")
        if root.exists():
            if is_complete(root, kind, params):  # a concurrent builder won the race
                return root
            old = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(root, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, root)
        except OSError:
            if is_complete(root, kind, params):  # a concurrent builder won the race
                return root
            raise
    return root
