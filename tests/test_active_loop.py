"""The active-learning loop: rounds, oracle, pseudo-labels, resume after a kill, pool exhaustion, bad input."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import raise_at_epoch, run_cli_in_process
from hydra import compose, initialize_config_dir

from noisyseg.active.loop import ActiveLoop, main, run_active
from noisyseg.active.oracle import OracleError, OracleLog, SimulatedOracle
from noisyseg.active.pseudo import build_pseudo_policy
from noisyseg.errors import ConfigError, DataError
from noisyseg.methods import CleanOnly, MetaReweighted
from noisyseg.config import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[1]
TINY = ["debug=fast", "data.params.count=60", "data.split.val=8", "data.split.test=8", "active.initial=6",
        "active.rounds=3", "active.queries=4", "active.epochs=1", "active.epochs_per_round=1", "active.mc_samples=3",
        "active.chunk=16"]
PSEUDO = ["active.pseudo.start_round=2", "active.pseudo.step=3"]


def config(*overrides: str):
    """A seconds-long loop; CEAL pseudo-labels from round 2 unless an override picks another policy."""
    pseudo = [] if any(o.startswith("active/pseudo=") for o in overrides) else PSEUDO
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("active_loop", overrides=[*TINY, *pseudo, *overrides])


def test_rounds_grow_the_labeled_set(tmp_path):
    results = run_active(config(), tmp_path)
    rounds = results["rounds"]
    assert [r["labeled"] for r in rounds] == [6, 10, 14, 18]
    assert [r["pseudo"] for r in rounds] == [0, 0, 3, 6]  # CEAL's schedule from start_round=2, step=3
    assert all(0 <= r["pseudo_dice"] <= 1 for r in rounds[2:])
    log = json.loads((tmp_path / "oracle.json").read_text())
    asked = [i for entry in log for i in entry["ids"]]
    assert len(asked) == len(set(asked)) == 18 == results["oracle_queries"]
    assert (tmp_path / "rounds.csv").read_text().count("\n") == 5
    assert sorted(p.name for p in (tmp_path / "uncertainty").iterdir()) == ["round_01.png", "round_02.png", "round_03.png"]
    assert results["stopped"] == "rounds" and results["config"]["active"]["sampler"]["name"] == "ceal"
    state = json.loads((tmp_path / "state.json").read_text())
    assert sorted(state["labeled"]) == sorted(asked) and set(state["labeled"].values()) == {0, 1, 2, 3}


class Killed(Exception):
    pass


def _kill_after_oracle(monkeypatch, round_: int) -> None:
    original = OracleLog.record

    def record(self, r, ids):
        original(self, r, ids)
        if r == round_:
            raise Killed

    monkeypatch.setattr(OracleLog, "record", record)


@pytest.mark.parametrize("kill", ["during_training", "after_oracle_answered"])
def test_kill_and_resume_equals_uninterrupted(tmp_path, monkeypatch, kill):
    cfg = config("active.rounds=3", "active/sampler=entropy")
    reference = run_active(cfg, tmp_path / "reference")
    with monkeypatch.context() as patch:
        if kill == "during_training":
            raise_at_epoch(patch, 2, Killed)  # round 2's fine-tuning epoch
        else:
            _kill_after_oracle(patch, 2)
        with pytest.raises(Killed):
            run_active(cfg, tmp_path / "killed")
    asked_before = set(OracleLog(tmp_path / "killed" / "oracle.json").all_ids())
    asked_again = []
    original = SimulatedOracle.label
    monkeypatch.setattr(SimulatedOracle, "label", lambda self, ids: asked_again.extend(ids) or original(self, ids))
    resumed_cfg = cfg.copy()
    resumed_cfg.resume = str(tmp_path / "killed")
    resumed = run_active(resumed_cfg)
    assert not asked_before & set(asked_again)
    assert resumed["rounds"] == reference["rounds"]
    final = [torch.load(tmp_path / run / "state.pt", weights_only=True)["model"] for run in ("reference", "killed")]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])


def active_cli(monkeypatch, *args: str) -> int:
    """``python -m noisyseg.active *args`` in this process; returns the exit status."""
    return run_cli_in_process(monkeypatch, main, "noisyseg.active", *args)


def test_the_printed_hint_resumes_a_cli_run_with_its_saved_config(tmp_path, monkeypatch, capsys):
    """Started with overrides and config groups, Ctrl-C in round 2: the printed command alone continues
    the run with its own config (not the defaults) to the uninterrupted run's rounds."""
    reference = run_active(config("active/sampler=entropy", "active.rounds=2"), tmp_path / "reference")
    with monkeypatch.context() as patch:
        raise_at_epoch(patch, 2, KeyboardInterrupt)  # round 2's fine-tuning epoch
        assert active_cli(patch, *TINY, *PSEUDO, "active/sampler=entropy", "active.rounds=2",
                          f"hydra.run.dir={tmp_path / 'run'}") == 130
    hint = re.search(r"resume with: (.+)", capsys.readouterr().err).group(1)
    command = shlex.split(hint)
    assert command[:3] == ["python", "-m", "noisyseg.active"]
    assert active_cli(monkeypatch, *command[3:]) == 0
    resumed = json.loads((tmp_path / "run" / "results.json").read_text())
    assert resumed["rounds"] == json.loads(json.dumps(reference["rounds"]))
    assert resumed["config"]["active"]["sampler"]["name"] == "entropy"


