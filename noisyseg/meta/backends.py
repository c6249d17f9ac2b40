"""The five backends of the meta gradient u (:data:`META_BACKENDS`, all return the same u; see
:mod:`noisyseg.meta`): ``jvp``, ``jvp_ad``, ``jvp_ad_fused`` (forward mode) and ``higher``,
``autograd`` (the literal L2RW recipe, as references)."""
from __future__ import annotations

import warnings
from typing import Optional

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from noisyseg.meta.problem import (
    MetaInputError, _buffers, _check_map, _clean_gradient, _loss_map, _MetaGrad, _Problem, _seeded, _stepped,
    _trainable,
)
from noisyseg.registry import Registry
from noisyseg.tangents import TangentUnsupported, forward_with_tangent, has_plan

META_BACKENDS: Registry = Registry("meta backend")
FORWARD_MODE_BACKENDS = ("jvp", "jvp_ad", "jvp_ad_fused")  # g explicit: all-reduced (distributed) or reused (clean_every)


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
            p.noisy_logits = fmodel(p.noisy[0])
            losses = _check_map(p.loss_fn(p.noisy_logits, p.noisy[1]), p.noisy[0].shape[0])
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
