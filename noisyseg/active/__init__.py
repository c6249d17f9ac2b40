"""Active learning (CEAL, Górriz et al. 2017): samplers and pseudo-label policies; the loop is
:mod:`noisyseg.active.loop` (``python -m noisyseg.active``), over the images of
:mod:`noisyseg.active.pool`, with its labels and state files kept by :mod:`noisyseg.active.state`.

MC dropout and the uncertainty scores live in :mod:`noisyseg.inference` (``noisyseg.predict`` uses them
too) and are re-exported here, so ``from noisyseg.active import mc_predict`` keeps working. MC
predictions are probabilities ``[T, B, H, W]``, samples first (see :mod:`noisyseg.inference.mc`).
"""
from noisyseg.active.pseudo import PSEUDO_POLICIES, PseudoPolicy, build_pseudo_policy
from noisyseg.active.samplers import (
    SAMPLERS, BaldSampler, CEALSampler, EntropySampler, RandomSampler, Sampler, UncertaintySampler,
    VarianceSampler, build_sampler, most_confident, score_pool,
)
from noisyseg.inference import (
    MODES, REDUCTIONS, SCORES, NoDropoutError, bald, distance_weights, dropout_modules, entropy, image_scores,
    mc_dropout, mc_predict, pixel_uncertainty, predict, predicted_mask, variance,
)

__all__ = [
    "BaldSampler", "CEALSampler", "PSEUDO_POLICIES", "PseudoPolicy", "build_pseudo_policy", "EntropySampler", "MODES", "NoDropoutError", "REDUCTIONS", "RandomSampler",
    "SAMPLERS", "SCORES", "Sampler", "UncertaintySampler", "VarianceSampler", "bald", "build_sampler",
    "distance_weights", "dropout_modules", "entropy", "image_scores", "mc_dropout", "mc_predict",
    "most_confident", "pixel_uncertainty", "predict", "predicted_mask", "score_pool", "variance",
]
