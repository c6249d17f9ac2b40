"""Weights that remember: per-pixel meta weights kept per image in image coordinates, averaged over the
epochs, and optionally frozen after the early phase in which they tell wrong labels from right ones.

The weights probe (experiments/meta_ablation/weights_probe.py) finds the paper's weights informative on
an early model and inverted later; a memory lets the early verdict persist. Every noisy image's weights
live in a map in its own (un-augmented) coordinates; a batch carries each pixel's ``origin`` (its flat
index there, see :class:`noisyseg.data.dataset.SegmentationDataset`), so flips and 90° rotations are
undone exactly. Stored values are *relative* weights (1 = the batch's uniform weight), so batches of
different difficulty are comparable.
"""
from __future__ import annotations

import torch
from torch import Tensor

from noisyseg.errors import ConfigError


class WeightMemory:
    """``momentum`` m: stored ← m · stored + (1 − m) · new (the first visit stores the new value);
    after ``freeze_after`` updates the stored weights stop changing and are used as they are."""

    def __init__(self, images: int, pixels: int, momentum: float, freeze_after: int | None = None) -> None:
        if not 0 <= momentum < 1:
            raise ValueError(f"meta.memory={momentum} must be in [0, 1)")
        self.momentum, self.freeze_after = momentum, freeze_after
        self.values = torch.ones(images, pixels)
        self.seen = torch.zeros(images, pixels, dtype=torch.bool)
        self.updates = 0

    @property
    def frozen(self) -> bool:
        return self.freeze_after is not None and self.updates >= self.freeze_after

    def _where(self, indices: Tensor, origin: Tensor) -> tuple[Tensor, Tensor]:
        rows = indices.to(self.values.device).view(-1, *[1] * (origin.ndim - 1)).expand_as(origin).reshape(-1)
        cols = origin.to(self.values.device).round().long().reshape(-1)
        if origin[0].numel() != self.values.shape[1] or int(cols.max()) >= self.values.shape[1]:
            raise ConfigError(f"meta.memory keeps {self.values.shape[1]} pixels per image, but a batch shows "
                              f"{origin[0].numel()} (pixel indices up to {int(cols.max())}): it needs augmentations "
                              "that keep the image size (flips, 90-degree rotations), not crops or resizes")
        return rows, cols

    @torch.no_grad()
    def update(self, indices: Tensor, origin: Tensor, weights: Tensor) -> Tensor:
        """Fold this batch's normalised ``weights`` into the memory (unless frozen) and return the
        remembered weights for the same pixels, normalised to the same total."""
        if not self.frozen:
            relative = weights * (weights.numel() / weights.sum().clamp_min(1e-30))
            rows, cols = self._where(indices, origin)
            old, seen = self.values[rows, cols], self.seen[rows, cols]
            new = relative.reshape(-1).to(self.values)
            self.values[rows, cols] = torch.where(seen, self.momentum * old + (1 - self.momentum) * new, new)
            self.seen[rows, cols] = True
            self.updates += 1
        return self.recall(indices, origin, weights.sum())

    @torch.no_grad()
    def recall(self, indices: Tensor, origin: Tensor, total: Tensor | float = 1.0) -> Tensor:
        """The remembered weights of these pixels (never-seen pixels: uniform), scaled to sum to ``total``."""
        rows, cols = self._where(indices, origin)
        stored = self.values[rows, cols].reshape(origin.shape).to(origin.device, torch.float32)
        return stored * (total / stored.sum().clamp_min(1e-30))

    def state_dict(self) -> dict:
        return {"values": self.values, "seen": self.seen, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.values, self.seen, self.updates = state["values"].clone(), state["seen"].clone(), state["updates"]
