"""Annotation-noise models: identity at level 0, determinism, binary output, noise growing with level,
the per-sample MaskNoise decisions, bad input and the documented edge cases."""
from __future__ import annotations

import functools
import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from noisyseg.errors import ConfigError
from noisyseg.noise import NOISE_MODELS, MaskNoise, corrupt, realised_dice
from noisyseg.noise.preview import main

KINDS = NOISE_MODELS.names()
LEVELS = (0.0, 0.25, 0.5, 1.0)


def blob(height: int, width: int, centre: tuple[float, float], radius: float, lobes: float, phase: float) -> np.ndarray:
    """A filled star-shaped blob; ``lobes`` = 0 gives a circle."""
    theta = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    r = radius * (1 + lobes * np.cos(3 * theta + phase) + 0.5 * lobes * np.cos(5 * theta + 2 * phase))
    points = np.stack([centre[0] + r * np.cos(theta), centre[1] + r * np.sin(theta)], axis=1)
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return mask


@functools.lru_cache(maxsize=1)
def varied_masks() -> tuple[np.ndarray, ...]:
    """20 lesions: ellipses and irregular blobs of different sizes, in square and non-square frames."""
    rng = np.random.default_rng(7)
    masks = []
    for i in range(20):
        height, width = int(rng.integers(40, 120)), int(rng.integers(40, 120))
        centre = (width / 2 + rng.normal(0, width / 10), height / 2 + rng.normal(0, height / 10))
        radius = rng.uniform(0.15, 0.4) * min(height, width)
        if i % 2:
            masks.append(blob(height, width, centre, radius, rng.uniform(0.1, 0.3), rng.uniform(0, 6)))
        else:
            mask = np.zeros((height, width), np.uint8)
            cv2.ellipse(mask, (centre, (2 * radius, 2 * radius * rng.uniform(0.4, 1)), rng.uniform(0, 180)), 1, -1)
            masks.append(mask)
    return tuple(masks)


def mean_dice(kind: str, level: float, masks: tuple[np.ndarray, ...] | None = None) -> float:
    masks = masks or varied_masks()
    return float(np.mean([realised_dice(corrupt(m, kind, level, seed), m) for seed, m in enumerate(masks)]))


@pytest.mark.parametrize("kind", KINDS)
def test_level_zero_is_an_identical_copy(kind):
    for mask in varied_masks()[:5]:
        out = corrupt(mask, kind, 0.0, seed=3)
        assert out is not mask and np.array_equal(out, mask) and out.dtype == np.uint8
        out[:] = 1 - out  # a copy: the caller's mask is untouched
        assert not np.array_equal(out, mask)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(64, 64), (48, 96), (120, 40)])
def test_output_is_binary_uint8_of_the_same_shape(kind, shape):
    mask = blob(*shape, centre=(shape[1] / 2, shape[0] / 2), radius=min(shape) / 4, lobes=0.2, phase=1.0)
    for level in (0.1, 0.5, 1.0):
        out = corrupt(mask, kind, level, seed=1)
        assert out.shape == shape and out.dtype == np.uint8
        assert set(np.unique(out).tolist()) <= {0, 1}


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_for_a_seed(kind):
    mask = varied_masks()[1]
    assert np.array_equal(corrupt(mask, kind, 0.5, seed=11), corrupt(mask, kind, 0.5, seed=11))
    # morph only draws dilate-or-erode, so two seeds may agree; across five seeds outputs must differ.
    outputs = {corrupt(mask, kind, 0.5, seed).tobytes() for seed in range(5)}
    assert len(outputs) > 1


@pytest.mark.parametrize("kind", KINDS)
def test_realised_noise_grows_with_level(kind):
    dice = [mean_dice(kind, level) for level in LEVELS]
    assert dice[0] == 1.0
    assert all(a > b for a, b in zip(dice, dice[1:])), dice
    assert 0.3 < dice[-1] < 0.75, f"{kind} at level 1.0 is off its calibration: Dice {dice[-1]:.3f}"


