"""Reading images and masks from disk with clear errors for every way a file can be bad.

A file that cannot be used raises :class:`~noisyseg.errors.DataError` naming it. A file that can be
used after a documented fix-up is read and the fix-up noted (:class:`~noisyseg.errors.DataWarning`):

* images that are not 8-bit RGB (greyscale, palette, alpha, CMYK, 16-bit) are converted to RGB;
  alpha is dropped, not composited, and 16-bit values are scaled by 1/257;
* masks in {0, 1}, {0, 255} or {0, 65535} are read as they are; a colour mask is reduced to the
  maximum over its colour channels; other values (e.g. JPEG artefacts) are thresholded at
  :data:`DEFAULT_MASK_THRESHOLD` on a 0-255 scale unless another threshold is given.

Pass a :class:`Notes` to collect the fix-ups of many files, so a dataset reports each kind once with
a count; without one, each file reports its own.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from noisyseg.errors import DataError, DataWarning

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
DEFAULT_MASK_THRESHOLD = 128
_WIDE = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # 16/32-bit integer greyscale
_MASK_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", *_WIDE)


class Notes:
    """Fix-ups applied while reading files, grouped by kind."""

    def __init__(self) -> None:
        self.files: dict[str, list[Path]] = {}

    def add(self, what: str, path: Path) -> None:
        self.files.setdefault(what, []).append(path)

    def warn(self, where: str) -> None:
        """Emit one :class:`DataWarning` per kind of fix-up, with its count, then start afresh."""
        for what, paths in self.files.items():
            examples = ", ".join(p.name for p in paths[:3]) + (", ..." if len(paths) > 3 else "")
            warnings.warn(f"{where}: {what}: {len(paths)} file(s), e.g. {examples}", DataWarning, stacklevel=3)
        self.files.clear()


def _note(notes: Notes | None, what: str, path: Path) -> None:
    if notes is None:
        warnings.warn(f"{path}: {what}", DataWarning, stacklevel=3)
    else:
        notes.add(what, path)


def _open(path: Path, draft_size: int | None = None) -> Image.Image:
    # Another library may have switched this global on; a truncated file must fail here rather than
    # decode with its missing part filled grey.
    truncated_ok, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        with Image.open(path) as image:
            if draft_size and image.format == "JPEG":
                # Let libjpeg decode at a reduced scale (>= draft_size): big ISIC JPEGs (up to
                # 4288x2848) decode several times faster when they are resized afterwards anyway.
                image.draft("RGB", (draft_size, draft_size))
            image.load()  # forces a full decode, so truncated files fail here
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as err:  # noqa: BLE001 - malformed files raise OSError, SyntaxError, struct.error,
        # DecompressionBombError (a header claiming a huge size), ... depending on the format
        raise DataError(f"{path}: cannot decode image ({type(err).__name__}: {err})") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_ok
    if image.width == 0 or image.height == 0:
        raise DataError(f"{path}: image has zero size")
    return image


def _scale_wide(array: np.ndarray) -> np.ndarray:
    """16-bit values to 0-255 (Pillow's own conversion clips them at 255 instead)."""
    return np.round(np.clip(array.astype(np.float64), 0, 65535) / 257).astype(np.uint8)


def read_image(path: str | Path, draft_size: int | None = None, notes: Notes | None = None) -> np.ndarray:
    """Read an image as uint8 RGB ``[H, W, 3]``, converting other modes (see the module docstring)."""
    path = Path(path)
    image = _open(path, draft_size)
    if image.mode == "RGB":
        return np.asarray(image, dtype=np.uint8)
    if image.mode in _WIDE:
        image = Image.fromarray(_scale_wide(np.asarray(image)))
    if image.mode == "F":  # no fixed value range to map to 0-255
        raise DataError(f"{path}: floating-point images are not supported; save it as 8-bit RGB")
    try:
        image = image.convert("RGB")
    except ValueError as err:  # e.g. "La": Pillow has no conversion
        raise DataError(f"{path}: unsupported image mode {image.mode!r} ({err}); save it as 8-bit RGB") from None
    _note(notes, "converted to RGB (greyscale, palette, alpha, CMYK or 16-bit)", path)
    return np.asarray(image, dtype=np.uint8)


def read_mask(path: str | Path, threshold: float | None = None, notes: Notes | None = None) -> np.ndarray:
    """Read a binary mask as uint8 ``[H, W]`` in {0, 1} (encodings: see the module docstring).

    Args:
        threshold: values >= threshold (0-255 scale) are foreground in masks that are not already
            binary; default :data:`DEFAULT_MASK_THRESHOLD`.
    """
    path = Path(path)
    image = _open(path)
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")  # palette entries are indices; the colours are what the mask shows
    if image.mode not in _MASK_MODES:
        raise DataError(f"{path}: unsupported mask mode {image.mode!r}; save masks as 8-bit greyscale PNG")
    array = np.asarray(image)
    if array.ndim == 3:
        # Alpha is transparency, not foreground. Max over colours: a red-on-black mask is a mask.
        colour = array[..., [i for i, band in enumerate(image.getbands()) if band not in ("A", "X")]]
        if not (colour == colour[..., :1]).all():
            _note(notes, "colour masks reduced to the maximum over channels", path)
        array = colour.max(axis=2)
    values = set(np.unique(array).tolist())
    if values <= {0, 1}:
        return array.astype(np.uint8)
    if values <= {0, 255} or values <= {0, 65535}:
        return (array > 0).astype(np.uint8)
    if array.dtype != np.uint8:
        array = _scale_wide(array)
    level = DEFAULT_MASK_THRESHOLD if threshold is None else threshold
    _note(notes, f"masks with values other than 0/255 (e.g. JPEG artefacts) thresholded at {level}", path)
    return (array >= level).astype(np.uint8)


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as err:  # noqa: BLE001 - as in _open
        raise DataError(f"{path}: cannot decode image ({type(err).__name__}: {err})") from None


def check_same_size(image_path: Path, mask: np.ndarray, mask_path: Path) -> None:
    width, height = image_size(image_path)
    if (height, width) != mask.shape:
        raise DataError(
            f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from its image "
            f"{image_path.name} ({width}x{height})"
        )
