"""Noise levels named by the Dice they give (noisyseg.data.calibration): the bisection meets its
target on synthetic and real (PH2) masks, unreachable targets fail clearly, and the level is cached."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import shared_or_skip

from noisyseg.data.calibration import TOLERANCE, calibrate, corrupted_dice
from noisyseg.data.cache import load_arrays
from noisyseg.data.sources import build_source
from noisyseg.errors import ConfigError
from noisyseg.noise import NAMED_DICE, MaskNoise, realised_dice, target_dice


def test_named_targets_resolve_and_bad_ones_fail():
    assert target_dice("realistic") == 0.86 and target_dice("annotator_mean") == 0.78 and target_dice(0.7) == 0.7
    for bad in ("sloppy", 1.0, 0, -0.5, None):
        with pytest.raises(ConfigError, match="noise.target_dice"):
            target_dice(bad)


@pytest.mark.parametrize("kind", ["coarse", "mix", "morph"])
def test_calibration_meets_named_targets_on_synthetic_masks(kind, tmp_path):
    source = build_source("synthetic", count=60, size=48, seed=0)
    for name, target in NAMED_DICE.items():
        noise, report = calibrate(MaskNoise(kind, 0.5, seed=1), target, source, source.ids, 48, tmp_path)
        assert report["target_dice"] == target and noise.level == report["level"]
        # what training then sees: the split decoded with the calibrated noise
        arrays = load_arrays(source, source.ids, 48, None, noise=noise)
        assert realised_dice(arrays["noisy_masks"], arrays["masks"]) == pytest.approx(target, abs=TOLERANCE), name


def test_calibration_meets_its_target_on_ph2_masks():
    source = build_source("ph2", root=str(shared_or_skip("ph2")))
    ids = source.ids[:60]
    for kind in ("coarse", "mix"):
        for target in (NAMED_DICE["annotator_mean"], NAMED_DICE["severe"]):
            noise, _ = calibrate(MaskNoise(kind, 0.5, seed=0), target, source, ids, 80)
            noisy = load_arrays(source, ids, 80, None, noise=noise)
            assert realised_dice(noisy["noisy_masks"], noisy["masks"]) == pytest.approx(target, abs=TOLERANCE)


def test_fraction_and_missing_do_not_move_the_level():
    source = build_source("synthetic", count=40, size=48, seed=0)
    levels = {calibrate(MaskNoise("morph", 0.5, fraction, seed=2, missing=missing), 0.78, source, source.ids, 48)[0].level
              for fraction, missing in ((1.0, 0.0), (0.5, 0.0), (1.0, 0.3))}
    assert len(levels) == 1


def test_unreachable_target_names_the_kind_and_the_best_dice():
    source = build_source("synthetic", count=20, size=48, seed=0)
    with pytest.raises(ConfigError, match=r"out of reach of noise.kind=coarse.*Dice 0\.\d+"):
        calibrate(MaskNoise("coarse", 0.5), 0.2, source, source.ids, 48)


def test_level_is_cached_per_data_and_target(tmp_path, monkeypatch):
    source = build_source("synthetic", count=20, size=48, seed=0)
    noise, report = calibrate(MaskNoise("morph", 0.5), 0.8, source, source.ids, 48, tmp_path)
    [cached] = tmp_path.glob("noise_level_*.json")
    assert json.loads(cached.read_text()) == report

    def no_bisection(*args, **kwargs):
        raise AssertionError("the cached level should have been read")

    monkeypatch.setattr("noisyseg.data.calibration.find_level", no_bisection)
    again, _ = calibrate(MaskNoise("morph", 0.5), 0.8, source, source.ids, 48, tmp_path)
    assert again.level == noise.level
    monkeypatch.undo()
    calibrate(MaskNoise("morph", 0.5), 0.7, source, source.ids, 48, tmp_path)  # another target: a new entry
    assert len(list(tmp_path.glob("noise_level_*.json"))) == 2


def test_corrupted_dice_falls_with_the_level():
    source = build_source("synthetic", count=30, size=48, seed=0)
    masks = {i: source.load(i)[1] for i in source.ids}
    for kind in ("coarse", "mix", "morph", "markov"):
        dice = [corrupted_dice(MaskNoise(kind, level, seed=0), masks, 48) for level in (0.1, 0.4, 0.7, 1.0)]
        assert np.all(np.diff(dice) < 0), (kind, dice)


def test_calibration_meets_the_severe_target_with_markov(tmp_path):
    """markov runs a chain of up to 384 steps per mask, so one target on 20 masks keeps this fast."""
    source = build_source("synthetic", count=20, size=48, seed=0)
    noise, _ = calibrate(MaskNoise("markov", 0.5, seed=1), NAMED_DICE["severe"], source, source.ids, 48, tmp_path)
    arrays = load_arrays(source, source.ids, 48, None, noise=noise)
    assert realised_dice(arrays["noisy_masks"], arrays["masks"]) == pytest.approx(NAMED_DICE["severe"], abs=TOLERANCE)
