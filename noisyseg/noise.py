"""Annotation-noise models: corrupt a binary lesion mask the way a hurried annotator would.

Each model is a function ``(mask, level, rng) -> mask`` registered in :data:`NOISE_MODELS`; call it
through :func:`corrupt`, or through :class:`MaskNoise`, which decides per sample ID whether and how a
noisy-set mask is corrupted. Masks are corrupted at their native resolution, so every magnitude is
relative to the lesion's equivalent diameter ``d = 2 * sqrt(area / pi)`` (in pixels), never absolute.

``level`` in [0, 1] scales every magnitude linearly; level 0 is the identity (d: equivalent
diameter, A: lesion area, U: uniform draw):

=======  =================================================================================  ==================
kind     magnitude at ``level``                                                             Dice 0.25/0.5/1.0
=======  =================================================================================  ==================
morph    dilate or erode (50/50) by radius ``0.25 * level * d``                             0.87 / 0.73 / 0.46
affine   about the centroid: shift ``0.35 * level * d`` in a random direction, rotation     0.88 / 0.78 / 0.59
         ``U(-30, 30) * level`` degrees, scale ``1 + U(-0.3, 0.3) * level``
elastic  boundary moved along its normal by a smooth random offset: RMS ``0.35 * level *    0.86 / 0.75 / 0.62
         d``, correlation length ``d / 2``; detached islands and holes dropped
coarse   per component, the paper's hurried annotator: a polygon of ``round(7 - 4 * level)``   0.81 / 0.71 / 0.57
         vertices clicked on the boundary (jittered by ``0.05 * level * d``; probability
         1/2), the bounding box (1/4) or the moment ellipse (1/4); then loosened or
         tightened by ``U(-0.5, 1) * 0.8 * level * d``
flip     labels flipped under 3-6 ellipses (aspect U(0.4, 1)) of total area ``1.2 * level  0.87 / 0.76 / 0.58
         * A``, centred on boundary pixels plus N(0, ``0.1 * d``) offsets
mix      one of the five above, drawn per image, at the same level                          0.86 / 0.75 / 0.57
=======  =================================================================================  ==================

Dice is the realised mean Dice(noisy, clean) over the 153 PH2 masks at native resolution (one seed
per mask). Morph is calibrated to an earlier PH2 experiment (0.47 at level 1.0, 0.73 at 0.5); the
others were set to comparable strength; coarse is strong enough at level 1 to reach the ``severe``
named level (Dice 0.65, see :data:`NAMED_DICE`) on PH2 and the synthetic data. Expected Dice falls with level for every kind: the same seed
draws the same directions and shapes, and level scales them (coarse also picks rougher outlines).

Edge cases: an empty mask (lesion-free image) and a full mask (a lesion covering the whole frame) are
returned unchanged by every model, because there is no boundary inside the frame to corrupt. The
image border is not treated as lesion boundary: a lesion cut by the frame is assumed to continue
beyond it (erosion does not eat in from the frame, warps replicate the border).
"""
from __future__ import annotations

import argparse
import hashlib
import math
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from noisyseg.errors import ConfigError, DataError, NoisysegError
from noisyseg.registry import Registry

NoiseModel = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]
NOISE_MODELS: Registry[NoiseModel] = Registry("noise kind")
NOISE_VERSION = 2  # part of MaskNoise.key: bump when a model changes, so cached noisy masks are remade

MORPH_RADIUS = 0.25
AFFINE_SHIFT, AFFINE_ROTATION_DEG, AFFINE_SCALE = 0.35, 30.0, 0.3
ELASTIC_AMPLITUDE, ELASTIC_CORRELATION = 0.35, 0.5
ELASTIC_WORK_SIDE, ELASTIC_WORK_DIAMETER = 512, 64  # px: elastic's working resolution on big masks
COARSE_MARGIN, COARSE_JITTER, COARSE_VERTICES = 0.8, 0.05, (7, 3)  # vertices at level 0 and 1
COARSE_SHAPES = (0.5, 0.25, 0.25)  # polygon, box, ellipse
COARSE_TIGHTEN = 0.5  # the outline moves by U(-COARSE_TIGHTEN, 1) * COARSE_MARGIN * level * d
FLIP_AREA, FLIP_SPREAD, FLIP_BLOBS = 1.2, 0.1, (3, 6)
MIX_KINDS = ("morph", "affine", "elastic", "coarse", "flip")  # fixed, so plug-ins added later do not change mix


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


