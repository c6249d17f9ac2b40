"""Optimisers and learning-rate schedules from config."""
from __future__ import annotations

import math
from typing import Iterable

import torch

from noisyseg.errors import ConfigError

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
SCHEDULES = ("constant", "cosine")


def lr_factor(step: int, total: int, schedule: str, warmup_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the base learning rate at ``step``: linear warm-up, then constant or cosine."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(params: Iterable[torch.nn.Parameter], total_steps: int, name: str = "adam", lr: float = 1e-3,
                    weight_decay: float = 0.0, momentum: float = 0.9, schedule: str = "cosine",
                    warmup_steps: int = 0, min_lr_ratio: float = 0.0):
    """``(optimizer, per-step LambdaLR scheduler)``."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optim.name {name!r}; valid choices: {', '.join(OPTIMIZERS)}")
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown optim.schedule {schedule!r}; valid choices: {', '.join(SCHEDULES)}")
    if lr <= 0:
        raise ConfigError(f"optim.lr={lr} must be positive")
    extra = {"momentum": momentum} if name == "sgd" else {}
    optimizer = OPTIMIZERS[name](params, lr=lr, weight_decay=weight_decay, **extra)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, schedule, warmup_steps, min_lr_ratio)
    )
    return optimizer, scheduler
