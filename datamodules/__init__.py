"""Data for rankers: readers for standard formats, the embedded default, mining, the shared DataModule."""
from __future__ import annotations

import importlib

_EXPORTS = {"RankingDataModule": "datamodules.datamodule"}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'datamodules' has no attribute '{name}'")
