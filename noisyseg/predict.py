"""``python -m noisyseg.predict``: segment new images with a trained checkpoint.

The checkpoint describes itself (model name and options, training size), so no training config is
repeated. Each image is decoded, resized to the network's ``size x size`` (INTER_AREA, as in
training), batched with images of any other size, and its probability map is resized back to the
image's own ``H x W`` (bilinear) before thresholding. Output layout under ``OUTPUT_DIR``:

* ``masks/<ID>_segmentation.png``: uint8 {0, 255}, the ISIC 2017/2018 scorer's naming.
* ``probs/<ID>_prob.png``: uint8, ``round(255 * p)``.
* ``uncertainty/<ID>_uncertainty.png`` (``--mc-samples T``): uint8, the per-pixel score divided by its
  largest possible value (1 bit for entropy and BALD, 0.25 for variance) times 255, so maps from
  different images and runs share one scale.
* ``overlays/<ID>_overlay.jpg``: the image with the predicted contour (magenta) and, with ground
  truth, the true contour (green), as in ``python -m noisyseg.report``.
* ``metrics.csv`` (with ``--masks``: per-image ISIC scores) and ``summary.json``.

An image that cannot be read (or whose ground-truth mask cannot be used) is skipped with a warning
naming it and listed with the reason under ``skipped`` in ``summary.json``; the command then exits
with status 3 (``--strict``: stop at the first such file, status 2, as for any bad input).

Masks and probabilities come from the deterministic (dropout off) forward; MC dropout only adds the
uncertainty maps, so the mask does not depend on ``T`` or the seed. Files are written via temp file +
rename: an interrupted run never leaves a half-written image.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from noisyseg.atomic import write_atomic, write_image, write_json
from noisyseg.checkpoint import load_checkpoint
from noisyseg.data.cache import resize_image
from noisyseg.data.dataset import to_tensor
from noisyseg.data.io import IMAGE_SUFFIXES, image_size, read_image, read_mask
from noisyseg.device import resolve_device
from noisyseg.errors import ConfigError, DataError, DataWarning, NoisysegError
from noisyseg.inference.mc import NoDropoutError, dropout_modules, mc_predict, predict
from noisyseg.inference.uncertainty import MIN_SAMPLES, pixel_uncertainty
from noisyseg.metrics import METRIC_KEYS, per_image_scores
from noisyseg.models import build_model
from noisyseg.progress import progress_bar
from noisyseg.runlog import contour_overlay

UNCERTAINTY_MAX = {"entropy": 1.0, "bald": 1.0, "variance": 0.25}  # largest possible pixel value
SKIP_SUFFIXES = ("_superpixels",)
SKIPPED_STATUS = 3  # exit status of a prediction that finished but skipped files (2: an error stopped it)  # ISIC 2017 ships superpixel PNGs next to the images


@dataclass
class Predictor:
    """A model in eval mode plus the preprocessing it was trained with (see :func:`load_predictor`)."""

    model: nn.Module
    size: int
    device: torch.device
    checkpoint: Path
    config: dict[str, Any]
    epoch: int | None = None

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """uint8 ``[H, W, 3]`` of any size -> normalised ``[3, size, size]``."""
        return to_tensor(resize_image(image, self.size))

    def predict_batch(self, x: torch.Tensor, mc_samples: int = 0, uncertainty: str = "entropy"
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Probabilities ``[B, S, S]`` and, with ``mc_samples``, the uncertainty map ``[B, S, S]``."""
        x = x.to(self.device)
        probs = predict(self.model, x)
        if not mc_samples:
            return probs, None
        samples = mc_predict(self.model, x, mc_samples, mode="loop")  # [T, B, S, S]
        return probs, pixel_uncertainty(samples, uncertainty)

    def predict_image(self, image: np.ndarray, mc_samples: int = 0, uncertainty: str = "entropy"
                      ) -> tuple[np.ndarray, np.ndarray | None]:
        """Probability (and uncertainty) maps of one uint8 ``[H, W, 3]`` image, float32 ``[H, W]``."""
        probs, unc = self.predict_batch(self.preprocess(image)[None], mc_samples, uncertainty)
        height, width = image.shape[:2]
        return _upsample(probs[0], height, width), None if unc is None else _upsample(unc[0], height, width)


