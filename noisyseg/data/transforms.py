"""Albumentations pipelines built from config, applied jointly to an image and any per-pixel maps."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import albumentations as A
import numpy as np

from noisyseg.errors import ConfigError


def build_transform(spec: Iterable[Mapping[str, Any]] | None) -> A.Compose | None:
    """``[{"name": "HorizontalFlip", "p": 0.5}, ...]`` -> ``A.Compose``; empty or None -> None."""
    steps = []
    for item in spec or []:
        params = dict(item)
        name = params.pop("name", None)
        cls = getattr(A, str(name), None)
        if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
            raise ConfigError(f"data.augment: {name!r} is not an albumentations transform")
        try:
            steps.append(cls(**params))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"data.augment: bad parameters for {name}: {err}") from None
    return A.Compose(steps) if steps else None


def apply_transform(transform: A.Compose | None, image: np.ndarray, maps: list[np.ndarray],
                    seed: int | None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Apply one random draw to ``image`` ``[H, W, 3]`` and every map ``[H, W]`` alike.

    ``seed`` fixes the draw, so augmentation does not depend on data-loader workers or on where a
    resumed run restarted.
    """
    if transform is None:
        return image, maps
    if seed is not None:
        transform.set_random_seed(seed)
    out = transform(image=image, masks=maps)
    return out["image"], list(out["masks"])