def check_unit(name: str, value: float) -> float:
    """Return ``value`` as a float, or raise ConfigError naming ``name`` if it is not in [0, 1]."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} must be a number in [0, 1]") from None
    if not 0.0 <= number <= 1.0:  # also rejects NaN
        raise ConfigError(f"{name}={value!r} must be in [0, 1]")
    return number


def as_binary(mask: np.ndarray) -> np.ndarray:
    """Normalise a bool, {0, 1} or {0, 255} ``[H, W]`` mask to a new uint8 {0, 1} array.

    Raises:
        ValueError: If the mask is not 2-D or has other values.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D [H, W] array, got shape {mask.shape}")
    if mask.dtype == bool:
        return mask.astype(np.uint8)
    top = mask.max(initial=0)
    if top not in (0, 1, 255) or not ((mask == 0) | (mask == top)).all():
        raise ValueError("mask must be binary: bool, {0, 1} or {0, 255}; "
                         f"found values such as {np.unique(mask)[:5].tolist()}")
    return (mask > 0).astype(np.uint8)


def corrupt(mask: np.ndarray, kind: str, level: float, seed: int) -> np.ndarray:
    """Corrupt one lesion mask with a registered noise model.

    Args:
        mask: ``[H, W]`` bool, {0, 1} or {0, 255} mask at native resolution.
        kind: Registered noise kind (see :data:`NOISE_MODELS`).
        level: Noise strength in [0, 1]; see the module docstring for what it means per kind.
        seed: Non-negative seed; the output depends only on (mask, kind, level, seed).

    Returns:
        uint8 ``[H, W]`` in {0, 1}; a normalised copy of ``mask`` when level is 0 or the mask is
        empty or full.

    Raises:
        ConfigError: Unknown kind (the message lists the valid ones) or level outside [0, 1].
        ValueError: Non-binary or non-2-D mask.
    """
    model = NOISE_MODELS.get(kind)
    level = check_unit("noise.level", level)
    binary = as_binary(mask)
    area = int(np.count_nonzero(binary))
    if level == 0.0 or area in (0, binary.size):
        return binary
    return model(binary, level, np.random.default_rng(seed)).astype(np.uint8, copy=False)


def _diameter(mask: np.ndarray) -> float:
    """Equivalent diameter 2 * sqrt(area / pi) of the lesion, in pixels."""
    return 2.0 * math.sqrt(np.count_nonzero(mask) / math.pi)


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    # A distance transform costs the same for any radius, unlike a disk kernel; the 5x5 chamfer mask
    # is within ~2% of Euclidean and 5x faster than DIST_MASK_PRECISE.
    return (cv2.distanceTransform(1 - mask, cv2.DIST_L2, cv2.DIST_MASK_5) <= radius).astype(np.uint8)


def _erode(mask: np.ndarray, radius: float) -> np.ndarray:
    # cv2 treats outside the image as foreground here: the frame does not erode the lesion.
    return (cv2.distanceTransform(mask, cv2.DIST_L2, cv2.DIST_MASK_5) > radius).astype(np.uint8)


def _signed_distance(mask: np.ndarray) -> np.ndarray:
    """Distance to the lesion boundary in pixels: positive outside, negative inside."""
    outside = cv2.distanceTransform(1 - mask, cv2.DIST_L2, cv2.DIST_MASK_5)
    return outside - cv2.distanceTransform(mask, cv2.DIST_L2, cv2.DIST_MASK_5)


