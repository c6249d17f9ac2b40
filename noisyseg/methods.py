"""Training methods: what one optimisation step computes, and which data streams it draws from.

A method names its *streams* (each pools one or more splits and is sampled independently) and
turns one batch per stream into a loss. The engine does zero_grad/backward/step around it, so a
new method is one small class registered here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from noisyseg.early_learning import EarlyLearningCorrector, correction_logs
from noisyseg.errors import ConfigError
from noisyseg.losses import PixelLoss
from noisyseg.meta import MetaReweightedLoss
from noisyseg.meta.memory import WeightMemory
from noisyseg.meta.weightnet import BOUNDARY_REACH, DEFAULT_FEATURES
from noisyseg.registry import Registry

METHODS: Registry = Registry("method")

Batch = dict[str, torch.Tensor]


@dataclass
class StepOutput:
    loss: torch.Tensor | None  # None: skip this optimiser step
    logs: dict[str, float] = field(default_factory=dict)


class Method:
    """Base class. ``streams`` maps stream name -> splits pooled into it; ``options_group`` names a
    top-level config group whose options the method also takes (``meta`` for method=meta);
    ``origin_streams`` the streams whose items carry each pixel's index in the un-augmented image."""

    streams: dict[str, tuple[str, ...]] = {"train": ("noisy", "clean")}
    options_group: str | None = None
    origin_streams: tuple[str, ...] = ()  # streams whose batches carry ``origin`` maps (per-pixel state)

    def __init__(self, loss: PixelLoss) -> None:
        self.loss = loss

    def batch_sizes(self, batch_size: int) -> dict[str, int]:
        return {name: batch_size for name in self.streams}

    def set_stream_sizes(self, sizes: dict[str, int]) -> None:
        """Told the number of images in each stream before training (the rivals draw expert images at
        their pooled share); most methods do not need it."""

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
class NoisyPooled(Method):
    """Train on noisy + clean data pooled, unweighted (``method=noisy``; the sweep arm ``pooled``)."""

    streams = {"train": ("noisy", "clean")}


Pooled = NoisyPooled  # deprecated alias: the class was renamed to start with its registry key


@METHODS.register("noisy_only")
class NoisyOnly(Method):
    """Train on the noisy set only (no expert labels at all)."""

    streams = {"train": ("noisy",)}


