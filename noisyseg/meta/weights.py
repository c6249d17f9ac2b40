"""Step 4 of the meta step: from the meta gradient u to pixel weights.

A *weighting* (:data:`WEIGHTINGS`) maps the agreement ``a = −u`` of each pixel's loss gradient with the
clean gradient to an unnormalised weight w̃ ≥ 0; a *normalisation* (:data:`NORMALIZE`) scales w̃ (globally
in a distributed step); the step's status is "ok", "all_zero" or "non_finite".

Why variants: for per-pixel BCE with logit z, ``a_i = α (y_i − σ(z_i)) ⟨∇θ z_i, g⟩``. The paper's
``max(a, 0)`` (``l2rw``) therefore grows with the residual |σ − y| — the wrong labels of a model that is
roughly right have the largest — and its sign follows the clean batch's global bias, class by class
(docs/methods.md, "Why the paper's weights fail"). The variants remove one factor each:

- ``sign``: 1 where a > 0 (magnitude-free);
- ``cosine``: max(a / |∂ℓ_i/∂z_i|, 0): the residual factor divided out, ⟨∇θ z_i, g⟩ with the label's sign;
- ``centered``: a zero-mean class-level version after GDW (Chen et al., NeurIPS 2021): within each image
  and noisy-label class the mean agreement is subtracted, and ``w̃ = max(0, 1 + step · (a − ā_c) / s)``
  with s the image's standard deviation of a − ā_c, so a class-wide bias cannot switch a class off and
  the weights stay around the uniform 1.

``normalize="class"`` scales w̃ within each image and noisy-label class so that the class keeps its share
of the image's pixels (each image 1/B, as ``image``), the per-class normalisation of the issue on the
mechanism.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from noisyseg.distributed import all_reduce_sum
from noisyseg.registry import Registry

NORMALIZE = ("batch", "image", "class", "mean", "none")


@dataclass
class Pixels:
    """What a weighting may read besides the agreement: the noisy labels and, when the weighting asks for
    it (``needs_slope``), |∂ℓ_i/∂z_i| at the noisy logits."""

    labels: Tensor  # noisy masks, shape of the loss map
    slope: Optional[Tensor] = None
    center_step: float = 0.5


Weighting = Callable[[Tensor, Pixels], Tensor]
WEIGHTINGS: Registry[Weighting] = Registry("meta weighting")
_SLOPE_EPS = 1e-6  # |σ − y| below this is a pixel the model already fits exactly: its agreement is ~0 too


LEARNED = "mwn"  # the learned weighting (noisyseg.meta.weightnet): stateful, so not in the registry


def weighting_names() -> list[str]:
    return [*WEIGHTINGS.names(), LEARNED]


def needs_slope(name: str) -> bool:
    return name != LEARNED and getattr(WEIGHTINGS.get(name), "needs_slope", False)


def slope(loss_fn: Callable[[Tensor, Tensor], Tensor], logits: Tensor, labels: Tensor) -> Tensor:
    """|∂(Σ_j ℓ_j)/∂z_i| at the logits: |σ(z_i) − y_i| for BCE; for a loss whose pixels share terms (the
    Dice part of bce_dice) it includes them."""
    z = logits.detach().requires_grad_()
    with torch.enable_grad():
        (d,) = torch.autograd.grad(loss_fn(z, labels).sum(), z)
    return d.abs()


@WEIGHTINGS.register("l2rw")
def _l2rw(a: Tensor, pixels: Pixels) -> Tensor:
    """The paper (Ren et al. 2018): max(a, 0)."""
    return a.clamp_min(0)


@WEIGHTINGS.register("sign")
def _sign(a: Tensor, pixels: Pixels) -> Tensor:
    """1 where the pixel's gradient agrees with the clean one, else 0."""
    return (a > 0).to(a.dtype)


def _cosine(a: Tensor, pixels: Pixels) -> Tensor:
    """max(a / |∂ℓ/∂z|, 0): agreement of the logit's gradient, not scaled by the pixel's residual."""
    return (a / (pixels.slope + _SLOPE_EPS)).clamp_min(0)


_cosine.needs_slope = True  # type: ignore[attr-defined]
WEIGHTINGS.register("cosine")(_cosine)


