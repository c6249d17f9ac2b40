"""Tests for noisyseg.metrics: hand-counted cases, the official edge cases, and equality with the
official ISIC scorer (isic-challenge-scoring), which the package must reproduce exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from noisyseg.metrics import METRIC_KEYS, per_image_scores, score

# Our key -> the official SegmentationScore.macro_average key.
OFFICIAL_KEYS = {key: key for key in METRIC_KEYS} | {"thresholded_jaccard": "threshold_jaccard"}


def _reference(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """One image, scored with the official formulas (isic_challenge_scoring.metrics) in plain Python."""
    tp = int(np.sum(pred & target))
    fp = int(np.sum(pred & ~target))
    fn = int(np.sum(~pred & target))
    tn = int(np.sum(~pred & ~target))
    jaccard = 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)
    return {
        "dice": 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn),
        "jaccard": jaccard,
        "thresholded_jaccard": jaccard if jaccard >= 0.65 else 0.0,
        "sensitivity": 1.0 if tp + fn == 0 else tp / (tp + fn),
        "specificity": 1.0 if tn + fp == 0 else tn / (tn + fp),
        "accuracy": (tp + tn) / (tp + tn + fp + fn),
    }


def test_hand_counted_4x4() -> None:
    target = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    pred = np.array([[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    # TP = 2, FP = 2, FN = 2, TN = 10
    expected = {
        "dice": 4 / 8,
        "jaccard": 2 / 6,
        "thresholded_jaccard": 0.0,
        "sensitivity": 2 / 4,
        "specificity": 10 / 12,
        "accuracy": 12 / 16,
    }
    assert score(pred, target) == pytest.approx(expected, rel=1e-15)


def test_macro_average_over_images() -> None:
    target = np.zeros((2, 4, 4), dtype=bool)
    target[:, :2, :2] = True
    pred = target.copy()
    pred[0, :2, :2] = [[False, True], [False, True]]
    pred[0, :2, 2] = True  # image 0 is the hand-counted case; image 1 is perfect
    result = score(pred, target)
    assert result["dice"] == pytest.approx((0.5 + 1.0) / 2)
    assert result["jaccard"] == pytest.approx((1 / 3 + 1.0) / 2)
    assert result["thresholded_jaccard"] == pytest.approx((0.0 + 1.0) / 2)
    assert result["specificity"] == pytest.approx((10 / 12 + 1.0) / 2)
    assert list(result) == list(METRIC_KEYS)


def test_per_image_scores_shapes_and_dtype() -> None:
    scores = per_image_scores(np.ones((3, 5, 6), dtype=bool), np.ones((3, 5, 6), dtype=bool))
    assert set(scores) == set(METRIC_KEYS)
    for values in scores.values():
        assert values.shape == (3,) and values.dtype == np.float64


def test_empty_prediction_nonempty_truth() -> None:
    target = np.zeros((8, 8), dtype=bool)
    target[2:5, 2:5] = True
    result = score(np.zeros_like(target), target)
    assert result["dice"] == 0.0 and result["jaccard"] == 0.0 and result["sensitivity"] == 0.0
    assert result["specificity"] == 1.0


def test_empty_truth_nonempty_prediction() -> None:
    pred = np.zeros((8, 8), dtype=bool)
    pred[2:5, 2:5] = True
    result = score(pred, np.zeros_like(pred))
    assert result["dice"] == 0.0 and result["jaccard"] == 0.0
    assert result["sensitivity"] == 1.0  # no positives to find: the official freebie
    assert result["specificity"] == pytest.approx(55 / 64)


def test_both_empty_is_perfect() -> None:
    empty = np.zeros((8, 8), dtype=bool)
    assert score(empty, empty) == {key: 1.0 for key in METRIC_KEYS}


def test_all_foreground_both_is_perfect() -> None:
    full = np.ones((8, 8), dtype=bool)
    assert score(full, full) == {key: 1.0 for key in METRIC_KEYS}  # specificity: TN + FP == 0


@pytest.mark.parametrize("hits, expected", [(64, 0.0), (65, 0.65), (66, 0.66)])
def test_thresholded_jaccard_at_065(hits: int, expected: float) -> None:
    target = np.ones((10, 10), dtype=bool)
    pred = np.zeros(100, dtype=bool)
    pred[:hits] = True  # FP = 0, so Jaccard = hits / 100
    result = score(pred.reshape(10, 10), target)
    assert result["jaccard"] == hits / 100
    assert result["thresholded_jaccard"] == expected


def test_tensor_and_integer_inputs_match_numpy() -> None:
    rng = np.random.default_rng(0)
    pred, target = rng.random((2, 4, 16, 16)) < 0.4
    expected = score(pred, target)
    assert score(torch.from_numpy(pred), torch.from_numpy(target)) == expected
    assert score(torch.from_numpy(pred).long(), torch.from_numpy(target).int()) == expected
    assert score(pred.astype(np.uint8), target.astype(np.int64)) == expected
    if torch.cuda.is_available():
        assert score(torch.from_numpy(pred).cuda(), torch.from_numpy(target).cuda()) == expected


def test_single_mask_is_batch_of_one() -> None:
    rng = np.random.default_rng(1)
    pred, target = rng.random((2, 12, 10)) < 0.5
    assert score(pred, target) == score(pred[None], target[None])


@pytest.mark.parametrize(
    "pred_shape, target_shape, message",
    [
        ((2, 4, 4), (2, 4, 5), "shapes differ"),
        ((4,), (4,), "must have shape"),
        ((1, 1, 4, 4), (1, 1, 4, 4), "must have shape"),
        ((0, 4, 4), (0, 4, 4), "must not be empty"),
    ],
)
def test_bad_shapes_raise(pred_shape: tuple, target_shape: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        score(np.zeros(pred_shape, dtype=bool), np.zeros(target_shape, dtype=bool))


def test_non_binary_values_raise() -> None:
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[0, 0] = 255
    with pytest.raises(ValueError, match="binary"):
        score(mask, np.zeros((4, 4), dtype=np.uint8))


def _random_pairs(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Random masks with each edge case, noisy copies of the truth (Jaccard often >= 0.65) and unrelated pairs."""
    full, empty = np.ones(shape, dtype=bool), np.zeros(shape, dtype=bool)
    blob = rng.random(shape) < 0.3
    pairs = [(empty, blob), (blob, empty), (empty, empty), (full, full), (full, blob), (blob, blob)]
    for flip in (0.01, 0.05, 0.2):
        truth = rng.random(shape) < rng.uniform(0.2, 0.8)
        pairs.append((truth ^ (rng.random(shape) < flip), truth))
    for _ in range(4):
        pairs.append((rng.random(shape) < rng.random(), rng.random(shape) < rng.random()))
    pred, target = (np.stack(masks) for masks in zip(*pairs))
    return pred, target  # [N, H, W] each


