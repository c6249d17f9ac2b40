"""torchrun data-parallel training on CPU (gloo): 2 processes x batch B train the model 1 process x batch 2B does."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # every test here starts torchrun (two processes) or a training subprocess
ROOT = Path(__file__).resolve().parents[1]
# GroupNorm: batch-norm statistics would be per process (see noisyseg.distributed)
COMMON = ["debug=fast", "data.params.count=80", "threads=1", "model.norm=group", "method=meta", "noise=morph"]


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_two_processes_train_like_one_with_the_combined_batch(tmp_path):
    ddp = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "noisyseg.train", *COMMON,
               "trainer.batch_size=4", "meta.clean_batch_size=4", f"hydra.run.dir={tmp_path / 'ddp'}"], tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count('"run_dir"') == 1  # only rank 0 reports
    one = run([sys.executable, "-m", "noisyseg.train", *COMMON, "trainer.batch_size=8", "meta.clean_batch_size=8",
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