@WEIGHTINGS.register("centered")
def _centered(a: Tensor, pixels: Pixels) -> Tensor:
    """max(0, 1 + step · (a − ā_class) / s) per image (see the module docstring)."""
    centered = torch.zeros_like(a)
    dims = tuple(range(1, a.ndim))
    for cls in (pixels.labels > 0.5, pixels.labels <= 0.5):
        count = cls.sum(dims, keepdim=True).clamp_min(1)
        mean = (a * cls).sum(dims, keepdim=True) / count
        centered = torch.where(cls, a - mean, centered)
    scale = centered.pow(2).mean(dims, keepdim=True).sqrt()
    scaled = centered / torch.where(scale > 0, scale, torch.ones_like(scale))
    return (1 + pixels.center_step * scaled).clamp_min(0)


def _per_image(x: Tensor) -> Tensor:
    return x.flatten(1).sum(1).view(-1, *[1] * (x.ndim - 1))


def _normalize(w: Tensor, mode: str, labels: Optional[Tensor] = None, total: Optional[Tensor] = None,
               images: Optional[Tensor] = None, pixels: Optional[Tensor] = None) -> Tensor:
    """``batch``: sum to 1 over the batch; ``image``: 1/B per image; ``class``: 1/B per image, shared by
    the image's two noisy-label classes in proportion to their pixels; ``mean``: w̃ / pixel count, so the
    loss is mean(w̃ ℓ) and the weights' level counts (Meta-Weight-Net's real step: for ``mwn``, whose
    w̃ is in (0, 1), the noisy batch can weigh less than uniform); ``none``: raw. Zero sums stay zero.

    ``total`` / ``images`` / ``pixels``: the global Σ w̃, image and pixel counts of a distributed step
    (default: this batch's).
    """
    if mode == "none":
        return w
    if mode == "mean":
        return w / (w.numel() if pixels is None else pixels)
    count = w.shape[0] if images is None else images
    if mode == "class":
        out = torch.zeros_like(w)
        pixels_per_image = w[0].numel()
        for cls in (labels > 0.5, labels <= 0.5):
            mass = _per_image(w * cls)
            share = _per_image(cls.to(w.dtype)) / (pixels_per_image * count)
            out = torch.where(cls, w * share / torch.where(mass > 0, mass, torch.ones_like(mass)), out)
        return out
    if mode == "batch":
        total = w.sum() if total is None else total
    else:
        total = _per_image(w) * count
    return w / torch.where(total > 0, total, torch.ones_like(total))  # no host sync; w == 0 where total == 0


def _global_weights(raw: Tensor, u: Tensor, mode: str, labels: Tensor, group: object) -> tuple[Tensor, str, Tensor]:
    """Distributed step 4: one all-reduce of [non-finite ranks, Σ w̃, images, pixels] makes the
    normalisation and the status ("ok", "all_zero", "non_finite") global; returns the global pixel count too."""
    counts = torch.tensor([u.shape[0], u.numel()], dtype=torch.float64, device=u.device)
    bad = ~(torch.isfinite(u).all() & torch.isfinite(raw).all())
    stats = torch.cat([torch.stack([bad.double(), raw.sum().double()]), counts])
    non_finite, total, images, pixels = all_reduce_sum(stats, group)
    if bool(non_finite > 0):  # host sync, once per step; every rank takes the same branch
        return torch.zeros_like(u), "non_finite", pixels
    weights = _normalize(raw, mode, labels, total.to(u.dtype), images.to(u.dtype), pixels.to(u.dtype))
    return weights, ("ok" if bool(total > 0) else "all_zero"), pixels


def _weights(u: Tensor, mode: str, group: object | None, weighting: str = "l2rw",
             pixels: Optional[Pixels] = None, raw: Optional[Tensor] = None) -> tuple[Tensor, str, Optional[Tensor]]:
    """Normalised weights of the meta gradient ``u``, the status ("ok", "all_zero", "non_finite"; zeros
    unless "ok") and, in a distributed step, the global pixel count. ``raw``: unnormalised weights
    computed elsewhere (the learned weighting), used instead of ``weighting``."""
    raw = WEIGHTINGS.get(weighting)(-u, pixels) if raw is None else raw
    labels = None if pixels is None else pixels.labels
    if group is not None:
        return _global_weights(raw, u, mode, labels, group)
    if not bool(torch.isfinite(u).all() & torch.isfinite(raw).all()):  # host sync, once per step
        return torch.zeros_like(u), "non_finite", None
    weights = _normalize(raw, mode, labels)
    return weights, ("ok" if bool(weights.any()) else "all_zero"), None
