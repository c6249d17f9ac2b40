"""The build layer: a configuration -> the objects of a run (data, noise, method, streams, model,
optimiser, trainer). Used by ``train()``, the active-learning loop, ``predict`` and notebooks:

    from noisyseg.config import compose
    from noisyseg.build import build_data, build_trainer

    cfg = compose("data.size=32", "debug=fast")
    arrays, noise = build_data(cfg, run_dir="runs/nb", manifest=False)
    parts = build_trainer(cfg, arrays)          # parts.trainer.train_epoch(0), parts.net, ...
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
from noisyseg.losses import build_loss
from noisyseg.methods import Method, build_method
from noisyseg.models import build_model, check_contract
from noisyseg.noise import MaskNoise, realised_dice, target_dice
from noisyseg.optim import build_optimizer


def node_kwargs(node: DictConfig, drop: tuple[str, ...] = ("name",)) -> dict[str, Any]:
    """A config group's options as keyword arguments for its plug-in (``name`` dropped)."""
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True, throw_on_missing=True).items() if k not in drop}


def load_splits(cfg: DictConfig, run_dir: Path, manifest: bool = True
                ) -> tuple[Any, dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """Build the data source, split it (or reuse a manifest) and decode every split (cached); write
    ``splits.json`` unless ``manifest=False``. Returns the source, the arrays and the noise report."""
    source = build_source(cfg.data.name, **node_kwargs(cfg.data.params, drop=()))
    if cfg.data.splits_file:
        splits = load_manifest(cfg.data.splits_file, source.ids)
    else:
        splits = make_splits(source.ids, cfg.seed, **node_kwargs(cfg.data.split, drop=()), official=source.official)
    if manifest:
        save_manifest(run_dir / "splits.json", splits)
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


def _stream_dataset(arrays: dict[str, dict[str, np.ndarray]], splits: tuple[str, ...], transform) -> SegmentationDataset:
    parts = [arrays[s] for s in splits]
    images = np.concatenate([p["images"] for p in parts])
    true = np.concatenate([p["masks"] for p in parts])
    target = np.concatenate([p.get("noisy_masks", p["masks"]) for p in parts])  # what the learner sees
    return SegmentationDataset(images, {"mask": target, "true_mask": true}, transform)


def build_streams(cfg: DictConfig, method, arrays) -> dict[str, SegmentationDataset]:
    transform = build_transform(OmegaConf.to_container(cfg.data.augment, resolve=True))
    streams = {}
    for name, splits in method.streams.items():
        if sum(len(arrays[s]["images"]) for s in splits) == 0:
            raise DataError(f"method={cfg.method.name} trains on the {'+'.join(splits)} split(s), which are empty; check data.split")
        streams[name] = _stream_dataset(arrays, splits, transform)
    return streams


def build_data(cfg: DictConfig, run_dir: str | Path = ".", manifest: bool = True
               ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """Every split's decoded arrays (the noisy split with its noisy masks) and the noise report."""
    _, arrays, noise = load_splits(cfg, Path(run_dir), manifest)
    return arrays, noise


@dataclass
class TrainingParts:
    """What :func:`build_trainer` makes: ``net`` is the plain model (evaluated, saved), ``model`` what
    trains (``net`` wrapped for DDP or ``torch.compile`` when configured)."""

    method: Method
    streams: dict[str, SegmentationDataset]
    net: torch.nn.Module
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    trainer: Trainer


def build_trainer(cfg: DictConfig, arrays: dict[str, dict[str, np.ndarray]], device: torch.device | str = "cpu",
                  rank: int = 0, world: int = 1) -> TrainingParts:
    """Loss, method, its data streams, model, optimiser and schedule, and the :class:`Trainer` that runs
    them, as ``cfg`` describes; the model is initialised from ``torch``'s current random state."""
    device = torch.device(device)
    loss = build_loss(cfg.loss.name, **node_kwargs(cfg.loss))
    method = build_method(cfg.method.name, loss, **node_kwargs(cfg.method))
    streams = build_streams(cfg, method, arrays)
    method.set_stream_sizes({name: len(stream) for name, stream in streams.items()})
    net = build_model(cfg.model.name, **node_kwargs(cfg.model)).to(device)
    check_contract(net, cfg.model.get("in_channels", 3), cfg.data.size, f"model={cfg.model.name}")  # at start, not at step 1
    if cfg.trainer.channels_last:
        net = net.to(memory_format=torch.channels_last)  # convolutions then take NHWC inputs as they come
    model = data_parallel(net, device, world)
    if cfg.trainer.compile:
        model = torch.compile(model)
    total_steps = cfg.trainer.epochs * cfg.trainer.steps_per_epoch
    optimizer, scheduler = build_optimizer(model.parameters(), total_steps, **node_kwargs(cfg.optim, drop=()))
    trainer = Trainer(model, method, streams, optimizer, scheduler, device, cfg.seed, cfg.trainer.batch_size,
                      cfg.trainer.steps_per_epoch, cfg.trainer.num_workers, cfg.trainer.grad_clip, cfg.trainer.progress,
                      cfg.trainer.amp, rank=rank, world=world)
    return TrainingParts(method, streams, net, model, optimizer, scheduler, trainer)
