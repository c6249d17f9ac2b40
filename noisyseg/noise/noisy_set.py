"""The noise of a noisy training set: which masks are corrupted, missing or left alone (per sample ID,
from a hash), at which level, and the levels named by the Dice they give."""
from __future__ import annotations

import hashlib

import numpy as np

from noisyseg.errors import ConfigError
from noisyseg.noise.models import NOISE_MODELS, NOISE_VERSION, as_binary, check_unit, corrupt

# Noise levels named by the mean Dice(noisy, true) they give, after how far human annotators disagree
# on ISIC images (IMA++ multi-annotator subset, pairwise: Dice median 0.86, mean 0.78).
NAMED_DICE = {"realistic": 0.86, "annotator_mean": 0.78, "severe": 0.65}


def target_dice(value: float | str) -> float:
    """A ``noise.target_dice`` as a number: a name of :data:`NAMED_DICE` or a Dice in (0, 1).

    Raises:
        ConfigError: For an unknown name or a number outside (0, 1).
    """
    if isinstance(value, str) and value in NAMED_DICE:
        return NAMED_DICE[value]
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"noise.target_dice={value!r} must be one of {', '.join(NAMED_DICE)} "
                          "or a Dice in (0, 1)") from None
    if not 0.0 < number < 1.0:
        raise ConfigError(f"noise.target_dice={value!r} must be in (0, 1)")
    return number


class MaskNoise:
    """The noise configuration of a noisy training set: which masks are corrupted, and how.

    A sample is corrupted when a uniform number drawn from a SHA-256 hash of (seed, sample_id) is
    below ``fraction``, so the corrupted sets for growing fractions are nested, and the decision does
    not depend on the order of the IDs or on the Python process. The same hash gives the sample's
    noise seed, which is shared by every kind and level (a level sweep moves the same outlines).
    Independently of that, a sample's annotation is *missing* (its mask empty, a forgotten
    annotation) when a second hash draw is below ``missing``; those sets are nested too.

    Args:
        kind: Registered noise kind.
        level: Noise strength in [0, 1].
        fraction: Share of noisy-set images that are corrupted (alpha), in [0, 1].
        seed: Non-negative integer; changes which samples are corrupted and how.
        missing: Share of noisy-set images whose mask is empty, in [0, 1].

    Raises:
        ConfigError: For an unknown kind or an option out of range, naming the option.
    """

    def __init__(self, kind: str, level: float, fraction: float = 1.0, seed: int = 0, missing: float = 0.0) -> None:
        NOISE_MODELS.get(kind)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"noise.seed={seed!r} must be a non-negative integer")
        self.kind, self.seed = kind, int(seed)
        self.level = check_unit("noise.level", level)
        self.fraction = check_unit("noise.fraction", fraction)
        self.missing = check_unit("noise.missing", missing)
        missing_key = f",missing={self.missing}" if self.missing else ""  # keeps older keys unchanged
        self.key = f"{kind}(level={self.level},fraction={self.fraction},seed={self.seed}{missing_key},v={NOISE_VERSION})"

    def _draw(self, sample_id: str, salt: str = "") -> tuple[float, int]:
        digest = hashlib.sha256(f"{self.seed}/{salt}{sample_id}".encode()).digest()
        # 53 bits give a float in [0, 1) exactly: 64 could round up to 1.0 and escape fraction=1.
        return (int.from_bytes(digest[:8], "big") >> 11) / 2.0**53, int.from_bytes(digest[8:16], "big")

    def is_corrupted(self, sample_id: str) -> bool:
        """Whether ``__call__`` corrupts this sample's mask (level 0 leaves it unchanged anyway)."""
        return self._draw(sample_id)[0] < self.fraction

    def is_missing(self, sample_id: str) -> bool:
        """Whether ``__call__`` returns an empty mask for this sample (a forgotten annotation)."""
        return self._draw(sample_id, "missing/")[0] < self.missing

    def at_level(self, level: float) -> MaskNoise:
        """The same configuration at another level (same samples, same seeds)."""
        return MaskNoise(self.kind, level, self.fraction, self.seed, self.missing)

    def __call__(self, sample_id: str, mask: np.ndarray) -> np.ndarray:
        """The sample's training mask: uint8 {0, 1}, corrupted, empty, or a normalised copy."""
        if self.is_missing(sample_id):
            return np.zeros_like(as_binary(mask))
        draw, sample_seed = self._draw(sample_id)
        if draw >= self.fraction:
            return as_binary(mask)
        return corrupt(mask, self.kind, self.level, sample_seed)

    def __repr__(self) -> str:
        return f"MaskNoise({self.key})"


def realised_dice(noisy: np.ndarray, clean: np.ndarray) -> float:
    """Mean per-image Dice(noisy, clean) over a stack ``[N, H, W]`` (or one ``[H, W]`` mask).

    An image where both masks are empty scores 1.0. Non-zero values are foreground.

    Raises:
        ValueError: If the shapes differ or the stack is empty.
    """
    noisy, clean = np.asarray(noisy), np.asarray(clean)
    if noisy.shape != clean.shape or noisy.ndim not in (2, 3) or noisy.size == 0:
        raise ValueError(f"expected two non-empty [N, H, W] stacks of one shape, got {noisy.shape} and {clean.shape}")
    noisy = noisy.reshape(-1, noisy.shape[-2] * noisy.shape[-1]) > 0  # [N, P]
    clean = clean.reshape(noisy.shape) > 0
    overlap = np.count_nonzero(noisy & clean, axis=1)
    total = np.count_nonzero(noisy, axis=1) + np.count_nonzero(clean, axis=1)
    dice = np.where(total > 0, 2.0 * overlap / np.maximum(total, 1), 1.0)
    return float(dice.mean())
