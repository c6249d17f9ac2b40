"""End-to-end training: Hydra entry point, results, resume, bad configuration."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import raise_at_epoch
from hydra import compose, initialize_config_dir

from noisyseg.build import build_run
from noisyseg.data import build_source
from noisyseg.errors import ConfigError, DataError
from noisyseg.metrics import METRIC_KEYS
from noisyseg.config import CONFIG_DIR
from noisyseg.train import train

ROOT = Path(__file__).resolve().parents[1]


def config(*overrides: str):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=["debug=fast", "data.params.count=80", *overrides])


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "noisyseg.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # starts a subprocess
@pytest.mark.parametrize("method, extra", [("clean", "loss=dice"), ("meta", "noise=morph")])
def test_cli_run_writes_results(tmp_path, method, extra):
    out = tmp_path / "run"
    proc = run_cli("debug=fast", "data.params.count=80", f"method={method}", extra, f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert set(results["test"]) == set(METRIC_KEYS)
    assert results["config"]["method"]["name"] == method
    assert results["config"][extra.split("=")[0]]["name" if extra.startswith("loss") else "kind"] == extra.split("=")[1]
    assert (out / "splits.json").exists() and (out / "metrics.csv").read_text().count("\n") == 3
    assert (out / "best.pt").exists() and (out / ".hydra" / "config.yaml").exists()
    printed = json.loads(proc.stdout)  # the realised noise next to the test scores
    assert printed["test"] == results["test"] and printed["noise"]["realised_dice"] == results["noise"]["realised_dice"]


@pytest.mark.parametrize("override, message", [
    ("model=resnet", "Could not find 'model/resnet'"),
    ("data.split.clean=1000", "data.split.clean=1000 asks for"),
    ("data=folder", "full_key: data.params.root"),
])
@pytest.mark.slow  # starts a subprocess
def test_cli_bad_input_fails_cleanly(tmp_path, override, message):
    out = tmp_path / "run"
    proc = run_cli("debug=fast", override, f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not (out / "results.json").exists()


def test_method_seam_and_splits_reuse(tmp_path):
    first = train(config("method=balanced"), tmp_path / "a")
    second = train(config("method=noisy_only", f"data.splits_file={tmp_path / 'a' / 'splits.json'}", "seed=9"), tmp_path / "b")
    assert first["split_sizes"] == second["split_sizes"]
    assert json.loads((tmp_path / "a" / "splits.json").read_text()) == json.loads((tmp_path / "b" / "splits.json").read_text())


def interrupt_at_epoch(cfg, run_dir: Path, epoch: int, monkeypatch) -> None:
    """Train ``cfg`` into ``run_dir`` as if Ctrl-C came when ``epoch`` starts."""
    with monkeypatch.context() as patch:
        raise_at_epoch(patch, epoch, KeyboardInterrupt)
        with pytest.raises(KeyboardInterrupt):
            train(cfg, run_dir)


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    cfg = config("trainer.epochs=3", "model.dropout=0.3")
    straight = train(cfg, tmp_path / "straight")
    interrupt_at_epoch(cfg, tmp_path / "resumed", 2, monkeypatch)
    assert not (tmp_path / "resumed" / "results.json").exists()
    cfg.resume = str(tmp_path / "resumed")
    resumed = train(cfg)
    assert resumed["test"] == straight["test"]
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_build_run_starts_where_train_starts(tmp_path):
    """Scripts that step a run themselves (the probes, the cost benchmark) get train()'s run, step for step."""
    cfg = config("trainer.epochs=1", "model.dropout=0.3")
    train(cfg, tmp_path / "trained")
    parts = build_run(cfg, tmp_path / "built")
    parts.trainer.train_epoch(0)
    trained = torch.load(tmp_path / "trained" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(trained[k], v) for k, v in parts.net.state_dict().items())
    with pytest.raises(ConfigError, match="trainer.epochs >= 1"):
        build_run(config("trainer.epochs=0"), tmp_path / "invalid")  # validated before any data is built
    assert not (tmp_path / "invalid").exists()


def test_resume_with_different_config_is_refused(tmp_path):
    train(config(), tmp_path / "run")
    cfg = config("optim.lr=0.1", f"resume={tmp_path / 'run'}")
    with pytest.raises(ConfigError, match="differs from the checkpoint's in optim.lr"):
        train(cfg)


def test_method_needing_empty_split(tmp_path):
    with pytest.raises(DataError, match="method=clean trains on the clean split"):
        train(config("method=clean", "data.split.clean=0"), tmp_path)


def test_meta_method_end_to_end(tmp_path):
    results = train(config("method=meta", "noise=flip", "noise.level=1.0", "meta.clean_batch_size=2"), tmp_path)
    counts = results["method_state"]["counts"]
    assert sum(counts.values()) == 6 and results["steps"] + results["skipped_steps"] == 6
    assert results["time"]["epochs"] == 2 and results["time"]["wall_s"] > 0 and results["time"]["cpu_s"] > 0
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == ["epoch_000.png", "epoch_001.png"]
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert "train_weight_zero_fraction" in header and "train_weight_wrong_right_ratio" in header