@pytest.mark.parametrize("kind", KINDS)
def test_magnitudes_are_relative_to_the_lesion(kind):
    """The same shape at 64 and 256 px is corrupted by about the same amount."""
    small = tuple(blob(64, 64, (32, 30), 16, 0.2, p) for p in np.linspace(0, 6, 8))
    large = tuple(cv2.resize(m, (256, 256), interpolation=cv2.INTER_NEAREST) for m in small)
    assert abs(mean_dice(kind, 0.5, small) - mean_dice(kind, 0.5, large)) < 0.06


@pytest.mark.parametrize("kind", KINDS)
def test_bool_01_and_0255_masks_give_the_same_output(kind):
    mask = varied_masks()[3]
    out = corrupt(mask, kind, 0.7, seed=2)
    assert np.array_equal(corrupt(mask.astype(bool), kind, 0.7, seed=2), out)
    assert np.array_equal(corrupt(mask * 255, kind, 0.7, seed=2), out)


@pytest.mark.parametrize("kind", KINDS)
def test_empty_and_full_masks_are_returned_unchanged(kind):
    """Documented: magnitudes are relative to the lesion, and neither mask has a boundary in the frame."""
    for mask in (np.zeros((30, 50), np.uint8), np.ones((30, 50), np.uint8)):
        assert np.array_equal(corrupt(mask, kind, 1.0, seed=0), mask)


@pytest.mark.parametrize("kind", KINDS)
def test_degenerate_lesions_do_not_crash(kind):
    """One pixel, a thin diagonal line, a lesion filling the frame but one corner, a lesion cut by the frame."""
    line = np.eye(40, 60, dtype=np.uint8)
    almost_full = np.ones((40, 60), np.uint8)
    almost_full[:3, :3] = 0
    pixel = np.zeros((40, 60), np.uint8)
    pixel[10, 20] = 1
    cut = blob(40, 60, (0, 20), 25, 0.2, 0.0)
    for mask in (pixel, line, almost_full, cut):
        out = corrupt(mask, kind, 1.0, seed=4)
        assert out.shape == mask.shape and set(np.unique(out).tolist()) <= {0, 1}


@settings(max_examples=40, deadline=None)
@given(mask=arrays(np.bool_, st.tuples(st.integers(1, 24), st.integers(1, 24))),
       kind=st.sampled_from(KINDS), level=st.floats(0, 1), seed=st.integers(0, 2**32))
def test_property_binary_same_shape_deterministic(mask, kind, level, seed):
    out = corrupt(mask, kind, level, seed)
    assert out.shape == mask.shape and out.dtype == np.uint8 and set(np.unique(out).tolist()) <= {0, 1}
    assert np.array_equal(out, corrupt(mask, kind, level, seed))


# --- MaskNoise ---------------------------------------------------------------------------------------

IDS = [f"IMD{i:03d}" for i in range(2000)]
GOLDEN = [True, True, True, True, False, True, False, True]  # is_corrupted("s0".."s7"), fraction 0.5, seed 0


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.7, 1.0])
def test_mask_noise_corrupts_about_fraction_of_ids(fraction):
    share = np.mean([MaskNoise("morph", 0.5, fraction, seed=1).is_corrupted(i) for i in IDS])
    assert abs(share - fraction) < 0.04


def test_mask_noise_decisions_are_deterministic_nested_and_seeded():
    low, high = MaskNoise("flip", 0.5, 0.3, seed=0), MaskNoise("flip", 0.5, 0.6, seed=0)
    chosen = {i for i in IDS if low.is_corrupted(i)}
    assert chosen == {i for i in IDS if MaskNoise("flip", 0.5, 0.3, seed=0).is_corrupted(i)}
    assert chosen < {i for i in IDS if high.is_corrupted(i)}  # growing fractions add samples
    assert chosen != {i for i in IDS if MaskNoise("flip", 0.5, 0.3, seed=1).is_corrupted(i)}
    # sha256-based, so stable across processes and Python's hash randomisation (the cache relies on it)
    assert [MaskNoise("morph", 1.0, 0.5, seed=0).is_corrupted(f"s{i}") for i in range(8)] == GOLDEN



