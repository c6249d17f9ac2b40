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


@LOSSES.register("gce")
class GeneralizedCELoss(PixelLoss):
    """Generalized cross-entropy (Zhang & Sabuncu, NeurIPS 2018): ``(1 - p_t**q) / q`` with p_t the
    probability of the given label. q -> 0 is BCE, q = 1 is MAE; in between it is robust to label
    noise while still training fast."""

    def __init__(self, q: float = 0.7) -> None:
        if not 0 < q <= 1:
            raise ValueError(f"loss.q={q} must be in (0, 1]")
        self.q = q

    def per_pixel(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # log p_t from logits, stable for large |logits|: log sigmoid(+-logits)
        log_pt = F.logsigmoid(torch.where(target > 0.5, logits, -logits))
        return (1 - torch.exp(self.q * log_pt)) / self.q


@LOSSES.register("bootstrap")
class BootstrappedBCELoss(PixelLoss):
    """Soft bootstrapping (Reed et al., ICLR 2015 workshop): BCE against ``beta * label + (1 - beta)
    * prediction``, so the model's own (detached) belief tempers labels it disagrees with."""

    def __init__(self, beta: float = 0.8) -> None:
        if not 0 <= beta <= 1:
            raise ValueError(f"loss.beta={beta} must be in [0, 1]")
        self.beta = beta

    def per_pixel(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        soft = self.beta * target + (1 - self.beta) * torch.sigmoid(logits).detach()
        return F.binary_cross_entropy_with_logits(logits, soft, reduction="none")


def build_loss(name: str, **kwargs) -> PixelLoss:
    """Build a registered loss by name with its keyword arguments."""
    return LOSSES.build(name, **kwargs)
