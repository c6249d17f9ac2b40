"""Training under failures and interruptions: an output folder that cannot be written, a failing
checkpoint write, NaN/inf loss, Ctrl-C, kill -9 and resuming with an incompatible configuration.

CLI checks call ``noisyseg.train.main`` in-process (fast, and faults can be injected by
monkeypatching); only kill -9 and a real Ctrl-C need a subprocess.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import run_cli_in_process
import torch
from hydra import compose, initialize_config_dir

from noisyseg.atomic import prepare_run_dir
from noisyseg.checkpoint import load_checkpoint
from noisyseg.engine import Trainer, TrainingDiverged
from noisyseg.errors import ConfigError, NoisysegError
from noisyseg.methods import Method
from noisyseg.cli import resume_command, resume_config
from noisyseg.config import CONFIG_DIR
from noisyseg.train import main, train

ROOT = Path(__file__).resolve().parents[1]
# threads=1: tiny convolutions run many times faster on one thread when other work shares the CPU.
TINY = ("debug=fast", "data.params.count=80", "threads=1", "method=noisy")  # fail_at_step patches Method.step
RUN = (*TINY, "trainer.epochs=3", "trainer.steps_per_epoch=4", "model.dropout=0.3")  # dropout: seeding must resume too


# Needs the CLI hook-up that the train()/hydra_main owners apply: prepare_run_dir() at the top of train(),
# a Hydra callback that checks hydra.run.dir, and Ctrl-C -> exit status 130. Delete this marker then.


def config(*overrides: str):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


def cli(monkeypatch, *args: str) -> int:
    """``python -m noisyseg.train *args`` in this process; returns the exit status (-2: Ctrl-C escaped)."""
    return run_cli_in_process(monkeypatch, main, "noisyseg.train", *args)


def fail_at_step(monkeypatch, call: int, fault) -> None:
    """Make the ``call``-th method step (1-based, over the whole run) return ``fault(output)``."""
    original, calls = Method.step, [0]

    def step(self, model, batches, lr):
        calls[0] += 1
        out = original(self, model, batches, lr)
        return fault(out) if calls[0] == call else out

    monkeypatch.setattr(Method, "step", step)


def leftovers(run: Path) -> list[str]:
    return sorted(p.name for p in run.rglob("*.tmp"))


def same_weights(a: Path, b: Path) -> bool:
    a, b = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(autouse=True)
def keep_torch_threads():
    threads = torch.get_num_threads()  # train(threads=1) sets the process-wide value
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """An uninterrupted run of ``RUN``: the reference for every resumed run."""
    run = tmp_path_factory.mktemp("straight")
    train(config(*RUN), run)
    return run


def test_unwritable_output_folder_is_named(tmp_path):
    blocker = tmp_path / "file"  # a regular file where a folder should be (chmod does not stop root)
    blocker.write_text("")
    for folder in (blocker, blocker / "run"):
        with pytest.raises(NoisysegError, match=f"{folder}: cannot write to the output folder"):
            prepare_run_dir(folder)
    assert prepare_run_dir(tmp_path / "a" / "b").is_dir() and list((tmp_path / "a" / "b").iterdir()) == []


def test_unwritable_output_folder_fails_before_training(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(Trainer, "train_epoch", lambda self, epoch: pytest.fail("training started"))
    with pytest.raises(NoisysegError, match="cannot write to the output folder"):
        train(config(*TINY), blocker / "run")
    assert cli(monkeypatch, *TINY, f"hydra.run.dir={blocker / 'run'}") == 2
    assert f"error: {blocker / 'run'}: cannot write to the output folder" in capsys.readouterr().err


def test_failing_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch, capsys):
    save, previous = torch.save, {}

    def disk_full_on_second_last_pt(obj, f, *args, **kwargs):
        if Path(f).name.startswith(".last.pt") and (tmp_path / "last.pt").exists():
            previous["bytes"] = (tmp_path / "last.pt").read_bytes()
            Path(f).write_bytes(b"half a checkpoint")
            raise OSError(28, "No space left on device")
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_on_second_last_pt)
    with pytest.raises(NoisysegError, match=f"{tmp_path / 'last.pt'}: cannot write .*No space left on device"):
        train(config(*TINY), tmp_path)
    assert (tmp_path / "last.pt").read_bytes() == previous["bytes"]
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 0
    assert leftovers(tmp_path) == [] and not (tmp_path / "results.json").exists()
    hint = re.search(r"stopped by an error at epoch 1; .* is kept; resume with: (.+)", capsys.readouterr().err).group(1)
    monkeypatch.undo()  # the disk has room again
    assert cli(monkeypatch, *shlex.split(hint)[3:]) == 0 and (tmp_path / "results.json").exists()


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_nan_or_inf_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, bad):
    fail_at_step(monkeypatch, 5, lambda out: replace(out, loss=out.loss * float(bad)))  # epoch 1, step 2 of 3
    message = rf"loss became {bad} at epoch 1, step 2/3 \(global step 5\); {tmp_path / 'last.pt'} from epoch 0 is kept"
    with pytest.raises(TrainingDiverged, match=message):
        train(config(*TINY), tmp_path)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 0
    assert not (tmp_path / "results.json").exists()


def test_nan_loss_from_the_cli_exits_with_status_2(tmp_path, monkeypatch, capsys):
    fail_at_step(monkeypatch, 2, lambda out: replace(out, loss=out.loss * float("nan")))
    assert cli(monkeypatch, *TINY, f"hydra.run.dir={tmp_path}") == 2
    err = capsys.readouterr().err
    assert "error: loss became nan at epoch 0, step 2/3 (global step 2); no checkpoint was written yet" in err
    assert not (tmp_path / "results.json").exists()
    command = shlex.split(re.search(r"in a new run, e\.g\. (.+)", err).group(1))  # a command that works
    assert command == ["python", "-m", "noisyseg.train", *TINY, "optim.lr=0.0003"]
    monkeypatch.undo()
    assert cli(monkeypatch, *command[3:], f"hydra.run.dir={tmp_path / 'again'}") == 0


def ctrl_c(out):
    raise KeyboardInterrupt


def test_ctrl_c_stops_cleanly_and_resumes_to_the_same_result(tmp_path, monkeypatch, capsys, straight):
    fail_at_step(monkeypatch, 7, ctrl_c)  # epoch 1, step 3 of 4: the optimiser has moved past last.pt
    with pytest.raises(KeyboardInterrupt):
        train(config(*RUN), tmp_path)
    assert f"interrupted at epoch 1; {tmp_path / 'last.pt'} from epoch 0 is kept; resume with: python -m " \
           f"noisyseg.train resume={tmp_path}" in capsys.readouterr().err
    assert leftovers(tmp_path) == [] and not (tmp_path / "results.json").exists()
    monkeypatch.undo()
    assert cli(monkeypatch, f"resume={tmp_path}") == 0  # the run's saved config, not the defaults
    resumed = json.loads((tmp_path / "results.json").read_text())
    assert resumed["test"] == json.loads((straight / "results.json").read_text())["test"]
    assert same_weights(tmp_path / "last.pt", straight / "last.pt")


def test_ctrl_c_from_the_cli_exits_with_status_130(tmp_path, monkeypatch, capsys):
    fail_at_step(monkeypatch, 1, ctrl_c)
    assert cli(monkeypatch, *TINY, f"hydra.run.dir={tmp_path}") == 130
    assert "interrupted at epoch 0; no checkpoint was written yet; run again to start over" in capsys.readouterr().err


@pytest.mark.slow  # starts a subprocess
def test_kill_9_resumes_from_the_last_checkpoint_to_the_same_result(tmp_path, monkeypatch):
    long_run = (*RUN, "trainer.steps_per_epoch=20")  # epochs long enough to kill the run inside one
    straight, run = tmp_path / "straight", tmp_path / "killed"
    train(config(*long_run), straight)
    proc = subprocess.Popen([sys.executable, "-m", "noisyseg.train", *long_run, f"hydra.run.dir={run}"], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (run / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # during epoch 1, or while a later checkpoint is being written
    assert proc.wait() == -signal.SIGKILL and not (run / "results.json").exists()
    assert cli(monkeypatch, *long_run, f"resume={run}") == 0
    resumed = json.loads((run / "results.json").read_text())
    assert resumed["test"] == json.loads((straight / "results.json").read_text())["test"]
    assert same_weights(run / "last.pt", straight / "last.pt")


def test_resume_with_an_incompatible_config_lists_the_keys(tmp_path, monkeypatch, capsys, straight):
    run = shutil.copytree(straight, tmp_path / "run")
    assert cli(monkeypatch, "model.base_width=8", "optim.lr=0.1", "trainer.progress=true", f"resume={run}") == 2
    assert "error: cannot resume: the configuration differs from the checkpoint's in model.base_width, optim.lr; " \
        in capsys.readouterr().err


def test_resume_takes_the_saved_config_and_only_result_neutral_changes(tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert cli(monkeypatch, *RUN, "noise=flip", f"hydra.run.dir={run}") == 0
    cfg = resume_config([f"resume={run}", "trainer.progress=true", "threads=2", "hydra/job_logging=none"], "last.pt")
    assert cfg.noise.kind == "flip" and cfg.trainer.epochs == 3 and cfg.data.size == 32  # groups included
    assert cfg.trainer.progress is True and cfg.threads == 2 and cfg.resume == str(run)
    repeated = resume_config([f"resume={run}", *RUN, "noise=flip"], "last.pt")  # the run's own overrides: no change
    assert repeated.trainer.progress is False and repeated.noise.kind == "flip"
    with pytest.raises(ConfigError, match=r"differs from the checkpoint's in noise, trainer\.epochs; a resumed run "
                                          r"may change only threads, trainer\.progress"):
        resume_config([f"resume={run}", "noise=morph", "trainer.epochs=5", "threads=2", "debug=fast"], "last.pt")
    with pytest.raises(ConfigError, match=f"cannot resume {tmp_path}: {tmp_path / 'last.pt'} not found"):
        resume_config([f"resume={tmp_path}"], "last.pt")


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["ctrl_c", "kill_9"])
def test_the_printed_hint_resumes_a_run_started_with_overrides(tmp_path, stop):
    """The user's path: a run started with overrides and a config group, stopped after its first
    checkpoint, continued by running exactly the printed hint (after kill -9 nothing is printed: the
    same command, which the README documents, with a result-neutral extra), ends as an uninterrupted run."""
    started = (*RUN, "noise=flip", "noise.level=0.5", "trainer.steps_per_epoch=30")
    straight, run = tmp_path / "straight", tmp_path / "run"
    train(config(*started), straight)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # a shell without job control starts background jobs with SIGINT ignored, and Python keeps it ignored:
    # restore the default so that the child gets Python's KeyboardInterrupt, as in a terminal
    proc = subprocess.Popen([sys.executable, "-m", "noisyseg.train", *started, f"hydra.run.dir={run}"], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (run / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT if stop == "ctrl_c" else signal.SIGKILL)
    err = proc.communicate(timeout=120)[1]
    assert not (run / "results.json").exists()
    if stop == "ctrl_c":
        assert proc.returncode == 130, err
        command = shlex.split(re.search(r"resume with: (.+)", err).group(1))
    else:
        command = [*shlex.split(resume_command("noisyseg.train", run)), "trainer.progress=true"]
    assert command[:4] == ["python", "-m", "noisyseg.train", f"resume={run}"]
    resumed = subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "\r" not in resumed.stderr  # stderr is a pipe: no bar frames
    assert json.loads((run / "results.json").read_text())["test"] == json.loads((straight / "results.json").read_text())["test"]
    assert same_weights(run / "last.pt", straight / "last.pt")