def test_an_unfinished_run_is_not_overwritten(tmp_path, monkeypatch):
    cfg = config()
    with monkeypatch.context() as patch:
        raise_at_epoch(patch, 1, Killed)
        with pytest.raises(Killed):
            run_active(cfg, tmp_path)
    with pytest.raises(ConfigError, match="resume="):
        run_active(cfg, tmp_path)


def test_pool_exhaustion_stops_cleanly(tmp_path):
    # 60 images - 8 val - 8 test = 44 to label: 6 + 3 rounds of 15 would need 51
    results = run_active(config("active.queries=15", "active.rounds=5", "active/pseudo=none"), tmp_path)
    assert [r["queried"] for r in results["rounds"]] == [6, 15, 15, 8]
    assert results["labeled"] == 44 and results["stopped"] == "pool exhausted"


def test_full_supervision_trains_the_loops_epochs_on_everything(tmp_path):
    results = run_active(config("active.initial=all"), tmp_path)
    (row,) = results["rounds"]
    assert row["labeled"] == 44 and row["epoch"] == 1 + 3 * 1  # epochs + rounds * epochs_per_round


def test_random_sampler_runs_without_dropout(tmp_path):
    results = run_active(config("active/sampler=random", "active/pseudo=none", "model=unet", "active.rounds=1"), tmp_path)
    assert results["labeled"] == 10


@pytest.mark.parametrize("overrides, error, message", [
    (["active.initial=45"], DataError, "active.initial=45"),
    (["model=unet"], ConfigError, "model.dropout"),
    (["active/sampler=variance", "active.mc_samples=1"], ConfigError, "mc_samples >= 2"),
    (["active.queries=0"], ConfigError, "queries >= 1"),
    (["active.pseudo.step=-1"], ConfigError, "step >= 0"),
])
def test_bad_configuration_is_a_clear_error(tmp_path, overrides, error, message):
    with pytest.raises(error, match=message):
        run_active(config(*overrides), tmp_path)


class RedChannel(torch.nn.Module):
    """A "model" whose mask is where the image is redder than average: easy to check per image."""

    def forward(self, x):
        return x[:, :1].clone()  # red above the ImageNet mean


