"""Atomic file output: every result file (JSON, CSV, images, checkpoints, caches) is written to a temporary
file and renamed over the target, so a reader or a crash never sees a partial file."""
from __future__ import annotations

import contextlib
import csv
import json
import os
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from noisyseg.errors import NoisysegError


def prepare_run_dir(path: str | Path) -> Path:
    """Create the output folder ``path`` and check that a file can be written in it.

    Raises:
        NoisysegError: the folder cannot be created or written (a parent is a file, read-only, ...).
    """
    path = Path(path)
    probe = path / f".write-test.{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise NoisysegError(f"{path}: cannot write to the output folder ({err.strerror or err})") from None
    return path


def write_atomic(path: str | Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it over ``path``: a reader
    (or a crash) sees the old file or the complete new one, never a partial one.

    Raises:
        NoisysegError: the file cannot be written; the previous version, if any, is kept.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)  # the old file stays intact until the new one is complete
    except (OSError, RuntimeError) as err:  # torch reports a failed write (disk full, ...) as RuntimeError
        raise NoisysegError(f"{path}: cannot write ({type(err).__name__}: {err}); "
                            f"the previous version of the file, if any, is kept") from err
    finally:
        with contextlib.suppress(OSError):  # also when Ctrl-C interrupts the write
            tmp.unlink(missing_ok=True)


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically."""
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=float)))


def write_csv(path: str | Path, rows: list[dict]) -> None:
    """Write ``rows`` as a CSV atomically; the columns are every key, in order of first appearance."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
            writer.writeheader()
            writer.writerows(rows)

    write_atomic(path, write)


def write_image(path: str | Path, rgb: np.ndarray) -> None:
    """Write a uint8 RGB ``[H, W, 3]`` or grey ``[H, W]`` image atomically; the format follows the suffix."""
    path = Path(path)
    array = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    ok, encoded = cv2.imencode(path.suffix or ".png", array)
    if not ok:
        raise NoisysegError(f"{path}: cannot encode a {array.shape} {array.dtype} image")
    write_atomic(path, lambda tmp: tmp.write_bytes(encoded.tobytes()))
