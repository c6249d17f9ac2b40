"""Step 4 of the meta step: weights w̃ = max(−u, 0) from the meta gradient u, normalised (globally in a
distributed step), and the step's status ("ok", "all_zero", "non_finite")."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from noisyseg.distributed import all_reduce_sum

NORMALIZE = ("batch", "image", "none")


def _normalize(w: Tensor, mode: str, total: Optional[Tensor] = None, images: Optional[Tensor] = None) -> Tensor:
    """``batch``: sum to 1 over the batch; ``image``: 1/B per image; ``none``: raw. Zero sums stay zero.

    ``total`` / ``images``: the global Σ w̃ and image count of a distributed step (default: this batch's).
    """
    if mode == "none":
        return w
    if mode == "batch":
        total = w.sum() if total is None else total
    else:
        total = w.flatten(1).sum(1).view(-1, *[1] * (w.ndim - 1)) * (w.shape[0] if images is None else images)
    return w / torch.where(total > 0, total, torch.ones_like(total))  # no host sync; w == 0 where total == 0


def _global_weights(u: Tensor, mode: str, group: object) -> tuple[Tensor, str, Tensor]:
    """Distributed step 4: one all-reduce of [non-finite ranks, Σ w̃, images, pixels] makes the
    normalisation and the status ("ok", "all_zero", "non_finite") global; returns the global pixel count too."""
    w = (-u).clamp_min(0)
    counts = torch.tensor([u.shape[0], u.numel()], dtype=torch.float64, device=u.device)
    stats = torch.cat([torch.stack([(~torch.isfinite(u).all()).double(), w.sum().double()]), counts])
    non_finite, total, images, pixels = all_reduce_sum(stats, group)
    if bool(non_finite > 0):  # host sync, once per step; every rank takes the same branch
        return torch.zeros_like(u), "non_finite", pixels
    weights = _normalize(w, mode, total.to(u.dtype), images.to(u.dtype))
    return weights, ("ok" if bool(total > 0) else "all_zero"), pixels


def _weights(u: Tensor, mode: str, group: object | None) -> tuple[Tensor, str, Optional[Tensor]]:
    """Normalised weights of the meta gradient ``u``, the status ("ok", "all_zero", "non_finite"; zeros
    unless "ok") and, in a distributed step, the global pixel count."""
    if group is not None:
        return _global_weights(u, mode, group)
    if not bool(torch.isfinite(u).all()):  # host sync, once per step
        return torch.zeros_like(u), "non_finite", None
    weights = _normalize((-u).clamp_min(0), mode)
    return weights, ("ok" if bool(weights.any()) else "all_zero"), None
