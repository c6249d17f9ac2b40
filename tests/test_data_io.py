"""Bad input to the image and mask readers (noisyseg.data.io): each case gives a DataError naming the
file, or a documented fix-up reported as one DataWarning per kind and dataset. Bad folder layouts
(pairing, duplicate ids, empty folders) are in test_data_sources.py."""
from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from conftest import write_pair
from noisyseg.data import build_source
from noisyseg.data.io import read_image, read_mask
from noisyseg.errors import ConfigError, DataError, DataWarning


def _folder(root: Path, **kwargs):
    return build_source("folder", root=str(root), mask_suffix="_mask", **kwargs)


def _load_all(source) -> list[str]:
    """Load every sample inside ``reporting()``; return the DataWarning messages."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with source.reporting():
            for sample_id in source.ids:
                source.load(sample_id)
    return [str(w.message) for w in caught if issubclass(w.category, DataWarning)]


def _png(width: int, height: int) -> bytes:
    """A greyscale PNG whose header claims ``width`` x ``height`` (with valid checksums)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


# --- unreadable files -------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, suffix", [("PNG", ".png"), ("JPEG", ".jpg")])
@pytest.mark.parametrize("lenient_pillow", [False, True])
def test_truncated_file_is_an_error_even_if_pillow_allows_it(tmp_path, monkeypatch, fmt, suffix, lenient_pillow):
    # Some libraries switch LOAD_TRUNCATED_IMAGES on globally; a half-grey image must still be an error.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", lenient_pillow)
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(buffer, fmt)
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 2 // 3])
    for reader in (read_image, read_mask):
        with pytest.raises(DataError, match=rf"cut\{suffix}: cannot decode image"):
            reader(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is lenient_pillow  # the caller's setting is restored


@pytest.mark.parametrize("content", [b"", b"\xff\xd8\xff\xe0 not really a jpeg", b"GIF89a"])
def test_corrupt_or_empty_file(tmp_path, content):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"bad\.jpg: cannot decode image"):
        read_image(path)


@pytest.mark.parametrize("size", [(0, 0), (0, 5), (100_000, 100_000)])
def test_zero_sized_or_absurd_header(tmp_path, size):
    path = tmp_path / "odd.png"
    path.write_bytes(_png(*size))  # 100000^2 px trips Pillow's decompression-bomb guard
    with pytest.raises(DataError, match=r"odd\.png: (cannot decode image|image has zero size)"):
        read_mask(path)


def test_unsupported_modes(tmp_path):
    Image.fromarray(np.ones((4, 4), np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(DataError, match=r"float\.tif: floating-point images are not supported"):
        read_image(tmp_path / "float.tif")
    with pytest.raises(DataError, match=r"float\.tif: unsupported mask mode 'F'"):
        read_mask(tmp_path / "float.tif")


# --- images in other modes ----------------------------------------------------------------------

def test_other_image_modes_become_rgb(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    cases = {
        "grey.png": (Image.fromarray(grey), np.repeat(grey[..., None], 3, axis=2)),
        "rgba.png": (Image.new("RGBA", (4, 3), (10, 20, 30, 0)), np.full((3, 4, 3), (10, 20, 30))),  # alpha dropped
        "palette.png": (Image.new("RGB", (4, 3), (200, 0, 50)).convert("P", palette=Image.Palette.ADAPTIVE), np.full((3, 4, 3), (200, 0, 50))),
        # 16-bit is scaled by 1/257, not clipped at 255 (Pillow's own conversion clips)
        "deep.png": (Image.fromarray(np.array([[0, 32896, 65535]], np.uint16)), np.array([[[0] * 3, [128] * 3, [255] * 3]])),
    }
    for name, (image, expected) in cases.items():
        image.save(tmp_path / name)
        with pytest.warns(DataWarning, match=rf"{name}: converted to RGB"):
            array = read_image(tmp_path / name)
        assert array.dtype == np.uint8
        np.testing.assert_array_equal(array, expected, err_msg=name)


def test_converted_images_give_one_warning_per_dataset(folder_root):
    for i in (0, 2, 4):
        Image.open(folder_root / "images" / f"case{i}.png").convert("L").save(folder_root / "images" / f"case{i}.png")
    messages = _load_all(_folder(folder_root))
    assert len(messages) == 1 and "converted to RGB" in messages[0] and "3 file(s)" in messages[0]


# --- masks --------------------------------------------------------------------------------------

@pytest.mark.parametrize("values, dtype", [((0, 1), np.uint8), ((0, 255), np.uint8), ((0, 65535), np.uint16),
                                           ((0, 1), np.uint16), ((0, 255), np.uint16), ((False, True), bool)])
def test_binary_mask_encodings(tmp_path, values, dtype):
    expected = np.eye(5, 6, dtype=np.uint8)
    Image.fromarray(np.where(expected == 1, values[1], values[0]).astype(dtype)).save(tmp_path / "m.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an exactly binary mask needs no note
        np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), expected)


def test_sixteen_bit_mask_with_intermediate_values_is_scaled_then_thresholded(tmp_path):
    Image.fromarray(np.array([[0, 30000, 33000, 65535]], np.uint16)).save(tmp_path / "m.png")  # 116.7, 128.4 on 0-255
    with pytest.warns(DataWarning, match="thresholded at 128"):
        np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), [[0, 0, 1, 1]])


