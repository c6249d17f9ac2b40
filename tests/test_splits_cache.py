"""Splits, manifests, the decode cache and joint augmentation."""
from __future__ import annotations

import numpy as np
import pytest

from noisyseg.data import build_source, make_splits
from noisyseg.data.cache import load_arrays
from noisyseg.data.dataset import SegmentationDataset
from noisyseg.data.splits import load_manifest, save_manifest
from noisyseg.data.transforms import build_transform
from noisyseg.errors import ConfigError, DataError

IDS = [f"id{i:03d}" for i in range(100)]


def test_splits_deterministic_disjoint_and_sized():
    a = make_splits(IDS, seed=3, clean=10, val=0.1, test=20, pool=5)
    assert a == make_splits(list(reversed(IDS)), seed=3, clean=10, val=0.1, test=20, pool=5)
    assert a != make_splits(IDS, seed=4, clean=10, val=0.1, test=20, pool=5)
    sizes = {k: len(v) for k, v in a.items()}
    assert sizes == {"clean": 10, "noisy": 55, "val": 10, "test": 20, "pool": 5}
    everything = [i for ids in a.values() for i in ids]
    assert sorted(everything) == IDS


def test_official_val_test_are_kept():
    splits = make_splits(IDS, seed=0, clean=5, val=10, test=10, official={"val": IDS[:3], "test": IDS[3:5]})
    assert splits["val"] == IDS[:3] and splits["test"] == IDS[3:5]
    assert len(splits["noisy"]) == 100 - 5 - 5


@pytest.mark.parametrize("kwargs, match", [
    ({"clean": 500, "val": 10, "test": 10}, r"data.split.clean=500 asks for 500 images but only 80"),
    ({"clean": 5, "val": 0, "test": 10}, "val split is empty"),
    ({"clean": -1, "val": 5, "test": 5}, "must be >= 0"),
    ({"clean": 2.5, "val": 5, "test": 5}, "fraction"),
])
def test_bad_split_sizes(kwargs, match):
    with pytest.raises(DataError, match=match):
        make_splits(IDS, seed=0, **kwargs)


def test_manifest_round_trip_and_validation(tmp_path):
    splits = make_splits(IDS, seed=1, clean=5, val=5, test=5)
    save_manifest(tmp_path / "splits.json", splits)
    assert load_manifest(tmp_path / "splits.json", IDS) == splits
    with pytest.raises(DataError, match="names IDs not in the data"):
        load_manifest(tmp_path / "splits.json", IDS[:50])
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(DataError, match="bad.json: not a valid split manifest"):
        load_manifest(tmp_path / "bad.json", IDS)


def test_cache_round_trip_and_key(tmp_path, folder_root):
    source = build_source("folder", root=str(folder_root), mask_suffix="_mask")
    first = load_arrays(source, ["case1", "case0"], 16, tmp_path / "cache", split="x")
    files = list((tmp_path / "cache").glob("*.npz"))
    assert len(files) == 1 and first["images"].shape == (2, 16, 16, 3) and first["masks"].dtype == np.uint8
    (folder_root / "images" / "case1.png").write_bytes(b"corrupt")  # a cache hit never re-decodes
    again = load_arrays(source, ["case1", "case0"], 16, tmp_path / "cache", split="x")
    np.testing.assert_array_equal(first["images"], again["images"])
    load_arrays(source, ["case0"], 16, tmp_path / "cache", split="x")  # another ID list -> another entry
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_augmentation_keeps_image_and_maps_aligned():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    masks = (rng.random((3, 32, 32)) > 0.5).astype(np.uint8)
    # Encode the mask into the image's red channel: after a joint transform they must still agree.
    images[..., 0] = masks * 255
    transform = build_transform([{"name": "HorizontalFlip", "p": 0.5}, {"name": "RandomRotate90", "p": 1.0},
                                 {"name": "Transpose", "p": 0.5}])
    dataset = SegmentationDataset(images, {"mask": masks, "other": 1 - masks}, transform)
    for seed in range(8):
        item = dataset[(seed % 3, seed)]
        red = item["image"][0] > item["image"][0].mean()
        assert (red == (item["mask"][0] > 0.5)).all()
        assert (item["other"] == 1 - item["mask"]).all()
    np.testing.assert_array_equal(dataset[(1, 7)]["image"], dataset[(1, 7)]["image"])


def test_unknown_transform():
    with pytest.raises(ConfigError, match="'Blurry' is not an albumentations transform"):
        build_transform([{"name": "Blurry"}])


def test_noisy_masks_are_cached_per_noise_config(tmp_path):
    from noisyseg.noise import MaskNoise

    source = build_source("synthetic", count=6, size=64, seed=0)
    noise = MaskNoise("morph", 1.0, 1.0, seed=3)
    first = load_arrays(source, source.ids, 32, tmp_path, noise=noise, split="noisy")
    again = load_arrays(source, source.ids, 32, tmp_path, noise=MaskNoise("morph", 1.0, 1.0, seed=3), split="noisy")
    np.testing.assert_array_equal(first["noisy_masks"], again["noisy_masks"])
    assert (first["noisy_masks"] != first["masks"]).any()
    load_arrays(source, source.ids, 32, tmp_path, noise=MaskNoise("morph", 0.5, 1.0, seed=3), split="noisy")
    assert len(list(tmp_path.glob("*.npz"))) == 2
