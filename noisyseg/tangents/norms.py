"""Tangent rules of the normalisation ops (batch, group and layer norm): a symmetric Jacobian in x, so
the backward kernel maps the tangent; the scale and shift add x̂·dγ + dβ."""
from __future__ import annotations

import torch

from noisyseg.tangents.rules import _channel, _plus, aten, rule


# --- normalisation: symmetric Jacobian in x; scale and shift add x̂·dγ + dβ ---------------------------
@rule("native_batch_norm.default _native_batch_norm_legit.default cudnn_batch_norm.default miopen_batch_norm.default")
def _batch_norm(func, args, kwargs, out, T):
    """Same arguments for all four. Outputs: (y, saved mean, saved invstd), and cuDNN adds a reserve buffer;
    its saved "variance" is the inverse standard deviation, as native's."""
    x, w, b, running_mean, running_var, training, _, eps = args
    tx, tw, tb = T(x), T(w) if w is not None else None, T(b) if b is not None else None
    if training:
        mean, invstd = out[1], out[2]
    else:
        mean, invstd = running_mean, torch.rsqrt(running_var + eps)
    res = None
    if tx is not None and training:  # γ·invstd·(tx − mean(tx) − x̂·mean(x̂·tx)): BN's backward of tx
        res = aten.native_batch_norm_backward(tx, x, w, running_mean, running_var, mean, invstd, True, eps,
                                              [True, False, False])[0]
    elif tx is not None:
        res = tx * _channel(invstd if w is None else invstd * w, x.ndim)
    shift = None
    if tw is not None:  # dγ·x̂ = dγ·invstd·x − dγ·invstd·mean
        scale = tw * invstd
        res = x * _channel(scale, x.ndim) if res is None else res.addcmul_(x, _channel(scale, x.ndim))
        shift = -scale * mean
    shift = _plus(shift, tb)
    if shift is not None:
        res = _channel(shift, x.ndim).expand_as(out[0]).clone() if res is None else res.add_(_channel(shift, x.ndim))
    return res, None, None


@rule("native_group_norm.default")
def _group_norm(func, args, kwargs, out, T):
    x, w, b, n, c, hw, groups, _ = args
    tx, tw, tb = T(x), T(w) if w is not None else None, T(b) if b is not None else None
    _, mean, rstd = out
    res = None
    if tx is not None:  # dx̂ by the backward kernel with γ = 1 (γ varies inside a group: not symmetric with it)
        res = aten.native_group_norm_backward(tx, x, mean, rstd, None, n, c, hw, groups, [True, False, False])[0]
        res = res if w is None else res.mul_(_channel(w, x.ndim))
    if tw is not None:
        shape = (n, groups, -1)
        xhat = ((x.reshape(shape) - mean.view(n, groups, 1)) * rstd.view(n, groups, 1)).view_as(x)
        res = _plus(res, xhat * _channel(tw, x.ndim))
    if tb is not None:
        res = _plus(res, _channel(tb, x.ndim).expand_as(out[0]).clone())
    return res, None, None


@rule("native_layer_norm.default")
def _layer_norm(func, args, kwargs, out, T):
    """As group norm: dx̂ by the backward kernel without γ (symmetric), then γ, x̂·dγ and dβ."""
    x, shape, w, b = args[:4]
    tx, tw, tb = T(x), T(w) if w is not None else None, T(b) if b is not None else None
    _, mean, rstd = out
    res = None
    if tx is not None:
        res = aten.native_layer_norm_backward(tx, x, shape, mean, rstd, None, None, [True, False, False])[0]
        res = res if w is None else res.mul_(w)
    if tw is not None:
        res = _plus(res, (x - mean) * rstd * tw)
    if tb is not None:
        res = _plus(res, tb.expand_as(out[0]).clone())
    return res, None, None
