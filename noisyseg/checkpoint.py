"""Checkpoints and result files: plain dicts/JSON, written atomically, loaded without executing code."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from noisyseg.errors import NoisysegError


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)  # the old file stays intact until the new one is complete
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a checkpoint dict (tensors, numbers, strings, lists, dicts) via temp file + rename."""
    _atomic(Path(path), lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: no code from the file is executed."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise NoisysegError(f"{path}: checkpoint not found") from None
    except Exception as err:  # torch raises many types for damaged or unsafe files
        raise NoisysegError(f"{path}: cannot load checkpoint ({type(err).__name__}: {err})") from None


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically."""
    _atomic(Path(path), lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=float)))
