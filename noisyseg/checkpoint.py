"""Checkpoints: plain dicts, written atomically, loaded without executing code."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from noisyseg.atomic import write_atomic
from noisyseg.errors import NoisysegError


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a checkpoint dict (tensors, numbers, strings, lists, dicts) via temp file + rename."""
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: no code from the file is executed."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise NoisysegError(f"{path}: checkpoint not found") from None
    except Exception as err:  # torch raises many types for damaged or unsafe files
        raise NoisysegError(f"{path}: cannot load checkpoint ({type(err).__name__}: {err})") from None
