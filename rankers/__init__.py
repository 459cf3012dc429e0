"""rankers: train a cross-attention teacher and distill it into a dual-encoder retriever.

Menon et al., "In defense of dual-encoders for neural ranking", ICML 2022. Heavy imports (torch,
transformers, Lightning) happen on first attribute access, so ``import rankers.losses`` stays cheap.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "CrossAttentionRanker": "rankers.models.cross_encoder",
    "DualEncoderRanker": "rankers.models.dual_encoder",
    "RankerModule": "rankers.models.module",
    "load_checkpoint": "rankers.models.checkpoints",
    "WandbLogger": "rankers.loggers",
    "CSVLogger": "rankers.loggers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rankers' has no attribute '{name}'")
