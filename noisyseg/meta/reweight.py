"""The public meta step: :func:`pixel_weights` and :class:`MetaReweightedLoss` (see :mod:`noisyseg.meta`)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from noisyseg.distributed import GroupArg, resolve_group, unwrap, world_size
from noisyseg.errors import ConfigError
from noisyseg.meta.backends import FORWARD_MODE_BACKENDS, META_BACKENDS
from noisyseg.meta.problem import Batch, LossFn, MetaInputError, _check_map, _draw_seeds, _MetaGrad, _Problem, _seeded
from noisyseg.meta.weightnet import BOUNDARY_REACH, DEFAULT_FEATURES, LearnedWeighting
from noisyseg.meta.weights import LEARNED, NORMALIZE, Pixels, _weights, needs_slope, slope, weighting_names

ZERO_POLICIES = ("skip", "uniform")


def _check_options(normalize: str, weighting: str) -> None:
    if normalize not in NORMALIZE:
        raise MetaInputError(f"normalize={normalize!r} is not one of {NORMALIZE}")
    if weighting not in weighting_names():
        raise MetaInputError(f"weighting={weighting!r} is not one of {', '.join(weighting_names())}")


def _pixels(p: _Problem, u: Tensor, weighting: str, center_step: float) -> Pixels:
    """What the weighting reads besides u: the noisy labels, and |∂ℓ/∂z| when it asks for it."""
    labels = p.noisy[1].to(u.dtype).expand_as(u)
    pixels = Pixels(labels, center_step=center_step)
    if needs_slope(weighting):
        pixels.slope = slope(p.loss_fn, p.noisy_logits, p.noisy[1])
        if pixels.slope.shape != u.shape:
            raise MetaInputError(f"weighting={weighting!r} needs a loss map shaped like the logits "
                                 f"{list(pixels.slope.shape)}, got {list(u.shape)}")
    return pixels


def _validate(model: nn.Module, noisy: Batch, clean: Batch, lr: float) -> None:
    for name, batch in (("noisy", noisy), ("clean", clean)):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(t, Tensor) for t in batch)):
            raise MetaInputError(f"{name} must be an (images, masks) tuple of tensors")
        if batch[0].ndim < 2 or batch[1].shape[0] != batch[0].shape[0]:
            raise MetaInputError(f"{name} images {list(batch[0].shape)} and masks {list(batch[1].shape)} "
                                 "need the same leading batch size")
    channels = getattr(model, "in_channels", None)
    for name, images in (("noisy", noisy[0]), ("clean", clean[0])):
        if isinstance(channels, int) and images.shape[1] != channels:
            raise MetaInputError(f"{name} images have {images.shape[1]} channels, the model expects {channels}")
    if clean[0].shape[1:] != noisy[0].shape[1:] or clean[1].shape[1:] != noisy[1].shape[1:]:
        raise MetaInputError(f"clean batch {list(clean[0].shape)} (masks {list(clean[1].shape)}) does not match "
                             f"the noisy batch {list(noisy[0].shape)} (masks {list(noisy[1].shape)}) "
                             "in channels or spatial size")
    try:
        ok = 0 < float(lr) < float("inf")
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise MetaInputError(f"meta lr must be a positive finite number, got {lr!r}")


def _meta_gradient(model: nn.Module, loss_fn: LossFn, noisy: Batch, clean: Batch, lr: float,
                   backend: str = "jvp", need_loss: bool = False, process_group: GroupArg = None, params: Optional[Sequence[str]] = None,
                   clean_gradient: Optional[dict[str, Optional[Tensor]]] = None) -> tuple[_MetaGrad, _Problem]:
    """Validate, draw the two dropout seeds from the global generator and run one backend."""
    run = META_BACKENDS.get(backend)
    group = resolve_group(process_group)
    if group is not None and backend not in FORWARD_MODE_BACKENDS:
        raise ConfigError(f"the distributed meta step supports backends {FORWARD_MODE_BACKENDS}, got {backend!r}; "
                          "pass process_group='local' for per-rank weights")
    if unwrap(model) is not model:  # DDP: the weighted forward must go through the wrapper (its gradient
        need_loss, model = False, unwrap(model)  # hooks), so no fused backend reuses a meta pass's graph
    _validate(model, noisy, clean, lr)
    loss_fn = getattr(loss_fn, "per_pixel", loss_fn)  # noisyseg.losses objects: use their per-pixel map
    p = _Problem(model, loss_fn, tuple(noisy), tuple(clean), float(lr), _draw_seeds(), need_loss, group,
                 None if params is None else tuple([params] if isinstance(params, str) else params), clean_gradient)
    with torch.enable_grad():
        return run(p), p


def pixel_weights(model: nn.Module, loss_fn: LossFn, noisy: Batch, clean: Batch, lr: float,
                  backend: str = "jvp", normalize: str = "batch", process_group: GroupArg = None,
                  params: Optional[Sequence[str]] = None, weighting: str = "l2rw", center_step: float = 0.5) -> Tensor:
    """Meta-learned per-pixel weights w (Mirikharaji et al. 2019) for the noisy batch, detached.

    Args:
        model: any module mapping ``[B, C, H, W]`` images to ``[B, 1, H, W]`` logits; used in its
            current train/eval mode, and left unchanged (parameters, ``.grad``, buffers).
        loss_fn: ``(logits, masks) -> per-pixel losses`` with a leading batch dimension (a
            ``noisyseg.losses`` object is used through its ``per_pixel`` map).
        noisy, clean: ``(images, masks)`` batches; the clean one enters only the meta gradient.
        lr: step size α of the virtual SGD step (the current learning rate in the paper).
        backend: a name in :data:`META_BACKENDS`.
        normalize: ``"batch"`` (sum 1 over the batch), ``"image"`` (1/B per image), ``"class"`` (1/B per
            image, shared by its noisy-label classes in proportion to their pixels) or ``"none"`` (w̃).
        process_group: None (auto: distributed when ``torch.distributed`` runs with world size > 1),
            ``"local"`` (per-rank weights) or a ``ProcessGroup``. Distributed, this rank's slice of the
            weights one process would give on all ranks' batches concatenated (forward-mode backends).
        params: None (the exact method: the virtual step moves every parameter) or names / dotted-name
            prefixes of the parameters it moves, e.g. ``["head"]``: a cheaper approximation, exact for
            a virtual step restricted to those parameters (every backend but ``higher``).
        weighting: how the agreement −u becomes w̃: ``"l2rw"`` (the paper: max(−u, 0)), ``"sign"``,
            ``"cosine"`` or ``"centered"`` (:mod:`noisyseg.meta.weights`); the learned ``"mwn"`` needs
            :class:`MetaReweightedLoss`, which keeps its state.
        center_step: ``weighting="centered"``: how far one standard deviation of agreement moves a weight from 1.

    Returns:
        Weights shaped like ``loss_fn``'s output. A non-finite meta gradient gives a warning and zeros.
    """
    _check_options(normalize, weighting)
    if weighting == LEARNED:
        raise MetaInputError(f"weighting={LEARNED!r} is learned across steps: use MetaReweightedLoss")
    grad, p = _meta_gradient(model, loss_fn, noisy, clean, lr, backend, process_group=process_group, params=params)
    weights, status, _ = _weights(grad.u, normalize, p.group, weighting, _pixels(p, grad.u, weighting, center_step))
    if status == "non_finite":
        warnings.warn("non-finite meta gradient; returning zero pixel weights", RuntimeWarning, stacklevel=2)
    return weights


@dataclass
class MetaResult:
    """One meta-reweighted step: ``loss`` is None when the step must be skipped (see ``status``)."""

    loss: Optional[Tensor]  # scalar Σ_i w_i ℓ_i with graph, ready for .backward() (× world size if distributed)
    weights: Tensor  # detached, shape of the loss map (all zero unless status == "ok")
    status: str  # "ok", "all_zero" or "non_finite"
    logits: Optional[Tensor] = None  # the noisy logits behind ``loss``, with graph (None when loss is None)
    losses: Optional[Tensor] = None  # the per-pixel loss map behind ``loss``, with graph (None when loss is None)


class MetaReweightedLoss:
    """Meta-reweighted noisy loss for your own training loop (Mirikharaji et al. 2019).

    ``result = MetaReweightedLoss(loss_fn, lr)(model, noisy, clean)`` then ``result.loss.backward()``
    when it is not None. No other forward pass is needed: the weighted forward uses the model's real
    buffers, so BN running statistics update once per step. ``counts`` tallies the statuses.

    Args:
        loss_fn, lr, backend, normalize, params: as in :func:`pixel_weights`.
        zero_policy: with all-zero weights, ``"skip"`` the step (loss None) or use the ``"uniform"``
            mean loss.
        weighting, center_step: as in :func:`pixel_weights`; also ``"mwn"``, a weighting network
            (:mod:`noisyseg.meta.weightnet`) trained by the meta gradient, with ``weight_net_hidden``
            units, the per-pixel inputs ``weight_net_features`` (names in
            :data:`noisyseg.meta.weightnet.FEATURES`; ``weight_net_boundary_reach``: where the ``boundary``
            distance saturates, a share of the image side) and Adam at ``weight_net_lr``.
        clean_every: 1 (exact) or k > 1: the clean gradient g is computed on every k-th call and reused
            by the calls in between (a cheaper approximation: g is up to k − 1 updates old; the clean
            batches of those calls go unused). Forward-mode backends only.
        process_group: as in :func:`pixel_weights`. Distributed, every rank skips or none does, and
            ``loss`` is world size × this rank's share of the global weighted loss (uniform: of the
            global mean), so DDP's averaged gradient is the single-process gradient on all ranks'
            batches. Pass the DDP-wrapped model: meta passes use ``model.module``, the weighted
            forward goes through DDP.
    """

    def __init__(self, loss_fn: LossFn, lr: float, backend: str = "jvp", normalize: str = "batch",
                 zero_policy: str = "skip", process_group: GroupArg = None,
                 params: Optional[Sequence[str]] = None, clean_every: int = 1, weighting: str = "l2rw",
                 center_step: float = 0.5, weight_net_hidden: int = 16, weight_net_lr: float = 1e-3,
                 weight_net_features: Sequence[str] = DEFAULT_FEATURES,
                 weight_net_boundary_reach: float = BOUNDARY_REACH) -> None:
        META_BACKENDS.get(backend)
        _check_options(normalize, weighting)
        if not (isinstance(clean_every, int) and clean_every >= 1):
            raise MetaInputError(f"clean_every must be an integer >= 1, got {clean_every!r}")
        if clean_every > 1 and backend not in FORWARD_MODE_BACKENDS:
            raise ConfigError(f"clean_every > 1 (a reused clean gradient) needs one of {FORWARD_MODE_BACKENDS}, "
                              f"got backend {backend!r}")
        if resolve_group(process_group) is not None and backend not in FORWARD_MODE_BACKENDS:  # auto: checked per call
            raise ConfigError(f"the distributed meta step supports backends {FORWARD_MODE_BACKENDS}, got {backend!r}")
        if zero_policy not in ZERO_POLICIES:
            raise MetaInputError(f"zero_policy={zero_policy!r} must be one of {ZERO_POLICIES}")
        self.loss_fn, self.lr, self.backend = loss_fn, lr, backend
        self.normalize, self.zero_policy, self.process_group = normalize, zero_policy, process_group
        self.params, self.clean_every = params, clean_every
        self.weighting, self.center_step = weighting, center_step
        self.learned = (LearnedWeighting(weight_net_hidden, weight_net_lr, weight_net_features, weight_net_boundary_reach)
                        if weighting == LEARNED else None)
        self.counts = {"ok": 0, "all_zero": 0, "non_finite": 0}
        self.calls, self.clean_gradient = 0, None  # the reused g of clean_every > 1 (state_dict keeps both)

    def __call__(self, model: nn.Module, noisy: Batch, clean: Batch, lr: Optional[float] = None) -> MetaResult:
        # 1-3. Meta gradient u from the backend (for jvp: clean gradient, forward-mode pass).
        reuse = self.clean_gradient if self.calls % self.clean_every else None
        grad, p = _meta_gradient(model, self.loss_fn, noisy, clean, self.lr if lr is None else lr,
                                 self.backend, need_loss=True,
                                 process_group=self.process_group, params=self.params, clean_gradient=reuse)
        self.calls += 1
        if self.clean_every > 1:
            self.clean_gradient = p.clean_gradient
        # 4. Weights w̃ = max(−u, 0), normalised (globally in a distributed step), and the step's status.
        weights, status, pixels = _weights(grad.u, self.normalize, p.group, self.weighting,
                                           *self._weigh(p, grad))
        if status == "non_finite":
            self.counts["non_finite"] += 1
            self.calls, self.clean_gradient = 0, None  # never reuse a g that may be the culprit
            warnings.warn("non-finite meta gradient; skipping this step", RuntimeWarning, stacklevel=2)
            return MetaResult(None, weights, "non_finite")
        self.counts[status] += 1
        if status == "all_zero" and self.zero_policy == "skip":
            return MetaResult(None, weights, status)
        # 5. Weighted loss Σ w_i ℓ_i; the caller's backward is the weighted backward.
        losses, logits = grad.losses, p.noisy_logits
        if losses is None:  # the weighted forward on the real buffers, with the noisy pass's dropout mask
            with _seeded(p.seeds[0], noisy[0].device):
                logits = model(noisy[0])
                losses = _check_map(p.loss_fn(logits, noisy[1]), noisy[0].shape[0])
        elif grad.buffers:  # fused pass ran on cloned buffers: commit its BN statistics once
            with torch.no_grad():
                for name, buf in unwrap(model).named_buffers():
                    buf.copy_(grad.buffers[name])
        loss = losses.mean() if status == "all_zero" else (weights * losses).sum()
        if p.group is not None:  # DDP averages over ranks: scale so the average is the global gradient
            n = world_size(p.group)
            loss = losses.sum() * (n / pixels.to(losses.dtype)) if status == "all_zero" else loss * n
        return MetaResult(loss, weights, status, logits, losses)

    def _weigh(self, p: _Problem, grad: _MetaGrad) -> tuple[Pixels, Optional[Tensor]]:
        """The weighting's inputs, and for the learned weighting its raw weights after one meta update."""
        pixels = _pixels(p, grad.u, self.weighting, self.center_step)
        if self.learned is None:
            return pixels, None
        if grad.losses is not None:  # the fused pass's loss map: no need to recompute it
            losses = grad.losses.detach()
        else:
            with torch.no_grad():
                losses = p.loss_fn(p.noisy_logits.detach(), p.noisy[1])
        # every rank updates (a collective); a non-finite u anywhere skips the update everywhere
        return pixels, self.learned.update(grad.u, losses, p.noisy_logits.detach(), pixels.labels, p.group)
