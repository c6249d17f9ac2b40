"""The active-learning pool: the training data (everything outside the val and test splits) as arrays in
a fixed id order, with the answers the (possibly noisy) oracle gives, and the val/test sets it is scored on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from noisyseg.build import build_noise, split_source
from noisyseg.data.cache import load_arrays
from noisyseg.data.dataset import SegmentationDataset, to_tensor


@dataclass
class Pool:
    """The training data as arrays in a fixed id order: images, true masks, and the oracle's answers."""

    ids: list[str]
    images: np.ndarray   # uint8 [N, H, W, 3]
    masks: np.ndarray    # uint8 [N, H, W], ground truth
    answers: np.ndarray  # uint8 [N, H, W], what the (possibly noisy) oracle answers

    def __post_init__(self) -> None:
        self.index = {sample_id: k for k, sample_id in enumerate(self.ids)}

    def rows(self, ids: list[str]) -> np.ndarray:
        return np.array([self.index[i] for i in ids], dtype=np.int64)

    def tensors(self, ids: list[str]) -> torch.Tensor:
        return torch.stack([to_tensor(self.images[k]) for k in self.rows(ids)]) if ids else torch.empty(0)

    def split(self, ids: list[str], labels: np.ndarray) -> dict[str, np.ndarray]:
        """``ids``' images and true masks with ``labels`` as the masks the learner sees (a build-layer split)."""
        rows = self.rows(ids)
        return {"images": self.images[rows], "masks": self.masks[rows], "noisy_masks": labels}


def load_pool(cfg: DictConfig, run_dir: Path, main: bool
              ) -> tuple[Pool, dict[str, SegmentationDataset], dict[str, np.ndarray]]:
    """The pool, and the val and test sets with their masks; ``main`` writes ``splits.json``."""
    source, splits = split_source(cfg, run_dir, manifest=main)
    train_ids = splits["clean"] + splits["noisy"] + splits["pool"]  # active learning labels these itself
    show = cfg.trainer.progress
    noise, _ = build_noise(cfg.noise, source, train_ids, cfg.data.size, cfg.cache_dir)  # the oracle's noise
    arrays = load_arrays(source, train_ids, cfg.data.size, cfg.cache_dir, noise=noise, split="active", progress=show)
    pool = Pool(train_ids, arrays["images"], arrays["masks"], arrays.get("noisy_masks", arrays["masks"]))
    evalsets, evalmasks = {}, {}
    for name in ("val", "test"):
        split = load_arrays(source, splits[name], cfg.data.size, cfg.cache_dir, split=name, progress=show)
        evalsets[name], evalmasks[name] = SegmentationDataset(split["images"], {"mask": split["masks"]}), split["masks"]
    return pool, evalsets, evalmasks
