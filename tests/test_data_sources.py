"""Data sources (noisyseg.data.sources): each layout on tiny on-disk fixtures and on the real samples when
present, and bad layouts: mismatched sizes, duplicate ids, empty folders."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import shared_or_skip, write_pair
from noisyseg.data import build_source
from noisyseg.errors import ConfigError, DataError


def test_folder_pairs_by_id_not_sort_order(folder_root):
    source = build_source("folder", root=str(folder_root), mask_suffix="_mask")
    assert source.ids == [f"case{i}" for i in range(6)]
    image, mask = source.load("case3")
    assert image.shape == (30, 40, 3) and image.dtype == np.uint8
    expected = np.asarray(Image.open(folder_root / "masks" / "case3_mask.png")) > 0
    np.testing.assert_array_equal(mask, expected)


def test_folder_pairing_survives_misleading_names(tmp_path):
    # "b" sorts before "c" for images but the masks are named so that sort order would mispair them
    write_pair(tmp_path / "images" / "b.png", tmp_path / "masks" / "b.png", seed=1)
    write_pair(tmp_path / "images" / "c.png", tmp_path / "masks" / "c.png", seed=2)
    (tmp_path / "masks" / "b.png").rename(tmp_path / "masks" / "b.PNG")
    source = build_source("folder", root=str(tmp_path))
    for sid, seed in (("b", 1), ("c", 2)):
        _, mask = source.load(sid)
        assert mask.sum() == write_pair(tmp_path / "x.png", tmp_path / "y.png", seed).sum()


def test_isic_official_splits_and_superpixels_ignored(isic_root):
    source = build_source("isic", root=str(isic_root))
    assert len(source.ids) == 13
    assert source.official["val"] == ["ISIC_0000008", "ISIC_0000009"]
    assert len(source.official["test"]) == 3 and len(source.official["train"]) == 8
    image, mask = source.load("ISIC_0000001")
    assert image.shape[:2] == mask.shape == (30, 40)


@pytest.mark.parametrize("images, masks, mask_name", [
    ("ISBI2016_ISIC_Part1_Training_Data", "ISBI2016_ISIC_Part1_Training_GroundTruth", "{}_Segmentation.png"),
    ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth", "{}_segmentation.png"),
])
def test_isic_2016_and_2018_layouts(tmp_path, images, masks, mask_name):
    for i in range(3):
        sid = f"ISIC_{i:07d}"
        write_pair(tmp_path / images / f"{sid}.jpg", tmp_path / masks / mask_name.format(sid), i)
    (tmp_path / images / "ATTRIBUTION.txt").write_text("x")
    source = build_source("isic", root=str(tmp_path))
    assert source.ids == ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"] and list(source.official) == ["train"]


def test_isic_draft_decode_is_used_for_large_targets(isic_root):
    source = build_source("isic", root=str(isic_root))
    image, _ = source.load("ISIC_0000001", draft_size=16)
    assert image.shape[2] == 3  # JPEG draft may shrink by powers of two but never below the target


def test_ph2_original_tree(ph2_tree):
    source = build_source("ph2", root=str(ph2_tree))
    assert source.ids == ["IMD002", "IMD003", "IMD004", "IMD006"]
    image, mask = source.load("IMD004")
    assert image.shape == (30, 40, 3) and set(np.unique(mask)) <= {0, 1}


def test_synthetic_source_is_deterministic():
    a = build_source("synthetic", count=3, size=32, seed=5)
    b = build_source("synthetic", count=3, size=32, seed=5)
    np.testing.assert_array_equal(a.load("syn_00002")[0], b.load("syn_00002")[0])


@pytest.mark.parametrize("name", ["ph2", "isic2017-sample"])
def test_real_samples(name):
    root = shared_or_skip(name)
    source = build_source("ph2" if name == "ph2" else "isic", root=str(root))
    assert len(source.ids) >= 19
    image, mask = source.load(source.ids[0], draft_size=128)
    assert image.ndim == 3 and 0 < mask.mean() < 1


# --- bad input -------------------------------------------------------------------------------

def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="not found"):
        build_source("folder", root=str(tmp_path / "nope"))


def test_image_without_mask(folder_root):
    (folder_root / "masks" / "case2_mask.png").unlink()
    with pytest.raises(DataError, match=r"case2\.png: image has no mask"):
        build_source("folder", root=str(folder_root), mask_suffix="_mask")


def test_mask_without_image(folder_root):
    (folder_root / "images" / "case4.png").unlink()
    with pytest.raises(DataError, match=r"case4_mask\.png: mask has no image"):
        build_source("folder", root=str(folder_root), mask_suffix="_mask")


def test_duplicate_ids(folder_root):
    Image.new("RGB", (40, 30)).save(folder_root / "images" / "case1.jpg")
    with pytest.raises(DataError, match="duplicate ID 'case1'"):
        build_source("folder", root=str(folder_root), mask_suffix="_mask")


def test_corrupt_and_truncated_images(folder_root):
    (folder_root / "images" / "case0.png").write_bytes(b"not an image")
    data = (folder_root / "images" / "case1.png").read_bytes()
    (folder_root / "images" / "case1.png").write_bytes(data[: len(data) // 2])
    source = build_source("folder", root=str(folder_root), mask_suffix="_mask")
    for sid in ("case0", "case1"):
        with pytest.raises(DataError, match=rf"{sid}\.png: cannot decode"):
            source.load(sid)


def test_mask_size_mismatch(folder_root):
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(folder_root / "masks" / "case2_mask.png")
    source = build_source("folder", root=str(folder_root), mask_suffix="_mask")
    with pytest.raises(DataError, match=r"case2_mask\.png: mask size 10x10 differs from its image case2\.png \(40x30\)"):
        source.load("case2")


def test_non_binary_mask_is_thresholded_with_a_warning(folder_root):
    values = np.tile(np.arange(40, dtype=np.uint8) * 6, (30, 1))
    Image.fromarray(values).save(folder_root / "masks" / "case0_mask.png")
    source = build_source("folder", root=str(folder_root), mask_suffix="_mask")
    with pytest.warns(UserWarning, match="threshold"):
        np.testing.assert_array_equal(source.load("case0")[1], (values >= 128).astype(np.uint8))
    custom = build_source("folder", root=str(folder_root), mask_suffix="_mask", mask_threshold=60)
    with pytest.warns(UserWarning):
        np.testing.assert_array_equal(custom.load("case0")[1], (values >= 60).astype(np.uint8))


def test_sixteen_bit_and_rgba_inputs(folder_root):
    Image.fromarray(np.full((30, 40), 65535, np.uint16)).save(folder_root / "masks" / "case0_mask.png")
    Image.new("RGBA", (40, 30), (10, 20, 30, 128)).save(folder_root / "images" / "case0.png")
    with pytest.warns(UserWarning, match="converted to RGB"):
        image, mask = build_source("folder", root=str(folder_root), mask_suffix="_mask").load("case0")
    assert image.shape == (30, 40, 3) and mask.min() == 1


def test_empty_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="no images found"):
        build_source("folder", root=str(tmp_path))


def test_unknown_dataset_lists_choices():
    with pytest.raises(ConfigError, match="valid choices: folder, isic, ph2, synthetic"):
        build_source("imagenet")


# --- folders and pairing ------------------------------------------------------------------------

def test_size_mismatch_names_both_files_and_sizes(isic_root):
    gt = isic_root / "ISIC-2017_Training_Part1_GroundTruth" / "ISIC_0000003_segmentation.png"
    Image.fromarray(np.zeros((20, 25), np.uint8)).save(gt)
    with pytest.raises(DataError, match=r"ISIC_0000003_segmentation\.png: mask size 25x20 differs from its "
                                        r"image ISIC_0000003\.jpg \(40x30\)"):
        build_source("isic", root=str(isic_root)).load("ISIC_0000003")


@pytest.mark.parametrize("folder", ["images", "masks"])
def test_duplicate_ids_name_both_files(folder_root, folder):
    name = "case1.jpg" if folder == "images" else "case1_mask.bmp"
    Image.new("L", (40, 30)).save(folder_root / folder / name)
    with pytest.raises(DataError, match="duplicate ID 'case1'") as err:
        build_source("folder", root=str(folder_root), mask_suffix="_mask")
    assert name in str(err.value) and f"{folder}/case1{'' if folder == 'images' else '_mask'}.png" in str(err.value)


def test_duplicate_ids_in_the_ph2_tree(ph2_tree):
    copy = ph2_tree / "PH2Dataset" / "backup" / "IMD003_Dermoscopic_Image" / "IMD003.bmp"
    copy.parent.mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(copy)
    with pytest.raises(DataError, match=r"duplicate ID 'IMD003'"):
        build_source("ph2", root=str(ph2_tree))


@pytest.mark.parametrize("empty", ["images", "masks"])
def test_empty_folder_is_named(folder_root, empty):
    for path in (folder_root / empty).iterdir():
        path.unlink()
    with pytest.raises(DataError, match=rf"{empty}: no {empty}"):
        build_source("folder", root=str(folder_root), mask_suffix="_mask")


def test_empty_isic_and_ph2_folders(tmp_path):
    (tmp_path / "ISIC-2017_Training_Data").mkdir()
    (tmp_path / "ISIC-2017_Training_Part1_GroundTruth").mkdir()
    with pytest.raises(DataError, match=r"ISIC-2017_Training_Data: no ISIC_<id>\.jpg images found"):
        build_source("isic", root=str(tmp_path))
    with pytest.raises(DataError, match="no PH2 images found"):
        build_source("ph2", root=str(tmp_path))
