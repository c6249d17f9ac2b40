"""Tangent rules of the nonlinear pointwise ops (activations, exp/log/powers, clamp, BCE with logits):
a diagonal Jacobian, so the op's own backward kernel applied to the tangent is the tangent."""
from __future__ import annotations

import torch
from torch import Tensor

from noisyseg.tangents.rules import TangentUnsupported, aten, rule


# --- elementwise: diagonal Jacobian, so the backward kernel is the tangent map --------------------
@rule("relu_.default", in_place=True)
@rule("relu.default")
def _relu(func, args, kwargs, out, T):
    return aten.threshold_backward(T(args[0]), out, 0)


@rule("leaky_relu_.default", in_place=True)
@rule("leaky_relu.default")
def _leaky_relu(func, args, kwargs, out, T):
    slope = args[1] if len(args) > 1 else 0.01
    return aten.leaky_relu_backward(T(args[0]), out, slope, True)  # sign(out) == sign(x) for slope > 0


@rule("sigmoid_.default", in_place=True)
@rule("sigmoid.default")
def _sigmoid(func, args, kwargs, out, T):
    return aten.sigmoid_backward(T(args[0]), out)


@rule("tanh_.default", in_place=True)
@rule("tanh.default")
def _tanh(func, args, kwargs, out, T):
    return aten.tanh_backward(T(args[0]), out)


@rule("gelu.default")
def _gelu(func, args, kwargs, out, T):
    return aten.gelu_backward(T(args[0]), args[0], approximate=kwargs.get("approximate", "none"))


@rule("silu_.default", in_place=True, before=True)
@rule("silu.default")
def _silu(func, args, kwargs, out, T):
    return aten.silu_backward(T(args[0]), args[0])


@rule("hardswish_.default", in_place=True, before=True)
@rule("hardswish.default")
def _hardswish(func, args, kwargs, out, T):
    return aten.hardswish_backward(T(args[0]), args[0])


@rule("hardsigmoid_.default", in_place=True, before=True)
@rule("hardsigmoid.default")
def _hardsigmoid(func, args, kwargs, out, T):
    return aten.hardsigmoid_backward(T(args[0]), args[0])


@rule("mish_.default", in_place=True, before=True)
@rule("mish.default")
def _mish(func, args, kwargs, out, T):
    return aten.mish_backward(T(args[0]), args[0])


@rule("hardtanh_.default", in_place=True)
@rule("hardtanh.default")
def _hardtanh(func, args, kwargs, out, T):
    """ReLU6 too. After an in-place op ``args[0]`` holds the output, inside (min, max) exactly where the input was."""
    low, high = (list(args[1:3]) + [-1.0, 1.0][len(args) - 1:])[:2]
    return aten.hardtanh_backward(T(args[0]), args[0], kwargs.get("min_val", low), kwargs.get("max_val", high))


@rule("elu_.default", in_place=True)
@rule("elu.default")
def _elu(func, args, kwargs, out, T):
    alpha, scale, input_scale = (list(args[1:4]) + [1.0, 1.0, 1.0][len(args) - 1:])[:3]
    if func is aten.elu_.default:  # from the result (valid for alpha >= 0, as the backward kernel says)
        return aten.elu_backward(T(args[0]), alpha, scale, input_scale, True, out)
    return aten.elu_backward(T(args[0]), alpha, scale, input_scale, False, args[0])


@rule("softplus.default")
def _softplus(func, args, kwargs, out, T):
    beta, threshold = (list(args[1:3]) + [1.0, 20.0][len(args) - 1:])[:2]
    return aten.softplus_backward(T(args[0]), args[0], beta, threshold)


@rule("_softmax.default")
def _softmax(func, args, kwargs, out, T):
    """The softmax Jacobian diag(s) − s sᵀ is symmetric: its backward kernel maps the tangent."""
    return aten._softmax_backward_data(T(args[0]), out, args[1], args[0].dtype)


@rule("_log_softmax.default")
def _log_softmax(func, args, kwargs, out, T):
    t = T(args[0])
    return t - (out.exp() * t).sum(args[1], keepdim=True)


@rule("exp.default")
def _exp(func, args, kwargs, out, T):
    return T(args[0]) * out


@rule("log.default")
def _log(func, args, kwargs, out, T):
    return T(args[0]) / args[0]


@rule("reciprocal.default")
def _reciprocal(func, args, kwargs, out, T):
    return -T(args[0]) * out * out


@rule("pow.Tensor_Scalar")
def _pow(func, args, kwargs, out, T):
    x, n = args
    return T(x) * (n * x.pow(n - 1))


@rule("rsqrt.default")
def _rsqrt(func, args, kwargs, out, T):
    return T(args[0]) * (-0.5 * out * out * out)


@rule("sqrt.default")
def _sqrt(func, args, kwargs, out, T):
    return T(args[0]) / (2 * out)


@rule("abs.default")
def _abs(func, args, kwargs, out, T):
    return T(args[0]) * args[0].sign()


@rule("clamp.default clamp_min.default clamp_max.default")
def _clamp(func, args, kwargs, out, T):
    return T(args[0]) * (out == args[0])  # zero where the bound is active


@rule("binary_cross_entropy_with_logits.default")
def _bce_with_logits(func, args, kwargs, out, T):
    z, y = args[:2]
    extra = list(args[2:4]) + [kwargs.get("weight"), kwargs.get("pos_weight")]
    if T(y) is not None or any(isinstance(e, Tensor) for e in extra):
        raise TangentUnsupported("binary_cross_entropy_with_logits with a target tangent, weight or pos_weight")
    t = T(z) * (torch.sigmoid(z) - y)
    reduction = args[4] if len(args) > 4 else kwargs.get("reduction", 1)  # 0 none, 1 mean, 2 sum
    return t if reduction == 0 else t.mean() if reduction == 1 else t.sum()