def test_pseudo_labels_stay_paired_with_their_images(tmp_path):
    loop = ActiveLoop(config(), tmp_path)
    loop.net = RedChannel()
    loop.labeled = {i: 0 for i in loop.initial}
    loop.pseudo_ids = [i for i in loop.pool.ids if i not in loop.labeled][::-1][:5]  # not in pool order
    method, streams = loop._streams_and_method(loop._pseudo_masks())
    pooled = streams["train"]  # method=noisy pools the noisy (pseudo) and clean (oracle) splits, in that order
    assert method.streams["train"] == ("noisy", "clean")
    for k, sample_id in enumerate(loop.pseudo_ids):
        row = loop.pool.index[sample_id]
        assert np.array_equal(pooled.images[k], loop.pool.images[row])
        expected = (RedChannel()(loop.pool.tensors([sample_id]))[0, 0] >= 0).numpy()
        assert 0 < expected.mean() < 1 and np.array_equal(pooled.maps["mask"][k], expected)
        assert np.array_equal(pooled.maps["true_mask"][k], loop.pool.masks[row])


def test_meta_reweights_pseudo_labels_against_oracle_labels(tmp_path):
    loop = ActiveLoop(config("method=meta"), tmp_path)
    loop.labeled = {i: 0 for i in loop.initial}
    method, streams = loop._streams_and_method(np.zeros((0, 32, 32), np.uint8))
    assert isinstance(method, CleanOnly)  # no pseudo-labels yet: oracle labels only
    loop.pseudo_ids = [i for i in loop.pool.ids if i not in loop.labeled][:5]
    method, streams = loop._streams_and_method(loop._pseudo_masks())
    assert isinstance(method, MetaReweighted)
    assert len(streams["clean"]) == 6 and len(streams["noisy"]) == 5
    results = run_active(config("method=meta", "active.rounds=2", "active.pseudo.start_round=1"), tmp_path / "run")
    assert results["rounds"][-1]["pseudo"] == 6


def test_noisy_oracle_answers_with_corrupted_masks(tmp_path):
    loop = ActiveLoop(config("noise=morph", "noise.level=1.0"), tmp_path)
    assert not np.array_equal(loop.pool.answers, loop.pool.masks)


def test_oracle_never_labels_an_image_twice(tmp_path):
    oracle = SimulatedOracle({"a": np.ones((2, 2)), "b": np.zeros((2, 2))}, answered=["a"])
    assert list(oracle.label(["b"])) == ["b"]
    with pytest.raises(OracleError):
        oracle.label(["a"])
    log = OracleLog(tmp_path / "oracle.json")
    log.record(0, ["a"])
    assert OracleLog(tmp_path / "oracle.json").ids(0) == ["a"] and log.ids(1) is None
    with pytest.raises(OracleError):
        log.record(0, ["b"])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(OracleError, match="bad.json"):
        OracleLog(tmp_path / "bad.json")


def test_pseudo_policies():
    ceal = build_pseudo_policy("ceal", start_round=5, step=20)
    assert [ceal.count(r) for r in (1, 4, 5, 6, 7)] == [0, 0, 20, 40, 60]
    ids = list("abcde")
    confidence = np.array([0.3, 0.01, np.nan, 0.02, 0.5])
    assert build_pseudo_policy("ceal", start_round=1, step=2).choose(1, confidence, ids) == ["b", "d"]
    threshold = build_pseudo_policy("threshold", threshold=0.1, decay=0.5)
    assert threshold.choose(1, confidence, ids) == ["b", "d"]  # bar 0.1
    assert threshold.choose(4, confidence, ids) == ["b"]  # bar 0.0125
    assert build_pseudo_policy("threshold", threshold=1.0, max_count=1).choose(1, confidence, ids) == ["b"]
    assert build_pseudo_policy("none").choose(9, confidence, ids) == []
    with pytest.raises(ConfigError):
        build_pseudo_policy("threshold", threshold=2.0)


@pytest.mark.slow  # starts a subprocess
def test_cli_runs_and_reports_errors(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "noisyseg.active", *TINY, *PSEUDO, "active.rounds=1", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "run" / "results.json").read_text())["labeled"] == 10
    proc = subprocess.run([*args, "active.initial=1000", f"hydra.run.dir={tmp_path / 'run2'}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "active.initial=1000" in proc.stderr


def test_interleave_undoes_the_strided_shards():
    from noisyseg.active.loop import interleave

    whole = np.arange(7.0)
    assert np.array_equal(interleave([whole[r::3] for r in range(3)]), whole)
    assert np.array_equal(interleave([whole]), whole)
