"""Device helpers: the bottom layer that the training loop, inference and the entry points share."""
from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; any other name is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (a no-op off CUDA), so wall-clock timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
