"""The decode cache (noisyseg.data.cache): round trip, one entry per id list, never re-decodes on a hit,
noisy masks cached per noise configuration."""
from __future__ import annotations

import numpy as np

from noisyseg.data import build_source
from noisyseg.data.cache import load_arrays
from noisyseg.noise import MaskNoise


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


def test_noisy_masks_are_cached_per_noise_config(tmp_path):
    source = build_source("synthetic", count=6, size=64, seed=0)
    noise = MaskNoise("morph", 1.0, 1.0, seed=3)
    first = load_arrays(source, source.ids, 32, tmp_path, noise=noise, split="noisy")
    again = load_arrays(source, source.ids, 32, tmp_path, noise=MaskNoise("morph", 1.0, 1.0, seed=3), split="noisy")
    np.testing.assert_array_equal(first["noisy_masks"], again["noisy_masks"])
    assert (first["noisy_masks"] != first["masks"]).any()
    load_arrays(source, source.ids, 32, tmp_path, noise=MaskNoise("morph", 0.5, 1.0, seed=3), split="noisy")
    assert len(list(tmp_path.glob("*.npz"))) == 2
