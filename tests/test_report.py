"""The run report: sections present, images embedded, missing data noted, active runs, bad input."""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from noisyseg.errors import NoisysegError
from noisyseg.report import build_report, main
from noisyseg.runlog import image_grid
from noisyseg.config import CONFIG_DIR
from noisyseg.train import train

ROOT = Path(__file__).resolve().parents[1]
PNG = re.compile(r'src="data:image/png;base64,([^"]+)"')


@pytest.fixture(scope="module")
def meta_run(tmp_path_factory) -> Path:
    """One tiny finished meta run (seconds): metrics, weight grids, checkpoint, per-image scores."""
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["debug=fast", "data.params.count=40", "method=meta", "noise=morph",
                                           "trainer.steps_per_epoch=1"])
    run_dir = tmp_path_factory.mktemp("meta_run")
    train(cfg, run_dir)
    return run_dir


def copy_run(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest)
    return dest


def embedded_images(page: str) -> list[np.ndarray]:
    images = [cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_COLOR) for b64 in PNG.findall(page)]
    assert all(image is not None and image.size for image in images)
    return images


def test_report_of_meta_run(meta_run, tmp_path):
    run = copy_run(meta_run, tmp_path / "run")
    path = build_report(run)
    assert path == run / "report.html"
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    page = path.read_text()
    for section in ("summary", "curves", "weights", "cases", "config"):
        assert f'<section id="{section}">' in page
    assert "uncertainty" not in page and "not available" not in page
    # 1 curves figure + 2 weight grids (2 epochs) + 6 test cases (8 test images)
    assert len(embedded_images(page)) == 1 + 2 + 6
    results = json.loads((run / "results.json").read_text())
    assert f"{results['test']['dice']:.3f}" in page and "name: meta" in page and "kind: morph" in page
    dice = np.loadtxt(run / "test_per_image.csv", delimiter=",", skiprows=1)[:, 1]
    assert f"Dice {dice.max():.3f}" in page and f"Dice {dice.min():.3f}" in page
    assert "differs from test_per_image.csv" not in page  # re-prediction reproduces the saved scores


def test_missing_data_is_noted_not_fatal(meta_run, tmp_path):
    run = copy_run(meta_run, tmp_path / "run")
    results = json.loads((run / "results.json").read_text())
    results["config"]["data"] = {**results["config"]["data"], "name": "folder", "params": {"root": str(tmp_path / "gone")}}
    (run / "results.json").write_text(json.dumps(results))
    page = build_report(run, out=tmp_path / "out" / "r.html").read_text()
    assert "test images not available" in page and str(tmp_path / "gone") in page
    assert '<section id="curves">' in page and len(embedded_images(page)) == 1 + 2


def test_unfinished_run(meta_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(meta_run / "metrics.csv", run)
    page = build_report(run).read_text()
    assert "has not finished" in page and len(embedded_images(page)) == 1


def test_active_run_folder(meta_run, tmp_path):
    """What the active-learning loop writes: rounds.csv, uncertainty grids, state.pt, results with rounds."""
    run = tmp_path / "active"
    (run / "uncertainty").mkdir(parents=True)
    shutil.copy(meta_run / "splits.json", run)
    config = json.loads((meta_run / "results.json").read_text())["config"]
    rounds = [{"round": r, "labeled": 8 + 4 * r, "pseudo": 2 * r, "test_dice": 0.5 + 0.1 * r, "test_jaccard": 0.4 + 0.1 * r}
              for r in range(3)]
    (run / "results.json").write_text(json.dumps({"config": config, "rounds": rounds}))
    (run / "rounds.csv").write_text("round,labeled,pseudo,test_dice,test_jaccard\n"
                                    + "".join(",".join(str(v) for v in r.values()) + "\n" for r in rounds))
    torch.save({"model": torch.load(meta_run / "best.pt", weights_only=True)["model"]}, run / "state.pt")
    for r in range(3):
        grid = image_grid([np.zeros((2, 16, 16, 3), np.uint8), np.full((2, 16, 16), r / 2, np.float32)])
        cv2.imwrite(str(run / "uncertainty" / f"round_{r:02d}.png"), grid)
    page = build_report(run).read_text()
    assert '<section id="uncertainty">' in page and "round 02" in page and "round 2" in page
    assert "ranked by Dice of the checkpoint" in page
    assert len(embedded_images(page)) == 1 + 3 + 6


def test_not_a_run_folder(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(NoisysegError, match="not a run folder"):
        build_report(tmp_path)
    assert main([str(tmp_path / "missing")]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.slow  # starts a subprocess
def test_cli_exit_code(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "noisyseg.report", str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and str(tmp_path) in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "report.html").exists()
