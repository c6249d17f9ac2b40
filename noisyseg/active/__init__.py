"""Active learning (CEAL, Górriz et al. 2017): MC dropout, uncertainty scores, samplers, pseudo-label
policies; the loop is :mod:`noisyseg.active.loop` (``python -m noisyseg.active``).

MC predictions are probabilities ``[T, B, H, W]``, samples first (see :mod:`noisyseg.active.mc`).
"""
from noisyseg.active.mc import MODES, NoDropoutError, dropout_modules, mc_dropout, mc_predict, predict
from noisyseg.active.pseudo import PSEUDO_POLICIES, PseudoPolicy, build_pseudo_policy
from noisyseg.active.samplers import (
    SAMPLERS, BaldSampler, CEALSampler, EntropySampler, RandomSampler, Sampler, UncertaintySampler,
    VarianceSampler, build_sampler, most_confident, score_pool,
)
from noisyseg.active.scores import (
    REDUCTIONS, SCORES, bald, distance_weights, entropy, image_scores, pixel_uncertainty, predicted_mask, variance,
)

__all__ = [
    "BaldSampler", "CEALSampler", "PSEUDO_POLICIES", "PseudoPolicy", "build_pseudo_policy", "EntropySampler", "MODES", "NoDropoutError", "REDUCTIONS", "RandomSampler",
    "SAMPLERS", "SCORES", "Sampler", "UncertaintySampler", "VarianceSampler", "bald", "build_sampler",
    "distance_weights", "dropout_modules", "entropy", "image_scores", "mc_dropout", "mc_predict",
    "most_confident", "pixel_uncertainty", "predict", "predicted_mask", "score_pool", "variance",
]
