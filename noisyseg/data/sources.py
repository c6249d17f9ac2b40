"""Labeled data sources: the embedded synthetic set and the ISIC, PH2 and plain-folder layouts.

A source lists sample IDs and loads one ``(image, mask)`` pair at native resolution. Images and
masks are always paired by ID, never by sort order; an image without a mask, a mask without an image,
duplicate IDs and empty folders are errors that name the file or folder. Files read with a fix-up
(see :mod:`noisyseg.data.io`) are reported as one warning per kind and dataset when loaded inside
``with source.reporting():``.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from noisyseg.data.io import IMAGE_SUFFIXES, Notes, check_same_size, read_image, read_mask
from noisyseg.data.synthetic import GENERATOR_VERSION, make_lesion
from noisyseg.errors import ConfigError, DataError
from noisyseg.registry import Registry

DATASETS: Registry = Registry("dataset")

OFFICIAL_SPLITS = ("train", "val", "test")


@dataclass
class Source:
    """A set of labeled images.

    Attributes:
        name: dataset kind (registry key).
        key: identity of the data for caching (kind, location, parameters).
        ids: sample IDs in a fixed order.
        loader: ``loader(id, draft_size, notes) -> (image uint8 [H, W, 3], mask uint8 [H, W] in {0, 1})``;
            records its fix-ups in ``notes``.
        official: IDs of officially distributed splits (e.g. ISIC validation/test folders), if any.
    """

    name: str
    key: str
    ids: list[str]
    loader: Callable[[str, int | None, Notes], tuple[np.ndarray, np.ndarray]]
    official: dict[str, list[str]] = field(default_factory=dict)
    notes: Notes = field(default_factory=Notes, init=False, repr=False, compare=False)
    _reporting: int = field(default=0, init=False, repr=False, compare=False)

    def load(self, sample_id: str, draft_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        pair = self.loader(sample_id, draft_size, self.notes)
        if not self._reporting:
            self.notes.warn(self.key)
        return pair

    @contextmanager
    def reporting(self) -> Iterator[Source]:
        """Report the fix-ups of the loads in this block once per kind, with counts, at its end
        (rather than once per load)."""
        self._reporting += 1
        try:
            yield self
        finally:
            self._reporting -= 1
            if not self._reporting:
                self.notes.warn(self.key)


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: {what} folder not found")
    return path


def _by_id(paths: Iterable[Path], id_of: Callable[[Path], str | None]) -> dict[str, Path]:
    """Map ID -> file; ``id_of`` gives None for files to skip. Two files with one ID are an error."""
    found: dict[str, Path] = {}
    for path in sorted(paths):
        sample_id = id_of(path)
        if sample_id is None:
            continue
        if sample_id in found:
            raise DataError(f"{path}: duplicate ID {sample_id!r} (also {found[sample_id]})")
        found[sample_id] = path
    return found


def _index(folder: Path, pattern: re.Pattern) -> dict[str, Path]:
    """Map ID -> file for files in ``folder`` whose name matches ``pattern`` (group 1 is the ID)."""
    try:
        files = [p for p in folder.iterdir() if p.is_file()]
    except OSError as err:
        raise DataError(f"{folder}: cannot list folder ({err.strerror})") from None
    return _by_id(files, lambda p: match.group(1) if (match := pattern.fullmatch(p.name)) else None)


def _nonempty(files: dict[str, Path], folder: Path, what: str) -> dict[str, Path]:
    if not files:
        raise DataError(f"{folder}: no {what} found")
    return files


def _pair(images: dict[str, Path], masks: dict[str, Path], where: str) -> dict[str, tuple[Path, Path]]:
    for sample_id in sorted(images.keys() - masks.keys()):
        raise DataError(f"{images[sample_id]}: image has no mask in {where}")
    for sample_id in sorted(masks.keys() - images.keys()):
        raise DataError(f"{masks[sample_id]}: mask has no image in {where}")
    return {sample_id: (images[sample_id], masks[sample_id]) for sample_id in sorted(images)}


def _file_loader(pairs: dict[str, tuple[Path, Path]], mask_threshold: float | None):
    if mask_threshold is not None and not 0 < mask_threshold <= 255:
        raise ConfigError(f"data.params.mask_threshold={mask_threshold}: use a level in (0, 255] or null (128)")

    def load(sample_id: str, draft_size: int | None, notes: Notes) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = pairs[sample_id]
        mask = read_mask(mask_path, mask_threshold, notes)
        check_same_size(image_path, mask, mask_path)
        return read_image(image_path, draft_size, notes), mask

    return load


def _suffix_pattern(suffix: str, extensions: tuple[str, ...]) -> re.Pattern:
    exts = "|".join(re.escape(e.lstrip(".")) for e in extensions)
    return re.compile(rf"(.+?){re.escape(suffix)}\.(?:{exts})", re.IGNORECASE)


@DATASETS.register("synthetic")
def synthetic(count: int = 600, size: int = 64, seed: int = 0) -> Source:
    """The embedded procedural dermoscopy-like dataset (see :mod:`noisyseg.data.synthetic`)."""
    ids = [f"syn_{i:05d}" for i in range(count)]
    return Source(
        name="synthetic",
        key=f"synthetic(v{GENERATOR_VERSION},count={count},size={size},seed={seed})",
        ids=ids,
        loader=lambda sample_id, _draft, _notes: make_lesion(seed, int(sample_id[4:]), size),
    )


@DATASETS.register("folder")
def folder(root: str, images: str = "images", masks: str = "masks", mask_suffix: str = "",
           mask_threshold: float | None = None) -> Source:
    """``root/images/<id>.<ext>`` paired with ``root/masks/<id><mask_suffix>.<ext>``."""
    root_path = _require_dir(Path(root), "data root")
    image_dir = _require_dir(root_path / images, "images")
    mask_dir = _require_dir(root_path / masks, "masks")
    image_files = _index(image_dir, _suffix_pattern("", IMAGE_SUFFIXES))
    if mask_suffix:  # otherwise a mask named <id>_mask.png would also match as <id>_mask
        image_files = {k: v for k, v in image_files.items() if not k.endswith(mask_suffix)}
    _nonempty(image_files, image_dir, "images")
    mask_files = _nonempty(_index(mask_dir, _suffix_pattern(mask_suffix, IMAGE_SUFFIXES)), mask_dir, f"masks named <id>{mask_suffix}.<ext>")
    pairs = _pair(image_files, mask_files, str(mask_dir))
    return Source("folder", f"folder({root_path.resolve()},{mask_suffix})", list(pairs), _file_loader(pairs, mask_threshold))


@DATASETS.register("ph2")
def ph2(root: str, mask_threshold: float | None = None) -> Source:
    """PH2: the original ``PH2 Dataset images/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp`` +
    ``IMDxxx_lesion/IMDxxx_lesion.bmp`` tree, or a flat ``images/IMDxxx.*`` + ``masks/IMDxxx_lesion.*`` copy."""
    root_path = _require_dir(Path(root), "PH2 root")
    if (root_path / "images").is_dir() and (root_path / "masks").is_dir():
        source = folder(str(root_path), mask_suffix="_lesion", mask_threshold=mask_threshold)
        return Source("ph2", source.key.replace("folder", "ph2", 1), source.ids, source.loader)
    images = _by_id(root_path.rglob("IMD*_Dermoscopic_Image/IMD*.bmp"), lambda p: p.stem)
    masks = _by_id(root_path.rglob("IMD*_lesion/IMD*_lesion.bmp"), lambda p: p.stem[: -len("_lesion")])
    if not images and not masks:
        raise DataError(f"{root_path}: no PH2 images found (expected images/ + masks/ or the original PH2 tree)")
    pairs = _pair(images, masks, str(root_path))
    return Source("ph2", f"ph2({root_path.resolve()})", list(pairs), _file_loader(pairs, mask_threshold))


# ISIC challenge folders, e.g. ISIC-2017_Training_Data + ISIC-2017_Training_Part1_GroundTruth,
# ISBI2016_ISIC_Part1_Test_Data + ..._GroundTruth, ISIC2018_Task1-2_Validation_Input + ISIC2018_Task1_Validation_GroundTruth.
_ISIC_IMAGE = re.compile(r"(ISIC_\d{7})\.(?:jpg|jpeg|png)", re.IGNORECASE)  # excludes *_superpixels.png
_ISIC_MASK = re.compile(r"(ISIC_\d{7})_segmentation\.png", re.IGNORECASE)
_ISIC_SPLIT = {"training": "train", "validation": "val", "test": "test"}


def _isic_folders(root: Path) -> dict[str, dict[str, Path]]:
    """Find image and ground-truth folders per official split: ``{split: {"images"|"masks": path}}``."""
    folders: dict[str, dict[str, Path]] = {}
    for path in sorted(p for p in root.iterdir() if p.is_dir()):
        name = path.name.lower()
        split = next((s for word, s in _ISIC_SPLIT.items() if word in name), None)
        if split is None or not name.startswith(("isic", "isbi")):
            continue
        kind = "masks" if "groundtruth" in name else "images" if ("data" in name or "input" in name) else None
        if kind is None:
            continue
        if kind in folders.setdefault(split, {}):
            raise DataError(f"{path}: more than one {kind} folder for the {split} split (also {folders[split][kind].name})")
        folders[split][kind] = path
    return folders


@DATASETS.register("isic")
def isic(root: str, mask_threshold: float | None = None, splits: tuple[str, ...] = OFFICIAL_SPLITS) -> Source:
    """ISIC 2016/2017/2018 segmentation challenge folders as distributed (``ISIC_<id>.jpg`` +
    ``ISIC_<id>_segmentation.png``). Official validation/test folders, when present, are kept as
    the ``val``/``test`` splits."""
    root_path = _require_dir(Path(root), "ISIC root")
    folders = _isic_folders(root_path)
    pairs: dict[str, tuple[Path, Path]] = {}
    official: dict[str, list[str]] = {}
    for split in (s for s in splits if s in folders):
        parts = folders[split]
        if "images" not in parts or "masks" not in parts:
            present = next(iter(parts.values()))
            raise DataError(f"{present}: the {split} split has no matching {'masks' if 'masks' not in parts else 'images'} folder")
        images = _nonempty(_index(parts["images"], _ISIC_IMAGE), parts["images"], "ISIC_<id>.jpg images")
        masks = _nonempty(_index(parts["masks"], _ISIC_MASK), parts["masks"], "ISIC_<id>_segmentation.png masks")
        split_pairs = _pair(images, masks, str(parts["masks"]))
        clash = pairs.keys() & split_pairs.keys()
        if clash:
            raise DataError(f"{parts['images']}: IDs also present in another split, e.g. {sorted(clash)[0]}")
        pairs.update(split_pairs)
        official[split] = list(split_pairs)
    if not pairs:
        raise DataError(f"{root_path}: no ISIC image/ground-truth folders found (e.g. ISIC-2017_Training_Data + ISIC-2017_Training_Part1_GroundTruth)")
    return Source("isic", f"isic({root_path.resolve()},{','.join(official)})", list(pairs), _file_loader(pairs, mask_threshold), official)


def build_source(name: str, **kwargs) -> Source:
    """Build a registered data source by name."""
    return DATASETS.build(name, **kwargs)
