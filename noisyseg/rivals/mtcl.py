"""MTCL: mean teacher + confident learning for a small high-quality and a large low-quality set
(Xu et al., "Noisy Labels are Treasure: Mean-Teacher-Assisted Confident Learning for Hepatic Vessel
Segmentation", MICCAI 2021; extended in IEEE TMI 2022).

Every step:

1. the teacher, an exponential moving average (EMA) of the student's weights (Tarvainen & Valpola,
   NeurIPS 2017), is updated from the student as it stands after the previous optimiser step;
2. the teacher predicts the (noise-perturbed) batch;
3. confident learning (Northcutt, Jiang & Chuang, JAIR 2021) on the teacher's probabilities of the
   noisy images flags the pixels whose given label is likely wrong (:func:`confident_errors`);
4. the student trains on the expert masks as given, on the noisy masks with flagged pixels flipped to
   the teacher's class (``mode=flip``) or down-weighted (``mode=weight``), plus the mean-teacher
   consistency term (squared difference of student and teacher probabilities, ramped up).

Confident learning is written here for pixels (a few tensor operations per batch, which is what MTCL
does per mini-batch) rather than with ``cleanlab``, whose per-sample API would add a dependency and a
CPU round trip every step. Expert images are never flagged. The teacher's batch-norm buffers are
copied from the student (the EMA covers the weights). Cost: one extra forward pass (no backward).
"""
from __future__ import annotations

import copy
import math

import torch

from noisyseg.errors import ConfigError
from noisyseg.losses import PixelLoss
from noisyseg.methods import METHODS, Batch, StepOutput
from noisyseg.rivals.streams import TwoStreamMethod, joined, unwrapped

MODES = ("flip", "weight")


