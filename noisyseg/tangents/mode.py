"""The dispatch machinery: :func:`forward_with_tangent` runs a forward under a ``TorchDispatchMode`` that
applies :data:`~noisyseg.tangents.rules.RULES` op by op, and frees tangents by a learnt plan."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Hashable, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

from noisyseg.tangents.rules import BEFORE, IN_PLACE, RULES, TangentUnsupported, _none


class _PlanMismatch(TangentUnsupported):
    """A tangent freed by the plan of an earlier forward was read again: stop at once (not a missing rule)."""


@dataclass
class _Plan:
    """The tangent ops of one forward, learnt on its first run: op and input producers per step, and
    the last step that reads each producer's tangent, so a replay frees every tangent after it."""

    ops: list = field(default_factory=list)  # func per tangent step
    reads: list = field(default_factory=list)  # producers (step, slot) of the inputs with a tangent, per step
    last_read: dict = field(default_factory=dict)  # producer -> last step reading it


class _TangentMode(TorchDispatchMode):
    """Runs every op as usual and, when an input has a tangent, its rule under ``no_grad``.

    Autograd keeps the activations it saved for backward alive, so tangents keyed by them would be
    too (about twice a plain forward's memory). With a learnt :class:`_Plan` of an identical earlier
    forward, a tangent is freed after its last reader. A replay checks every step's op and input
    producers against the plan and stops freeing at the first difference; a freed tangent that is
    read anyway raises :class:`TangentUnsupported` (never a silent zero).
    """

    def __init__(self, seeds: Mapping[Tensor, Tensor], plan: Optional[_Plan]) -> None:
        super().__init__()
        self.seeds = WeakIdKeyDictionary(dict(seeds))  # e.g. parameters: never freed
        self.tangents = WeakIdKeyDictionary()  # op outputs -> tangent
        self.producer = WeakIdKeyDictionary()  # op outputs -> (step, slot)
        self.freed = WeakIdKeyDictionary()  # tensors whose tangent was freed
        self.viewed = WeakIdKeyDictionary()  # tensors a view was taken of (in place on them is unsafe)
        self.replay, self.record = plan, _Plan() if plan is None else None
        self.step = 0
        self.problems: dict[str, None] = {}  # unsupported ops and patterns met, in order (the forward goes on)

    def tangent(self, x: object) -> Optional[Tensor]:
        if not isinstance(x, Tensor):
            return None
        if x in self.freed:
            raise _PlanMismatch("a tangent freed by the plan of an earlier forward was read again")
        t = self.tangents.get(x)
        return self.seeds.get(x) if t is None else t

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        fn = RULES.get(func)
        if fn is _none:  # detach & co.: no tangent comes out, none is read (not a step of the plan)
            out = func(*args, **kwargs)
            self._store(out, None, 0)
            return out
        inputs = [a for a in _flat([*args, *kwargs.values()]) if isinstance(a, Tensor) and self.tangent(a) is not None]
        if not inputs:
            return func(*args, **kwargs)
        problem, result = None, None
        if fn is None or "out" in kwargs:
            problem = f"no tangent rule for {func}" + (" with out=" if fn else "")
        elif func in IN_PLACE and (args[0]._is_view() or args[0] in self.viewed):
            problem = f"{func} on a view or on a tensor with views"
        elif func in BEFORE:  # reads what the op overwrites
            result, problem = self._rule(fn, func, args, kwargs, None)
        out = func(*args, **kwargs)
        if fn is None and not any(isinstance(o, Tensor) and o.is_floating_point() for o in _flat([out])):
            return out  # fine: nothing differentiable comes out (comparisons, argmax, ...)
        if _is_view_op(func):
            self.viewed[args[0]] = True
        if problem is None and func not in BEFORE:
            result, problem = self._rule(fn, func, args, kwargs, out)
        if problem is not None:  # noted; zeros let the forward go on and meet every other unsupported op
            self.problems[problem] = None
            result = _zeros(out)
        self._account(func, inputs)
        self._store(out, result, 0)
        self.step += 1
        return out

    def _rule(self, fn, func, args, kwargs, out) -> tuple[object, Optional[str]]:
        try:
            with torch.no_grad():
                return fn(func, args, kwargs, out, self.tangent), None
        except _PlanMismatch:
            raise
        except TangentUnsupported as err:
            return None, str(err)
        except Exception as err:  # e.g. an overload whose outputs differ on another device or torch version:
            return None, f"the tangent rule of {func} failed: {err!r}"  # fall back, not crash

    def _account(self, func: object, inputs: list[Tensor]) -> None:
        reads = [self.producer.get(x) for x in inputs]
        if self.record is not None:
            self.record.ops.append(func)
            self.record.reads.append(reads)
            self.record.last_read.update((r, self.step) for r in reads if r is not None)
        elif self.replay is not None:
            plan, i = self.replay, self.step
            if i >= len(plan.ops) or plan.ops[i] is not func or plan.reads[i] != reads:
                self.replay = None  # the forward differs from the plan's: keep every tangent from here on
                return
            for x, r in zip(inputs, reads):
                if r is not None and plan.last_read.get(r) == i and x not in self.freed:
                    del self.tangents[x]
                    self.freed[x] = True

    def _store(self, out: object, result: object, slot: int) -> None:
        if isinstance(out, (tuple, list)):
            results = result if isinstance(result, (tuple, list)) else [result]
            for k, (o, t) in enumerate(zip(out, results)):
                self._store(o, t, k)
        elif isinstance(out, Tensor) and out.is_floating_point():
            self.freed.pop(out, None)
            if result is None:
                self.tangents.pop(out, None)
                self.producer.pop(out, None)
            else:  # a tangent has its primal's dtype (rules mixing precisions under autocast may promote)
                self.tangents[out] = result if result.dtype == out.dtype else result.to(out.dtype)
                self.producer[out] = (self.step, slot)


