"""Noise levels named by the Dice they give: find the ``noise.level`` at which a noise kind corrupts a
dataset's masks to a target mean Dice(noisy, true), and cache it.

A level means different things on different data (a box around a round lesion costs less Dice than
around an elongated one), so results are compared at a *realised* noise: ``noise.target_dice`` (a
number, or a name of :data:`noisyseg.noise.NAMED_DICE`). The realised Dice is measured as training
sees it: masks corrupted at native resolution, then both resized to ``data.size``, over the images
that the noise corrupts (``noise.fraction`` and ``noise.missing`` are separate axes and do not move
the level). Expected Dice falls with the level for every kind (one seed draws the same shapes at every
level), so the level is found by bisection; it is cached per (data, IDs, size, kind, seed, target).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from noisyseg.atomic import write_json
from noisyseg.data.cache import resize_mask
from noisyseg.data.sources import Source
from noisyseg.errors import ConfigError
from noisyseg.noise import NOISE_VERSION, MaskNoise, realised_dice

TOLERANCE = 0.02   # |realised - target| accepted; the tests hold calibration to it
MAX_MASKS = 200    # calibrate on at most this many masks of the split, spread evenly over it
BISECTIONS = 14    # level resolution 1 / 2**14


def corrupted_dice(noise: MaskNoise, masks: dict[str, np.ndarray], size: int) -> float:
    """Mean Dice(noisy, true) at ``size`` over ``masks`` (native resolution), every one corrupted."""
    every = MaskNoise(noise.kind, noise.level, 1.0, noise.seed)  # same per-sample seeds as ``noise``
    noisy = np.stack([resize_mask(every(i, m), size) for i, m in masks.items()])
    return realised_dice(noisy, np.stack([resize_mask(m, size) for m in masks.values()]))


def find_level(noise: MaskNoise, masks: dict[str, np.ndarray], target: float, size: int) -> tuple[float, float]:
    """The level of ``noise`` whose :func:`corrupted_dice` is closest to ``target``, and that Dice.

    Raises:
        ConfigError: When no level comes within :data:`TOLERANCE` of the target.
    """
    strongest = corrupted_dice(noise.at_level(1.0), masks, size)
    if strongest > target + TOLERANCE:
        raise ConfigError(f"noise.target_dice={target} is out of reach of noise.kind={noise.kind}: its strongest level "
                          f"(1.0) gives Dice {strongest:.3f} on these masks; ask for a higher Dice or another kind")
    low, high = (0.0, 1.0), (1.0, strongest)  # (level, Dice) on either side of the target
    for _ in range(BISECTIONS):
        level = (low[0] + high[0]) / 2
        dice = corrupted_dice(noise.at_level(level), masks, size)
        if dice > target:
            low = (level, dice)
        else:
            high = (level, dice)
    level, dice = min(low, high, key=lambda pair: abs(pair[1] - target))
    if abs(dice - target) > TOLERANCE:  # Dice jumps with the level here (e.g. coarse at level 0+)
        raise ConfigError(f"noise.target_dice={target} cannot be met by noise.kind={noise.kind} on these masks: "
                          f"the closest is Dice {dice:.3f} at level {level:.4f}")
    return level, dice


def calibrate(noise: MaskNoise, target: float, source: Source, ids: list[str], size: int,
              cache_dir: str | Path | None = None) -> tuple[MaskNoise, dict[str, float]]:
    """``noise`` at the level that gives mean Dice ``target`` on the masks of ``ids``, and a report
    ``{"target_dice", "level", "calibrated_dice", "calibration_masks"}``; read from / written to
    ``cache_dir`` when given."""
    if not ids:
        raise ConfigError("noise.target_dice needs a non-empty noisy split to calibrate on")
    ordered = sorted(ids)
    picks = ordered if len(ordered) <= MAX_MASKS else [ordered[i] for i in np.linspace(0, len(ordered) - 1, MAX_MASKS).astype(int)]
    blob = json.dumps([NOISE_VERSION, source.key, picks, size, noise.kind, noise.seed, target])
    path = Path(cache_dir) / f"noise_level_{hashlib.sha1(blob.encode()).hexdigest()[:16]}.json" if cache_dir else None
    if path is not None and path.exists():
        report = json.loads(path.read_text())
    else:
        with source.reporting():  # fix-ups warned once, as when the split is decoded
            masks = {i: source.load(i, draft_size=size)[1] for i in picks}
        level, dice = find_level(noise, masks, target, size)
        report = {"target_dice": target, "level": level, "calibrated_dice": dice, "calibration_masks": len(picks)}
        if path is not None:
            write_json(path, report)
    return noise.at_level(report["level"]), report
