"""Uncertainty of MC-dropout predictions: per-pixel maps, CEAL's distance weighting, image scores.

Input: MC probabilities ``[T, B, H, W]`` (samples first, see :mod:`noisyseg.inference.mc`). Pixel maps
are ``[B, H, W]``, image scores ``[B]``; higher means more uncertain. Entropies are in bits, so the
binary entropy and BALD lie in [0, 1] and the variance in [0, 0.25].

* ``variance``: per-pixel variance over the T samples (population variance, as ``np.var`` in CEAL,
  Górriz et al. 2017). Needs T >= 2.
* ``entropy``: predictive entropy, the binary entropy of the mean probability.
* ``bald``: mutual information between prediction and weights (Houlsby et al. 2011; Gal et al. 2017),
  entropy of the mean minus the mean of the per-sample entropies. Needs T >= 2.

Distance weighting (CEAL's ``range_transform(edt(prediction))``): the weight of a pixel is its
Euclidean distance to the nearest background pixel of the *deterministic* predicted mask (OpenCV's exact
``distanceTransform``; 0 on the background), range-normalised per image to [0, 1]. It is 1 at
the lesion's deepest point, small just inside the predicted contour and 0 outside the lesion: CEAL
**down-weights uncertainty near the predicted border and ignores it outside the predicted lesion**,
so the score measures doubt about the lesion's interior rather than about its exact outline. The
image border is not a contour (distances are to background pixels only). An empty prediction gets
all-zero weights (score 0: CEAL's lowest-score "no detection" images); a prediction with no
background gets all-one weights. The mask comes from the mean MC probability >= 0.5 unless a
``prediction`` (e.g. the dropout-free forward, as CEAL intends) is given; CEAL's code took it from
the last random MC sample, a bug not copied here.

NaN guard: probabilities are clamped to [0, 1]; a NaN probability makes its image score NaN (never
silently 0), and the samplers rank NaN scores last.
"""
from __future__ import annotations

import math
from typing import Callable

import cv2
import numpy as np
import torch

from noisyseg.errors import ConfigError
from noisyseg.registry import Registry

SCORES: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry("uncertainty score")
REDUCTIONS = ("mean", "sum", "max")
MIN_SAMPLES = {"variance": 2, "entropy": 1, "bald": 2}


def _check(probs: torch.Tensor, name: str) -> torch.Tensor:
    if probs.ndim != 4:
        raise ValueError(f"{name} expects MC probabilities [T, B, H, W], got shape {list(probs.shape)}")
    need = MIN_SAMPLES.get(name, 1)
    if probs.shape[0] < need:
        raise ConfigError(f"the {name} score needs at least {need} MC samples (T), got T={probs.shape[0]}")
    return probs.clamp(0.0, 1.0)


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Binary entropy in bits; 0 at p in {0, 1} (xlogy(0, 0) = 0)."""
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p)) / math.log(2)


@SCORES.register("variance")
def variance(probs: torch.Tensor) -> torch.Tensor:
    """Per-pixel variance over the samples: ``[T, B, H, W] -> [B, H, W]`` (CEAL)."""
    return _check(probs, "variance").var(dim=0, unbiased=False)


@SCORES.register("entropy")
def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Predictive entropy ``H(mean_t p_t)`` in bits: ``[T, B, H, W] -> [B, H, W]``."""
    return _binary_entropy(_check(probs, "entropy").mean(dim=0))


@SCORES.register("bald")
def bald(probs: torch.Tensor) -> torch.Tensor:
    """BALD ``H(mean_t p_t) - mean_t H(p_t)`` in bits: ``[T, B, H, W] -> [B, H, W]``."""
    p = _check(probs, "bald")
    mutual = _binary_entropy(p.mean(dim=0)) - _binary_entropy(p).mean(dim=0)
    return mutual.clamp(min=0.0)  # Jensen: >= 0; rounding can dip below


def distance_weights(mask: torch.Tensor) -> torch.Tensor:
    """CEAL's weight map: range-normalised EDT of a predicted mask ``[B, H, W]`` -> ``[B, H, W]`` in [0, 1].

    See the module docstring: 1 deep inside the lesion, small near its contour, 0 on the background;
    all zeros for an empty mask, all ones for a mask without background.
    """
    if mask.ndim != 3:
        raise ValueError(f"distance_weights expects a mask [B, H, W], got shape {list(mask.shape)}")
    masks = mask.detach().bool().cpu().numpy()
    out = np.zeros(masks.shape, np.float32)
    for i, m in enumerate(masks):
        if m.all():
            out[i] = 1.0
        elif m.any():
            d = cv2.distanceTransform(m.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)  # exact EDT
            out[i] = (d - d.min()) / (d.max() - d.min())  # min is 0: a background pixel exists
    return torch.from_numpy(out).to(mask.device)


def predicted_mask(probs: torch.Tensor, prediction: torch.Tensor | None = None) -> torch.Tensor:
    """The deterministic mask ``[B, H, W]``: ``prediction`` (probabilities or a mask) >= 0.5, else the mean MC probability >= 0.5."""
    if prediction is None:
        return probs.mean(dim=0) >= 0.5
    if prediction.ndim == 4 and prediction.shape[1] == 1:
        prediction = prediction[:, 0]
    if prediction.shape != probs.shape[1:]:
        raise ValueError(f"prediction has shape {list(prediction.shape)}, expected [B, H, W] = {list(probs.shape[1:])}")
    return prediction >= 0.5 if prediction.is_floating_point() else prediction.bool()


def pixel_uncertainty(
    probs: torch.Tensor, score: str = "variance", distance_weighted: bool = False, prediction: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-pixel uncertainty ``[B, H, W]`` of MC probabilities ``[T, B, H, W]``, optionally distance-weighted (CEAL)."""
    pixels = SCORES.get(score)(probs)
    if distance_weighted:
        pixels = pixels * distance_weights(predicted_mask(probs, prediction)).to(pixels.dtype)
    return pixels


def image_scores(
    probs: torch.Tensor,
    score: str = "variance",
    reduction: str = "sum",
    distance_weighted: bool = False,
    prediction: torch.Tensor | None = None,
) -> torch.Tensor:
    """One uncertainty per image ``[B]``: the pixel map reduced with ``mean``, ``sum`` or ``max``.

    CEAL is ``score="variance", reduction="sum", distance_weighted=True``. NaN pixels give a NaN score.
    """
    if reduction not in REDUCTIONS:
        raise ConfigError(f"score reduction {reduction!r} is not one of {REDUCTIONS}")
    flat = pixel_uncertainty(probs, score, distance_weighted, prediction).flatten(1)  # [B, H * W]
    if reduction == "max":
        return flat.amax(dim=1)  # propagates NaN, like mean and sum
    return flat.mean(dim=1) if reduction == "mean" else flat.sum(dim=1)
