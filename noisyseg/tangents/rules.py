"""Tangent rules, one per aten op (:data:`RULES`), registered with :func:`rule`: the table, and the rules
of the ops that are linear or bilinear in their tensors (views and shapes, sums, pooling by averaging,
selections, convolution, products, the in-place forms). The nonlinear pointwise rules are in
:mod:`noisyseg.tangents.pointwise`, the normalisation rules in :mod:`noisyseg.tangents.norms`; the package
imports both, so the table is complete once :mod:`noisyseg.tangents` is. The dispatch machinery that
applies the rules is :mod:`noisyseg.tangents.mode`, the why of their shapes :mod:`noisyseg.tangents`."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

aten = torch.ops.aten
Rule = Callable[..., object]  # (func, args, kwargs, out, T) -> tangent(s) of out; T(x): x's tangent or None
RULES: dict[object, Rule] = {}
IN_PLACE: set[object] = set()  # rules of ops that overwrite args[0]
BEFORE: set[object] = set()  # rules run before their op, with out=None: they read what the op overwrites


class TangentUnsupported(RuntimeError):
    """The forward pass used an op (or pattern) the tangent rules do not cover."""


def _ops(names: str) -> list[object]:
    """aten overloads by ``"name.overload"``; ones this torch does not have are skipped."""
    found = []
    for name in names.split():
        packet, _, overload = name.partition(".")
        op = getattr(getattr(aten, packet, None), overload or "default", None)
        if op is not None:
            found.append(op)
    return found


def rule(names: str, in_place: bool = False, before: bool = False) -> Callable[[Rule], Rule]:
    """Register the decorated function as the tangent rule of the named aten ops ("name.overload", space
    separated); ``in_place``: the ops overwrite ``args[0]``, which must then be neither a view nor viewed;
    ``before``: the rule runs before the op (``out`` is None), for in-place ops whose tangent needs the
    value they overwrite (``x.mul_(y)`` with a tangent on ``y``, ``silu_``, ...)."""
    def register(fn: Rule) -> Rule:
        for op in _ops(names):
            RULES[op] = fn
            if in_place:
                IN_PLACE.add(op)
            if before:
                BEFORE.add(op)
        return fn
    return register


def _or_zeros(t: Optional[Tensor], like: Tensor) -> Tensor:
    return torch.zeros_like(like) if t is None else t


def _plus(a: Optional[Tensor], b: Optional[Tensor]) -> Optional[Tensor]:
    return b if a is None else a if b is None else a.add_(b)


def _channel(v: Tensor, ndim: int) -> Tensor:
    return v.view([1, -1] + [1] * (ndim - 2))


# --- no tangent: results that do not depend differentiably on their inputs ---------------------------
@rule("detach empty_like zeros_like ones_like full_like rand_like randn_like new_empty new_zeros new_ones "
      "new_full new_empty_strided bernoulli.default bernoulli.p bernoulli_.float bernoulli_.Tensor")
def _none(func, args, kwargs, out, T):
    return None


# --- linear: the op applied to the tangents (zeros for inputs without one) -----------------------------
@rule("view.default _unsafe_view.default reshape.default expand.default permute.default transpose.int "
      "t.default squeeze.dim squeeze.dims squeeze.default unsqueeze.default slice.Tensor select.int "
      "clone.default alias.default _to_copy.default flatten.using_ints contiguous.default "
      "neg.default sum.default sum.dim_IntList mean.default mean.dim avg_pool2d.default "
      "upsample_nearest2d.vec upsample_bilinear2d.vec upsample_nearest2d.default upsample_bilinear2d.default "
      "pixel_shuffle.default "
      "mul.Scalar div.Scalar split.Tensor split_with_sizes.default unbind.int "
      "_adaptive_avg_pool2d.default upsample_bicubic2d.vec upsample_bicubic2d.default "
      "_upsample_nearest_exact2d.vec _upsample_nearest_exact2d.default _upsample_bilinear2d_aa.vec "
      "_upsample_bilinear2d_aa.default pixel_unshuffle.default channel_shuffle.default repeat.default "
      "roll.default flip.default narrow.default unfold.default im2col.default col2im.default index.Tensor "
      "_unsafe_index.Tensor reflection_pad2d.default replication_pad2d.default")
def _linear_first(func, args, kwargs, out, T):
    """Linear in its first argument; the others are shapes, dims or scalars."""
    return func(T(args[0]), *args[1:], **kwargs)


@rule("add.Tensor sub.Tensor where.self")
def _linear(func, args, kwargs, out, T):
    """Linear in every tensor argument; a Python number is a constant (tangent 0)."""
    def tangent(a):
        if isinstance(a, Tensor):
            return a if a.dtype == torch.bool else _or_zeros(T(a), a)  # where's condition stays
        return 0 if isinstance(a, (int, float)) and not isinstance(a, bool) else a
    return func(*[tangent(a) for a in args], **kwargs)


@rule("cat.default stack.default")
def _cat(func, args, kwargs, out, T):
    return func([_or_zeros(T(x), x) for x in args[0]], *args[1:], **kwargs)


@rule("add.Scalar sub.Scalar")
def _shift(func, args, kwargs, out, T):
    return T(args[0])


@rule("rsub.Scalar")
def _rsub(func, args, kwargs, out, T):
    return -T(args[0])


@rule("constant_pad_nd.default")
def _pad(func, args, kwargs, out, T):
    return aten.constant_pad_nd(T(args[0]), args[1], 0.0)  # the padding value is a constant


# --- bilinear: the product rule -------------------------------------------------------------------
@rule("convolution.default")
def _convolution(func, args, kwargs, out, T):
    x, w, b, *rest = args
    tx, tw, tb = T(x), T(w), T(b) if b is not None else None
    res = None if tx is None else aten.convolution(tx, w, None, *rest)
    if tw is not None or tb is not None:
        res = _plus(res, aten.convolution(x, _or_zeros(tw, w), tb, *rest))
    return res


@rule("mul.Tensor")
def _mul(func, args, kwargs, out, T):
    a, b = args
    ta, tb = T(a), T(b)
    return _plus(None if ta is None else ta * b, None if tb is None else a * tb)


@rule("div.Tensor")
def _div(func, args, kwargs, out, T):
    a, b = args
    ta, tb = T(a), T(b)
    return _plus(None if ta is None else ta / b, None if tb is None else -out * tb / b)


@rule("mm.default bmm.default")
def _matmul(func, args, kwargs, out, T):
    a, b = args
    ta, tb = T(a), T(b)
    return _plus(None if ta is None else func(ta, b), None if tb is None else func(a, tb))


@rule("addmm.default")
def _addmm(func, args, kwargs, out, T):
    bias, a, b = args
    beta, alpha = kwargs.get("beta", 1), kwargs.get("alpha", 1)
    ta, tb, tbias = T(a), T(b), T(bias)
    res = None if ta is None else alpha * (ta @ b)
    res = _plus(res, None if tb is None else alpha * (a @ tb))
    return _plus(res, None if tbias is None else (beta * tbias).expand_as(out).clone())


# --- selections, masks and views: linear in x once the indices, mask or layout are fixed ----------
@rule("max_pool2d_with_indices.default adaptive_max_pool2d.default")
def _max_pool(func, args, kwargs, out, T):
    """The tangent at each window's argmax (indices into the flattened H·W plane of each channel)."""
    values, indices = out
    return T(args[0]).flatten(-2).gather(-1, indices.flatten(-2)).view_as(values), None