def resolve_checkpoint(path: str | Path) -> Path:
    """A ``.pt`` file as given; a run folder -> its ``best.pt``, else ``last.pt``."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name in ("best.pt", "last.pt"):
        if (path / name).is_file():
            return path / name
    raise DataError(f"{path}: run folder has no best.pt or last.pt")


def load_predictor(path: str | Path, device: str = "auto") -> Predictor:
    """Load a checkpoint (or a run folder's best.pt) into a :class:`Predictor` on ``device``."""
    path = resolve_checkpoint(path)
    state = load_checkpoint(path, "cpu")
    try:
        config = state["config"]
        options = {k: v for k, v in config["model"].items() if k != "name"}
        name, size = config["model"]["name"], int(config["data"]["size"])
        weights = state["model"]
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ConfigError(f"{path}: not a noisyseg checkpoint (needs model weights, config.model.name and "
                          f"config.data.size; missing {err})") from None
    model = build_model(name, pretrained=False, **options)  # the checkpoint has the weights: no download
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise NoisysegError(f"{path}: weights do not fit model {name!r} ({err})") from None
    device = resolve_device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(device)!r} asked for, but CUDA is not available; use --device cpu or auto")
    return Predictor(model.to(device).eval(), size, device, path, config, state.get("epoch"))


def list_images(path: str | Path, mask_suffix: str = "_segmentation") -> list[Path]:
    """One image file, or the sorted images of a folder without masks (``<ID><mask_suffix>.*``)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: input image or folder not found")
    skip = tuple(s for s in (mask_suffix, *SKIP_SUFFIXES) if s)
    images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                    and not p.name.startswith(".") and not p.stem.endswith(skip))
    if not images:
        raise DataError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) found in the input folder")
    stems = [p.stem for p in images]
    twins = sorted({s for s in stems if stems.count(s) > 1})
    if twins:
        raise DataError(f"{path}: several images share the ID {twins[0]!r}; their outputs would collide")
    return images


def find_truth(images: list[Path], folder: str | Path, suffix: str) -> list[Path]:
    """The ground-truth mask ``<ID><suffix>.png`` (or .bmp, .tif, ...) of each image."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: ground-truth folder not found")
    found = []
    for image in images:
        candidates = [folder / f"{image.stem}{suffix}{ext}" for ext in (".png", *IMAGE_SUFFIXES)]
        match = next((c for c in candidates if c.is_file()), None)
        if match is None:
            raise DataError(f"{candidates[0]}: ground-truth mask of {image.name} not found")
        found.append(match)
    return found


class _Images(Dataset):
    """Network input ``[3, S, S]`` plus what the writer needs at the original resolution."""

    def __init__(self, paths: list[Path], size: int, full: bool) -> None:
        self.paths, self.size, self.full = paths, size, full

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path = self.paths[i]
        try:
            width, height = image_size(path)
            image = read_image(path, draft_size=self.size)  # draft JPEG decode, as in training
            full = None
            if self.full:  # overlays need the full-resolution image
                full = image if image.shape[:2] == (height, width) else read_image(path)
        except DataError as err:  # re-raised by the main process: a worker would bury it in a traceback
            return {"index": i, "error": str(err), "x": torch.zeros(3, self.size, self.size)}
        return {"index": i, "x": to_tensor(resize_image(image, self.size)), "hw": (height, width), "full": full}


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"x": torch.stack([it["x"] for it in items]), "items": items}


def _upsample(map_: torch.Tensor, height: int, width: int) -> np.ndarray:
    return cv2.resize(map_.float().cpu().numpy(), (width, height), interpolation=cv2.INTER_LINEAR)


def _make_dirs(out: Path, names: list[str]) -> None:
    try:
        for name in names:
            (out / name).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{out}: cannot create output folder ({err})") from None