def _touching(mask: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The connected components of ``mask`` that overlap ``reference``."""
    count, labels = cv2.connectedComponents(mask, connectivity=8)
    if count <= 2 and np.any(mask & reference):
        return mask  # the usual case, a single component: skip the per-pixel relabelling
    keep = np.bincount(labels[reference > 0], minlength=count) > 0
    keep[0] = False  # label 0 is the background of ``mask``
    return keep[labels].astype(np.uint8)


def _threshold(mask255: np.ndarray) -> np.ndarray:
    """Binarise a resampled {0, 255} mask at half height."""
    return (mask255 >= 128).astype(np.uint8)


@NOISE_MODELS.register("morph")
def morph(mask: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Over- or under-segmented border: dilate or erode by ``MORPH_RADIUS * level * d``."""
    radius = MORPH_RADIUS * level * _diameter(mask)
    return _dilate(mask, radius) if rng.random() < 0.5 else _erode(mask, radius)


@NOISE_MODELS.register("affine")
def affine(mask: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Misregistered outline: shift, rotate and scale the mask about the lesion centroid."""
    moments = cv2.moments(mask, binaryImage=True)
    centre = (moments["m10"] / moments["m00"], moments["m01"] / moments["m00"])
    angle = rng.uniform(-1, 1) * AFFINE_ROTATION_DEG * level
    scale = 1 + rng.uniform(-1, 1) * AFFINE_SCALE * level
    direction = rng.uniform(0, 2 * math.pi)
    matrix = cv2.getRotationMatrix2D(centre, angle, scale)
    matrix[:, 2] += AFFINE_SHIFT * level * _diameter(mask) * np.array([math.cos(direction), math.sin(direction)])
    height, width = mask.shape
    warped = cv2.warpAffine(mask * 255, matrix, (width, height), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE)
    return _threshold(warped)


@NOISE_MODELS.register("elastic")
def elastic(mask: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Wobbly outline: move the boundary along its normal by a smooth random offset field.

    The offset is white noise on a grid with spacing ``ELASTIC_CORRELATION * d``, upsampled
    bicubically and rescaled to RMS ``ELASTIC_AMPLITUDE * level * d``; the noisy lesion is where the
    signed distance to the clean boundary is below it (``morph`` is the case of a constant offset).
    """
    height, width = mask.shape
    diameter = _diameter(mask)
    # The offset varies on the scale of d / 2, so on big masks the distance map and the offset are
    # computed on a shrunk copy and only their difference is upsampled (~10x faster on ISIC sizes).
    factor = min(1.0, max(ELASTIC_WORK_SIDE / max(height, width), ELASTIC_WORK_DIAMETER / diameter))
    small = mask if factor == 1.0 else _threshold(
        cv2.resize(mask * 255, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA))
    spacing = max(ELASTIC_CORRELATION * diameter * factor, 2.0)  # >= 2 px keeps the grid small
    grid = (math.ceil(small.shape[0] / spacing) + 2, math.ceil(small.shape[1] / spacing) + 2)
    nodes = rng.standard_normal(grid).astype(np.float32)
    # Only the coarse grid is random; bicubic upsampling makes it smooth.
    offset = cv2.resize(nodes, small.shape[::-1], interpolation=cv2.INTER_CUBIC)
    rms = max(float(np.sqrt(np.mean(offset * offset))), 1e-6)
    offset *= ELASTIC_AMPLITUDE * level * diameter * factor / rms
    margin = _signed_distance(small) - offset  # < 0: noisy lesion
    noisy = (margin < 0).astype(np.uint8)
    # Where the offset changes faster than the distance, the level set breaks into islands and
    # holes far from the lesion; an annotator's wobbly outline has neither, so drop them.
    kept = _touching(noisy, small)
    kept = 1 - _touching(1 - kept, 1 - small)
    margin = np.where(kept > 0, -np.abs(margin), np.abs(margin))
    if factor < 1.0:
        margin = cv2.resize(margin, (width, height), interpolation=cv2.INTER_LINEAR)
    return (margin < 0).astype(np.uint8)


def _polygon(contour: np.ndarray, level: float, diameter: float, rng: np.random.Generator) -> np.ndarray:
    """Few vertices taken evenly along the contour from a random start, each jittered."""
    most, fewest = COARSE_VERTICES
    count = min(round(most - (most - fewest) * level), len(contour))
    start = rng.uniform(0, len(contour) / count)
    picks = (start + np.arange(count) * len(contour) / count).astype(int) % len(contour)
    jitter = rng.normal(0, COARSE_JITTER * level * diameter, (count, 2))
    return np.round(contour[picks] + jitter).astype(np.int32)


def _ellipse(points: np.ndarray) -> tuple | None:
    """The ellipse with the outline's area moments (robust where cv2.fitEllipse is not), or None."""
    moments = cv2.moments(points)
    if moments["m00"] <= 0:  # a line or a point
        return None
    cov = np.array([[moments["mu20"], moments["mu11"]], [moments["mu11"], moments["mu02"]]]) / moments["m00"]
    variances, axes = np.linalg.eigh(cov)  # ascending; a uniform ellipse has semi-axis 2 * std
    major, minor = 4 * np.sqrt(np.maximum(variances[::-1], 0))
    angle = math.degrees(math.atan2(axes[1, 1], axes[0, 1]))
    return (moments["m10"] / moments["m00"], moments["m01"] / moments["m00"]), (major, minor), angle


@NOISE_MODELS.register("coarse")
def coarse(mask: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """The paper's hurried annotator (Mirikharaji et al. 2019, their Fig. 1): per connected component a
    polygon of 3-7 vertices clicked on the boundary, a box or an ellipse, then drawn loosely (mostly
    outside the lesion, sometimes inside it)."""
    diameter = _diameter(mask)
    # drawn first, so that one seed moves the outline the same way at every level
    offset = rng.uniform(-COARSE_TIGHTEN, 1) * COARSE_MARGIN * level * diameter
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.zeros_like(mask)
    for contour in contours:
        points = contour[:, 0, :]  # [N, 2] as (x, y)
        draw = rng.random()
        ellipse = _ellipse(points) if draw >= 1 - COARSE_SHAPES[2] else None
        if ellipse is not None:
            cv2.ellipse(out, ellipse, 1, -1)
        elif draw >= COARSE_SHAPES[0] or len(points) < 5:
            x, y, w, h = cv2.boundingRect(points)
            cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), 1, -1)
        else:
            cv2.fillPoly(out, [_polygon(points, level, diameter, rng)], 1)
    if offset >= 0:
        return _dilate(out, offset)
    tightened = _erode(out, -offset)
    return tightened if tightened.any() else out  # a sliver outline is not erased altogether


@NOISE_MODELS.register("flip")
def flip(mask: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Flip the labels under a few elliptic blobs scattered around the lesion boundary."""
    diameter, area = _diameter(mask), np.count_nonzero(mask)
    # Boundary pixels: lesion pixels with a background neighbour (cv2's erode ignores the frame).
    ys, xs = np.nonzero(mask - cv2.erode(mask, np.ones((3, 3), np.uint8)))
    count = int(rng.integers(FLIP_BLOBS[0], FLIP_BLOBS[1] + 1))
    blobs = np.zeros_like(mask)
    for _ in range(count):
        k = rng.integers(len(xs))
        centre = np.array([xs[k], ys[k]]) + rng.normal(0, FLIP_SPREAD * diameter, 2)
        aspect = rng.uniform(0.4, 1.0)
        major = math.sqrt(FLIP_AREA * level * area / count / (math.pi * aspect))
        box = (tuple(centre.tolist()), (2 * major, 2 * major * aspect), rng.uniform(0, 180))
        cv2.ellipse(blobs, box, 1, -1)
    return mask ^ blobs


@NOISE_MODELS.register("mix")
def mix(mask: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """One of the other kinds, drawn uniformly per image, at the same level."""
    return NOISE_MODELS.get(MIX_KINDS[rng.integers(len(MIX_KINDS))])(mask, level, rng)


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


def _load_lesions(root: str | None, count: int, seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, image, mask)`` for a few lesions: synthetic, or spread over a PH2-like folder."""
    from noisyseg.data.sources import folder, ph2  # lazy: only the preview reads files
    from noisyseg.data.synthetic import make_lesion

    if root is None:
        return [(f"synthetic #{i}", *make_lesion(seed, i, 256)) for i in range(count)]
    try:
        source = ph2(root)
    except DataError:  # not PH2-named: any images/ + masks/ folder
        source = folder(root)
    picks = np.linspace(0, len(source.ids) - 1, min(count, len(source.ids))).astype(int)
    return [(source.ids[i], *source.load(source.ids[i])) for i in picks]


def _tile(image: np.ndarray, clean: np.ndarray, noisy: np.ndarray | None, width: int = 192) -> np.ndarray:
    """The image, shrunk to ``width``, with the clean (green) and noisy (red) contours."""
    scale = width / image.shape[1]
    size = (width, max(round(image.shape[0] * scale), 1))
    tile = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    for mask, colour in ((clean, (0, 255, 0)), (noisy, (255, 0, 0))):
        if mask is not None:  # contours from the native mask, drawn at the tile's scale
            contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
            scaled = [np.round((c + 0.5) * scale - 0.5).astype(np.int32) for c in contours]
            cv2.drawContours(tile, scaled, -1, colour, 2)
    return tile


def preview(out: str | Path, levels: Sequence[float] = (0.25, 0.5, 1.0), count: int = 3,
            root: str | None = None, seed: int = 0) -> Path:
    """Write one PNG: rows are lesions, columns each noise kind at each level (clean green, noisy red).

    Args:
        out: PNG path to write.
        levels: Noise levels shown for every kind.
        count: Number of lesions (rows).
        root: A PH2-like folder (``images/`` + ``masks/``); the synthetic generator when None.
        seed: Synthetic dataset seed, also the base noise seed of each row.

    Returns:
        The written path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [check_unit("noise.level", level) for level in levels]
    if count < 1:
        raise ConfigError(f"preview count={count} must be at least 1")
    lesions = _load_lesions(root, count, seed)
    columns = [(kind, level) for kind in NOISE_MODELS.names() for level in levels]
    fig, axes = plt.subplots(len(lesions), len(columns) + 1, squeeze=False,
                             figsize=(1.6 * (len(columns) + 1), 1.6 * len(lesions) + 0.4))
    for row, (name, image, mask) in enumerate(lesions):
        axes[row, 0].imshow(_tile(image, mask, None))
        axes[row, 0].set_ylabel(name, fontsize=8)
        for col, (kind, level) in enumerate(columns, start=1):
            noisy = corrupt(mask, kind, level, seed + row)
            axes[row, col].imshow(_tile(image, mask, noisy))
            axes[row, col].set_xlabel(f"Dice {realised_dice(noisy, mask):.2f}", fontsize=8, labelpad=1)
    for col, title in enumerate(["clean"] + [f"{kind} {level:g}" for kind, level in columns]):
        axes[0, col].set_title(title, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle("Annotation noise: clean contour green, noisy contour red", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m noisyseg.noise preview --out noise_preview.png [--levels ...] [--count N] [--root PATH]``."""
    parser = argparse.ArgumentParser(prog="python -m noisyseg.noise", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("preview", help="write one PNG showing every noise kind at several levels")
    cmd.add_argument("--out", default="noise_preview.png", help="PNG to write")
    cmd.add_argument("--levels", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    cmd.add_argument("--count", type=int, default=3, help="number of lesions (rows)")
    cmd.add_argument("--root", default=None, help="PH2-like folder with images/ and masks/ (default: synthetic)")
    cmd.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        print(preview(args.out, args.levels, args.count, args.root, args.seed))
    except NoisysegError as err:  # bad input: a one-line message, not a traceback
        parser.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    main()
