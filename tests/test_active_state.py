"""The active-learning bookkeeping: splits stay paired with their images, the state round-trips."""
from __future__ import annotations

import json

import numpy as np
import torch

from noisyseg.active.pool import Pool
from noisyseg.active.state import STATE_FORMAT, ActiveState


def tiny_pool(n: int = 5) -> Pool:
    images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)  # image k is all k
    masks = np.zeros((n, 4, 4), np.uint8)
    return Pool([f"id{k}" for k in range(n)], images, masks, masks + 1)  # the oracle answers all-ones


def test_splits_pair_labels_with_their_images():
    pool = tiny_pool()
    state = ActiveState(labeled={"id3": 1, "id0": 0})
    assert list(state.splits(pool, np.zeros((0, 4, 4), np.uint8))) == ["clean"]  # no pseudo-labels: no noisy split
    state.pseudo = ["id4", "id1"]  # not in pool order
    pseudo_masks = np.stack([np.full((4, 4), 4, np.uint8), np.full((4, 4), 1, np.uint8)])
    splits = state.splits(pool, pseudo_masks)
    assert splits["clean"]["images"][:, 0, 0, 0].tolist() == [0, 3]  # pool order
    assert (splits["clean"]["noisy_masks"] == 1).all() and (splits["clean"]["masks"] == 0).all()
    assert splits["noisy"]["images"][:, 0, 0, 0].tolist() == [4, 1]
    assert np.array_equal(splits["noisy"]["noisy_masks"][:, 0, 0], [4, 1])
    assert state.unlabeled(pool) == ["id1", "id2", "id4"]


def test_state_round_trips_and_keeps_the_shared_counters(tmp_path):
    state = ActiveState(labeled={"a": 0, "b": 1}, pseudo=["c"], history=[{"round": 0}, {"round": 1}],
                        epochs=[{"epoch": 0}], epoch=3, counters={"steps": 7, "skipped": 1})
    state.save(tmp_path, {"model": {"w": torch.ones(2)}})
    saved = torch.load(tmp_path / "state.pt", weights_only=True)
    assert saved["format"] == STATE_FORMAT and saved["round"] == 1 and torch.equal(saved["model"]["w"], torch.ones(2))
    assert json.loads((tmp_path / "state.json").read_text()) == {"round": 1, "labeled": {"a": 0, "b": 1}, "pseudo": ["c"]}
    assert (tmp_path / "rounds.csv").read_text().count("\n") == 3
    restored = ActiveState()
    counters = restored.counters  # a trainer holds this dict
    restored.load_state_dict(saved)
    assert restored.counters is counters and counters == {"steps": 7, "skipped": 1}
    assert restored.state_dict() == state.state_dict()
