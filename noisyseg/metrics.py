"""ISIC 2018 (task 1) segmentation scores, vectorised over a batch of binary masks.

Every value equals what the official ``isic-challenge-scoring`` package (``SegmentationScore``)
reports: each metric is computed per image from its confusion counts, then averaged over images
(macro average). Undefined ratios get the official "freebie" of 1.0: Dice and Jaccard when
TP + FP + FN == 0, sensitivity when TP + FN == 0, specificity when TN + FP == 0. The thresholded
Jaccard counts an image's Jaccard below 0.65 as 0 (the official key is ``threshold_jaccard``).
"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch

MaskLike = Union[np.ndarray, torch.Tensor]

METRIC_KEYS: tuple[str, ...] = ("dice", "jaccard", "thresholded_jaccard", "sensitivity", "specificity", "accuracy")

JACCARD_THRESHOLD = 0.65  # ISIC 2018 task 1 scoring threshold


def _as_bool_masks(mask: MaskLike, name: str) -> np.ndarray:
    """Converts a binary mask (numpy or torch, any device) to a bool array of shape [N, H, W]."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    array = np.asarray(mask)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"{name} must have shape [N, H, W] or [H, W]; got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} must not be empty; got shape {array.shape}")
    if array.dtype == np.bool_:
        return array
    # Probabilities or 0/255 images would be scored silently wrong by a `!= 0` cast, so refuse them.
    if not ((array == 0) | (array == 1)).all():
        raise ValueError(f"{name} must be binary (bool or values in {{0, 1}}); got values {np.unique(array)[:5]}...")
    return array != 0


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise numerator / denominator in float64, with the official 1.0 where denominator == 0."""
    out = np.ones(numerator.shape, dtype=np.float64)
    return np.divide(numerator, denominator, out=out, where=denominator != 0)


def per_image_scores(pred: MaskLike, target: MaskLike) -> dict[str, np.ndarray]:
    """Scores each image of a batch separately.

    Args:
        pred: Predicted binary masks, ``[N, H, W]`` or a single ``[H, W]`` mask; bool or 0/1 integers,
            numpy array or torch tensor on any device.
        target: Ground-truth binary masks, same shape as ``pred``.

    Returns:
        A dict from each name in :data:`METRIC_KEYS` to a float64 array of shape ``[N]``.

    Raises:
        ValueError: If a mask has the wrong number of dimensions, is empty or not binary, or the shapes differ.
    """
    p = _as_bool_masks(pred, "pred")
    t = _as_bool_masks(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: {p.shape} vs {t.shape}")

    axes = (1, 2)
    tp = np.logical_and(p, t).sum(axis=axes, dtype=np.int64)  # [N]
    fp = np.logical_and(p, ~t).sum(axis=axes, dtype=np.int64)
    fn = np.logical_and(~p, t).sum(axis=axes, dtype=np.int64)
    tn = p.shape[1] * p.shape[2] - tp - fp - fn

    jaccard = _ratio(tp, tp + fp + fn)
    return {
        # Dice from the counts, not 2J / (1 + J): the official scorer does so, and the two differ in the last bit.
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "jaccard": jaccard,
        "thresholded_jaccard": np.where(jaccard >= JACCARD_THRESHOLD, jaccard, 0.0),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
    }


def score(pred: MaskLike, target: MaskLike) -> dict[str, float]:
    """Macro-averaged ISIC 2018 segmentation scores (per image, then the mean over images).

    Args:
        pred: Predicted binary masks, ``[N, H, W]`` or ``[H, W]`` (see :func:`per_image_scores`).
        target: Ground-truth binary masks, same shape as ``pred``.

    Returns:
        A dict from each name in :data:`METRIC_KEYS` to its mean over the N images.

    Raises:
        ValueError: As :func:`per_image_scores`.
    """
    scores = per_image_scores(pred, target)
    return {key: float(scores[key].mean()) for key in METRIC_KEYS}
