"""Training methods: what one optimisation step computes, and which data streams it draws from.

A method names its *streams* (each pools one or more splits and is sampled independently) and
turns one batch per stream into a loss. The engine does zero_grad/backward/step around it, so a
new method is one small class registered here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from noisyseg.losses import PixelLoss
from noisyseg.registry import Registry

METHODS: Registry = Registry("method")

Batch = dict[str, torch.Tensor]


@dataclass
class StepOutput:
    loss: torch.Tensor | None  # None: skip this optimiser step
    logs: dict[str, float] = field(default_factory=dict)
    weights: torch.Tensor | None = None  # per-pixel loss weights, for methods that learn them


class Method:
    """Base class. ``streams`` maps stream name -> splits pooled into it."""

    streams: dict[str, tuple[str, ...]] = {"train": ("noisy", "clean")}

    def __init__(self, loss: PixelLoss) -> None:
        self.loss = loss

    def batch_sizes(self, batch_size: int) -> dict[str, int]:
        return {name: batch_size for name in self.streams}

    def step(self, model: torch.nn.Module, batches: dict[str, Batch], lr: float) -> StepOutput:
        batch = batches["train"]
        return StepOutput(self.loss(model(batch["image"]), batch["mask"]))

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@METHODS.register("clean")
class CleanOnly(Method):
    """Train on the small expert-labeled set only."""

    streams = {"train": ("clean",)}


@METHODS.register("noisy")
class Pooled(Method):
    """Train on noisy + clean data pooled, unweighted."""

    streams = {"train": ("noisy", "clean")}


@METHODS.register("noisy_only")
class NoisyOnly(Method):
    """Train on the noisy set only (no expert labels at all)."""

    streams = {"train": ("noisy",)}


@METHODS.register("balanced")
class Balanced(Method):
    """Every step is half clean, half noisy images, unweighted: a strong, cheap control."""

    streams = {"noisy": ("noisy",), "clean": ("clean",)}

    def batch_sizes(self, batch_size: int) -> dict[str, int]:
        half = max(1, batch_size // 2)
        return {"noisy": batch_size - half if batch_size > 1 else 1, "clean": half}

    def step(self, model: torch.nn.Module, batches: dict[str, Batch], lr: float) -> StepOutput:
        images = torch.cat([batches["noisy"]["image"], batches["clean"]["image"]])
        masks = torch.cat([batches["noisy"]["mask"], batches["clean"]["mask"]])
        return StepOutput(self.loss(model(images), masks))


def build_method(name: str, loss: PixelLoss, **kwargs) -> Method:
    """Build a registered method by name."""
    return METHODS.build(name, loss=loss, **kwargs)
