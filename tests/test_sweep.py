"""The noise-sweep aggregation on fabricated run folders, and sweep cells that are never recomputed."""
from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("aggregate", ROOT / "experiments" / "noise_sweep" / "aggregate.py")
aggregate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(aggregate)


def fabricate(root: Path, label: str, level: float, seed: int, dice: float) -> None:
    run = root / "runs" / label / f"level={level}" / f"seed={seed}"
    run.mkdir(parents=True)
    results = {"test": {"dice": dice, "jaccard": dice - 0.1}, "noise": {"realised_dice": 1 - level / 2},
               "config": {"label": label, "seed": seed, "noise": {"level": level}, "method": {"name": "x"}}}
    (run / "results.json").write_text(json.dumps(results))


def test_aggregate_tables_and_plot(tmp_path):
    for seed, (a, b) in enumerate([(0.9, 0.8), (0.8, 0.6), (0.7, 0.7)]):
        fabricate(tmp_path, "clean", 0.0, seed, a)
        fabricate(tmp_path, "meta", 1.0, seed, b)
    aggregate.main([str(tmp_path)])
    rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
    clean = next(r for r in rows if r["label"] == "clean")
    assert float(clean["dice_mean"]) == pytest.approx(0.8) and float(clean["dice_std"]) == pytest.approx(0.1)
    assert int(clean["n"]) == 3 and float(clean["realised_dice"]) == 1.0
    table = (tmp_path / "summary.md").read_text()
    assert "| clean | 0.800 ± 0.100 / 0.700 | – |" in table and "noisy-label Dice 0.50" in table
    assert (tmp_path / "dice_vs_noise.png").stat().st_size > 1000


def test_aggregate_without_runs_fails(tmp_path):
    with pytest.raises(SystemExit, match="no results.json"):
        aggregate.main([str(tmp_path)])


def test_reuse_returns_finished_cell_without_training(tmp_path, monkeypatch):
    from test_train import config

    from noisyseg import train as train_module

    first = train_module.train(config("reuse=true"), tmp_path)

    def boom(*args, **kwargs):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr(train_module, "build_data", boom)
    assert train_module.train(config("reuse=true"), tmp_path) == first


active_spec = importlib.util.spec_from_file_location("active_aggregate", ROOT / "experiments" / "active_curve" / "aggregate.py")
active_aggregate = importlib.util.module_from_spec(active_spec)
active_spec.loader.exec_module(active_aggregate)


def fabricate_active(root: Path, label: str, seed: int, dices: list[float], labeled: list[int]) -> None:
    run = root / "runs" / label / f"seed={seed}"
    run.mkdir(parents=True)
    rounds = [{"round": k, "labeled": n, "pseudo": 0, "test_dice": d, "test_jaccard": d - 0.1}
              for k, (n, d) in enumerate(zip(labeled, dices))]
    results = {"rounds": rounds, "config": {"label": label, "seed": seed, "active": {"sampler": {"name": label}}}}
    (run / "results.json").write_text(json.dumps(results))


def test_active_curve_aggregate(tmp_path):
    for seed, shift in enumerate([0.0, 0.1, 0.2]):
        fabricate_active(tmp_path, "random", seed, [0.5 + shift, 0.6 + shift], [10, 20])
        fabricate_active(tmp_path, "full", seed, [0.9], [40])
    active_aggregate.main([str(tmp_path)])
    rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
    first = next(r for r in rows if r["label"] == "random" and r["labeled"] == "10")
    assert float(first["dice_mean"]) == pytest.approx(0.6) and float(first["dice_std"]) == pytest.approx(0.1)
    table = (tmp_path / "summary.md").read_text()
    assert "| random | 0.600 ± 0.100 | 0.700 ± 0.100 | 0.650 ± 0.100 |" in table  # last: mean over rounds
    assert "| full (40 labeled) |" in table and "0.900 ± 0.000" in table
    assert (tmp_path / "dice_vs_labels.png").stat().st_size > 1000