@torch.no_grad()
def confident_errors(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Pixels in the off-diagonal of the confident joint: their label is ``i`` but the predicted
    probability of the other class ``j`` reaches ``t_j``, the mean probability of ``j`` over pixels
    labelled ``j`` (the per-class threshold of confident learning). With two classes a pixel can pass
    both thresholds only if they sum to at most 1; it then counts for the likelier class.

    Args:
        probs: foreground probabilities ``[B, 1, H, W]``.
        labels: given {0, 1} labels, same shape.
    Returns:
        a bool map, same shape: True where the label is likely wrong.
    """
    fg = labels > 0.5
    p = torch.stack([1 - probs, probs])  # [2, B, 1, H, W]: class 0, class 1
    thresholds = [p[0][~fg].mean() if (~fg).any() else p.new_tensor(2.0),
                  p[1][fg].mean() if fg.any() else p.new_tensor(2.0)]  # 2: the class is absent, never confident
    confident = torch.stack([p[k] >= thresholds[k] for k in range(2)])
    # the pixel's confident class: the one above its threshold, the likelier if both are
    label_confident = torch.where(fg, confident[1], confident[0])
    other_confident = torch.where(fg, confident[0], confident[1])
    likelier_other = torch.where(fg, p[0] > p[1], p[1] > p[0])
    return other_confident & (~label_confident | likelier_other)


def sigmoid_rampup(step: int, length: int) -> float:
    """exp(-5 (1 - t)^2), the mean-teacher ramp-up (Laine & Aila 2017), from 0 to 1 over ``length`` steps."""
    if length <= 0:
        return 1.0
    t = min(step, length) / length
    return math.exp(-5.0 * (1.0 - t) ** 2)


@METHODS.register("mtcl")
class MTCL(TwoStreamMethod):
    """Mean teacher + confident learning (Xu et al., MICCAI 2021 / TMI 2022).

    Args:
        ema_decay: the teacher's EMA decay (warmed up as ``min(1 - 1/(step + 1), ema_decay)``).
        mode: ``flip`` flagged noisy pixels to the teacher's class, or ``weight`` them by ``flagged_weight``.
        flagged_weight: the weight of a flagged pixel with ``mode=weight`` (0 drops it).
        consistency_weight: the mean-teacher consistency weight after ramp-up.
        rampup_steps: steps of the sigmoid ramp-up of the consistency weight.
        input_noise: std of the Gaussian noise added to the teacher's input (clipped at twice it).
    """

    def __init__(self, loss: PixelLoss, clean_share: float | None = 0.5, ema_decay: float = 0.99, mode: str = "flip",
                 flagged_weight: float = 0.0, consistency_weight: float = 0.1, rampup_steps: int = 200,
                 input_noise: float = 0.1) -> None:
        super().__init__(loss, clean_share)
        if mode not in MODES or not 0 <= ema_decay < 1 or flagged_weight < 0:
            raise ConfigError(f"mtcl needs mode in {MODES}, ema_decay in [0, 1) and flagged_weight >= 0")
        self.ema_decay, self.mode, self.flagged_weight = ema_decay, mode, flagged_weight
        self.consistency_weight, self.rampup_steps, self.input_noise = consistency_weight, rampup_steps, input_noise
        self.teacher: torch.nn.Module | None = None
        self.steps = 0
        self._pending: dict | None = None  # a checkpoint's teacher, loaded when the teacher is built

    @torch.no_grad()
    def update_teacher(self, model: torch.nn.Module) -> None:
        """teacher <- a teacher + (1 - a) student for weights; buffers copied. The first call copies the
        student (or, resumed, loads the checkpoint's teacher and updates it)."""
        student = unwrapped(model)
        if self.teacher is None:
            self.teacher = copy.deepcopy(student).requires_grad_(False)
            if self._pending is None:
                return  # the first step: the teacher starts as the student
            self.teacher.load_state_dict(self._pending)  # a resumed run: the checkpoint's teacher, then EMA
            self._pending = None
        alpha = min(1 - 1 / (self.steps + 1), self.ema_decay)
        for t, s in zip(self.teacher.parameters(), student.parameters()):
            t.mul_(alpha).add_(s.detach(), alpha=1 - alpha)
        for t, s in zip(self.teacher.buffers(), student.buffers()):
            t.copy_(s)

    def step(self, model: torch.nn.Module, batches: dict[str, Batch], lr: float) -> StepOutput:
        self.update_teacher(model)  # 1.
        images, masks = joined(batches, "image"), joined(batches, "mask")
        n = len(batches["noisy"]["image"])
        with torch.no_grad():  # 2.
            self.teacher.train(model.training)
            noise = (torch.randn_like(images) * self.input_noise).clamp(-2 * self.input_noise, 2 * self.input_noise)
            teacher = torch.sigmoid(self.teacher(images + noise).float())
        flagged = confident_errors(teacher[:n], masks[:n])  # 3. [n, 1, H, W]
        weight = torch.ones_like(masks)
        if self.mode == "flip":
            masks = torch.cat([torch.where(flagged, (teacher[:n] > 0.5).to(masks.dtype), masks[:n]), masks[n:]])
        else:
            weight[:n][flagged] = self.flagged_weight
        logits = model(images)  # 4.
        supervised = self.loss(logits, masks, weight / weight.sum().clamp_min(1e-12))
        ramp = self.consistency_weight * sigmoid_rampup(self.steps, self.rampup_steps)
        consistency = (torch.sigmoid(logits) - teacher).pow(2).mean()
        self.steps += 1
        return StepOutput(supervised + ramp * consistency, flag_logs(flagged, batches["noisy"]))

    def state_dict(self) -> dict:
        teacher = self.teacher.state_dict() if self.teacher is not None else self._pending
        return {"steps": self.steps, **({"teacher": teacher} if teacher is not None else {})}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state.get("steps", 0)
        if "teacher" in state:
            if self.teacher is None:
                self._pending = state["teacher"]
            else:
                self.teacher.load_state_dict(state["teacher"])


@torch.no_grad()
def flag_logs(flagged: torch.Tensor, noisy: Batch) -> dict[str, float]:
    """Share of noisy pixels flagged and, diagnostics only (synthetic noise), the share of flags on
    pixels whose label is truly wrong (precision) and of wrong pixels flagged (recall)."""
    wrong = (noisy["mask"] > 0.5) != (noisy["true_mask"] > 0.5)
    logs = {"mtcl_flagged_fraction": flagged.float().mean().item()}
    if flagged.any():
        logs["mtcl_flag_precision"] = (flagged & wrong).sum().item() / flagged.sum().item()
    if wrong.any():
        logs["mtcl_flag_recall"] = (flagged & wrong).sum().item() / wrong.sum().item()
    return logs
