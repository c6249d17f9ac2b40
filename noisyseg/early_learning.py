"""Early-learning label correction: find when a network starts memorising a class's noisy labels, then
replace that class's labels where the network is confident (ADELE, Liu et al., CVPR 2022).

Networks fit the correct part of noisy masks first and memorise the errors later. Per class, the
training IoU between predictions and the given labels is recorded per epoch and fitted with
``f(x) = a (1 - exp(-b x^c))``; once the fitted curve flattens, ``|f'(1) - f'(t)| / |f'(1)| > r``,
that class's labels are replaced by confident predictions (probability > tau). Used by the ADELE
method (:mod:`noisyseg.rivals.adele`) and by ``meta.correct`` (correction before the meta step), so
it depends on nothing but torch, numpy and scipy.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

CLASSES = ("background", "foreground")


def iou_curve(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a * (1 - np.exp(-b * x**c))


def fit_iou_curve(history: list[float]) -> tuple[float, float, float] | None:
    """Least-squares fit of :func:`iou_curve` to IoUs at epochs 1..t; None when the fit fails."""
    from scipy.optimize import curve_fit  # lazy: only a fit needs it

    x = np.arange(1, len(history) + 1, dtype=float)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, _ = curve_fit(iou_curve, x, np.asarray(history, float), p0=(1.0, 1.0, 1.0),
                                  bounds=([0.0, 0.0, 0.0], [1.5, 50.0, 10.0]), maxfev=5000)
    except (RuntimeError, TypeError, ValueError):  # no convergence, or fewer epochs than parameters
        return None
    return tuple(float(p) for p in params)


def curve_slope(x: float, a: float, b: float, c: float) -> float:
    return a * b * c * x ** (c - 1) * np.exp(-b * x**c)


def memorisation_started(history: list[float], r: float, min_epochs: int = 3) -> bool:
    """ADELE's rule: the fitted curve's slope at the last epoch has fallen by more than ``r`` relative
    to its slope at epoch 1."""
    if len(history) < min_epochs:
        return False
    params = fit_iou_curve(history)
    if params is None:
        return False
    first = curve_slope(1.0, *params)
    return abs(first) > 0 and abs(first - curve_slope(float(len(history)), *params)) / abs(first) > r


def correct_labels(probs: torch.Tensor, labels: torch.Tensor, tau: float, classes: tuple[bool, bool]) -> torch.Tensor:
    """Labels with confident predictions written in: foreground where ``p > tau`` (if class 1 is being
    corrected), background where ``1 - p > tau`` (if class 0 is)."""
    out = labels.clone()
    if classes[1]:
        out[probs > tau] = 1.0
    if classes[0]:
        out[1 - probs > tau] = 0.0
    return out


class EarlyLearningCorrector:
    """The per-class IoU history of one training run and the correction it licenses.

    Call :meth:`observe` with every step's noisy-batch logits and given labels; after every
    ``steps_per_epoch`` observations the epoch's IoU per class is recorded and each class not yet
    corrected is tested for memorisation. :meth:`correct` then rewrites the labels of the classes
    whose onset was found. The IoU is the running IoU of the step-time predictions over the epoch's
    noisy batches (no extra pass over the noisy set)."""

    def __init__(self, tau: float = 0.7, r: float = 0.9, steps_per_epoch: int = 50, min_epochs: int = 3) -> None:
        self.tau, self.r, self.steps_per_epoch, self.min_epochs = tau, r, steps_per_epoch, min_epochs
        self.steps = 0
        self.history: list[list[float]] = [[], []]  # per class: IoU per epoch
        self.totals = [0.0, 0.0, 0.0, 0.0]  # this epoch: intersection, union of background; of foreground
        self.start_epoch: list[int | None] = [None, None]  # per class: the epoch correction started after

    @property
    def correcting(self) -> tuple[bool, bool]:
        return self.start_epoch[0] is not None, self.start_epoch[1] is not None

    def logs(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_correcting_{name}": float(on) for name, on in zip(CLASSES, self.correcting)}

    @torch.no_grad()
    def observe(self, logits: torch.Tensor | None, labels: torch.Tensor) -> None:
        """Add one step's predictions to the epoch's IoU (``None``: a step without predictions, which
        only counts); at an epoch's end, test for memorisation."""
        if logits is not None:
            pred, label = logits >= 0, labels > 0.5
            for k, (p, y) in enumerate(((~pred, ~label), (pred, label))):
                self.totals[2 * k] += (p & y).sum().item()
                self.totals[2 * k + 1] += (p | y).sum().item()
        self.steps += 1
        if self.steps % self.steps_per_epoch:
            return
        epoch = self.steps // self.steps_per_epoch - 1
        for k in range(2):
            self.history[k].append(self.totals[2 * k] / max(self.totals[2 * k + 1], 1.0))
            if self.start_epoch[k] is None and memorisation_started(self.history[k], self.r, self.min_epochs):
                self.start_epoch[k] = epoch
        self.totals = [0.0, 0.0, 0.0, 0.0]

    def correct(self, probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return correct_labels(probs, labels, self.tau, self.correcting)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "history": [list(h) for h in self.history], "totals": list(self.totals),
                "start_epoch": list(self.start_epoch)}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state.get("steps", 0)
        self.history = [list(h) for h in state.get("history", [[], []])]
        self.totals = list(state.get("totals", [0.0] * 4))
        self.start_epoch = list(state.get("start_epoch", [None, None]))


@torch.no_grad()
def correction_logs(prefix: str, corrected: torch.Tensor, given: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Share of noisy pixels changed and, diagnostics only (synthetic noise), share changed rightly."""
    changed = corrected != given
    logs = {f"{prefix}_changed_fraction": changed.float().mean().item()}
    if changed.any():
        logs[f"{prefix}_changed_right"] = ((corrected == (truth > 0.5).float()) & changed).sum().item() / changed.sum().item()
    return logs
