"""Embedded synthetic dermoscopy dataset: one lesion per image with its exact mask.

``make_lesion(seed, index)`` draws everything from ``np.random.default_rng([seed, index])``, so an
image depends on nothing but its (seed, index) and any subset can be generated in any order.

The lesion opacity is ``sigmoid((r(theta) - d) / w(theta))`` around a random centre, with
``r(theta) = r0 * (1 + sum_k a_k cos(k theta + phi_k))`` (a non-convex blob) and a border width
``w(theta)`` that is sharp on one side and fuzzy on the other. The mask is that opacity > 0.5, i.e.
exactly ``d < r(theta)``, cut to the dermoscope's field of view where black corners hide the skin.
Hairs, highlights, rulers and corners are drawn on top and never change the mask.

The set is meant to defeat global thresholds (skin tones from light to dark, faint lesions, dark
skin blotches and dark distractors) while staying learnable from local texture, colour and edges;
:func:`threshold_baseline_dice` measures the best such threshold.
"""
from __future__ import annotations

import functools
import math

import cv2
import numpy as np

_SKIN_LIGHT = np.array([236, 200, 178], np.float32)  # RGB
_SKIN_DARK = np.array([150, 102, 76], np.float32)
# Lesion colours as per-channel multipliers of the local skin: melanin absorbs blue most, so brown
# keeps its red; deep (dermal) melanin looks blue-grey.
_PALETTE = np.array([[0.72, 0.52, 0.38],  # light brown
                     [0.42, 0.28, 0.20],  # dark brown
                     [0.50, 0.55, 0.66]], np.float32)  # blue-grey
_HARMONICS = np.arange(2, 9, dtype=np.float32)


# Bump when the generator changes what it draws: it is part of the cache key.
GENERATOR_VERSION = 1

def _check_size(size: int) -> None:
    if not isinstance(size, (int, np.integer)) or not 32 <= size <= 1024:
        raise ValueError(f"size must be an int in [32, 1024], got {size!r}")


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates, cached because every image of a size needs them (read-only)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    ys.flags.writeable = xs.flags.writeable = False
    return ys, xs


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int = 1) -> np.ndarray:
    """Unit-variance-ish noise with features about ``size / cells`` pixels wide."""
    coarse = rng.standard_normal((cells + 1, cells + 1, channels), dtype=np.float32)
    out = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    return out.reshape(size, size, channels)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Skin: a per-image tone (light to dark), colour blotches, dark patches and fine texture."""
    skin = _SKIN_LIGHT + rng.uniform(0, 1) ** 1.3 * (_SKIN_DARK - _SKIN_LIGHT)
    skin = skin * rng.uniform(0.95, 1.05, 3).astype(np.float32)
    low = _smooth_noise(rng, size, int(rng.integers(3, 6)), 4)  # [H, W, 4]
    img = skin * (1 + 0.04 * low[..., :3])
    # Dark blotches on the skin (freckles, shadow, erythema) have the lesion's hue but no edge.
    blotch = np.clip(low[..., 3:] - rng.uniform(0.0, 1.0), 0, None)
    img *= 1 - rng.uniform(0.1, 0.3) * blotch * (1 - _PALETTE[0])
    texture = _smooth_noise(rng, size, max(size // 6, 4))
    return img * (1 + rng.uniform(0.01, 0.04) * texture)


def _radius(theta: np.ndarray, shape: dict) -> np.ndarray:
    """Lesion radius r(theta) in pixels; a Fourier series, so the blob is smooth but non-convex."""
    waves = np.cos(_HARMONICS[:, None] * theta.ravel()[None] + shape["phase"][:, None])
    return shape["r0"] * (1 + shape["amp"] @ waves).reshape(theta.shape)


def _lesion_shape(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Opacity, normalised radius d / r(theta) and the shape parameters of one lesion."""
    r0 = math.sqrt(rng.uniform(0.05, 0.42) / math.pi) * size
    # Decaying harmonics: lobes from k = 2, 3 and small bays from the rest (a k^2 > 1 is concave).
    amp = rng.uniform(0.1, 1, len(_HARMONICS)).astype(np.float32) * 0.45 / _HARMONICS
    amp *= min(1.0, 0.6 / amp.sum())  # keeps r(theta) >= 0.4 r0
    contrast = rng.uniform(0.35, 0.55) if rng.uniform() < 0.3 else rng.uniform(0.55, 1.0)
    lo, hi = min(0.8 * r0, size / 2), max(size - 0.8 * r0, size / 2)
    centre = np.clip(size / 2 + rng.normal(0, 0.15 * size, 2), lo, hi).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, len(_HARMONICS)).astype(np.float32)
    shape = {"r0": r0, "amp": amp, "phase": phase, "centre": centre, "contrast": contrast}
    ys, xs = _grid(size)
    dy, dx = ys - centre[0], xs - centre[1]
    dist, theta = np.hypot(dx, dy), np.arctan2(dy, dx)
    radius = _radius(theta, shape)
    # Border width: under a pixel on the sharp side, up to 0.3 r0 on the fuzzy side; faint lesions
    # get crisper borders so that every lesion keeps a visible edge.
    fuzzy = ((1 + np.cos(theta - rng.uniform(0, 2 * np.pi))) / 2) ** rng.uniform(1, 3)
    width = 0.4 + rng.uniform(0.3, 1) * (0.05 + 0.25 * (contrast - 0.35) / 0.65) * r0 * fuzzy
    alpha = 0.5 + 0.5 * np.tanh((radius - dist) / (2 * width))
    return alpha, dist / radius, shape