def _zeros(out: object) -> object:
    if isinstance(out, (tuple, list)):
        return [_zeros(o) for o in out]
    return torch.zeros_like(out) if isinstance(out, Tensor) and out.is_floating_point() else None


def _is_view_op(func: object) -> bool:
    """Whether ``func`` returns a view of its first argument (not an in-place op, which returns that argument)."""
    schema = func._schema
    info = schema.returns[0].alias_info if schema.returns else None
    return info is not None and not info.is_write


def _flat(args: Sequence[object]) -> list[object]:
    out = []
    for a in args:
        out.extend(a if isinstance(a, (list, tuple)) else [a])
    return out


_PLANS: "OrderedDict[Hashable, _Plan]" = OrderedDict()  # a few recent forwards' plans, by caller key
_MAX_PLANS = 8


def has_plan(plan_key: Hashable) -> bool:
    """Whether a forward under ``plan_key`` has been recorded (later ones free tangents early)."""
    return plan_key in _PLANS


def forward_with_tangent(fn: Callable[[], Tensor], tangents: Mapping[Tensor, Tensor],
                         plan_key: Optional[Hashable] = None) -> tuple[Tensor, Tensor]:
    """``(fn(), its directional derivative)`` where the tensors in ``tangents`` move along their values.

    ``fn`` runs normally (under the caller's grad mode, so its graph can be reused); the tangent is
    computed off the tape. ``plan_key`` names forwards with the same structure (model, shapes, mode):
    the first one is recorded and later ones free each tangent after its last use (record it under
    ``no_grad``, where nothing is saved for backward, to keep that first forward lean too).

    Raises:
        TangentUnsupported: ``fn`` used ops without a rule (or unsupported patterns); ``fn`` has then run
            to its end, so that the message (and ``err.problems``) lists all of them, e.g. ``no tangent
            rule for aten.sin.default, aten.cos.default``. Call ``fn`` on state you can discard (e.g.
            cloned buffers).
    """
    plan = _PLANS.get(plan_key) if plan_key is not None else None
    mode = _TangentMode(tangents, plan)
    try:
        with mode:
            out = fn()
        if mode.problems:
            raise _unsupported(list(mode.problems))
    except TangentUnsupported:
        _PLANS.pop(plan_key, None)  # e.g. the plan freed a tangent this forward reads: learn it again
        raise
    if plan_key is not None and mode.record is not None:
        mode.record.last_read[mode.producer.get(out)] = float("inf")  # the result's tangent is read last
        _PLANS[plan_key] = mode.record
        while len(_PLANS) > _MAX_PLANS:
            _PLANS.popitem(last=False)
    elif plan_key is not None and mode.replay is None:  # the forward changed: learn it again next time
        _PLANS.pop(plan_key, None)
    tangent = mode.tangent(out)
    return out, torch.zeros_like(out) if tangent is None else tangent


def _unsupported(problems: list[str]) -> TangentUnsupported:
    """One error for all problems: missing rules named together, then the other patterns."""
    prefix = "no tangent rule for "
    missing = [p[len(prefix):] for p in problems if p.startswith(prefix)]
    parts = ([prefix + ", ".join(missing)] if missing else []) + [p for p in problems if not p.startswith(prefix)]
    err = TangentUnsupported("; ".join(parts))
    err.problems = problems
    return err


def unsupported_ops(model: nn.Module, images: Tensor) -> list[str]:
    """The ops and patterns of ``model(images)`` that :mod:`noisyseg.tangents` has no rule for (with a
    tangent on every trainable parameter); ``[]`` when the ``jvp`` meta backend runs the model on its
    rules alone. ``model`` is not changed: the forward runs functionally on cloned buffers, without grad."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    state = {**dict(model.named_parameters()), **{n: b.clone() for n, b in model.named_buffers()}}
    seeds = {p: torch.randn_like(p) for p in params.values()}
    try:
        with torch.no_grad():
            forward_with_tangent(lambda: torch.func.functional_call(model, state, (images,)), seeds)
    except TangentUnsupported as err:
        return list(getattr(err, "problems", [str(err)]))
    return []
