"""Meta-learned per-pixel loss weights (Mirikharaji, Yan & Hamarneh 2019, after Ren et al. 2018).

Noisy batch ``(x, ỹ)`` with per-pixel losses ℓ_i(θ); clean batch with mean loss L_c(θ). A virtual
SGD step ``θ'(ε) = θ − α Σ_i ε_i ∇ℓ_i(θ)`` is taken, and the meta gradient is read at ε = 0::

    u_i = ∂L_c(θ'(ε))/∂ε_i |_(ε=0) = −α ⟨∇ℓ_i(θ), g⟩,    g = ∇L_c(θ)
    w̃_i = max(−u_i, 0),    w_i = w̃_i / Σ_j w̃_j   (all zeros if Σ_j w̃_j = 0)

and the real update descends ``Σ_i w_i ℓ_i(θ)``. All u_i at once are a forward-mode directional
derivative: push the tangent g through the noisy forward pass and read the tangent of the loss map.

Backends (:data:`META_BACKENDS`, all return the same u):

- ``jvp`` (default): clean gradient g, then *one* noisy forward that records the graph the weighted
  backward reuses while :mod:`noisyseg.tangents` pushes g through it op by op, off the autograd tape
  (hand-written tangent rules; a model with an op they lack falls back to ``jvp_ad``, with a warning).
- ``jvp_ad``: the same with ``torch.autograd.forward_ad``: a forward-mode pass with dual parameters under
  ``no_grad``, then the weighted update runs its own forward (the reference for ``jvp``'s rules).
- ``jvp_ad_fused``: ``jvp_ad`` whose forward-mode pass keeps its primal graph for the weighted backward;
  forward_ad records the tangent computations on the tape too, so it is no faster and takes ~2x the memory.
- ``higher`` / ``autograd``: the literal L2RW recipe (ε requiring grad, differentiable inner SGD
  step, clean loss, gradient w.r.t. ε) with the ``higher`` library or ``torch.func`` + double backward.

Distributed (``process_group``; auto when ``torch.distributed`` runs with world size > 1): the
forward-mode backends only. g is all-reduced to the global clean gradient (pixel-count-weighted mean over ranks) and the
normalisation, the non-finite check and the all-zero decision are global, so N processes give the
weights of one process on the concatenated batches (:mod:`noisyseg.distributed` says what stays per
rank). :class:`MetaReweightedLoss` multiplies its loss by the world size, so DDP's gradient average
is the single-process gradient of Σ_i w_i ℓ_i over all ranks' pixels.

Batch norm: every meta forward runs on *clones* of the module's buffers, so running statistics
change only in the weighted forward, once per step, as in an ordinary step. The module's current
train/eval mode is used. Dropout: two seeds are drawn from the global generator per call and every
forward runs in a forked RNG seeded with the noisy or the clean seed, so backends consume the
global RNG identically and the forward-mode pass and the weighted update share one dropout mask.

References: Z. Mirikharaji, Y. Yan, G. Hamarneh, "Learning to segment skin lesions from noisy
annotations", MICCAI DART 2019. M. Ren, W. Zeng, B. Yang, R. Urtasun, "Learning to reweight examples
for robust deep learning", ICML 2018.
"""
from noisyseg.meta.backends import FORWARD_MODE_BACKENDS, META_BACKENDS
from noisyseg.meta.problem import Batch, LossFn, MetaInputError
from noisyseg.meta.reweight import ZERO_POLICIES, MetaResult, MetaReweightedLoss, pixel_weights
from noisyseg.meta.weights import NORMALIZE

__all__ = [
    "Batch", "FORWARD_MODE_BACKENDS", "LossFn", "META_BACKENDS", "MetaInputError", "MetaResult", "MetaReweightedLoss",
    "NORMALIZE", "ZERO_POLICIES", "pixel_weights",
]
