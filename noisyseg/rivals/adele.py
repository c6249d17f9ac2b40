"""ADELE: adaptive early-learning correction (Liu, Liu, Zhu, Shen, Fernandez-Granda, CVPR 2022).

Networks fit the correct part of noisy masks first and memorise the errors later. ADELE watches,
per class, the training IoU between predictions and the given labels; fits the curve
``f(x) = a (1 - exp(-b x^c))`` to its epochs ``x = 1..t``; and once the curve flattens,
``|f'(1) - f'(t)| / |f'(1)| > r`` (r = 0.9), starts replacing that class's labels with the model's
confident predictions (probability > tau = 0.7). Predictions are averaged over input scales, and a
multi-scale consistency term pulls the scales together. Written from the paper's description.

Choices made here (binary masks, a small expert set):

* Correction is done on the fly, per batch, from the current multi-scale prediction on the
  augmented batch (as ADELE's code corrects per batch) rather than stored per image: augmentation
  moves the images, and the correction then follows the model without a per-image label bank.
* Only noisy-stream images are corrected or measured; expert images are trained on as given.
* The consistency term (mean squared difference between each scale's probabilities and their mean)
  is on from the first corrected class: before that the step costs one forward pass like the plain
  step, after it ``len(scales)`` passes.
* The IoU curve is the running IoU of the step-time predictions over the epoch's noisy batches
  (no extra pass over the noisy set); the onset is decided after the last step of an epoch.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from noisyseg.errors import ConfigError
from noisyseg.losses import PixelLoss
from noisyseg.methods import METHODS, Batch, StepOutput
from noisyseg.rivals.streams import TwoStreamMethod, joined, unwrapped

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


def multiscale_probs(model: torch.nn.Module, images: torch.Tensor, scales: list[float], logits: torch.Tensor
                     ) -> list[torch.Tensor]:
    """Sigmoid outputs at each scale, resized back to the input size; scale 1 reuses ``logits``."""
    multiple = 2 ** getattr(unwrapped(model), "depth", 0)  # the U-Net halves the input depth times
    size = images.shape[-2:]
    out = []
    for s in scales:
        if s == 1.0:
            out.append(torch.sigmoid(logits))
            continue
        scaled = [max(multiple, int(round(n * s / multiple)) * multiple) for n in size]
        small = model(F.interpolate(images, size=scaled, mode="bilinear", align_corners=False))
        out.append(torch.sigmoid(F.interpolate(small, size=size, mode="bilinear", align_corners=False)))
    return out  # each [B, 1, H, W]


@METHODS.register("adele")
class ADELE(TwoStreamMethod):
    """Adaptive early-learning correction (Liu et al., CVPR 2022) of the noisy stream's masks.

    Args:
        tau: confidence above which a prediction replaces the label (paper: 0.7).
        r: relative slope drop that marks the start of memorisation (paper: 0.9).
        scales: input scales of the averaged prediction and the consistency term.
        consistency_weight: weight of the multi-scale consistency term.
        steps_per_epoch: the trainer's steps per epoch (``${trainer.steps_per_epoch}``).
        min_epochs: epochs of IoU history before the curve is fitted.
    """

    def __init__(self, loss: PixelLoss, clean_share: float | None = None, tau: float = 0.7, r: float = 0.9,
                 scales: tuple[float, ...] | list[float] = (0.75, 1.0, 1.25), consistency_weight: float = 1.0,
                 steps_per_epoch: int = 50, min_epochs: int = 3) -> None:
        super().__init__(loss, clean_share)
        if not 0.5 <= tau < 1 or not 0 < r < 1 or steps_per_epoch < 1 or 1.0 not in scales:
            raise ConfigError("adele needs tau in [0.5, 1), r in (0, 1), steps_per_epoch >= 1 and 1.0 among the scales")
        self.tau, self.r, self.scales = tau, r, [float(s) for s in scales]
        self.consistency_weight, self.steps_per_epoch, self.min_epochs = consistency_weight, steps_per_epoch, min_epochs
        self.steps = 0
        self.history: list[list[float]] = [[], []]  # per class: IoU per epoch
        self.totals = [0.0, 0.0, 0.0, 0.0]  # this epoch: intersection, union of background; of foreground
        self.start_epoch: list[int | None] = [None, None]  # per class: the epoch correction started after

    @property
    def correcting(self) -> tuple[bool, bool]:
        return self.start_epoch[0] is not None, self.start_epoch[1] is not None

    def step(self, model: torch.nn.Module, batches: dict[str, Batch], lr: float) -> StepOutput:
        images, masks = joined(batches, "image"), joined(batches, "mask")
        n = len(batches["noisy"]["image"])
        logits = model(images)  # [B, 1, H, W], noisy images first
        self._accumulate(logits[:n].detach(), masks[:n])
        logs = {f"adele_correcting_{name}": float(on) for name, on in zip(CLASSES, self.correcting)}
        loss_extra = 0.0
        if any(self.correcting):
            probs = multiscale_probs(model, images, self.scales, logits)
            mean = torch.stack(probs).mean(0)
            corrected = correct_labels(mean[:n].detach(), masks[:n], self.tau, self.correcting)
            logs.update(self._correction_logs(corrected, masks[:n], batches["noisy"]["true_mask"]))
            masks = torch.cat([corrected, masks[n:]])
            loss_extra = self.consistency_weight * torch.stack([(p - mean).pow(2).mean() for p in probs]).mean()
        self._end_step()
        return StepOutput(self.loss(logits, masks) + loss_extra, logs)

    @torch.no_grad()
    def _accumulate(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        pred, label = logits >= 0, labels > 0.5
        for k, (p, y) in enumerate(((~pred, ~label), (pred, label))):
            self.totals[2 * k] += (p & y).sum().item()
            self.totals[2 * k + 1] += (p | y).sum().item()

    def _end_step(self) -> None:
        """After an epoch's last step: record its IoU per class and test each class for memorisation."""
        self.steps += 1
        if self.steps % self.steps_per_epoch:
            return
        epoch = self.steps // self.steps_per_epoch - 1
        for k in range(2):
            self.history[k].append(self.totals[2 * k] / max(self.totals[2 * k + 1], 1.0))
            if self.start_epoch[k] is None and memorisation_started(self.history[k], self.r, self.min_epochs):
                self.start_epoch[k] = epoch
        self.totals = [0.0, 0.0, 0.0, 0.0]

    @staticmethod
    @torch.no_grad()
    def _correction_logs(corrected: torch.Tensor, given: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
        """Share of noisy pixels changed and, diagnostics only (synthetic noise), share changed rightly."""
        changed = corrected != given
        logs = {"adele_changed_fraction": changed.float().mean().item()}
        if changed.any():
            logs["adele_changed_right"] = ((corrected == (truth > 0.5).float()) & changed).sum().item() / changed.sum().item()
        return logs

    def state_dict(self) -> dict:
        return {"steps": self.steps, "history": [list(h) for h in self.history], "totals": list(self.totals),
                "start_epoch": list(self.start_epoch)}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state.get("steps", 0)
        self.history = [list(h) for h in state.get("history", [[], []])]
        self.totals = list(state.get("totals", [0.0] * 4))
        self.start_epoch = list(state.get("start_epoch", [None, None]))
