"""Reading images and masks from disk with clear errors for every way a file can be bad."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from noisyseg.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def _open(path: Path, draft_size: int | None = None) -> Image.Image:
    try:
        image = Image.open(path)
        if draft_size and image.format == "JPEG":
            # Let libjpeg decode at a reduced scale (>= draft_size): big ISIC JPEGs (up to
            # 4288x2848) decode several times faster when they are resized afterwards anyway.
            image.draft("RGB", (draft_size, draft_size))
        image.load()  # forces a full decode, so truncated files fail here
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: cannot decode image ({err})") from None
    if image.width == 0 or image.height == 0:
        raise DataError(f"{path}: image has zero size")
    return image


def read_image(path: str | Path, draft_size: int | None = None) -> np.ndarray:
    """Read an RGB image as uint8 ``[H, W, 3]``; greyscale, palette and RGBA are converted."""
    path = Path(path)
    image = _open(path, draft_size)
    if image.mode != "RGB":
        if image.mode not in ("L", "P", "RGBA", "LA", "I;16", "I", "CMYK", "1"):
            raise DataError(f"{path}: unsupported image mode {image.mode!r}")
        if image.mode in ("I;16", "I"):
            array = np.asarray(image, dtype=np.float64)
            image = Image.fromarray((255 * array / max(array.max(), 1)).astype(np.uint8))
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def read_mask(path: str | Path, threshold: float | None = None) -> np.ndarray:
    """Read a binary mask as uint8 ``[H, W]`` with values in {0, 1}.

    Accepted encodings: {0, 1}, {0, 255} (8-bit) and {0, 65535} (16-bit). Anything else (e.g. JPEG
    artefacts) is an error unless ``threshold`` is given, in which case values >= threshold (on a
    0-255 scale) are foreground.
    """
    path = Path(path)
    image = _open(path)
    array = np.asarray(image)
    if array.ndim == 3:
        if not (array[..., :3] == array[..., :1]).all():
            raise DataError(f"{path}: mask is a colour image; expected a single-channel binary mask")
        array = array[..., 0]
    if image.mode in ("I;16", "I", "I;16B") or array.dtype == np.uint16 or array.max(initial=0) > 255:
        array = array.astype(np.float64) * (255.0 / 65535.0)
    values = np.unique(array)
    if set(values.tolist()) <= {0, 1}:
        return array.astype(np.uint8)
    if set(values.tolist()) <= {0, 255}:
        return (array > 0).astype(np.uint8)
    if threshold is None:
        raise DataError(
            f"{path}: mask has values other than 0/1 or 0/255 (found {len(values)} distinct values, "
            f"e.g. {values[:5].tolist()}); set data.mask_threshold=128 to binarise such masks"
        )
    return (array >= threshold).astype(np.uint8)


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: cannot decode image ({err})") from None


def check_same_size(image_path: Path, mask: np.ndarray, mask_path: Path) -> None:
    width, height = image_size(image_path)
    if (height, width) != mask.shape:
        raise DataError(
            f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from its image "
            f"{image_path.name} ({width}x{height})"
        )
