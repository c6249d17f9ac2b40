"""Segmentation losses with per-pixel forms, so any pixel can be weighted.

Convention: ``loss.per_pixel(logits, target)`` returns a ``[B, 1, H, W]`` map whose **mean is the
loss**. ``loss(logits, target)`` is that mean; ``loss(logits, target, weight)`` is ``sum(weight *
map)``, so uniform weights ``1 / (B*H*W)`` give the unweighted loss back, and the meta-learned weights
(normalised to sum to one over the batch, Ren et al. 2018) plug in directly.

Soft Dice is not a sum over pixels, but it can be written as one: with P = sum p, Y = sum y and
I = sum p*y per image, ``1 - (2I + s) / (P + Y + s) = sum_i (p_i + y_i - 2 p_i y_i) / (P + Y + s)``.
Its per-pixel map is those terms times H*W (so that its mean over the image is the Dice loss); the
shared denominator stays in the graph, so the map's sum has exactly the Dice gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from noisyseg.registry import Registry

LOSSES: Registry = Registry("loss")


class PixelLoss:
    """Base class: subclasses implement :meth:`per_pixel`."""

    def per_pixel(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        losses = self.per_pixel(logits, target)  # [B, 1, H, W]
        if weight is None:
            return losses.mean()
        return (weight * losses).sum()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


@LOSSES.register("bce")
class BCELoss(PixelLoss):
    """Binary cross-entropy on logits."""

    def per_pixel(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none")


@LOSSES.register("dice")
class DiceLoss(PixelLoss):
    """Soft Dice loss per image, written as a per-pixel map (see module docstring)."""

    def __init__(self, smooth: float = 1.0) -> None:
        self.smooth = smooth

    def per_pixel(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(logits)
        denominator = p.sum(dim=(1, 2, 3), keepdim=True) + target.sum(dim=(1, 2, 3), keepdim=True) + self.smooth
        terms = p + target - 2 * p * target  # sums to P + Y - 2I
        return terms * (p[0].numel() / denominator)


@LOSSES.register("bce_dice")
class BCEDiceLoss(PixelLoss):
    """``bce_weight * BCE + dice_weight * Dice``, per pixel."""

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0) -> None:
        self.bce_weight, self.dice_weight = bce_weight, dice_weight
        self._bce, self._dice = BCELoss(), DiceLoss(smooth)

    def per_pixel(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.bce_weight * self._bce.per_pixel(logits, target) + self.dice_weight * self._dice.per_pixel(logits, target)


def build_loss(name: str, **kwargs) -> PixelLoss:
    """Build a registered loss by name with its keyword arguments."""
    return LOSSES.build(name, **kwargs)
