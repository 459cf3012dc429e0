"""The one checkpoint loader: a rankers Lightning checkpoint (``weights_only=True``) to its model.

Used by export, serving, the DE's online teacher and negative mining alike.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["CROSS_ATTENTION", "DUAL_ENCODER", "checkpoint_kind", "load_checkpoint"]

DUAL_ENCODER, CROSS_ATTENTION = "dual_encoder", "cross_attention"
_CLASS_NAMES = {"DualEncoderRanker": DUAL_ENCODER, "CrossAttentionRanker": CROSS_ATTENTION}


def _read_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # pickle errors, zip errors, weights_only refusals
        raise ValueError(f"{path}: not a Lightning checkpoint loadable with weights_only=True ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from None


def checkpoint_kind(path: str | Path) -> str:
    """``"dual_encoder"`` or ``"cross_attention"``: from the ``_class_path`` hyper-parameter the
    LightningCLI stores, else from the state-dict keys (``query_encoder.*`` / ``model.*``)."""
    path = Path(path)
    checkpoint = _read_checkpoint(path)
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise ValueError(f"{path}: field 'state_dict' missing: not a Lightning checkpoint")
    class_path = str(checkpoint.get("hyper_parameters", {}).get("_class_path", ""))
    if class_path.rsplit(".", 1)[-1] in _CLASS_NAMES:
        return _CLASS_NAMES[class_path.rsplit(".", 1)[-1]]
    if any(key.startswith("query_encoder.") for key in state):
        return DUAL_ENCODER
    if any(key.startswith("model.") for key in state):
        return CROSS_ATTENTION
    raise ValueError(f"{path}: field 'state_dict' has neither 'query_encoder.*' (DualEncoderRanker) nor 'model.*' "
                     f"(CrossAttentionRanker) keys; first keys: {list(state)[:3]}")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", expect: str | None = None):
    """The DualEncoderRanker / CrossAttentionRanker of a checkpoint, in eval mode (``weights_only=True``).

    The backbone named in the hyper-parameters must still be loadable (it supplies the config and the
    tokenizer; the weights come from the checkpoint). A DE's online teacher is not loaded. ``expect``
    (``"dual_encoder"`` / ``"cross_attention"``): a checkpoint of the other kind is a clear error.
    """
    from rankers.models.cross_encoder import CrossAttentionRanker
    from rankers.models.dual_encoder import DualEncoderRanker

    kind = checkpoint_kind(path)
    if expect is not None and kind != expect:
        names = {DUAL_ENCODER: "DualEncoderRanker", CROSS_ATTENTION: "CrossAttentionRanker"}
        raise ValueError(f"{path}: a {names[kind]} checkpoint, expected a {names[expect]} checkpoint")
    overrides: dict[str, Any] = {"gradient_checkpointing": False}
    if kind == DUAL_ENCODER:
        cls, overrides["teacher_checkpoint"] = DualEncoderRanker, None
    else:
        cls = CrossAttentionRanker
    model = cls.load_from_checkpoint(str(path), map_location=map_location, weights_only=True, **overrides)
    return model.eval()
