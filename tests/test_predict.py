"""``python -m noisyseg.predict``: outputs at each image's own size, metrics, uncertainty, clear errors."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from noisyseg.checkpoint import save_checkpoint
from noisyseg.data.io import read_mask
from noisyseg.errors import DataWarning
from noisyseg.metrics import METRIC_KEYS, per_image_scores
from noisyseg.models import build_model
from noisyseg.predict import SKIPPED_STATUS, load_predictor, main, predict_folder

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"ISIC_0000001": (40, 30), "ISIC_0000002": (25, 61), "ISIC_0000003": (32, 32)}  # (width, height)


def fake_run(folder: Path, dropout: float = 0.5) -> Path:
    torch.manual_seed(0)
    options = {"in_channels": 3, "depth": 2, "base_width": 4, "dropout": dropout}
    model = build_model("unet", **options).eval()
    with torch.no_grad():  # an untrained net predicts ~0.58 everywhere: spread it so masks have contours
        model.head.weight *= 100
        model.head.bias -= model(torch.randn(2, 3, 32, 32)).median()
    config = {"model": {"name": "unet", **options}, "data": {"size": 32}, "seed": 0}
    save_checkpoint(folder / "best.pt", {"model": model.state_dict(), "epoch": 3, "config": config})
    return folder


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Images of different sizes (one greyscale JPEG) in images/, {0, 255} masks in truth/."""
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "truth").mkdir()
    for k, (sid, (width, height)) in enumerate(SIZES.items()):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        if k == 1:
            Image.fromarray(image[..., 0]).save(tmp_path / "images" / f"{sid}.jpg")  # greyscale
        else:
            Image.fromarray(image).save(tmp_path / "images" / f"{sid}.png")
        mask = np.zeros((height, width), np.uint8)
        mask[height // 4: 3 * height // 4, width // 3: 2 * width // 3] = 255
        Image.fromarray(mask).save(tmp_path / "truth" / f"{sid}_segmentation.png")
    return tmp_path


@pytest.mark.filterwarnings("ignore:.*converted to RGB")  # the greyscale image, on purpose
def test_outputs_and_metrics(tmp_path, data):
    run, out = fake_run(tmp_path / "run"), tmp_path / "out"
    assert main([str(run), str(data / "images"), str(out), "--masks", str(data / "truth"), "--batch-size", "2",
                 "--mc-samples", "3", "--no-progress"]) == 0
    preds, truths = [], []
    for sid, (width, height) in SIZES.items():
        mask = np.asarray(Image.open(out / "masks" / f"{sid}_segmentation.png"))
        prob = np.asarray(Image.open(out / "probs" / f"{sid}_prob.png"))
        unc = np.asarray(Image.open(out / "uncertainty" / f"{sid}_uncertainty.png"))
        overlay = Image.open(out / "overlays" / f"{sid}_overlay.jpg")
        assert mask.shape == prob.shape == unc.shape == (height, width) and overlay.size == (width, height)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert prob.dtype == np.uint8 and ((prob >= 128) == (mask == 255)).mean() > 0.99  # p >= 0.5 <=> mask
        preds.append(read_mask(out / "masks" / f"{sid}_segmentation.png"))
        truths.append(read_mask(data / "truth" / f"{sid}_segmentation.png"))
    assert all(0 < m.mean() < 1 for m in preds)  # real contours, not a constant prediction
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == list(SIZES)
    for row, pred, truth in zip(rows, preds, truths):
        expected = per_image_scores(pred, truth)
        for key in METRIC_KEYS:
            assert float(row[key]) == pytest.approx(expected[key][0], abs=1e-12)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["count"] == 3 and summary["config"]["data"]["size"] == 32
    assert summary["metrics"]["dice"] == pytest.approx(np.mean([float(r["dice"]) for r in rows]))
    assert summary["checkpoint"].endswith("best.pt")


def test_python_api_single_file_matches_batched(tmp_path, data):
    predictor = load_predictor(fake_run(tmp_path / "run") / "best.pt", device="cpu")
    image_path = data / "images" / "ISIC_0000001.png"
    summary = predict_folder(predictor, image_path, tmp_path / "one", overlays=False, progress=False)
    assert summary["ids"] == ["ISIC_0000001"] and "metrics" not in summary
    assert not (tmp_path / "one" / "overlays").exists()
    prob, unc = predictor.predict_image(np.asarray(Image.open(image_path)))
    written = np.asarray(Image.open(tmp_path / "one" / "probs" / "ISIC_0000001_prob.png"))
    assert unc is None and prob.shape == (30, 40)
    assert np.abs(np.round(prob * 255) - written).max() <= 1


def test_no_dropout_is_a_clear_error(tmp_path, data, capsys):
    run = fake_run(tmp_path / "run", dropout=0.0)
    assert main([str(run), str(data / "images"), str(tmp_path / "out"), "--mc-samples", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no dropout" in err and "best.pt" in err


def test_bad_inputs_exit_2_naming_the_path(tmp_path, data, capsys):
    run = fake_run(tmp_path / "run")
    (tmp_path / "empty").mkdir()
    (data / "truth" / "ISIC_0000002_segmentation.png").unlink()
    cases = [
        ([str(tmp_path / "nope.pt"), str(data / "images")], "nope.pt"),
        ([str(tmp_path / "empty"), str(data / "images")], "best.pt or last.pt"),
        ([str(run), str(tmp_path / "empty")], "empty"),
        ([str(run), str(data / "images"), "--masks", str(data / "truth")], "ISIC_0000002_segmentation.png"),
    ]
    for args, needle in cases:
        assert main([*args[:2], str(tmp_path / "out"), *args[2:], "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err, err
    (tmp_path / "blocker").write_text("a file where the output folder should go")
    assert main([str(run), str(data / "images"), str(tmp_path / "blocker" / "out"), "--no-progress"]) == 2
    assert "blocker" in capsys.readouterr().err


@pytest.mark.slow  # starts a subprocess
def test_cli_subprocess(tmp_path, data):
    run = fake_run(tmp_path / "run")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "noisyseg.predict", str(run), str(data / "images"), str(tmp_path / "out"),
                           "--device", "cpu", "--no-overlays"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["count"] == 3
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == [f"{s}_segmentation.png" for s in SIZES]


def twelve_images_one_truncated(folder: Path) -> Path:
    rng = np.random.default_rng(1)
    folder.mkdir()
    for k in range(12):
        Image.fromarray(rng.integers(0, 256, (24, 36, 3), dtype=np.uint8)).save(folder / f"img{k:02d}.png")
    whole = (folder / "img05.png").read_bytes()
    (folder / "img05.png").write_bytes(whole[: len(whole) // 2])
    return folder / "img05.png"


def test_one_unreadable_image_is_skipped_and_the_others_predicted(tmp_path, capsys):
    run, out = fake_run(tmp_path / "run"), tmp_path / "out"
    bad = twelve_images_one_truncated(tmp_path / "images")
    with pytest.warns(DataWarning) as caught:
        status = main([str(run), str(tmp_path / "images"), str(out), "--batch-size", "4", "--no-progress"])
    assert status == SKIPPED_STATUS != 0
    named = [str(w.message) for w in caught if "img05" in str(w.message)]
    assert len(named) == 1 and named[0].startswith(f"{bad}: skipped (cannot decode image")
    assert json.loads(capsys.readouterr().out)["skipped"] == 1
    good = [f"img{k:02d}" for k in range(12) if k != 5]
    assert sorted(p.name for p in (out / "masks").iterdir()) == [f"{sid}_segmentation.png" for sid in good]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["count"] == 11 and summary["ids"] == good
    assert [entry["file"] for entry in summary["skipped"]] == [str(bad)]
    assert summary["skipped"][0]["reason"].startswith("cannot decode image")


def test_strict_stops_at_the_first_unreadable_image(tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    bad = twelve_images_one_truncated(tmp_path / "images")
    assert main([str(run), str(tmp_path / "images"), str(tmp_path / "out"), "--strict", "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {bad}: cannot decode image")
