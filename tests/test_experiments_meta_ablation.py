"""The meta-ablation probes (experiments/meta_ablation) on a tiny run of the authors' recipe."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["debug=fast", "data.params.count=60", "model.depth=2", "meta.clean_batch_size=2", "trainer.batch_size=2"]

pytestmark = pytest.mark.usefixtures("one_thread")


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"meta_ablation_{name}", ROOT / "experiments" / "meta_ablation" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("model", [["model.dropout=0.5"], ["model.norm=batch"]])
def test_plateau_probe_records_every_step_without_changing_the_training(tmp_path, model):
    probe = load("plateau_probe")
    plain, recorded, rows = probe.build(TINY + model, tmp_path), probe.build(TINY + model, tmp_path), []
    probe.record(recorded.method, rows)
    plain.train_epoch(0), recorded.train_epoch(0)
    assert len(rows) == plain.steps_per_epoch
    for a, b in zip(plain.model.state_dict().values(), recorded.model.state_dict().values()):
        assert torch.equal(a, b)  # its extra forward passes neither draw the run's random numbers nor move its statistics
    for row in rows:
        assert 0 <= row["lesion_share"] <= 1 and 0 <= row["zero"] <= 1
        assert 0 <= row["lesion_mass"] <= 1 or row["lesion_mass"] != row["lesion_mass"]  # nan: all weights 0
        assert -1 <= row["clean_bias"] <= 1 and 0 < row["noisy_prob"] < 1


def test_plateau_probe_names_a_bad_override_without_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        load("plateau_probe").main(["--out", str(tmp_path), "arm=meta", "trainer.epoch=3"])
    assert exit_.value.code == 2 and "did you mean trainer.epochs?" in capsys.readouterr().err


def test_outline_probe_partitions_the_pixels_and_reads_a_learned_weighting(tmp_path):
    from noisyseg.config import compose
    from noisyseg.train import train

    probe = load("outline_probe")
    run = tmp_path / "run"
    train(compose("arm=meta_mwn_mean", "noise=coarse", "noise.level=0.5", *TINY[:3]), run)
    rows = probe.probe_run(run, reach=3, count=8)
    assert [(r["side"], r["bin"]) for r in rows] == [(side, b) for side in ("lesion", "skin") for b in ("0", "1", "2", "3+")]
    assert sum(r["pixels"] for r in rows) == pytest.approx(1) and sum(r["errors"] for r in rows) == pytest.approx(1)
    for r in rows:  # every weight column is there; the wrong-label ones are nan where a bin has no wrong label
        assert 0 <= r["wrong_share"] <= 1 and r["weight_right"] > 0
        assert 0 <= r["weighted_wrong_share"] <= 1 or r["wrong_share"] == 0
    plain = tmp_path / "plain"
    train(compose("arm=balanced", "noise=coarse", "noise.level=0.5", *TINY[:3]), plain)
    assert [set(r) for r in probe.probe_run(plain, reach=3, count=8)] == [{"run", "side", "bin", "pixels", "errors", "error_rate"}] * 8


def test_outline_probe_regions_cover_every_pixel_once():
    from noisyseg.meta.weightnet import outline_distance

    truth = (torch.rand(3, 1, 12, 12) > 0.6).float()
    regions = list(load("outline_probe").regions(truth, outline_distance(truth, 4), 4))
    assert len(regions) == 2 * len(load("outline_probe").bins(4))
    assert torch.equal(sum(mask.int() for *_, mask in regions), torch.ones_like(truth, dtype=torch.int))


def test_outline_probe_names_a_folder_that_is_not_a_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        load("outline_probe").main([str(tmp_path), "--out", str(tmp_path / "rows.csv")])
    assert exit_.value.code == 2 and f"{tmp_path / 'last.pt'}: checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "rows.csv").exists()
