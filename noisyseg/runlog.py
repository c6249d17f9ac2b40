"""Run logging: one CSV row per epoch, TensorBoard scalars and image grids."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from noisyseg.atomic import write_csv
from noisyseg.data.dataset import MEAN, STD


class RunLog:
    """Appends epoch rows to ``metrics.csv`` and writes TensorBoard events under ``tb/``."""

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.csv_path = run_dir / "metrics.csv"
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: it is slow to import

            self.writer = SummaryWriter(str(run_dir / "tb"))

    def epoch(self, history: list[dict[str, float]], step: int) -> None:
        """Rewrite ``metrics.csv`` from the whole history (so a resumed run never repeats a row)
        and add the newest row to TensorBoard."""
        write_csv(self.csv_path, history)
        self.scalars(history[-1], step)

    def scalars(self, row: dict[str, float], step: int, prefix: str = "") -> None:
        """TensorBoard scalars ``prefix + key`` (the first ``_`` of a key becomes ``/``)."""
        for key, value in row.items():
            if self.writer and key not in ("epoch", "step", "round") and isinstance(value, (int, float)):
                self.writer.add_scalar(prefix + key.replace("_", "/", 1), value, step)

    def images(self, tag: str, grid: np.ndarray, step: int) -> None:
        """``grid``: uint8 ``[H, W, 3]``."""
        if self.writer:
            self.writer.add_image(tag, grid, step, dataformats="HWC")

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def denormalise(images: torch.Tensor) -> np.ndarray:
    """Normalised ``[B, 3, H, W]`` -> uint8 ``[B, H, W, 3]``."""
    array = images.detach().cpu().float().numpy().transpose(0, 2, 3, 1) * STD + MEAN
    return (np.clip(array, 0, 1) * 255).astype(np.uint8)


TRUTH_COLOUR, PRED_COLOUR = (0, 230, 0), (255, 0, 255)  # RGB: green ground truth, magenta prediction


def contour_overlay(image: np.ndarray, pred: np.ndarray | None, truth: np.ndarray | None = None,
                    thickness: int | None = None) -> np.ndarray:
    """``image`` (uint8 ``[H, W, 3]``) with the contours of the binary masks ``truth`` (green) and
    ``pred`` (magenta) drawn on a copy; ``thickness`` defaults to about 1/300 of the larger side."""
    out = image.copy()
    thickness = thickness or max(1, round(max(image.shape[:2]) / 300))
    for mask, colour in ((truth, TRUTH_COLOUR), (pred, PRED_COLOUR)):
        if mask is not None:
            contours, _ = cv2.findContours(np.asarray(mask > 0, np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(out, contours, -1, colour, thickness)
    return out


def image_grid(columns: list[np.ndarray], min_tile: int = 128) -> np.ndarray:
    """Rows of samples, one column per item: each column is uint8 ``[B, H, W, 3]`` or float
    ``[B, H, W]`` in [0, 1] (masks, probabilities, weight maps; shown in grey). Small tiles are
    enlarged by an integer factor (nearest neighbour) so that pixels stay visible."""
    tiles = []
    for column in columns:
        if column.ndim == 3:
            column = np.repeat((np.clip(column, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)
        factor = max(1, -(-min_tile // column.shape[1]))
        tiles.append(column.repeat(factor, axis=1).repeat(factor, axis=2))
    rows = [np.concatenate([np.pad(t[i], ((1, 1), (1, 1), (0, 0))) for t in tiles], axis=1) for i in range(len(tiles[0]))]
    return np.concatenate(rows, axis=0)