def test_mask_noise_call():
    mask = varied_masks()[0]
    noise = MaskNoise("affine", 1.0, 0.5, seed=0)
    kept = next(i for i in IDS if not noise.is_corrupted(i))
    hit = next(i for i in IDS if noise.is_corrupted(i))
    assert np.array_equal(noise(kept, mask * 255), mask)  # normalised, not corrupted
    assert np.array_equal(noise(hit, mask), noise(hit, mask))
    assert not np.array_equal(noise(hit, mask), mask)
    assert np.array_equal(MaskNoise("affine", 0.0, 1.0)(hit, mask), mask)
    # per-sample seeds differ between samples
    assert not np.array_equal(noise(hit, mask), noise(next(i for i in IDS[::-1] if noise.is_corrupted(i)), mask))


def test_mask_noise_key_identifies_the_configuration():
    base = MaskNoise("morph", 0.5)
    assert base.key.startswith("morph(level=0.5,fraction=1.0,seed=0")
    assert base.key == MaskNoise("morph", 0.5, 1.0, 0).key
    others = [MaskNoise("flip", 0.5), MaskNoise("morph", 0.75), MaskNoise("morph", 0.5, 0.9), MaskNoise("morph", 0.5, seed=1)]
    assert len({base.key, *(n.key for n in others)}) == 5


# --- bad input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("level", [1.5, -0.1, math.nan, "high"])
def test_level_out_of_range_is_a_config_error(level):
    with pytest.raises(ConfigError, match=r"noise\.level=.* must be"):
        corrupt(varied_masks()[0], "morph", level, seed=0)
    with pytest.raises(ConfigError, match=r"noise\.level=.* must be"):
        MaskNoise("morph", level)


def test_messages_name_the_option():
    with pytest.raises(ConfigError, match=r"noise\.level=1\.5 must be in \[0, 1\]"):
        MaskNoise("morph", 1.5)
    with pytest.raises(ConfigError, match=r"noise\.fraction=2 must be in \[0, 1\]"):
        MaskNoise("morph", 0.5, fraction=2)
    with pytest.raises(ConfigError, match=r"noise\.seed=-1"):
        MaskNoise("morph", 0.5, seed=-1)


def test_unknown_kind_lists_the_valid_ones():
    for make in (lambda: corrupt(varied_masks()[0], "blur", 0.5, 0), lambda: MaskNoise("blur", 0.5)):
        with pytest.raises(ConfigError, match="blur") as err:
            make()
        assert all(kind in str(err.value) for kind in KINDS)


@pytest.mark.parametrize("mask", [np.array([[0, 2], [2, 0]]), np.array([[0, 128], [255, 0]]),
                                  np.full((4, 4), 0.5), np.zeros((4, 4, 3), np.uint8)])
def test_non_binary_or_non_2d_masks_are_rejected(mask):
    with pytest.raises(ValueError, match="mask must be"):
        corrupt(mask, "morph", 0.5, seed=0)


# --- realised_dice and the preview -------------------------------------------------------------------

