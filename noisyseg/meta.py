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
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.func import functional_call

from noisyseg.distributed import GroupArg, all_reduce_sum, average_gradients, resolve_group, unwrap, world_size
from noisyseg.errors import ConfigError, NoisysegError
from noisyseg.registry import Registry
from noisyseg.tangents import TangentUnsupported, forward_with_tangent, has_plan

Batch = tuple[Tensor, Tensor]  # (images [B, C, H, W], masks [B, 1, H, W])
LossFn = Callable[[Tensor, Tensor], Tensor]  # (logits, masks) -> per-pixel losses [B, ...]
META_BACKENDS: Registry = Registry("meta backend")
NORMALIZE = ("batch", "image", "none")
ZERO_POLICIES = ("skip", "uniform")
FORWARD_MODE_BACKENDS = ("jvp", "jvp_ad", "jvp_ad_fused")  # g explicit: all-reduced (distributed) or reused (clean_every)


class MetaInputError(NoisysegError, ValueError):
    """The batches, options or per-pixel loss map do not fit the meta step."""


@dataclass
class _Problem:
    model: nn.Module
    loss_fn: LossFn
    noisy: Batch
    clean: Batch
    lr: float
    seeds: tuple[int, int]  # (noisy, clean)
    need_loss: bool  # a fused backend may return the noisy loss map with its graph
    group: Optional[object] = None  # process group of a distributed step, None when local
    params: Optional[tuple[str, ...]] = None  # names/prefixes the virtual step moves; None: all (exact)
    clean_gradient: Optional[dict[str, Optional[Tensor]]] = None  # g by parameter name: given (reused) or set


@dataclass
class _MetaGrad:
    u: Tensor  # meta gradient ∂L_c/∂ε, shape of the loss map, detached
    losses: Optional[Tensor] = None  # noisy loss map with graph to the real parameters (fused only)
    buffers: Optional[dict[str, Tensor]] = None  # buffers after that forward, committed on success