def _checked_truth(item: dict[str, Any], path: Path, truths: list[Path] | None) -> np.ndarray | None:
    """The image's ground-truth mask (None without ``--masks``); a DataError if the image or its mask
    cannot be used."""
    if "error" in item:  # the image could not be read (reported by the loader, maybe in a worker)
        raise DataError(item["error"])
    if truths is None:
        return None
    mask_path = truths[item["index"]]
    truth = read_mask(mask_path)
    height, width = item["hw"]
    if truth.shape != (height, width):
        raise DataError(f"{mask_path}: mask size {truth.shape[1]}x{truth.shape[0]} differs from its image "
                        f"{path.name} ({width}x{height})")
    return truth


def _skip(path: Path, err: DataError) -> dict[str, str]:
    """Warn once about a skipped image; its entry in ``summary.json``'s ``skipped`` list."""
    reason = str(err).removeprefix(f"{path}: ")  # the file is named once, not twice
    warnings.warn(f"{path}: skipped ({reason})", DataWarning, stacklevel=3)
    return {"file": str(path), "reason": reason}


def predict_folder(
    predictor: Predictor | str | Path,
    inputs: str | Path,
    output_dir: str | Path,
    masks: str | Path | None = None,
    mask_suffix: str = "_segmentation",
    mc_samples: int = 0,
    uncertainty: str = "entropy",
    batch_size: int = 8,
    overlays: bool = True,
    threshold: float = 0.5,
    workers: int = 0,
    seed: int = 0,
    progress: bool = True,
    strict: bool = False,
) -> dict[str, Any]:
    """Predict every image of ``inputs`` (a file or folder) and write the outputs listed in the module docstring.

    An image that cannot be read, or whose ground-truth mask cannot be used, is skipped with a
    :class:`DataWarning` naming it (``strict=True``: a DataError stops the run instead).

    Returns:
        The summary (also ``summary.json``): ``count`` and ``ids`` of the predicted images, ``skipped``
        (``[{"file", "reason"}]``), ``checkpoint``, ``epoch``, the settings, ``config``, and with
        ``masks`` the mean ISIC scores in ``metrics`` (macro average, as :func:`noisyseg.metrics.score`).

    Raises:
        DataError: missing input, ground truth or output folder; no image readable; with ``strict``,
            any unreadable image or mask.
        ConfigError: bad option, or ``mc_samples`` with a model without dropout (:class:`NoDropoutError`).
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"threshold must be in (0, 1], got {threshold}")
    if uncertainty not in UNCERTAINTY_MAX:
        raise ConfigError(f"uncertainty {uncertainty!r} is not one of {tuple(UNCERTAINTY_MAX)}")
    if mc_samples < 0:
        raise ConfigError(f"--mc-samples must be >= 0, got {mc_samples}")
    if mc_samples and mc_samples < MIN_SAMPLES[uncertainty]:
        need = MIN_SAMPLES[uncertainty]
        raise ConfigError(f"the {uncertainty} uncertainty needs --mc-samples >= {need}, got {mc_samples}")
    if not isinstance(predictor, Predictor):
        predictor = load_predictor(predictor)
    if mc_samples and not dropout_modules(predictor.model):
        raise NoDropoutError(f"{predictor.checkpoint}: the model has no dropout layer with p > 0, so --mc-samples "
                             "would give identical samples; train with model.dropout > 0 or drop --mc-samples")
    paths = list_images(inputs, mask_suffix)
    truths = find_truth(paths, masks, mask_suffix) if masks is not None else None
    out = Path(output_dir)
    _make_dirs(out, ["masks", "probs", *(["uncertainty"] if mc_samples else []), *(["overlays"] if overlays else [])])

    torch.manual_seed(seed)  # the MC dropout masks
    loader = DataLoader(_Images(paths, predictor.size, overlays), batch_size=batch_size, num_workers=workers,
                        collate_fn=_collate)
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []  # one unreadable file must not cost the user the others
    with progress_bar(total=len(paths), desc="predict", unit="img", enabled=progress) as bar:
        for batch in loader:
            probs, unc = predictor.predict_batch(batch["x"], mc_samples, uncertainty)  # [B, S, S]
            for k, item in enumerate(batch["items"]):
                path = paths[item["index"]]
                try:
                    truth = _checked_truth(item, path, truths)  # before any output of this image is written
                except DataError as err:
                    if strict:
                        raise
                    skipped.append(_skip(path, err))
                    continue
                sid, (height, width) = path.stem, item["hw"]
                prob = _upsample(probs[k], height, width)  # [H, W]
                pred = prob >= threshold
                write_image(out / "masks" / f"{sid}_segmentation.png", pred.astype(np.uint8) * 255)
                write_image(out / "probs" / f"{sid}_prob.png", np.round(prob * 255).clip(0, 255).astype(np.uint8))
                if unc is not None:
                    scaled = _upsample(unc[k], height, width) / UNCERTAINTY_MAX[uncertainty]
                    write_image(out / "uncertainty" / f"{sid}_uncertainty.png",
                                 np.round(scaled * 255).clip(0, 255).astype(np.uint8))
                if truth is not None:
                    scores = per_image_scores(pred, truth)
                    rows.append({"id": sid, **{key: float(scores[key][0]) for key in METRIC_KEYS}})
                if overlays:
                    write_image(out / "overlays" / f"{sid}_overlay.jpg", contour_overlay(item["full"], pred, truth))
            bar.update(len(batch["items"]))
    if len(skipped) == len(paths):
        raise DataError(f"{inputs}: none of the {len(paths)} image(s) could be read; the first: "
                        f"{skipped[0]['file']}: {skipped[0]['reason']}")

    bad = {entry["file"] for entry in skipped}
    summary: dict[str, Any] = {
        "count": len(paths) - len(skipped), "ids": [p.stem for p in paths if str(p) not in bad],
        "skipped": skipped, "checkpoint": str(predictor.checkpoint),
        "epoch": predictor.epoch, "threshold": threshold, "mc_samples": mc_samples,
        "uncertainty": uncertainty if mc_samples else None,
    }
    if truths is not None:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=["id", *METRIC_KEYS], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(out / "metrics.csv", lambda tmp: tmp.write_text(text.getvalue()))
        summary["metrics"] = {key: float(np.mean([r[key] for r in rows])) for key in METRIC_KEYS}
    summary["config"] = predictor.config
    write_json(out / "summary.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m noisyseg.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a run folder (uses best.pt, else last.pt) or a .pt file")
    parser.add_argument("input", help="an image file or a folder of images")
    parser.add_argument("output_dir")
    parser.add_argument("--masks", help="ground-truth folder (<ID><mask-suffix>.png): writes metrics.csv")
    parser.add_argument("--mask-suffix", default="_segmentation")
    parser.add_argument("--mc-samples", type=int, default=0, help="T MC-dropout samples for uncertainty maps")
    parser.add_argument("--uncertainty", default="entropy", choices=tuple(UNCERTAINTY_MAX))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--workers", type=int, default=0, help="image-decoding worker processes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the MC-dropout masks")
    parser.add_argument("--no-overlays", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first unreadable image or mask (default: skip it, exit status 3)")
    args = parser.parse_args(argv)
    try:
        summary = predict_folder(
            load_predictor(args.checkpoint, args.device), args.input, args.output_dir, args.masks, args.mask_suffix,
            args.mc_samples, args.uncertainty, args.batch_size, not args.no_overlays, args.threshold, args.workers,
            args.seed, not args.no_progress, args.strict,
        )
    except NoisysegError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"output_dir": str(args.output_dir), "count": summary["count"], "skipped": len(summary["skipped"]),
                      **({"metrics": summary["metrics"]} if "metrics" in summary else {})}, indent=2))
    return SKIPPED_STATUS if summary["skipped"] else 0


if __name__ == "__main__":
    sys.exit(main())
