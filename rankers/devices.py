"""The one device picker: an explicit device, else CUDA when available, else the CPU."""
from __future__ import annotations

import torch

__all__ = ["pick_device"]


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a :class:`torch.device`; by default ``cuda`` when a GPU is visible, else ``cpu``."""
    if device is not None and device != "":
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
