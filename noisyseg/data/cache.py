"""Decode and resize each split once, and cache it as uint8 arrays.

Epochs never re-decode images (ISIC JPEGs reach 4288x2848). The cache key is a hash of the source's
identity, the target size, the ordered ID list and the noise model (if any), so any change to
those makes a new entry and a stale entry is never read.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from noisyseg.atomic import write_atomic
from noisyseg.data.sources import Source
from noisyseg.progress import progress_bar

CACHE_VERSION = 1


class MaskNoise(Protocol):
    """Corrupts a native-resolution mask; ``key`` identifies the noise configuration."""

    key: str

    def __call__(self, sample_id: str, mask: np.ndarray) -> np.ndarray: ...


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    # Area-average then threshold: keeps thin structures better than nearest-neighbour.
    resized = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    return (resized >= 0.5).astype(np.uint8)


def _decode(source: Source, ids: list[str], size: int, noise: MaskNoise | None, desc: str,
            show: bool) -> dict[str, np.ndarray]:
    images = np.empty((len(ids), size, size, 3), np.uint8)
    masks = np.empty((len(ids), size, size), np.uint8)
    noisy = np.empty_like(masks) if noise is not None else None
    with source.reporting():  # one warning per kind of fix-up for the whole split, with a count
        for k, sample_id in enumerate(progress_bar(ids, desc=desc, unit="img", enabled=show and len(ids) >= 50)):
            image, mask = source.load(sample_id, draft_size=size)
            images[k], masks[k] = resize_image(image, size), resize_mask(mask, size)
            if noisy is not None:
                noisy[k] = resize_mask(noise(sample_id, mask), size)  # corrupted at native resolution
    arrays = {"images": images, "masks": masks}
    if noisy is not None:
        arrays["noisy_masks"] = noisy
    return arrays


def cache_key(source: Source, ids: list[str], size: int, noise: MaskNoise | None) -> str:
    blob = json.dumps([CACHE_VERSION, source.key, size, ids, noise.key if noise else None])
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def load_arrays(source: Source, ids: list[str], size: int, cache_dir: str | Path | None = None,
                noise: MaskNoise | None = None, split: str = "data", progress: bool = True) -> dict[str, np.ndarray]:
    """Images ``[N, size, size, 3]`` and masks ``[N, size, size]`` (uint8) for ``ids``, in order.

    With ``noise``, also ``noisy_masks``. Reads from / writes to ``cache_dir`` when given. ``progress``
    reports the decoding of splits of 50+ images (:mod:`noisyseg.progress`).
    """
    if not ids:
        return {"images": np.empty((0, size, size, 3), np.uint8), "masks": np.empty((0, size, size), np.uint8)}
    if cache_dir is None:
        return _decode(source, ids, size, noise, f"decode {split}", progress)
    path = Path(cache_dir) / f"{source.name}_{split}_{size}px_{cache_key(source, ids, size, noise)}.npz"
    if path.exists():
        with np.load(path) as stored:
            return dict(stored)
    arrays = _decode(source, ids, size, noise, f"decode {split}", progress)
    write_atomic(path, lambda tmp: _savez(tmp, arrays))  # a reader sees the whole file or none
    return arrays


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a path
        np.savez(f, **arrays)
