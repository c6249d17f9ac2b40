"""The build layer: a configuration -> the objects of a run (data, noise, method, streams, model,
optimiser, trainer). Used by ``train()``, the active-learning loop, ``predict`` and notebooks:

    from noisyseg.config import compose
    from noisyseg.build import build_data, build_trainer

    cfg = compose("data.size=32", "debug=fast")
    arrays, noise = build_data(cfg, run_dir="runs/nb", manifest=False)
    parts = build_trainer(cfg, arrays)          # parts.trainer.train_epoch(0), parts.net, ...

:func:`build_trainer` is made of three pieces that a caller with its own data schedule (the active-learning
loop: one method and model for all rounds, new streams each round) uses directly: :func:`build_run_method`,
:func:`build_model_parts` and :func:`make_trainer`, the one place a :class:`Trainer` is constructed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from noisyseg.data.cache import load_arrays
from noisyseg.data.calibration import calibrate
from noisyseg.data.dataset import SegmentationDataset
from noisyseg.data.sources import build_source
from noisyseg.data.splits import load_manifest, make_splits, save_manifest
from noisyseg.data.transforms import build_transform
from noisyseg.distributed import data_parallel
from noisyseg.engine import Trainer
from noisyseg.errors import DataError
from noisyseg.losses import PixelLoss, build_loss
from noisyseg.methods import METHODS, Method, build_method
from noisyseg.models import build_model, check_contract
from noisyseg.noise import MaskNoise, realised_dice, target_dice
from noisyseg.optim import build_optimizer
from noisyseg.schema import validate


def node_kwargs(node: DictConfig, drop: tuple[str, ...] = ("name",)) -> dict[str, Any]:
    """A config group's options as keyword arguments for its plug-in (``name`` dropped)."""
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True, throw_on_missing=True).items() if k not in drop}


def split_source(cfg: DictConfig, run_dir: Path, manifest: bool = True) -> tuple[Any, dict[str, list[str]]]:
    """Build the data source and split its ids (or reuse ``data.splits_file``); write ``splits.json``
    unless ``manifest=False``."""
    source = build_source(cfg.data.name, **node_kwargs(cfg.data.params, drop=()))
    if cfg.data.splits_file:
        splits = load_manifest(cfg.data.splits_file, source.ids)
    else:
        splits = make_splits(source.ids, cfg.seed, **node_kwargs(cfg.data.split, drop=()), official=source.official)
    if manifest:
        save_manifest(run_dir / "splits.json", splits)
    return source, splits