def test_realised_dice():
    a = np.zeros((2, 4, 4), np.uint8)
    a[0, :2] = 1  # 8 pixels
    b = a.copy()
    b[0, :1] = 0  # 4 of them kept
    b[1, 0, 0] = 255  # image 1: clean empty, noisy not
    assert realised_dice(a, a) == 1.0
    assert realised_dice(b, a) == pytest.approx((2 * 4 / 12 + 0.0) / 2)
    assert realised_dice(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0  # both empty
    with pytest.raises(ValueError):
        realised_dice(a, a[:, :3])


def test_preview_writes_one_png(tmp_path):
    out = tmp_path / "preview.png"
    main(["preview", "--out", str(out), "--levels", "1.0", "--count", "1"])
    assert cv2.imread(str(out)) is not None


# --- the paper's annotator (coarse) and missing annotations -------------------------------------------
def test_coarse_polygons_have_three_to_seven_vertices():
    from noisyseg.noise.models import _polygon

    contour = np.stack(np.nonzero(varied_masks()[0]), axis=1)[:, ::-1]  # any long point list
    counts = {level: len(_polygon(contour, level, 30.0, np.random.default_rng(0))) for level in (0.001, 0.5, 1.0)}
    assert counts == {0.001: 7, 0.5: 5, 1.0: 3}


def test_coarse_outlines_are_convex_shapes_of_few_vertices():
    """A box, an ellipse or a polygon of <= 7 clicks, dilated or eroded: convex for convex lesions."""
    for seed, mask in enumerate(varied_masks()[::2]):  # the ellipses
        out = corrupt(mask, "coarse", 0.8, seed)
        contours, _ = cv2.findContours(out, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        [outline] = contours
        hull = cv2.convexHull(outline)
        if cv2.contourArea(hull) > 100:  # a tightened sliver of a few pixels is all discretisation
            assert cv2.contourArea(outline) >= 0.9 * cv2.contourArea(hull)


@pytest.mark.parametrize("missing", [0.0, 0.3, 1.0])
def test_missing_annotations_are_empty_and_nested(missing):
    mask = varied_masks()[0]
    noise = MaskNoise("morph", 0.5, 1.0, seed=4, missing=missing)
    gone = [i for i in IDS if noise.is_missing(i)]
    assert all(not noise(i, mask).any() for i in gone)
    assert all(noise(i, mask).any() for i in IDS if i not in gone)
    assert abs(len(gone) / len(IDS) - missing) < 0.1
    wider = MaskNoise("morph", 0.5, 1.0, seed=4, missing=min(1.0, missing + 0.2))
    assert set(gone) <= {i for i in IDS if wider.is_missing(i)}


def test_missing_is_independent_of_the_corrupted_fraction():
    a, b = MaskNoise("morph", 0.5, 0.5, seed=0, missing=0.3), MaskNoise("morph", 0.5, 0.9, seed=0, missing=0.3)
    assert [a.is_missing(i) for i in IDS] == [b.is_missing(i) for i in IDS]
    assert MaskNoise("morph", 0.5, missing=0.3).key != MaskNoise("morph", 0.5).key
    with pytest.raises(ConfigError, match="noise.missing"):
        MaskNoise("morph", 0.5, missing=1.5)


# --- Markov boundary noise (Yao et al. 2023) ---------------------------------------------------------
def test_markov_depends_on_the_seed_and_the_chain_length_only():
    """Level 0 is the identity and a seed gives one mask; levels whose chains have the same number of
    steps give the same mask (the final flips do not move with the level), a longer chain another."""
    from noisyseg.noise.models import MARKOV_STEPS, MARKOV_WORK_DIAMETER

    step = 1 / (MARKOV_STEPS * MARKOV_WORK_DIAMETER)  # the level of one more step for a lesion of any size
    for seed, mask in enumerate(varied_masks()[:3]):
        assert np.array_equal(corrupt(mask, "markov", 0.0, seed), mask)
        out = corrupt(mask, "markov", 0.5, seed)
        assert np.array_equal(corrupt(mask, "markov", 0.5, seed), out)
        assert np.array_equal(corrupt(mask, "markov", 0.5 + 0.4 * step, seed), out)
        assert not np.array_equal(corrupt(mask, "markov", 0.5 + 20 * step, seed), out)
        assert not np.array_equal(corrupt(mask, "markov", 0.5, seed + 100), out)


def test_markov_dice_falls_with_the_level_on_a_fine_grid():
    """What the calibration's bisection relies on: for fixed seeds, a longer chain continues a shorter one."""
    dice = [mean_dice("markov", level, varied_masks()[:6]) for level in np.linspace(0.1, 1.0, 10)]
    assert np.all(np.diff(dice) < 0), dice


def test_markov_mostly_grows_and_stays_within_its_crop():
    """The chain grows 4 steps in 5: the noisy lesion is larger, and its front (specks aside) stays well
    inside the bounding box grown by MARKOV_MARGIN * d that the chain runs on."""
    from noisyseg.noise.models import MARKOV_MARGIN, _diameter, _touching

    mask = np.zeros((120, 120), np.uint8)
    cv2.circle(mask, (60, 60), 12, 1, -1)  # d = 25: its 75 px crop lies inside the frame
    distance = cv2.distanceTransform(1 - mask, cv2.DIST_L2, cv2.DIST_MASK_5)
    for seed in range(4):
        out = corrupt(mask, "markov", 1.0, seed)
        assert out.sum() > 1.5 * mask.sum()
        assert distance[_touching(out, mask) > 0].max() < 0.8 * MARKOV_MARGIN * _diameter(mask)
