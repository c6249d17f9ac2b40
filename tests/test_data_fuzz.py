"""Fuzzing the loaders: any input either loads with the documented dtype and shape or raises
DataError, never another exception type. Inputs are tiny, so nothing can hang."""
from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from noisyseg.data import build_source
from noisyseg.data.io import read_image, read_mask
from noisyseg.data.splits import SPLITS, load_manifest
from noisyseg.errors import DataError

# Fix-up notes (DataWarning is a UserWarning) and Pillow's notes on corrupt headers are expected here.
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")]
# Derandomised: the same examples on every run, so the suite cannot flake; a fuzzing session can
# raise max_examples and drop derandomize.
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
FORMATS = ("PNG", "JPEG", "TIFF", "BMP")
MAGIC = (b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"II*\x00", b"MM\x00*", b"BM")


def _encode(array: np.ndarray, fmt: str) -> bytes | None:
    """``array`` in ``fmt``, else in the first format that can hold it (TIFF holds most); None if none can."""
    for candidate in (fmt, "TIFF", "PNG"):
        buffer = io.BytesIO()
        try:
            Image.fromarray(array).save(buffer, candidate)
            return buffer.getvalue()
        except (TypeError, ValueError, OSError, KeyError):
            continue
    return None


@st.composite
def mangled(draw, data: bytes) -> bytes:
    """``data``, maybe truncated, maybe with a few bytes overwritten (mostly in the header)."""
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    if data and draw(st.booleans()):
        data = bytearray(data)
        for _ in range(draw(st.integers(1, 3))):
            data[draw(st.integers(0, min(len(data), 64) - 1))] = draw(st.integers(0, 255))
        data = bytes(data)
    return data


@st.composite
def image_files(draw, max_side: int = 8) -> bytes:
    """Random bytes (after a real magic number, to get past format detection), or a random array of
    a random dtype and shape encoded as PNG/JPEG/TIFF/BMP and then maybe mangled."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.sampled_from(MAGIC)) + draw(st.binary(max_size=200))
    dtype = draw(st.sampled_from([np.uint8, np.uint8, np.uint16, np.int32, np.float32, np.bool_]))
    channels = draw(st.sampled_from([(), (2,), (3,), (4,)])) if dtype == np.uint8 else ()
    shape = (draw(st.integers(1, max_side)), draw(st.integers(1, max_side)), *channels)
    data = _encode(draw(hnp.arrays(dtype, shape)), draw(st.sampled_from(FORMATS)))
    assume(data is not None)
    return draw(mangled(data)) if draw(st.booleans()) else data


def _check_image(path: Path) -> np.ndarray | None:
    try:
        image = read_image(path)
    except DataError:
        return None
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and min(image.shape) > 0
    return image


def _check_mask(path: Path) -> np.ndarray | None:
    try:
        mask = read_mask(path)
    except DataError:
        return None
    assert mask.dtype == np.uint8 and mask.ndim == 2 and min(mask.shape) > 0
    assert set(np.unique(mask).tolist()) <= {0, 1}
    return mask


@FUZZ
@given(data=image_files(), suffix=st.sampled_from([".png", ".jpg", ".tif", ".bmp"]))
def test_read_image_and_mask_load_or_raise_data_error(tmp_path_factory, data, suffix):
    path = tmp_path_factory.getbasetemp() / f"fuzz{suffix}"
    path.write_bytes(data)
    _check_image(path)
    _check_mask(path)


@FUZZ
@given(values=st.one_of(
    hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, max_side=8),
               elements=st.sampled_from([0, 1, 255]) | st.integers(0, 255)),
    hnp.arrays(np.uint16, hnp.array_shapes(min_dims=2, max_dims=2, max_side=8),
               elements=st.sampled_from([0, 1, 255, 65535]) | st.integers(0, 65535)),
))
def test_mask_values_follow_the_documented_rule(tmp_path_factory, values):
    path = tmp_path_factory.getbasetemp() / "values.png"
    Image.fromarray(values).save(path)  # lossless
    found = set(values.flatten().tolist())
    if found <= {0, 1}:
        expected = values
    elif found <= {0, 255} or found <= {0, 65535}:
        expected = values > 0
    else:  # thresholded at 128 on a 0-255 scale; 16-bit is scaled by 1/257
        expected = np.round(values / (257 if values.dtype == np.uint16 else 1)) >= 128
    np.testing.assert_array_equal(_check_mask(path), expected.astype(np.uint8))


_LAYOUTS = {  # dataset name -> (image path, mask path) for sample i
    "folder": lambda i: (f"images/s{i}.jpg", f"masks/s{i}.png"),
    "ph2": lambda i: (f"PH2 Dataset images/IMD00{i}/IMD00{i}_Dermoscopic_Image/IMD00{i}.bmp",
                      f"PH2 Dataset images/IMD00{i}/IMD00{i}_lesion/IMD00{i}_lesion.bmp"),
    "isic": lambda i: (f"ISIC-2017_Training_Data/ISIC_000000{i}.jpg",
                       f"ISIC-2017_Training_Part1_GroundTruth/ISIC_000000{i}_segmentation.png"),
}


@FUZZ
@given(name=st.sampled_from(sorted(_LAYOUTS)),
       samples=st.lists(st.tuples(image_files(max_side=4), image_files(max_side=4), st.integers(0, 9)),
                        min_size=1, max_size=3))
def test_sources_load_or_raise_data_error(name, samples):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i, (image, mask, omit) in enumerate(samples):
            for path, data in zip(_LAYOUTS[name](i), (image, mask)):
                if omit == 0 and path.endswith(".png"):  # now and then a mask is missing
                    continue
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                (root / path).write_bytes(data)
        try:
            source = build_source(name, root=str(root))
        except DataError:
            return
        with source.reporting():
            for sample_id in source.ids:
                try:
                    image, mask = source.load(sample_id)
                except DataError:
                    continue
                assert image.dtype == mask.dtype == np.uint8 and image.shape == (*mask.shape, 3)
                assert set(np.unique(mask).tolist()) <= {0, 1}


def _check_manifest(path: Path, known: list[str]) -> None:
    try:
        splits = load_manifest(path, known)
    except DataError:
        return
    assert list(splits) == list(SPLITS)
    assert all(isinstance(ids, list) and set(ids) <= set(known) for ids in splits.values())


@FUZZ
@given(data=st.binary(max_size=200) | st.sampled_from([b"{}", b"[]", b"null", b'{"clean": ["a"]}', b"\xff{"]))
def test_load_manifest_bytes(tmp_path_factory, data):
    path = tmp_path_factory.getbasetemp() / "manifest.json"
    path.write_bytes(data)
    _check_manifest(path, ["a", "b", "c"])


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.sampled_from(["a", "b", "zz"]),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(SPLITS), inner, max_size=3),
                     max_leaves=8)


@FUZZ
@given(document=st.dictionaries(st.sampled_from(SPLITS), _JSON, max_size=3))
def test_load_manifest_structure(tmp_path_factory, document):
    path = tmp_path_factory.getbasetemp() / "manifest_doc.json"
    path.write_text(json.dumps(document))
    _check_manifest(path, ["a", "b", "c"])
