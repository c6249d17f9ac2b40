"""Optimisers (a registry, one ``conf/optim/<name>.yaml`` each) and learning-rate schedules from config."""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from noisyseg.errors import ConfigError
from noisyseg.registry import Registry

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")
SCHEDULES = ("constant", "cosine", "step")
Params = Iterable[torch.nn.Parameter]


@OPTIMIZERS.register("adam")
def adam(params: Params, lr: float = 3e-3, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam (Kingma & Ba, 2015), L2 weight decay added to the gradient; the default optimiser."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def adamw(params: Params, lr: float = 3e-3, weight_decay: float = 0.01) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("sgd")
def sgd(params: Params, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 1e-4) -> torch.optim.Optimizer:
    """SGD with (heavy-ball) momentum."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def lr_factor(step: int, total: int, schedule: str, warmup_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the base learning rate at ``step``: linear warm-up, then constant, cosine (down to
    ``min_lr_ratio``) or step (×0.1 after a third and again after two thirds of training, the schedule of
    Mirikharaji et al.'s released code: milestones at epochs 100 and 200 of 300)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
    if schedule == "step":
        return 0.1 ** ((progress >= 1 / 3) + (progress >= 2 / 3))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(params: Params, total_steps: int, name: str = "adam", *, schedule: str, warmup_steps: int,
                    min_lr_ratio: float, **options) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """``(optimizer, per-step LambdaLR scheduler)``: ``OPTIMIZERS.build(name, params=params, **options)`` with the schedule.

    The schedule options have no Python default: each ``conf/optim/<name>.yaml`` sets them (they differ
    per optimiser), so the YAML file is their one home.
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown optim.schedule {schedule!r}; valid choices: {', '.join(SCHEDULES)}")
    if options.get("lr", 1.0) <= 0:
        raise ConfigError(f"optim.lr={options['lr']} must be positive")
    optimizer = OPTIMIZERS.build(name, params=params, **options)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, schedule, warmup_steps, min_lr_ratio)
    )
    return optimizer, scheduler
