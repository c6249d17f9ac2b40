"""Sweep launchers compose with the train config and instantiate, no cluster needed:
``hydra/launcher=joblib`` (local parallel) and ``hydra/launcher=slurm_gpu`` (conf/hydra/launcher)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from noisyseg.config import CONFIG_DIR

LAUNCHERS = sorted(p.stem for p in (Path(CONFIG_DIR) / "hydra" / "launcher").glob("*.yaml"))


def launcher_cfg(*overrides: str):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True).hydra.launcher


def need(module: str, extra: str):
    return pytest.importorskip(module, reason=f"{module} is not installed (pip install -e .[{extra}])")


def test_joblib_launcher():
    need("hydra_plugins.hydra_joblib_launcher", "sweep")
    launcher = instantiate(launcher_cfg("hydra/launcher=joblib", "hydra.launcher.n_jobs=2"))
    assert type(launcher).__name__ == "JoblibLauncher" and launcher.joblib["n_jobs"] == 2


@pytest.mark.parametrize("name", LAUNCHERS)
def test_project_launcher_configs_compose(name):
    need("hydra_plugins.hydra_submitit_launcher", "slurm")
    cfg = launcher_cfg(f"hydra/launcher={name}")
    assert cfg._target_.startswith("hydra_plugins.")


def test_slurm_gpu_launcher_builds_its_sbatch_script(tmp_path, monkeypatch):
    need("hydra_plugins.hydra_submitit_launcher", "slurm")
    submitit = need("submitit", "slurm")
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
    from omegaconf import OmegaConf

    monkeypatch.delenv("SLURM_ACCOUNT", raising=False)
    monkeypatch.setenv("SLURM_PARTITION", "a100")
    launcher = instantiate(launcher_cfg("hydra/launcher=slurm_gpu", "hydra.launcher.timeout_min=30",
                                        f"hydra.sweep.dir={tmp_path}"))
    assert isinstance(launcher, SlurmLauncher)
    params = launcher.params
    assert params["partition"] == "a100" and params["account"] is None and params["gpus_per_node"] == 1
    assert params["timeout_min"] == 30 and params["submitit_folder"] == f"{tmp_path}/.submitit/%j"

    # What SlurmLauncher.launch does up to the submission, with a stub `srun` so submitit believes
    # it is on a cluster: the keys must be ones submitit accepts, and land in the sbatch header.
    (tmp_path / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    executor = submitit.AutoExecutor(cluster="slurm", folder=params["submitit_folder"],
                                     slurm_max_num_timeout=params["max_num_timeout"])
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()
                                  if k not in {"submitit_folder", "max_num_timeout"}})
    script = executor._executor._make_submission_file_text("python -m noisyseg.train", "uid")  # private API
    for line in ("--partition=a100", "--gpus-per-node=1", "--time=30", "--cpus-per-task=8", "--mem=32GB"):
        assert f"#SBATCH {line}\n" in script, line