def _paint_lesion(rng: np.random.Generator, img: np.ndarray, alpha: np.ndarray, rel: np.ndarray,
                  shape: dict) -> np.ndarray:
    """Darken the skin under the lesion with variegated colour, a darker centre and a network."""
    size, contrast = img.shape[0], shape["contrast"]
    cells = max(int(size / shape["r0"] * 1.5), 3)
    # Softmax over three noise fields picks the palette colour; blue-grey gets a negative bias.
    # The exponent stays well below float32's overflow (|x| < 30), so no max-subtraction needed.
    bias = np.array([0, rng.uniform(-2, 1), rng.uniform(-4, 0)], np.float32)
    weights = np.exp(_smooth_noise(rng, size, cells, 3) * rng.uniform(1.5, 4) + bias)
    mult = weights @ _PALETTE / weights.sum(axis=2, keepdims=True)  # [H, W, 3]
    mult *= (1 - rng.uniform(0, 0.35) * np.clip(1 - rel, 0, 1))[..., None]
    if rng.uniform() < 0.6:  # pigment network: lines where a mid-frequency field crosses zero
        net = _smooth_noise(rng, size, max(size // 7, 4))
        mult *= 1 - rng.uniform(0.1, 0.3) * np.exp(-((net / 0.3) ** 2))
    return img * (1 - contrast * alpha[..., None] * (1 - mult))


def _dots(rng: np.random.Generator, img: np.ndarray, shape: dict) -> np.ndarray:
    """Dark dots and globules inside the lesion."""
    n = int(rng.integers(0, 12))
    theta = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    rho = _radius(theta, shape) * rng.uniform(0.1, 0.85, n)
    xy = (shape["centre"][::-1] + rho[:, None] * np.stack([np.cos(theta), np.sin(theta)], 1)) * 16
    radii = np.maximum(rng.uniform(0.6, 2.0, n) * img.shape[0] / 128 * 16, 8)  # 4 fractional bits
    layer = np.zeros(img.shape[:2], np.uint8)
    for (x, y), r in zip(xy.astype(int), radii.astype(int)):
        cv2.circle(layer, (int(x), int(y)), int(r), 255, -1, cv2.LINE_AA, 4)
    darken = (0.6 * shape["contrast"] / 255) * layer[..., None].astype(np.float32)
    return img * (1 - darken * (1 - _PALETTE[1]))


def _blend(img: np.ndarray, layer: np.ndarray, colour: np.ndarray, opacity: float) -> np.ndarray:
    """Alpha-blend a flat colour through a uint8 coverage layer."""
    a = (opacity / 255.0) * layer[..., None].astype(np.float32)
    return img * (1 - a) + colour * a


def _hairs(rng: np.random.Generator, img: np.ndarray, shape: dict) -> np.ndarray:
    """Thin dark curved hairs (quadratic Bezier curves); about half of them cross the lesion."""
    size = img.shape[0]
    n = 0 if rng.uniform() < 0.35 else int(rng.integers(1, 12))
    layer = np.zeros((size, size), np.uint8)
    t = np.linspace(0, 1, 12, dtype=np.float32)[:, None]
    for _ in range(n):
        near = rng.uniform() < 0.5
        mid = shape["centre"] + rng.normal(0, shape["r0"], 2) if near else rng.uniform(0, size, 2)
        ends = mid + rng.normal(0, rng.uniform(0.1, 0.5) * size, (2, 2))
        ctrl = mid + rng.normal(0, 0.15 * size, 2)
        pts = (1 - t) ** 2 * ends[0] + 2 * t * (1 - t) * ctrl + t ** 2 * ends[1]  # [12, (y, x)]
        xy = np.round(pts[:, ::-1] * 16).astype(np.int32)  # cv2 wants (x, y), 4 fractional bits
        cv2.polylines(layer, [xy], False, 255, max(1, size // 192), cv2.LINE_AA, 4)
    colour = rng.uniform(20, 60) * np.array([1.0, 0.8, 0.7], np.float32)
    return _blend(img, layer, colour, rng.uniform(0.7, 0.95))


def _highlights(rng: np.random.Generator, img: np.ndarray, shape: dict) -> np.ndarray:
    """Small bright specular spots, mostly on the lesion where the gel bulges."""
    size = img.shape[0]
    n = int(rng.integers(0, 7))
    centres = shape["centre"] + rng.normal(0, shape["r0"], (n, 2))
    layer = np.zeros((size, size), np.uint8)
    axes = np.maximum(rng.uniform(0.3, 1.6, (n, 2)) * size / 128 * 16, 8).astype(int)
    for (y, x), ax, ang in zip(centres, axes, rng.uniform(0, 180, n)):
        cv2.ellipse(layer, (int(x * 16), int(y * 16)), tuple(ax), ang, 0, 360, 255, -1, cv2.LINE_AA, 4)
    return _blend(img, cv2.GaussianBlur(layer, (3, 3), 0), np.float32(250), rng.uniform(0.6, 0.95))


def _ruler(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """In some images, a line of regularly spaced dark tick marks along one edge."""
    if rng.uniform() >= 0.3:
        return img
    size = img.shape[0]
    layer = np.zeros((size, size), np.uint8)
    pos, step = rng.uniform(0.03, 0.12) * size, rng.uniform(0.04, 0.08) * size
    ticks = np.arange(rng.uniform(0, step), size, step)
    long = (np.arange(len(ticks)) % 5 == 0) + 1.0
    tick_len, thick = rng.uniform(0.03, 0.05) * size, max(1, size // 192)
    for x, k in zip(ticks, long):
        cv2.line(layer, (int(x), int(pos)), (int(x), int(pos + k * tick_len)), 255, thick, cv2.LINE_AA)
    cv2.line(layer, (0, int(pos)), (size - 1, int(pos)), 255, thick, cv2.LINE_AA)
    layer = np.rot90(layer, int(rng.integers(0, 4)))  # any of the four edges
    return _blend(img, layer, np.float32(rng.uniform(15, 50)), rng.uniform(0.7, 0.95))


def _vignette_and_corners(rng: np.random.Generator, img: np.ndarray,
                          shape: dict) -> tuple[np.ndarray, np.ndarray]:
    """Darken towards the rim; in some images black out the corners outside a circular field of view.

    Returns the image and the field-of-view coverage (1 inside, 0 in the black corners).
    """
    size = img.shape[0]
    ys, xs = _grid(size)
    lens = (size / 2 + rng.normal(0, 0.05 * size, 2)).astype(np.float32)  # optical centre
    dist = np.hypot(ys - lens[0], xs - lens[1]) / (size / 2)
    img *= (1 - rng.uniform(0.05, 0.35) * dist ** 2)[..., None]
    if rng.uniform() >= 0.35:
        return img, np.ones((size, size), np.float32)
    # Radius in half-widths (sqrt(2) reaches the corners); never hide the middle of the lesion.
    seen = np.hypot(*(shape["centre"] - lens)) + 0.5 * shape["r0"]
    radius = max(rng.uniform(0.9, 1.3), seen / (size / 2))
    fov = 0.5 + 0.5 * np.tanh((radius - dist) * size / 4)
    return img * fov[..., None] + rng.uniform(5, 25) * (1 - fov[..., None]), fov


def make_lesion(seed: int, index: int, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Generate one synthetic dermoscopy image and its exact lesion mask.

    Args:
        seed: Dataset seed (non-negative).
        index: Image index within the dataset (non-negative).
        size: Side length in pixels, 32 to 1024.

    Returns:
        ``(image, mask)``: uint8 RGB ``[size, size, 3]`` and uint8 ``[size, size]`` in {0, 1}.

    Raises:
        ValueError: If ``size`` is out of range.
    """
    _check_size(size)
    rng = np.random.default_rng([seed, index])
    img = _background(rng, size)
    alpha, rel, shape = _lesion_shape(rng, size)
    img = _paint_lesion(rng, img, alpha, rel, shape)
    img = _dots(rng, img, shape)
    img = _hairs(rng, img, shape)
    img = _highlights(rng, img, shape)
    img = _ruler(rng, img)
    img, fov = _vignette_and_corners(rng, img, shape)
    img += rng.uniform(1.5, 5) * rng.standard_normal(img.shape, dtype=np.float32)
    mask = (rel < 1) & (fov > 0.5)  # == opacity > 0.5, where the dermoscope shows skin at all
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), mask.astype(np.uint8)


def threshold_baseline_dice(images: np.ndarray, masks: np.ndarray, n_thresholds: int = 64) -> float:
    """Best mean per-image Dice of one global threshold on one simple feature (an oracle baseline).

    Features: grey level, R, G, B and darkness (255 - HSV value). For each feature and polarity the
    threshold is chosen on the very set it is scored on, so this is an upper bound for thresholding.

    Args:
        images: uint8 ``[N, H, W, 3]`` RGB.
        masks: ``[N, H, W]`` in {0, 1}.
        n_thresholds: Candidate thresholds, evenly spaced over (0, 255).

    Returns:
        The best mean Dice over features, polarities and thresholds.
    """
    images = np.asarray(images, np.float32)
    masks = np.asarray(masks).astype(bool).reshape(len(images), -1)  # [N, P]
    grey = images @ np.array([0.299, 0.587, 0.114], np.float32)
    feats = [grey, images[..., 0], images[..., 1], images[..., 2], 255 - images.max(axis=-1)]
    thresholds = np.linspace(0, 255, n_thresholds + 2)[1:-1]
    return max(_best_threshold_dice(f.reshape(len(images), -1), masks, thresholds) for f in feats)


def _best_threshold_dice(feat: np.ndarray, masks: np.ndarray, thresholds: np.ndarray) -> float:
    """Best mean Dice of ``feat >= t`` or ``feat < t`` over ``thresholds``, from per-image histograms."""
    n, n_bins = len(feat), len(thresholds) + 1
    bins = np.digitize(feat, thresholds) + n_bins * np.arange(n)[:, None]  # bin j: t[j-1] <= f < t[j]
    total = np.bincount(bins.ravel(), minlength=n * n_bins).reshape(n, n_bins)
    inside = np.bincount(bins.ravel(), masks.ravel(), minlength=n * n_bins).reshape(n, n_bins)
    # Pixels with f >= t[j] are the bins above j: reverse cumulative sums, dropping bin 0.
    pred = np.cumsum(total[:, ::-1], axis=1)[:, ::-1][:, 1:]  # [N, T]
    hit = np.cumsum(inside[:, ::-1], axis=1)[:, ::-1][:, 1:]
    area = masks.sum(axis=1, keepdims=True)
    best = 0.0
    for p, i in ((pred, hit), (total.sum(1, keepdims=True) - pred, area - hit)):  # both polarities
        denom = p + area
        dice = np.where(denom > 0, 2 * i / np.maximum(denom, 1), 1.0)
        best = max(best, float(dice.mean(axis=0).max()))
    return best


def save_preview(path: str, seed: int = 0, count: int = 16, size: int = 128) -> None:
    """Write a PNG grid of generated images with their mask contours drawn in green.

    Args:
        path: Output PNG path.
        seed: Dataset seed; images 0 .. count - 1 are shown.
        count: Number of images.
        size: Side length of each image.
    """
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    grid = np.full((rows * (size + 2), cols * (size + 2), 3), 255, np.uint8)
    for i in range(count):
        img, mask = make_lesion(seed, i, size)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        img = cv2.drawContours(np.ascontiguousarray(img[..., ::-1]), contours, -1, (0, 255, 0), 1)
        r, c = divmod(i, cols)
        grid[r * (size + 2):r * (size + 2) + size, c * (size + 2):c * (size + 2) + size] = img
    if not cv2.imwrite(path, grid):
        raise OSError(f"could not write preview to {path}")