@METHODS.register("balanced")
class Balanced(Method):
    """Every step is half clean, half noisy images, unweighted: a strong, cheap control.

    Three options isolate what the meta arms change besides the meta step: ``stream_batch="full"`` draws
    a whole batch from each stream (the meta arms' noisy batch + expert batch, twice the images per
    step) instead of splitting one; ``noisy_weight`` w < 1 weighs the noisy images' loss below the
    expert images', the loss then being ``(w · L(noisy) + L(clean)) / (1 + w)``; ``forward="separate"``
    runs the noisy and the expert images through the network in two passes, as the meta step does, so
    that batch-norm statistics are each source's own rather than the mixed batch's.
    """

    streams = {"noisy": ("noisy",), "clean": ("clean",)}
    config_name = "balanced"  # named in option errors

    def __init__(self, loss: PixelLoss, noisy_weight: float = 1.0, stream_batch: str = "split",
                 forward: str = "joint") -> None:
        super().__init__(loss)
        if not 0 <= noisy_weight <= 1 or stream_batch not in ("split", "full") or forward not in ("joint", "separate"):
            raise ConfigError(f"method={self.config_name} needs noisy_weight in [0, 1], stream_batch 'split' or 'full' and forward "
                              f"'joint' or 'separate', got {noisy_weight!r}, {stream_batch!r} and {forward!r}")
        self.noisy_weight, self.stream_batch, self.forward = noisy_weight, stream_batch, forward

    def batch_sizes(self, batch_size: int) -> dict[str, int]:
        if self.stream_batch == "full":
            return {"noisy": batch_size, "clean": batch_size}
        half = max(1, batch_size // 2)
        return {"noisy": batch_size - half if batch_size > 1 else 1, "clean": half}

    def step(self, model: torch.nn.Module, batches: dict[str, Batch], lr: float) -> StepOutput:
        noisy, clean = batches["noisy"], batches["clean"]
        if self.forward == "separate":
            parts = [self.loss(model(b["image"]), b["mask"]) for b in (noisy, clean)]
        else:
            logits = model(torch.cat([noisy["image"], clean["image"]]))
            masks = torch.cat([noisy["mask"], clean["mask"]])
            if self.noisy_weight == 1.0:  # the plain control: one loss over the mixed batch
                return StepOutput(self.loss(logits, masks))
            n = len(noisy["image"])
            parts = [self.loss(logits[:n], masks[:n]), self.loss(logits[n:], masks[n:])]
        return StepOutput((self.noisy_weight * parts[0] + parts[1]) / (1 + self.noisy_weight))


@METHODS.register("dual_batch")
class DualBatch(Balanced):
    """The recommended recipe (README; docs/benchmark.md "What makes meta_mwn_mean work"): every step a
    whole noisy batch and a whole expert batch, each through the network in its own forward pass, the noisy
    loss weighted ½ of the expert loss — what the best meta variant does, without its meta step (the
    ``balanced_down_sep`` arm of the benchmark)."""

    config_name = "dual_batch"

    def __init__(self, loss: PixelLoss, noisy_weight: float = 0.5, stream_batch: str = "full",
                 forward: str = "separate") -> None:
        super().__init__(loss, noisy_weight, stream_batch, forward)


@METHODS.register("finetune")
class FineTune(Balanced):
    """Pretrain with the noisy masks, then fine-tune on the expert ones: the practitioner's two-phase
    recipe. The first ``switch`` share of the steps are the two-source step of :class:`Balanced` (by
    default ``dual_batch``'s options), the rest train on whole expert batches only, at the schedule's
    (by then lower) learning rate.

    Args:
        switch: share of the training steps in the first phase (0: expert images only; 1: no fine-tuning).
        epochs, steps_per_epoch: the trainer's (``${trainer.epochs}``, ``${trainer.steps_per_epoch}``).
    """

    config_name = "finetune"

    def __init__(self, loss: PixelLoss, switch: float = 0.5, epochs: int = 6, steps_per_epoch: int = 50,
                 noisy_weight: float = 0.5, stream_batch: str = "full", forward: str = "separate") -> None:
        super().__init__(loss, noisy_weight, stream_batch, forward)
        if not 0 <= switch <= 1:
            raise ConfigError(f"method=finetune needs switch in [0, 1], got {switch!r}")
        self.switch_step = round(switch * epochs * steps_per_epoch)
        self.steps = 0

    def step(self, model: torch.nn.Module, batches: dict[str, Batch], lr: float) -> StepOutput:
        pretraining = self.steps < self.switch_step
        self.steps += 1
        if pretraining:
            return super().step(model, batches, lr)
        clean = batches["clean"]
        return StepOutput(self.loss(model(clean["image"]), clean["mask"]), {"finetune_phase": 2.0})

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state.get("steps", 0)


@METHODS.register("oracle")
class Oracle(Method):
    """The ceiling of a benchmark: noisy + clean images pooled, unweighted, but every noisy-set image with
    its *true* mask. Only synthetic noise makes it possible (the truth behind the noisy masks is known)."""

    streams = {"train": ("noisy", "clean")}

    def step(self, model: torch.nn.Module, batches: dict[str, Batch], lr: float) -> StepOutput:
        batch = batches["train"]
        return StepOutput(self.loss(model(batch["image"]), batch["true_mask"]))


def build_method(name: str, loss: PixelLoss, **kwargs) -> Method:
    """Build a registered method by name."""
    return METHODS.build(name, loss=loss, **kwargs)


@METHODS.register("meta")
class MetaReweighted(Method):
    """Meta-learned per-pixel weights on the noisy batch (Mirikharaji et al. 2019).

    The clean batch enters only the meta step, as in the paper, unless ``clean_loss_weight > 0``
    also trains on it. ``lr=None`` uses the optimiser's current learning rate as the virtual step.
    Its options live in the ``meta`` config group (``options_group``). The variants against the
    measured failure (docs/methods.md): ``weighting`` and ``normalize="class"`` (see
    :mod:`noisyseg.meta.weights`), ``clean_batch_size="all"`` (the whole expert set in every meta step,
    the L2RW reference code's default) and ``bootstrap`` > 0: pixels the meta step zeroes train on the
    model's own hard prediction with that weight (after IEG, Zhang et al., CVPR 2020) instead of not at all;
    ``memory`` m in [0, 1): weights kept per image in image coordinates and averaged over visits
    (:mod:`noisyseg.meta.memory`), frozen after ``memory_freeze_after`` steps (then no meta step is run);
    ``correct``: once ADELE's early-learning test finds a class memorised, that class's noisy labels are
    replaced by the model's confident predictions (> ``correct_tau``) before the meta step weighs them
    (:mod:`noisyseg.early_learning`; label correction and meta weights together).
    """

    streams = {"noisy": ("noisy",), "clean": ("clean",)}
    options_group = "meta"

    def __init__(self, loss: PixelLoss, backend: str = "jvp", lr: float | None = None,
                 clean_batch_size: int | str = 16, normalize: str = "batch", zero_policy: str = "skip",
                 clean_loss_weight: float = 0.0, params: list[str] | None = None, clean_every: int = 1,
                 weighting: str = "l2rw", center_step: float = 0.5, weight_net_hidden: int = 16,
                 weight_net_lr: float = 1e-3, weight_net_features: Sequence[str] = DEFAULT_FEATURES,
                 weight_net_boundary_reach: float = BOUNDARY_REACH, bootstrap: float = 0.0, memory: float | None = None,
                 memory_freeze_after: int | None = None, correct: bool = False, correct_tau: float = 0.7,
                 correct_r: float = 0.9, steps_per_epoch: int = 50) -> None:
        super().__init__(loss)
        self.corrector = EarlyLearningCorrector(correct_tau, correct_r, steps_per_epoch) if correct else None
        if memory is not None and not 0 <= memory < 1:
            raise ConfigError(f"meta.memory={memory} must be null (off) or in [0, 1)")
        if memory_freeze_after is not None and (memory is None or memory_freeze_after < 1):
            raise ConfigError("meta.memory_freeze_after needs meta.memory and a step count >= 1")
        self.memory_options = (memory, memory_freeze_after)
        self.memory: WeightMemory | None = None  # made at the first step, when the image size is known
        self.origin_streams = ("noisy",) if memory is not None else ()
        if not (clean_batch_size == "all" or (isinstance(clean_batch_size, int) and clean_batch_size >= 1)):
            raise ConfigError(f"meta.clean_batch_size={clean_batch_size!r} must be a count >= 1 or 'all'")
        self.meta_lr, self.clean_batch_size, self.clean_loss_weight = lr, clean_batch_size, clean_loss_weight
        self.bootstrap = bootstrap
        self.meta_loss = MetaReweightedLoss(loss.per_pixel, lr or 0.0, backend, normalize, zero_policy, params=params,
                                            clean_every=clean_every, weighting=weighting, center_step=center_step,
                                            weight_net_hidden=weight_net_hidden, weight_net_lr=weight_net_lr,
                                            weight_net_features=weight_net_features,
                                            weight_net_boundary_reach=weight_net_boundary_reach)
        self.last: dict[str, torch.Tensor] = {}
        self.clean_images = self.noisy_images = 0

    def set_stream_sizes(self, sizes: dict[str, int]) -> None:
        self.clean_images, self.noisy_images = sizes.get("clean", 0), sizes.get("noisy", 0)

    def _remember(self, noisy: Batch) -> None:
        """Make the weight memory at the first step: one map per noisy image, of the batch's pixel count."""
        if self.memory is None and self.memory_options[0] is not None:
            if "origin" not in noisy:
                raise ConfigError("meta.memory needs batches with origin maps (the build layer adds them)")
            self.memory = WeightMemory(self.noisy_images, noisy["origin"][0].numel(), *self.memory_options)

    def batch_sizes(self, batch_size: int) -> dict[str, int]:
        if self.clean_batch_size == "all" and not self.clean_images:
            raise ConfigError("meta.clean_batch_size='all' needs the size of the clean stream (set_stream_sizes)")
        clean = self.clean_images if self.clean_batch_size == "all" else self.clean_batch_size
        return {"noisy": batch_size, "clean": clean}

    def step(self, model: torch.nn.Module, batches: dict[str, Batch], lr: float) -> StepOutput:
        noisy, clean = batches["noisy"], batches["clean"]
        self._remember(noisy)
        given, logs = noisy["mask"], {}
        if self.corrector is not None and any(self.corrector.correcting):
            noisy, logs = self._corrected(model, noisy)
        if self.memory is not None and self.memory.frozen:  # remembered weights only: no meta step
            logits = model(noisy["image"])
            weights = self.memory.recall(noisy["index"], noisy["origin"]).to(logits.dtype)
            loss: torch.Tensor | None = (weights * self.loss.per_pixel(logits, noisy["mask"])).sum()
        else:
            result = self.meta_loss(model, (noisy["image"], noisy["mask"]), (clean["image"], clean["mask"]),
                                    lr=self.meta_lr if self.meta_lr is not None else lr)
            loss, weights, logits = result.loss, result.weights, result.logits
            if self.memory is not None and result.status == "ok":
                weights = self.memory.update(noisy["index"], noisy["origin"], weights).to(weights.dtype)
                loss = (weights * result.losses).sum()  # the step's own loss map, remembered weights
        self.last = {"image": noisy["image"], "mask": noisy["mask"], "true_mask": noisy["true_mask"], "weights": weights}
        if loss is not None and self.bootstrap > 0:
            loss = loss + self.bootstrap * self._bootstrap(logits, weights)
        if loss is not None and self.clean_loss_weight > 0:
            loss = loss + self.clean_loss_weight * self.loss(model(clean["image"]), clean["mask"])
        if self.corrector is not None:  # the memorisation test follows the fit to the labels as given
            logs.update(self.corrector.logs("correct"))
            self.corrector.observe(None if logits is None else logits.detach(), given)
        return StepOutput(loss, {**weight_stats(weights, noisy["mask"], noisy["true_mask"]), **logs})

    @torch.no_grad()
    def _corrected(self, model: torch.nn.Module, noisy: Batch) -> tuple[Batch, dict[str, float]]:
        """The noisy batch with the memorised classes' labels replaced where the model is confident."""
        corrected = self.corrector.correct(torch.sigmoid(model(noisy["image"])), noisy["mask"])
        return {**noisy, "mask": corrected}, correction_logs("correct", corrected, noisy["mask"], noisy["true_mask"])

    def _bootstrap(self, logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Σ over zero-weight pixels of the loss against the model's hard prediction, / all pixels."""
        predicted = (logits.detach() > 0).to(logits.dtype)
        zeroed = (weights == 0).to(logits.dtype)
        return (zeroed * self.loss.per_pixel(logits, predicted)).sum() / zeroed.numel()

    def state_dict(self) -> dict:
        meta = self.meta_loss  # the reused clean gradient of clean_every > 1 resumes mid-cycle
        state = {"counts": dict(meta.counts), "calls": meta.calls, "clean_gradient": meta.clean_gradient}
        if meta.learned is not None:
            state["weight_net"] = meta.learned.state_dict()
        if self.memory is not None:
            state["memory"] = self.memory.state_dict()
        if self.corrector is not None:
            state["correction"] = self.corrector.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.meta_loss.counts.update(state.get("counts", {}))
        self.meta_loss.calls = state.get("calls", 0)
        self.meta_loss.clean_gradient = state.get("clean_gradient")
        if self.meta_loss.learned is not None and "weight_net" in state:
            self.meta_loss.learned.load_state_dict(state["weight_net"])
        if "memory" in state and self.memory_options[0] is not None:
            values = state["memory"]["values"]
            self.memory = WeightMemory(values.shape[0], values.shape[1], *self.memory_options)
            self.memory.load_state_dict(state["memory"])
        if self.corrector is not None and "correction" in state:
            self.corrector.load_state_dict(state["correction"])


@torch.no_grad()
def weight_stats(weights: torch.Tensor, mask: torch.Tensor, true_mask: torch.Tensor) -> dict[str, float]:
    """Mean weight, share of zero-weight pixels, and, where the noisy label is known to be wrong
    (synthetic noise), the mean weight of wrong pixels over that of right ones."""
    relative = weights * weights.numel() / weights.sum().clamp_min(1e-30)  # 1 = uniform weighting
    stats = {"weight_mean": weights.mean().item(), "weight_zero_fraction": (weights == 0).float().mean().item()}
    wrong = (mask > 0.5) != (true_mask > 0.5)
    if wrong.any() and (~wrong).any() and weights.sum() > 0:
        stats["weight_wrong_right_ratio"] = (relative[wrong].mean() / relative[~wrong].mean().clamp_min(1e-30)).item()
    return stats