@rule("max_pool2d.default")
def _max_pool_no_indices(func, args, kwargs, out, T):
    _, indices = aten.max_pool2d_with_indices(*args, **kwargs)
    return T(args[0]).flatten(-2).gather(-1, indices.flatten(-2)).view_as(out)


@rule("masked_fill.Scalar")
def _masked_fill(func, args, kwargs, out, T):
    return aten.masked_fill(T(args[0]), args[1], 0.0)  # the fill value is a constant


def _same_layout_view(t: Tensor, x: Tensor, size, stride, offset) -> Tensor:
    """``t.as_strided`` as ``x.as_strided(size, stride, offset)``, when ``t`` is laid out in memory as ``x``."""
    if t.shape != x.shape or t.stride() != x.stride():
        raise TangentUnsupported("as_strided on a tensor whose tangent is laid out differently")
    start = t.storage_offset() + ((x.storage_offset() if offset is None else offset) - x.storage_offset())
    end = start + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    if start < 0 or (all(size) and end > t.untyped_storage().nbytes() // t.element_size()):
        raise TangentUnsupported("as_strided beyond the storage of its tangent")
    return t.as_strided(size, stride, start)


@rule("as_strided.default")
def _as_strided(func, args, kwargs, out, T):
    return _same_layout_view(T(args[0]), args[0], *(list(args[1:4]) + [None])[:3])


@rule("as_strided_.default", in_place=True, before=True)
def _as_strided_(func, args, kwargs, out, T):
    """adaptive_avg_pool2d(x, 1) restrides its mean in place; the tangent takes a restrided view."""
    return _same_layout_view(T(args[0]), args[0], *(list(args[1:4]) + [None])[:3])


@rule("native_dropout.default")
def _dropout(func, args, kwargs, out, T):
    x, p = args[0], args[1]
    return T(x) * out[1] * (1.0 / (1.0 - p)), None


# --- in place ------------------------------------------------------------------------------------
@rule("add_.Tensor sub_.Tensor", in_place=True)
def _add_(func, args, kwargs, out, T):
    self, other = args[:2]
    op = aten.add.Tensor if func is aten.add_.Tensor else aten.sub.Tensor
    return op(_or_zeros(T(self), self), _or_zeros(T(other), other), **kwargs)


@rule("add_.Scalar sub_.Scalar", in_place=True)
def _shift_(func, args, kwargs, out, T):
    return T(args[0])


@rule("mul_.Scalar div_.Scalar", in_place=True)
def _scale_(func, args, kwargs, out, T):
    return aten.mul.Scalar(T(args[0]), args[1]) if func is aten.mul_.Scalar else aten.div.Scalar(T(args[0]), args[1])


@rule("mul_.Tensor div_.Tensor", in_place=True, before=True)
def _scale_by_tensor_(func, args, kwargs, out, T):
    """Before the op: the product rule reads the value of ``args[0]`` that it overwrites (``x.mul_(x.sigmoid())``)."""
    a, b = args[:2]
    ta, tb = T(a), T(b) if isinstance(b, Tensor) else None
    if func is aten.mul_.Tensor:
        return _plus(None if ta is None else ta * b, None if tb is None else a * tb)
    return _plus(None if ta is None else ta / b, None if tb is None else -a * tb / (b * b))


@rule("copy_.default", in_place=True)
def _copy_(func, args, kwargs, out, T):
    return T(args[1])


@rule("zero_.default fill_.Scalar", in_place=True)
def _fill_(func, args, kwargs, out, T):
    return None