def _draw_seeds() -> tuple[int, int]:
    """(noisy, clean) dropout seeds: the only draw from the global generator in a meta step."""
    return tuple(torch.randint(0, 2**62, (2,)).tolist())


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run with the CPU (and ``device``'s) generator seeded; the global RNG state is restored after."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.random.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def _trainable(model: nn.Module) -> dict[str, Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _stepped(p: _Problem, params: dict[str, Tensor]) -> dict[str, Tensor]:
    """The parameters the virtual step moves: all, or those named by ``p.params`` (a name or a prefix of
    dotted names, e.g. ``"head"``). Fewer parameters make the meta step cheaper and approximate."""
    if p.params is None:
        return params
    chosen = {n: w for n, w in params.items() if any(n == q or n.startswith(q + ".") for q in p.params)}
    if not chosen:
        raise MetaInputError(f"meta params {list(p.params)} match no trainable parameter; "
                             f"names look like {list(params)[-3:]}")
    return chosen


def _buffers(model: nn.Module) -> dict[str, Tensor]:
    return {n: b.clone() for n, b in model.named_buffers()}


def _loss_map(p: _Problem, params: dict[str, Tensor], batch: Batch, seed: int,
              buffers: Optional[dict[str, Tensor]] = None) -> Tensor:
    """Per-pixel losses of ``batch`` under ``params`` on cloned (or the given) buffers."""
    images, masks = batch
    with _seeded(seed, images.device):
        logits = functional_call(p.model, {**params, **(buffers or _buffers(p.model))}, (images,))
    return _check_map(p.loss_fn(logits, masks), images.shape[0])


def _check_map(losses: Tensor, batch_size: int) -> Tensor:
    if not isinstance(losses, Tensor) or losses.ndim == 0 or losses.shape[0] != batch_size:
        shape = list(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
        raise MetaInputError(
            f"loss_fn must return per-pixel losses with a leading batch dimension of {batch_size} "
            f"(e.g. [B, 1, H, W], reduction='none'), got {shape}")
    return losses


def _clean_gradient(p: _Problem, params: dict[str, Tensor]) -> dict[str, Optional[Tensor]]:
    """g = ∇L_c(θ) for the parameters the virtual step moves (None where L_c does not reach), on cloned
    buffers so the clean pass leaves BN statistics alone; all-reduced in a distributed step. A g given
    in ``p.clean_gradient`` (``clean_every > 1``) is reused; a computed one is kept there."""
    if p.clean_gradient is not None:
        return p.clean_gradient
    moved = _stepped(p, params)
    clean_map = _loss_map(p, params, p.clean, p.seeds[1])
    g = torch.autograd.grad(clean_map.mean(), list(moved.values()), allow_unused=True)
    if p.group is not None:  # the global clean gradient: pixel-count-weighted mean over ranks
        g = average_gradients(list(g), clean_map.numel(), p.group)
    p.clean_gradient = dict(zip(moved, g))
    return p.clean_gradient


def _from_tangent(p: _Problem, losses: Tensor, tangent: Optional[Tensor], buffers: dict[str, Tensor],
                  fused: bool) -> _MetaGrad:
    """The tangent of ℓ_i along g is ⟨∇ℓ_i, g⟩, hence u_i = −α ⟨∇ℓ_i, g⟩."""
    u = torch.zeros_like(losses) if tangent is None else -p.lr * tangent.detach()
    return _MetaGrad(u, losses if fused else None, buffers if fused else None)


@META_BACKENDS.register("jvp")
def _jvp(p: _Problem) -> _MetaGrad:
    """Forward-mode meta gradient, fused: one clean backward for g, then one noisy forward that records
    the graph the weighted backward reuses while :mod:`noisyseg.tangents` pushes g through it off the
    tape. A model with an op the tangent rules lack falls back to ``jvp_ad`` (same u, slower)."""
    params = _trainable(p.model)
    tangents = _clean_gradient(p, params)
    buffers = _buffers(p.model)
    seeds = {params[n]: g for n, g in tangents.items() if g is not None}
    key = _structure(p)

    def noisy_pass(on: Optional[dict[str, Tensor]] = None) -> tuple[Tensor, Tensor]:  # on buffers (default: a clone)
        if torch.is_autocast_enabled(p.noisy[0].device.type):  # cached casts of the parameters would
            torch.clear_autocast_cache()  # hide them from the tangent rules: recast inside the pass
        return forward_with_tangent(lambda: _loss_map(p, params, p.noisy, p.seeds[0], on), seeds, plan_key=key)

    try:
        if p.need_loss and not has_plan(key):  # learn which step last reads each tangent in a lean pass
            with torch.no_grad():
                noisy_pass()
        with torch.set_grad_enabled(p.need_loss):
            losses, tangent = noisy_pass(buffers)
    except TangentUnsupported as err:
        _warn_once(f"meta backend jvp: {err}; using torch.autograd.forward_ad for this model (slower)")
        return _jvp_ad(p)  # reuses g
    return _from_tangent(p, losses, tangent, buffers, fused=p.need_loss)


def _structure(p: _Problem) -> tuple:
    """Forwards with the same key run the same ops on the same shapes: the key of the plan that frees
    tangents after their last use (the plan is checked step by step, so a wrong key costs only memory)."""
    images = p.noisy[0]
    loss = getattr(p.loss_fn, "__self__", p.loss_fn)
    return (id(p.model), p.model.training, tuple(images.shape), images.dtype, str(images.device),
            images.stride(), id(loss), p.params, p.need_loss)


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


@META_BACKENDS.register("jvp_ad")
def _jvp_ad(p: _Problem, fused: bool = False) -> _MetaGrad:
    """``jvp`` with ``torch.autograd.forward_ad`` (the reference for :mod:`noisyseg.tangents`): dual
    parameters (primal θ, tangent g) in a forward-mode pass under ``no_grad``; the weighted update then
    runs its own forward. Parameters g does not reach (or the virtual step does not move) get no tangent."""
    params = _trainable(p.model)
    tangents = _clean_gradient(p, params)
    fused = fused and p.need_loss
    buffers = _buffers(p.model)
    with torch.set_grad_enabled(fused), fwAD.dual_level():
        dual = {n: fwAD.make_dual(w if fused else w.detach(), tangents[n]) if tangents.get(n) is not None
                else (w if fused else w.detach()) for n, w in params.items()}
        losses, tangent = fwAD.unpack_dual(_loss_map(p, dual, p.noisy, p.seeds[0], buffers))
    return _from_tangent(p, losses, tangent, buffers, fused)


@META_BACKENDS.register("jvp_ad_fused")
def _jvp_ad_fused(p: _Problem) -> _MetaGrad:
    """``jvp_ad`` whose forward-mode pass also records the primal graph for the weighted backward; the
    tangent computations land on the autograd tape too (slower and about twice the memory)."""
    return _jvp_ad(p, fused=True)


@META_BACKENDS.register("higher")
def _higher(p: _Problem) -> _MetaGrad:
    """Literal L2RW step with ``higher`` (reference): differentiable inner SGD step on Σ ε_i ℓ_i."""
    import higher  # optional dependency of the reference backend only

    if p.params is not None:
        raise MetaInputError("meta params (a virtual step on some parameters) needs backend "
                             f"{', '.join(FORWARD_MODE_BACKENDS)} or autograd")
    sgd = torch.optim.SGD(list(_trainable(p.model).values()), lr=p.lr)
    # higher clones the parameters (copy_initial_weights=False keeps them on the tape) and buffers.
    with higher.innerloop_ctx(p.model, sgd, copy_initial_weights=False) as (fmodel, diffopt):
        with _seeded(p.seeds[0], p.noisy[0].device):
            losses = _check_map(p.loss_fn(fmodel(p.noisy[0]), p.noisy[1]), p.noisy[0].shape[0])
        eps = torch.zeros_like(losses, requires_grad=True)
        diffopt.step((eps * losses).sum())
        with _seeded(p.seeds[1], p.clean[0].device):
            clean_loss = p.loss_fn(fmodel(p.clean[0]), p.clean[1]).mean()
        (u,) = torch.autograd.grad(clean_loss, eps, allow_unused=True)
    return _MetaGrad(torch.zeros_like(eps) if u is None else u.detach())


@META_BACKENDS.register("autograd")
def _autograd(p: _Problem) -> _MetaGrad:
    """Literal L2RW step with ``torch.func.functional_call`` and ``autograd.grad(create_graph=True)``."""
    params = _trainable(p.model)
    moved = _stepped(p, params)
    losses = _loss_map(p, params, p.noisy, p.seeds[0])
    eps = torch.zeros_like(losses, requires_grad=True)
    grads = torch.autograd.grad((eps * losses).sum(), list(moved.values()), create_graph=True, allow_unused=True)
    stepped = {**params, **{n: w if gw is None else w - p.lr * gw for (n, w), gw in zip(moved.items(), grads)}}
    clean_loss = _loss_map(p, stepped, p.clean, p.seeds[1]).mean()
    (u,) = torch.autograd.grad(clean_loss, eps, allow_unused=True)
    return _MetaGrad(torch.zeros_like(eps) if u is None else u.detach())


def _validate(model: nn.Module, noisy: Batch, clean: Batch, lr: float, normalize: str) -> None:
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
    if normalize not in NORMALIZE:
        raise MetaInputError(f"normalize={normalize!r} is not one of {NORMALIZE}")


def _meta_gradient(model: nn.Module, loss_fn: LossFn, noisy: Batch, clean: Batch, lr: float,
                   backend: str = "jvp", need_loss: bool = False, normalize: str = "batch",
                   process_group: GroupArg = None, params: Optional[Sequence[str]] = None,
                   clean_gradient: Optional[dict[str, Optional[Tensor]]] = None) -> tuple[_MetaGrad, _Problem]:
    """Validate, draw the two dropout seeds from the global generator and run one backend."""
    run = META_BACKENDS.get(backend)
    group = resolve_group(process_group)
    if group is not None and backend not in FORWARD_MODE_BACKENDS:
        raise ConfigError(f"the distributed meta step supports backends {FORWARD_MODE_BACKENDS}, got {backend!r}; "
                          "pass process_group='local' for per-rank weights")
    if unwrap(model) is not model:  # DDP: the weighted forward must go through the wrapper (its gradient
        need_loss, model = False, unwrap(model)  # hooks), so no fused backend reuses a meta pass's graph
    _validate(model, noisy, clean, lr, normalize)
    loss_fn = getattr(loss_fn, "per_pixel", loss_fn)  # noisyseg.losses objects: use their per-pixel map
    p = _Problem(model, loss_fn, tuple(noisy), tuple(clean), float(lr), _draw_seeds(), need_loss, group,
                 None if params is None else tuple([params] if isinstance(params, str) else params), clean_gradient)
    with torch.enable_grad():
        return run(p), p


def _normalize(w: Tensor, mode: str, total: Optional[Tensor] = None, images: Optional[Tensor] = None) -> Tensor:
    """``batch``: sum to 1 over the batch; ``image``: 1/B per image; ``none``: raw. Zero sums stay zero.

    ``total`` / ``images``: the global Σ w̃ and image count of a distributed step (default: this batch's).
    """
    if mode == "none":
        return w
    if mode == "batch":
        total = w.sum() if total is None else total
    else:
        total = w.flatten(1).sum(1).view(-1, *[1] * (w.ndim - 1)) * (w.shape[0] if images is None else images)
    return w / torch.where(total > 0, total, torch.ones_like(total))  # no host sync; w == 0 where total == 0


def _global_weights(u: Tensor, mode: str, group: object) -> tuple[Tensor, str, Tensor]:
    """Distributed step 4: one all-reduce of [non-finite ranks, Σ w̃, images, pixels] makes the
    normalisation and the status ("ok", "all_zero", "non_finite") global; returns the global pixel count too."""
    w = (-u).clamp_min(0)
    counts = torch.tensor([u.shape[0], u.numel()], dtype=torch.float64, device=u.device)
    stats = torch.cat([torch.stack([(~torch.isfinite(u).all()).double(), w.sum().double()]), counts])
    non_finite, total, images, pixels = all_reduce_sum(stats, group)
    if bool(non_finite > 0):  # host sync, once per step; every rank takes the same branch
        return torch.zeros_like(u), "non_finite", pixels
    weights = _normalize(w, mode, total.to(u.dtype), images.to(u.dtype))
    return weights, ("ok" if bool(total > 0) else "all_zero"), pixels


def _weights(u: Tensor, mode: str, group: object | None) -> tuple[Tensor, str, Optional[Tensor]]:
    """Normalised weights of the meta gradient ``u``, the status ("ok", "all_zero", "non_finite"; zeros
    unless "ok") and, in a distributed step, the global pixel count."""
    if group is not None:
        return _global_weights(u, mode, group)
    if not bool(torch.isfinite(u).all()):  # host sync, once per step
        return torch.zeros_like(u), "non_finite", None
    weights = _normalize((-u).clamp_min(0), mode)
    return weights, ("ok" if bool(weights.any()) else "all_zero"), None


def pixel_weights(model: nn.Module, loss_fn: LossFn, noisy: Batch, clean: Batch, lr: float,
                  backend: str = "jvp", normalize: str = "batch", process_group: GroupArg = None,
                  params: Optional[Sequence[str]] = None) -> Tensor:
    """Meta-learned per-pixel weights w (Mirikharaji et al. 2019) for the noisy batch, detached.

    Args:
        model: any module mapping ``[B, C, H, W]`` images to ``[B, 1, H, W]`` logits; used in its
            current train/eval mode, and left unchanged (parameters, ``.grad``, buffers).
        loss_fn: ``(logits, masks) -> per-pixel losses`` with a leading batch dimension (a
            ``noisyseg.losses`` object is used through its ``per_pixel`` map).
        noisy, clean: ``(images, masks)`` batches; the clean one enters only the meta gradient.
        lr: step size α of the virtual SGD step (the current learning rate in the paper).
        backend: a name in :data:`META_BACKENDS`.
        normalize: ``"batch"`` (sum 1 over the batch), ``"image"`` (1/B per image) or ``"none"`` (w̃).
        process_group: None (auto: distributed when ``torch.distributed`` runs with world size > 1),
            ``"local"`` (per-rank weights) or a ``ProcessGroup``. Distributed, this rank's slice of the
            weights one process would give on all ranks' batches concatenated (forward-mode backends).
        params: None (the exact method: the virtual step moves every parameter) or names / dotted-name
            prefixes of the parameters it moves, e.g. ``["head"]``: a cheaper approximation, exact for
            a virtual step restricted to those parameters (every backend but ``higher``).

    Returns:
        Weights shaped like ``loss_fn``'s output. A non-finite meta gradient gives a warning and zeros.
    """
    grad, p = _meta_gradient(model, loss_fn, noisy, clean, lr, backend, normalize=normalize,
                             process_group=process_group, params=params)
    weights, status, _ = _weights(grad.u, normalize, p.group)
    if status == "non_finite":
        warnings.warn("non-finite meta gradient; returning zero pixel weights", RuntimeWarning, stacklevel=2)
    return weights


@dataclass
class MetaResult:
    """One meta-reweighted step: ``loss`` is None when the step must be skipped (see ``status``)."""

    loss: Optional[Tensor]  # scalar Σ_i w_i ℓ_i with graph, ready for .backward() (× world size if distributed)
    weights: Tensor  # detached, shape of the loss map (all zero unless status == "ok")
    status: str  # "ok", "all_zero" or "non_finite"


class MetaReweightedLoss:
    """Meta-reweighted noisy loss for your own training loop (Mirikharaji et al. 2019).

    ``result = MetaReweightedLoss(loss_fn, lr)(model, noisy, clean)`` then ``result.loss.backward()``
    when it is not None. No other forward pass is needed: the weighted forward uses the model's real
    buffers, so BN running statistics update once per step. ``counts`` tallies the statuses.

    Args:
        loss_fn, lr, backend, normalize, params: as in :func:`pixel_weights`.
        zero_policy: with all-zero weights, ``"skip"`` the step (loss None) or use the ``"uniform"``
            mean loss.
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
                 params: Optional[Sequence[str]] = None, clean_every: int = 1) -> None:
        META_BACKENDS.get(backend)
        if not (isinstance(clean_every, int) and clean_every >= 1):
            raise MetaInputError(f"clean_every must be an integer >= 1, got {clean_every!r}")
        if clean_every > 1 and backend not in FORWARD_MODE_BACKENDS:
            raise ConfigError(f"clean_every > 1 (a reused clean gradient) needs one of {FORWARD_MODE_BACKENDS}, "
                              f"got backend {backend!r}")
        if resolve_group(process_group) is not None and backend not in FORWARD_MODE_BACKENDS:  # auto: checked per call
            raise ConfigError(f"the distributed meta step supports backends {FORWARD_MODE_BACKENDS}, got {backend!r}")
        if normalize not in NORMALIZE or zero_policy not in ZERO_POLICIES:
            raise MetaInputError(f"normalize={normalize!r} must be one of {NORMALIZE} and "
                                 f"zero_policy={zero_policy!r} one of {ZERO_POLICIES}")
        self.loss_fn, self.lr, self.backend = loss_fn, lr, backend
        self.normalize, self.zero_policy, self.process_group = normalize, zero_policy, process_group
        self.params, self.clean_every = params, clean_every
        self.counts = {"ok": 0, "all_zero": 0, "non_finite": 0}
        self.calls, self.clean_gradient = 0, None  # the reused g of clean_every > 1 (state_dict keeps both)

    def __call__(self, model: nn.Module, noisy: Batch, clean: Batch, lr: Optional[float] = None) -> MetaResult:
        # 1-3. Meta gradient u from the backend (for jvp: clean gradient, forward-mode pass).
        reuse = self.clean_gradient if self.calls % self.clean_every else None
        grad, p = _meta_gradient(model, self.loss_fn, noisy, clean, self.lr if lr is None else lr,
                                 self.backend, need_loss=True, normalize=self.normalize,
                                 process_group=self.process_group, params=self.params, clean_gradient=reuse)
        self.calls += 1
        if self.clean_every > 1:
            self.clean_gradient = p.clean_gradient
        # 4. Weights w̃ = max(−u, 0), normalised (globally in a distributed step), and the step's status.
        weights, status, pixels = _weights(grad.u, self.normalize, p.group)
        if status == "non_finite":
            self.counts["non_finite"] += 1
            self.calls, self.clean_gradient = 0, None  # never reuse a g that may be the culprit
            warnings.warn("non-finite meta gradient; skipping this step", RuntimeWarning, stacklevel=2)
            return MetaResult(None, weights, "non_finite")
        self.counts[status] += 1
        if status == "all_zero" and self.zero_policy == "skip":
            return MetaResult(None, weights, status)
        # 5. Weighted loss Σ w_i ℓ_i; the caller's backward is the weighted backward.
        losses = grad.losses
        if losses is None:  # the weighted forward on the real buffers, with the noisy pass's dropout mask
            with _seeded(p.seeds[0], noisy[0].device):
                losses = _check_map(p.loss_fn(model(noisy[0]), noisy[1]), noisy[0].shape[0])
        elif grad.buffers:  # fused pass ran on cloned buffers: commit its BN statistics once
            with torch.no_grad():
                for name, buf in unwrap(model).named_buffers():
                    buf.copy_(grad.buffers[name])
        loss = losses.mean() if status == "all_zero" else (weights * losses).sum()
        if p.group is not None:  # DDP averages over ranks: scale so the average is the global gradient
            n = world_size(p.group)
            loss = losses.sum() * (n / pixels.to(losses.dtype)) if status == "all_zero" else loss * n
        return MetaResult(loss, weights, status)
