"""torchrun data-parallel training on CPU (gloo): 2 processes x batch B train the model 1 process x batch 2B does."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.slow  # every test here starts torchrun (two processes) or a training subprocess
ROOT = Path(__file__).resolve().parents[1]
# GroupNorm: batch-norm statistics would be per process (see noisyseg.distributed)
COMMON = ["debug=fast", "data.params.count=80", "threads=1", "model.norm=group", "method=meta", "noise=morph"]


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("arm", [[], ["arm=meta_best"]], ids=["paper", "meta_best"])  # meta_best: the learned weighting
def test_two_processes_train_like_one_with_the_combined_batch(tmp_path, arm):
    ddp = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "noisyseg.train", *COMMON,
               *arm, "trainer.batch_size=4", "meta.clean_batch_size=4", f"hydra.run.dir={tmp_path / 'ddp'}"], tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count('"run_dir"') == 1  # only rank 0 reports
    one = run([sys.executable, "-m", "noisyseg.train", *COMMON, *arm, "trainer.batch_size=8", "meta.clean_batch_size=8",
               f"hydra.run.dir={tmp_path / 'one'}"], tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    results = {name: json.loads((tmp_path / name / "results.json").read_text()) for name in ("ddp", "one")}
    assert results["ddp"]["processes"] == 2 and results["one"]["processes"] == 1
    weights = {name: torch.load(tmp_path / name / "last.pt", weights_only=True)["model"] for name in ("ddp", "one")}
    # the same steps up to float32 reduction order (measured: 1.6e-7)
    assert max((weights["ddp"][k] - weights["one"][k]).abs().max().item() for k in weights["one"]) < 1e-5
    assert results["ddp"]["test"]["dice"] == pytest.approx(results["one"]["test"]["dice"], abs=1e-4)


def test_active_loop_under_torchrun(tmp_path):
    """2 processes: the pool is scored in shards, rank 0 asks the oracle and writes the state."""
    args = ["debug=fast", "data.params.count=60", "data.split.val=8", "data.split.test=8", "active.initial=6",
            "active.rounds=2", "active.queries=4", "active.epochs=1", "active.epochs_per_round=1", "active.mc_samples=3",
            "active.pseudo.start_round=2", "active.pseudo.step=3", "threads=1", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "noisyseg.active", *args], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [r["labeled"] for r in results["rounds"]] == [6, 10, 14] and results["rounds"][-1]["pseudo"] == 3
    asked = [i for entry in json.loads((tmp_path / "run" / "oracle.json").read_text()) for i in entry["ids"]]
    assert len(asked) == len(set(asked)) == 14


def test_an_smp_network_trains_under_torchrun(tmp_path):
    """model=smp through the distributed meta step (BatchNorm statistics stay per process, so no exact
    comparison: the run finishes, rank 0 alone writes, and predict rebuilds the network)."""
    import warnings

    from noisyseg.errors import ConfigError
    from noisyseg.models.smp import import_smp

    try:
        with warnings.catch_warnings():  # this machine's torchvision warning
            warnings.simplefilter("ignore", RuntimeWarning)
            import_smp()
    except ConfigError as err:
        pytest.skip(str(err))
    args = [*COMMON[:3], "method=meta", "noise=morph", "model=smp", "trainer.batch_size=4", "meta.clean_batch_size=4"]
    ddp = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "noisyseg.train",
               *args, f"hydra.run.dir={tmp_path / 'ddp'}"], tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count('"run_dir"') == 1
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert results["processes"] == 2 and 0 <= results["test"]["dice"] <= 1
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images / "a.png")
    pred = run([sys.executable, "-m", "noisyseg.predict", str(tmp_path / "ddp"), str(images), str(tmp_path / "out")], tmp_path)
    assert pred.returncode == 0, pred.stderr[-3000:]
    assert any((tmp_path / "out").iterdir())
