"""Forward-mode tangents pushed alongside an ordinary, recorded forward pass.

:func:`forward_with_tangent` runs ``fn()`` as usual (autograd records the primal graph, so a later
backward reuses it) while a ``TorchDispatchMode`` pushes the tangents of given tensors (e.g. the
parameters) through every op, under ``no_grad`` and off the autograd tape. It is the fused forward of
the ``jvp`` meta backend: one noisy forward gives the loss map with its graph *and* its directional
derivative. ``torch.autograd.forward_ad`` can do the same, but it records the tangent computations on
the tape too (for higher-order derivatives we never take): slower and about twice the memory.

Rules (:data:`RULES`, one per aten op) give an output's tangent from the op's inputs, output and
input tangents. Three facts keep them short and fast:

- linear ops (views, cat, add, sum, pooling by averaging, ...) map tangents through the op itself;
- bilinear ops (convolution, mul, matmul) follow the product rule;
- elementwise ops (relu, sigmoid, ...) have a diagonal Jacobian and normalisation (before its
  per-channel scale) a symmetric one, so J·t = Jᵀ·t and the op's own *backward* kernel applied to
  the tangent is the tangent (one fused kernel instead of a chain of elementwise ops).

The table and the linear and bilinear rules are in :mod:`~noisyseg.tangents.rules`, the elementwise
ones in :mod:`~noisyseg.tangents.pointwise`, the normalisation ones in :mod:`~noisyseg.tangents.norms`.

An op with a tangent input but no rule or an in-place op on a view (or on a tensor that has views)
raises :class:`TangentUnsupported` at the end of the forward, naming every such op (so one fallback
warning lists them all; :func:`unsupported_ops` asks it of a model up front); a tangent that is needed
after it was dropped (below) raises at once. The caller then falls back to
``torch.autograd.forward_ad``, so an unknown model is slower, never wrong. In-place ops whose tangent
needs the value they overwrite (``x.mul_(x.sigmoid())``, ``silu_``) have rules that run before the op.

Memory: autograd keeps the activations it saved for backward alive, and tangents keyed by them would
live as long. Given a ``plan_key``, the first forward records which step last reads each tangent and
later forwards of the same structure free tangents right after that step (see :class:`_TangentMode`).
"""
from noisyseg.tangents import norms, pointwise  # noqa: F401  (register the normalisation and pointwise rules)
from noisyseg.tangents.mode import forward_with_tangent, has_plan, unsupported_ops
from noisyseg.tangents.rules import BEFORE, IN_PLACE, RULES, Rule, TangentUnsupported, rule

__all__ = ["BEFORE", "IN_PLACE", "RULES", "Rule", "TangentUnsupported", "forward_with_tangent", "has_plan", "rule",
           "unsupported_ops"]
