"""Splits and their manifests (noisyseg.data.splits): deterministic, disjoint, sized; official val/test kept."""
from __future__ import annotations

import pytest

from noisyseg.data import make_splits
from noisyseg.data.splits import load_manifest, save_manifest
from noisyseg.errors import DataError

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