def load_splits(cfg: DictConfig, run_dir: Path, manifest: bool = True
                ) -> tuple[Any, dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """Build the data source, split it (or reuse a manifest) and decode every split (cached); write
    ``splits.json`` unless ``manifest=False``. Returns the source, the arrays and the noise report."""
    source, splits = split_source(cfg, run_dir, manifest)
    noise, calibration = build_noise(cfg.noise, source, splits["noisy"], cfg.data.size, cfg.cache_dir)
    arrays = {
        name: load_arrays(source, ids, cfg.data.size, cfg.cache_dir, noise=noise if name == "noisy" else None, split=name,
                          progress=cfg.trainer.progress)
        for name, ids in splits.items()
    }
    return source, arrays, noise_report(cfg.noise, noise, calibration, splits["noisy"], arrays["noisy"])


def build_noise(node: DictConfig, source: Any = None, ids: list[str] = (), size: int = 0,
                cache_dir: str | None = None) -> tuple[MaskNoise | None, dict[str, float]]:
    """The annotation-noise model applied to the noisy split (None for ``noise=none``) and, when
    ``noise.target_dice`` is set, the calibration that chose its level on ``ids`` of ``source``."""
    if node.kind == "none":
        return None, {}
    noise = MaskNoise(node.kind, node.level, node.fraction, node.seed, node.missing)
    if node.target_dice is None:
        return noise, {}
    return calibrate(noise, target_dice(node.target_dice), source, list(ids), size, cache_dir)


def noise_report(node: DictConfig, noise: MaskNoise | None, calibration: dict[str, float], ids: list[str],
                 noisy: dict[str, np.ndarray]) -> dict[str, Any]:
    """The configured noise, the level used, and the realised noise: mean Dice(noisy, true) over the
    noisy split, and over its corrupted images alone (neither missing nor left clean)."""
    report = {**node_kwargs(node, drop=()), **calibration, "realised_dice": 1.0}
    if noise is None or not len(ids):
        return report
    missing = np.array([noise.is_missing(i) for i in ids])
    corrupted = np.array([noise.is_corrupted(i) for i in ids]) & ~missing
    report.update(level=noise.level, realised_dice=realised_dice(noisy["noisy_masks"], noisy["masks"]),
                  corrupted_count=int(corrupted.sum()), missing_count=int(missing.sum()))
    if corrupted.any():
        report["realised_dice_corrupted"] = realised_dice(noisy["noisy_masks"][corrupted], noisy["masks"][corrupted])
    return report


def _stream_dataset(arrays: dict[str, dict[str, np.ndarray]], splits: tuple[str, ...], transform,
                    origin: bool = False) -> SegmentationDataset:
    parts = [arrays[s] for s in splits]
    images = np.concatenate([p["images"] for p in parts])
    true = np.concatenate([p["masks"] for p in parts])
    target = np.concatenate([p.get("noisy_masks", p["masks"]) for p in parts])  # what the learner sees
    return SegmentationDataset(images, {"mask": target, "true_mask": true}, transform, origin)


def build_streams(cfg: DictConfig, method, arrays) -> dict[str, SegmentationDataset]:
    transform = build_transform(OmegaConf.to_container(cfg.data.augment, resolve=True))
    streams = {}
    for name, splits in method.streams.items():
        if sum(len(arrays[s]["images"]) for s in splits) == 0:
            raise DataError(f"method={cfg.method.name} trains on the {'+'.join(splits)} split(s), which are empty; check data.split")
        streams[name] = _stream_dataset(arrays, splits, transform, origin=name in method.origin_streams)
    return streams


def build_data(cfg: DictConfig, run_dir: str | Path = ".", manifest: bool = True
               ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """Every split's decoded arrays (the noisy split with its noisy masks) and the noise report."""
    _, arrays, noise = load_splits(cfg, Path(run_dir), manifest)
    return arrays, noise


@dataclass
class ModelParts:
    """What :func:`build_model_parts` makes: ``net`` is the plain model (evaluated, saved), ``model`` what
    trains (``net`` wrapped for DDP or ``torch.compile`` when configured), its optimiser and schedule."""

    net: torch.nn.Module
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


@dataclass
class TrainingParts:
    """What :func:`build_trainer` makes: the method, its data streams, the :class:`ModelParts`' fields
    and the :class:`Trainer` that runs them."""

    method: Method
    streams: dict[str, SegmentationDataset]
    net: torch.nn.Module
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    trainer: Trainer


def build_run_method(cfg: DictConfig) -> Method:
    """The loss and the training method that ``cfg`` describes."""
    loss = build_loss(cfg.loss.name, **node_kwargs(cfg.loss))
    return method_from_config(cfg, loss)


def method_from_config(cfg: DictConfig, loss: PixelLoss) -> Method:
    """The method ``cfg.method`` names, with its options: those of the config group the method reads
    (``Method.options_group``, e.g. ``meta``: one home for ``meta.*``), then the method node's own."""
    group = METHODS.get(cfg.method.name).options_group
    options = node_kwargs(cfg[group], drop=()) if group and group in cfg else {}
    return build_method(cfg.method.name, loss, **options, **node_kwargs(cfg.method))


def build_model_parts(cfg: DictConfig, device: torch.device, world: int = 1, epochs: int | None = None) -> ModelParts:
    """Model, optimiser and a schedule spanning ``epochs`` epochs (default ``trainer.epochs``); the model is
    initialised from ``torch``'s current random state."""
    net = build_model(cfg.model.name, **node_kwargs(cfg.model)).to(device)
    in_channels = cfg.model.get("in_channels", 3)
    check_contract(net, in_channels, cfg.data.size, f"model={cfg.model.name}")  # at start, not at step 1
    if cfg.trainer.channels_last:
        net = net.to(memory_format=torch.channels_last)  # convolutions then take NHWC inputs as they come
    model = data_parallel(net, device, world, in_channels, cfg.data.size)
    if cfg.trainer.compile:
        model = torch.compile(model)
    total_steps = (cfg.trainer.epochs if epochs is None else epochs) * cfg.trainer.steps_per_epoch
    optimizer, scheduler = build_optimizer(model.parameters(), total_steps, **node_kwargs(cfg.optim, drop=()))
    return ModelParts(net, model, optimizer, scheduler)


def make_trainer(cfg: DictConfig, method: Method, streams: dict[str, SegmentationDataset], parts: ModelParts,
                 device: torch.device, rank: int = 0, world: int = 1, counters: dict[str, int] | None = None) -> Trainer:
    """The :class:`Trainer` of ``method`` over ``streams`` with ``parts``' model and optimiser, as ``cfg.trainer``
    describes; ``counters`` (steps, skipped) carry on across trainers, e.g. the rounds of active learning."""
    method.set_stream_sizes({name: len(stream) for name, stream in streams.items()})
    t = cfg.trainer
    extra = {} if counters is None else {"counters": counters}
    return Trainer(parts.model, method, streams, parts.optimizer, parts.scheduler, device, cfg.seed, t.batch_size,
                   t.steps_per_epoch, t.num_workers, t.grad_clip, t.progress, t.amp, rank=rank, world=world, **extra)


def build_trainer(cfg: DictConfig, arrays: dict[str, dict[str, np.ndarray]], device: torch.device | str = "cpu",
                  rank: int = 0, world: int = 1) -> TrainingParts:
    """Loss, method, its data streams, model, optimiser and schedule, and the :class:`Trainer` that runs
    them, as ``cfg`` describes; the model is initialised from ``torch``'s current random state."""
    device = torch.device(device)
    method = build_run_method(cfg)
    streams = build_streams(cfg, method, arrays)
    parts = build_model_parts(cfg, device, world)
    trainer = make_trainer(cfg, method, streams, parts, device, rank, world)
    return TrainingParts(method, streams, parts.net, parts.model, parts.optimizer, parts.scheduler, trainer)


def build_run(cfg: DictConfig, run_dir: str | Path, device: torch.device | str = "cpu") -> TrainingParts:
    """What ``python -m noisyseg.train`` builds before its first step, in its order (the config validated,
    the seed set, the data and then the model built from it), for scripts that step a run themselves (the
    probes, the cost benchmark): their runs match the command's step for step."""
    validate(cfg)
    torch.manual_seed(cfg.seed)  # as train(): splits and noise, then the model's initialisation
    arrays, _ = build_data(cfg, run_dir, manifest=False)
    return build_trainer(cfg, arrays, device)