def test_jpeg_artefact_masks_are_thresholded_with_one_warning(folder_root):
    expected = {}
    for i in (1, 3):
        mask = np.asarray(Image.open(folder_root / "masks" / f"case{i}_mask.png"))
        (folder_root / "masks" / f"case{i}_mask.png").unlink()
        Image.fromarray(mask).save(folder_root / "masks" / f"case{i}_mask.jpg", quality=30)
        expected[f"case{i}"] = mask > 0
    source = _folder(folder_root)
    messages = _load_all(source)
    assert len(messages) == 1 and "thresholded at 128" in messages[0] and "2 file(s)" in messages[0]
    with pytest.warns(DataWarning), source.reporting():
        for sample_id, truth in expected.items():
            assert (source.load(sample_id)[1] != truth).mean() < 0.02  # only edge pixels may move


def test_explicit_threshold_and_its_range(folder_root):
    ramp = np.tile(np.arange(40, dtype=np.uint8) * 6, (30, 1))
    Image.fromarray(ramp).save(folder_root / "masks" / "case0_mask.png")
    with pytest.warns(DataWarning, match="thresholded at 200"):
        mask = _folder(folder_root, mask_threshold=200).load("case0")[1]
    np.testing.assert_array_equal(mask, ramp >= 200)
    with pytest.raises(ConfigError, match="mask_threshold=0"):
        _folder(folder_root, mask_threshold=0)


def test_colour_masks_use_the_maximum_over_colour_channels(tmp_path):
    truth = np.eye(4, dtype=bool)
    red = np.zeros((4, 4, 3), np.uint8)
    red[truth] = (255, 0, 0)
    Image.fromarray(red).save(tmp_path / "red.png")
    with pytest.warns(DataWarning, match=r"red\.png: colour masks reduced to the maximum"):
        np.testing.assert_array_equal(read_mask(tmp_path / "red.png"), truth)
    # grey stored as RGB(A) is not a colour mask; alpha is ignored; a palette is read through its colours
    grey = np.repeat((truth * 255).astype(np.uint8)[..., None], 3, axis=2)
    Image.fromarray(np.dstack([grey, np.full((4, 4), 7, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(grey).convert("P").save(tmp_path / "palette.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("rgba.png", "palette.png"):
            np.testing.assert_array_equal(read_mask(tmp_path / name), truth, err_msg=name)


def test_fixups_outside_reporting_warn_per_load(folder_root):
    write_pair(folder_root / "images" / "extra.png", folder_root / "masks" / "extra_mask.png", seed=9)
    Image.open(folder_root / "images" / "extra.png").convert("LA").save(folder_root / "images" / "extra.png")
    with pytest.warns(DataWarning, match=r"converted to RGB .*: 1 file\(s\), e\.g\. extra\.png"):
        image, _ = _folder(folder_root).load("extra")
    assert image.shape == (30, 40, 3)