def _to_png(image, mask: np.ndarray, path) -> None:
    """Saves a bool mask as the 0/255 greyscale PNG the official scorer reads."""
    png = image.fromarray(mask.astype(np.uint8) * 255)  # a 2-D uint8 array becomes mode 'L'
    assert png.mode == "L"
    png.save(path)


# The official scorer's own pandas call warns on recent pandas; that is not ours to fix.
@pytest.mark.filterwarnings("ignore:The inplace keyword")
@pytest.mark.parametrize("shape", [(32, 48), (5, 7), (1, 1)])
def test_equals_official_scorer(tmp_path, shape: tuple[int, int]) -> None:
    segmentation = pytest.importorskip("isic_challenge_scoring.segmentation")
    image = pytest.importorskip("PIL.Image")
    pred, target = _random_pairs(np.random.default_rng(sum(shape)), shape)
    truth_dir, pred_dir = tmp_path / "truth", tmp_path / "pred"
    truth_dir.mkdir()
    pred_dir.mkdir()
    for i, (p, t) in enumerate(zip(pred, target)):
        _to_png(image, t, truth_dir / f"ISIC_{i:07d}_segmentation.png")
        _to_png(image, p, pred_dir / f"ISIC_{i:07d}.png")

    official = segmentation.SegmentationScore.from_dir(truth_dir, pred_dir).macro_average
    ours = score(pred, target)
    for key in METRIC_KEYS:
        assert ours[key] == pytest.approx(float(official[OFFICIAL_KEYS[key]]), rel=1e-12), key


@settings(max_examples=30, deadline=None)
@given(hnp.arrays(np.bool_, st.tuples(st.just(2), st.integers(1, 3), st.integers(1, 6), st.integers(1, 6))))
def test_property_bounds_and_official_formulas(masks: np.ndarray) -> None:
    pred, target = masks  # [N, H, W] each
    scores = per_image_scores(pred, target)
    for key in METRIC_KEYS:
        assert np.all((scores[key] >= 0.0) & (scores[key] <= 1.0)), key
    assert np.all(scores["dice"] >= scores["jaccard"])
    for i in range(len(pred)):
        expected = _reference(pred[i], target[i])
        assert {key: scores[key][i] for key in METRIC_KEYS} == expected  # exact: same float64 operations
