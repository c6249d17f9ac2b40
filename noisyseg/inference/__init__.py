"""Inference tools shared by ``noisyseg.predict`` and ``noisyseg.active``: MC dropout and uncertainty.

MC predictions are probabilities ``[T, B, H, W]``, samples first (see :mod:`noisyseg.inference.mc`).
"""
from noisyseg.inference.mc import MODES, NoDropoutError, dropout_modules, mc_dropout, mc_predict, predict
from noisyseg.inference.uncertainty import (
    MIN_SAMPLES, REDUCTIONS, SCORES, bald, distance_weights, entropy, image_scores, pixel_uncertainty,
    predicted_mask, variance,
)

__all__ = [
    "MIN_SAMPLES", "MODES", "NoDropoutError", "REDUCTIONS", "SCORES", "bald", "distance_weights",
    "dropout_modules", "entropy", "image_scores", "mc_dropout", "mc_predict", "pixel_uncertainty", "predict",
    "predicted_mask", "variance",
]
