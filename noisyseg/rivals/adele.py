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
* The IoU curve and the onset test are :class:`noisyseg.early_learning.EarlyLearningCorrector`'s,
  shared with ``meta.correct`` (label correction before the meta step).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from noisyseg.early_learning import EarlyLearningCorrector, correct_labels, correction_logs
from noisyseg.errors import ConfigError
from noisyseg.losses import PixelLoss
from noisyseg.methods import METHODS, Batch, StepOutput
from noisyseg.rivals.streams import TwoStreamMethod, joined, unwrapped


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
        self.scales = [float(s) for s in scales]
        self.consistency_weight = consistency_weight
        self.corrector = EarlyLearningCorrector(tau, r, steps_per_epoch, min_epochs)

    def step(self, model: torch.nn.Module, batches: dict[str, Batch], lr: float) -> StepOutput:
        images, masks = joined(batches, "image"), joined(batches, "mask")
        n = len(batches["noisy"]["image"])
        logits = model(images)  # [B, 1, H, W], noisy images first
        correcting = self.corrector.correcting  # decided by the epochs before this step
        logs = self.corrector.logs("adele")
        self.corrector.observe(logits[:n].detach(), masks[:n])
        loss_extra = 0.0
        if any(correcting):
            probs = multiscale_probs(model, images, self.scales, logits)
            mean = torch.stack(probs).mean(0)
            corrected = correct_labels(mean[:n].detach(), masks[:n], self.corrector.tau, correcting)
            logs.update(correction_logs("adele", corrected, masks[:n], batches["noisy"]["true_mask"]))
            masks = torch.cat([corrected, masks[n:]])
            loss_extra = self.consistency_weight * torch.stack([(p - mean).pow(2).mean() for p in probs]).mean()
        return StepOutput(self.loss(logits, masks) + loss_extra, logs)

    def state_dict(self) -> dict:
        return self.corrector.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.corrector.load_state_dict(state)