def test_meta_clean_every_resumes_mid_cycle(tmp_path, monkeypatch):
    """meta.clean_every=4 over 6 steps: the checkpoint keeps the reused clean gradient, so a run resumed
    after epoch 0 (3 of 4 steps into the cycle) ends with the uninterrupted run's weights; results.json
    stays JSON."""
    cfg = config("method=meta", "meta.clean_batch_size=2", "meta.clean_every=4")
    full = train(cfg, tmp_path / "full")
    assert full["method_state"]["calls"] == 6 and "clean_gradient" not in full["method_state"]
    interrupt_at_epoch(cfg, tmp_path / "part", 1, monkeypatch)
    cfg.resume = str(tmp_path / "part")
    resumed = train(cfg)
    assert resumed["method_state"]["calls"] == 6
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "part" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_noise_corrupts_only_the_noisy_split(tmp_path):
    results = train(config("noise=morph", "noise.level=1.0", "method=noisy_only"), tmp_path)
    assert results["noise"]["kind"] == "morph" and results["noise"]["realised_dice"] < 0.8
    assert train(config("method=noisy_only", "noise=none"), tmp_path / "clean")["noise"]["realised_dice"] == 1.0


def test_trained_network_beats_best_threshold_baseline(tmp_path):
    """The synthetic data is not trivially solvable: the best global colour/intensity threshold
    (chosen on the test set itself) scores clearly below a small U-Net trained for a few seconds."""
    from noisyseg.data.synthetic import threshold_baseline_dice

    results = train(config("data.size=48", "data.params.count=240", "data.split.test=40", "model.depth=3",
                           "model.base_width=8", "trainer.epochs=4", "trainer.steps_per_epoch=40",
                           "trainer.batch_size=16", "optim.lr=0.01"), tmp_path)
    split = json.loads((tmp_path / "splits.json").read_text())["test"]
    source = build_source("synthetic", count=240, size=48, seed=0)
    images, masks = zip(*(source.load(i) for i in split))
    baseline = threshold_baseline_dice(np.stack(images), np.stack(masks))
    assert results["test"]["dice"] > baseline + 0.2, (results["test"]["dice"], baseline)


def test_channels_last_trains_like_the_default_layout(tmp_path):
    default = train(config("threads=1"), tmp_path / "default")
    nhwc = train(config("threads=1", "trainer.channels_last=true"), tmp_path / "nhwc")
    assert nhwc["test"]["dice"] == pytest.approx(default["test"]["dice"], abs=1e-3)


def test_compile_is_refused_for_the_meta_step(tmp_path):
    with pytest.raises(ConfigError, match="trainer.compile"):
        train(config("method=meta", "trainer.compile=true"), tmp_path)
    assert not (tmp_path / "splits.json").exists()


def test_noise_is_identical_across_methods_and_fixed_by_the_seed(tmp_path):
    """Every arm of a benchmark sees the same noisy masks; another seed draws other ones."""
    from noisyseg.build import load_splits

    def noisy_masks(*overrides):
        cfg = config("noise=coarse", "noise.target_dice=annotator_mean", "noise.missing=0.2", "cache_dir=null", *overrides)
        return load_splits(cfg, tmp_path, manifest=False)[1]["noisy"]["noisy_masks"]

    reference = noisy_masks("method=meta")
    assert np.array_equal(reference, noisy_masks("method=balanced"))
    assert np.array_equal(reference, noisy_masks("method=oracle"))
    assert not np.array_equal(reference, noisy_masks("seed=1"))


def test_results_report_the_calibrated_and_realised_noise(tmp_path):
    results = train(config("noise=mix", "noise.target_dice=0.7", "noise.missing=0.25", "noise.fraction=0.5"), tmp_path)
    noise = results["noise"]
    assert noise["target_dice"] == 0.7 and 0 < noise["level"] <= 1 and noise["missing_count"] > 0
    assert noise["realised_dice_corrupted"] == pytest.approx(0.7, abs=0.05)  # 24 of the 80 images: sampling error
    assert noise["realised_dice"] < noise["realised_dice_corrupted"]  # the missing masks score 0
    assert results["config"]["noise"]["level"] == 0.5  # the configured level, ignored with target_dice


def test_metrics_track_the_fit_of_the_noisy_set(tmp_path):
    train(config("noise=morph", "noise.level=1.0"), tmp_path / "noisy")
    rows = (tmp_path / "noisy" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {"noisyset_dice_vs_noisy", "noisyset_dice_vs_true"} <= set(header)
    assert all(row.split(",")[header.index("noisyset_dice_vs_true")] for row in rows[1:])
    train(config("noise=none"), tmp_path / "clean")  # no annotation noise: no curve
    assert "noisyset_dice_vs_noisy" not in (tmp_path / "clean" / "metrics.csv").read_text()


def test_missing_or_target_without_a_noise_kind_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="need a noise kind"):
        train(config("noise=none", "noise.missing=0.2"), tmp_path)
    with pytest.raises(ConfigError, match="noise.target_dice"):
        train(config("noise=coarse", "noise.target_dice=sloppy"), tmp_path)


def test_the_main_job_is_the_recommended_recipe_on_realistic_annotator_noise():
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        default = compose("train")
        recommended = compose("train", overrides=["arm=recommended"])
        plain = compose("train", overrides=["method=clean", "noise=none"])
    assert default.noise.kind == "coarse" and default.noise.target_dice == "realistic"
    assert default.method == recommended.method and default.meta == recommended.meta and default.label is None
    assert plain.method.name == "clean" and plain.noise.kind == "none"  # the command line wins over the arm
