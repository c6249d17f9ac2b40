"""Annotation-noise models: corrupt a binary lesion mask the way a hurried annotator would.

Each model is a function ``(mask, level, rng) -> mask`` registered in :data:`NOISE_MODELS`; call it
through :func:`corrupt`, or through :class:`noisyseg.noise.MaskNoise`, which decides per sample ID whether and how a
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
markov   Yao et al.'s Markov chain: ``round(6 * level * 64)`` steps with the lesion scaled     0.86 / 0.73 / 0.58
         to a 64 px diameter, each growing (probability 0.8) or shrinking it by flipping
         each 4-adjacent boundary pixel with probability 0.05; then 20% of the pixels
         flipped, a Gaussian blur of sigma ``d / 32`` and a threshold at 1/2
mix      one of morph, affine, elastic, coarse, flip, drawn per image, at the same level    0.86 / 0.75 / 0.57
=======  =================================================================================  ==================

Dice is the realised mean Dice(noisy, clean) over the 153 PH2 masks at native resolution (one seed
per mask). Morph is calibrated to an earlier PH2 experiment (0.47 at level 1.0, 0.73 at 0.5); the
others were set to comparable strength; coarse and markov are strong enough at level 1 to reach the
``severe`` named level (Dice 0.65, see :data:`NAMED_DICE`) on PH2 and the synthetic data. Expected Dice
falls with level for every kind: the same seed draws the same directions and shapes, and level scales
them (coarse also picks rougher outlines; markov runs a longer chain that continues the shorter one).

Edge cases: an empty mask (lesion-free image) and a full mask (a lesion covering the whole frame) are
returned unchanged by every model, because there is no boundary inside the frame to corrupt. The
image border is not treated as lesion boundary: a lesion cut by the frame is assumed to continue
beyond it (erosion does not eat in from the frame, warps replicate the border).
"""
from __future__ import annotations

import math
from typing import Callable

import cv2
import numpy as np

from noisyseg.errors import ConfigError
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
MARKOV_PREFERENCE, MARKOV_FLIP, MARKOV_SALT = 0.8, 0.05, 0.2  # Yao et al.'s theta1, theta2, theta3
MARKOV_STEPS = 6.0  # chain steps per px of the working diameter, at level 1
MARKOV_WORK_DIAMETER, MARKOV_BLUR = 64, 2.0  # px: the chain runs with the lesion at this diameter; blur sigma there
MARKOV_MARGIN = 1.0  # the chain runs on the lesion's bounding box grown by this times d
MARKOV_WORK_AREA = 256 * 256  # px: the most the working crop may hold (a mask of scattered specks)
MIX_KINDS = ("morph", "affine", "elastic", "coarse", "flip")  # fixed, so plug-ins added later do not change mix


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


@NOISE_MODELS.register("markov")
def markov(mask: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Ragged, mostly too generous outline: Markov boundary noise after Yao et al., "Learning to
    Segment from Noisy Annotations: A Spatial Correction Approach" (ICLR 2023).

    A Markov chain starts from the true mask. Each step either grows the lesion (probability
    ``MARKOV_PREFERENCE``): every background pixel 4-adjacent to it joins it with probability
    ``MARKOV_FLIP``; or shrinks it: every lesion pixel 4-adjacent to background leaves it with that
    probability. After the chain, every pixel flips with probability ``MARKOV_SALT``, and a Gaussian
    blur thresholded at 1/2 wipes out most of those isolated flips (a few specks survive near the
    lesion, as in the paper's model) but leaves the outline ragged.

    The chain runs with the lesion at a working diameter of ``MARKOV_WORK_DIAMETER`` px, on its
    bounding box grown by ``MARKOV_MARGIN * d``, for ``round(level * MARKOV_STEPS * d_work)`` steps,
    and the blurred map is resampled to native size before the threshold; so every magnitude is
    relative to d, and a 1000 px lesion needs no more steps than a 64 px one. The chain and the final
    flips use two generators drawn before it: a longer chain continues a shorter one, and the final
    flips are the same at every level, so expected Dice falls with the level for a seed.
    """
    height, width = mask.shape
    diameter = _diameter(mask)
    chain_rng, salt_rng = (np.random.default_rng(seed) for seed in rng.integers(0, 2**63, size=2))
    # The crop's edge is out of the chain's reach: at level 1 its front gets ~0.55 d beyond the lesion
    # (0.65 d at most over 100 seeds); the final flips fall inside the crop only.
    margin = math.ceil(MARKOV_MARGIN * diameter)
    x, y, w, h = cv2.boundingRect(mask)
    top, bottom = max(y - margin, 0), min(y + h + margin, height)
    left, right = max(x - margin, 0), min(x + w + margin, width)
    crop = mask[top:bottom, left:right]
    # a cap on the working size, for masks of scattered specks (tiny d, wide bounding box)
    factor = min(MARKOV_WORK_DIAMETER / diameter, math.sqrt(MARKOV_WORK_AREA / crop.size))
    work = (max(round(crop.shape[1] * factor), 1), max(round(crop.shape[0] * factor), 1))  # (width, height)
    resized = work != crop.shape[::-1]
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    state = _threshold(cv2.resize(crop * 255, work, interpolation=interpolation)) if resized else crop.copy()
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    flat = state.reshape(-1)  # a view: writing to it changes ``state``
    for _ in range(round(level * MARKOV_STEPS * diameter * factor)):
        if chain_rng.random() < MARKOV_PREFERENCE:  # grow: the background pixels 4-adjacent to the lesion
            edge, value = cv2.dilate(state, cross) - state, 1
        else:  # shrink: the lesion pixels 4-adjacent to background (cv2's erode ignores the frame)
            edge, value = state - cv2.erode(state, cross), 0
        edge = np.flatnonzero(edge.view(bool))  # numpy finds nonzeros ~10x faster in bool than in uint8
        flat[edge[chain_rng.random(edge.size) < MARKOV_FLIP]] = value
    noisy = (state ^ (salt_rng.random(state.shape) < MARKOV_SALT)).astype(np.float32)
    sigma = MARKOV_BLUR * diameter * factor / MARKOV_WORK_DIAMETER
    side = 2 * math.ceil(sigma) + 1  # 5 x 5 at sigma 2, as in the paper
    soft = cv2.GaussianBlur(noisy, (side, side), sigma)
    if resized:  # back to native size before the threshold, as elastic does with its margin
        soft = cv2.resize(soft, crop.shape[::-1], interpolation=cv2.INTER_AREA if factor > 1 else cv2.INTER_LINEAR)
    out = np.zeros_like(mask)
    out[top:bottom, left:right] = soft >= 0.5
    # The chain, mostly growing, does not erase a 64 px lesion; but a lesion of a few native pixels could
    # in principle be lost in the resampling back (never seen, even on 1 px lesions): keep the annotation then.
    return out if out.any() else mask.copy()


@NOISE_MODELS.register("mix")
def mix(mask: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """One of :data:`MIX_KINDS`, drawn uniformly per image, at the same level."""
    return NOISE_MODELS.get(MIX_KINDS[rng.integers(len(MIX_KINDS))])(mask, level, rng)
