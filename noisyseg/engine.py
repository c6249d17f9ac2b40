"""The training loop: per-epoch seeded sampling, one method step per batch, evaluation, checkpoints.

Every epoch draws its batch order, augmentations and dropout masks from ``(seed, epoch)`` alone, so a
run resumed from an epoch checkpoint continues exactly as an uninterrupted one would (on CPU).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from noisyseg.distributed import all_reduce_sum, mean_over_ranks
from noisyseg.errors import NoisysegError
from noisyseg.methods import Method
from noisyseg.metrics import score
from noisyseg.progress import progress_bar


class TrainingDiverged(NoisysegError):
    """The loss became NaN or inf; nothing of the diverged epoch is saved."""


def epoch_seed(seed: int, epoch: int, *extra: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, *extra]).generate_state(1)[0])


def plan_batches(n: int, batch_size: int, steps: int, seed: int) -> list[list[tuple[int, int]]]:
    """``steps`` batches of ``(index, augmentation seed)``: reshuffled passes over ``range(n)``."""
    rng = np.random.default_rng(seed)
    passes = math.ceil(steps * batch_size / n)
    order = np.concatenate([rng.permutation(n) for _ in range(passes)])[: steps * batch_size]
    aug = rng.integers(0, 2**31 - 1, size=len(order))
    pairs = list(zip(order.tolist(), aug.tolist()))
    return [pairs[i * batch_size:(i + 1) * batch_size] for i in range(steps)]


def to_device(batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}


@dataclass
class Trainer:
    """Runs epochs of a :class:`~noisyseg.methods.Method` over its data streams."""

    model: torch.nn.Module
    method: Method
    streams: dict[str, Dataset]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    seed: int
    batch_size: int
    steps_per_epoch: int
    num_workers: int = 0
    grad_clip: float | None = None
    progress: bool = True
    amp: bool = False  # bfloat16 autocast of the step's forward passes, on CUDA only
    counters: dict[str, int] = field(default_factory=lambda: {"steps": 0, "skipped": 0})
    rank: int = 0   # data-parallel training (torchrun): this process's share of every batch
    world: int = 1

    def _plan(self, n: int, batch_size: int, seed: int) -> list[list[tuple[int, int]]]:
        """This rank's batches: its slice of the global batches (``world × batch_size`` images) that one
        process would draw, so N processes see the same data, order and augmentation as one."""
        batches = plan_batches(n, batch_size * self.world, self.steps_per_epoch, seed)
        return [b[self.rank * batch_size:(self.rank + 1) * batch_size] for b in batches]

    def _loaders(self, epoch: int) -> dict[str, DataLoader]:
        sizes = self.method.batch_sizes(self.batch_size)
        return {
            name: DataLoader(
                self.streams[name],
                batch_sampler=self._plan(len(self.streams[name]), sizes[name], epoch_seed(self.seed, epoch, k)),
                num_workers=self.num_workers,
                pin_memory=self.device.type == "cuda",
            )
            for k, name in enumerate(sorted(self.streams))
        }

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch of ``steps_per_epoch`` steps; returns mean logs."""
        self.model.train()
        # dropout masks depend on (seed, epoch) only, and on the rank in data-parallel training
        torch.manual_seed(epoch_seed(self.seed, epoch, 999, *([self.rank] if self.world > 1 else [])))
        iterators = {name: iter(loader) for name, loader in self._loaders(epoch).items()}
        sums: dict[str, float] = {}
        done = 0
        bar = progress_bar(range(self.steps_per_epoch), desc=f"epoch {epoch}", enabled=self.progress)
        for i in bar:
            batches = {name: to_device(next(it), self.device) for name, it in iterators.items()}
            lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp and self.device.type == "cuda"):
                out = self.method.step(self.model, batches, lr)
            if out.loss is None:
                self.counters["skipped"] += 1
                self.scheduler.step()
                continue
            loss = self._global(out.loss)  # a CPU-GPU sync point, but the divergence check needs it
            if not math.isfinite(loss):
                raise TrainingDiverged(f"loss became {loss} at epoch {epoch}, step {i + 1}/{self.steps_per_epoch} "
                                       f"(global step {self.counters['steps'] + 1})")
            out.loss.backward()
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.counters["steps"] += 1
            done += 1
            for key, value in {"loss": loss, **out.logs}.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.set_postfix(loss=f"{loss:.3f}")
        return mean_over_ranks({key: value / max(done, 1) for key, value in sums.items()})

    def _global(self, loss: torch.Tensor) -> float:
        """The step's loss, averaged over ranks, so that every rank takes the same divergence decision."""
        value = loss.detach().float().reshape(1)
        if self.world > 1:
            value = all_reduce_sum(value.clone(), None) / self.world
        return value.item()


@torch.no_grad()
def predict_probs(model: torch.nn.Module, dataset: Dataset, batch_size: int, device: torch.device) -> np.ndarray:
    """Foreground probabilities ``[N, H, W]`` (float32) in eval mode."""
    was_training = model.training
    model.eval()
    out = []
    for batch in DataLoader(dataset, batch_size=batch_size):
        out.append(torch.sigmoid(model(batch["image"].to(device))).squeeze(1).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out)


def evaluate(model: torch.nn.Module, dataset: Dataset, masks: np.ndarray, batch_size: int,
             device: torch.device) -> tuple[dict[str, float], np.ndarray]:
    """ISIC scores of the thresholded (p >= 0.5) predictions against ``masks``, and the probabilities."""
    probs = predict_probs(model, dataset, batch_size, device)
    return score(probs >= 0.5, masks > 0), probs

