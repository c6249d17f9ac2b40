"""Every config file composes and builds its plug-in; every registered plug-in has a config file."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from noisyseg.data.sources import DATASETS
from noisyseg.losses import LOSSES, build_loss
from noisyseg.methods import METHODS, build_method
from noisyseg.models import MODELS, build_model
from noisyseg.noise import NOISE_MODELS
from noisyseg.train import CONFIG_DIR

GROUPS = {"model": MODELS, "loss": LOSSES, "method": METHODS, "data": DATASETS}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def compose_with(*overrides: str):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("group", GROUPS)
def test_config_files_match_registry(group):
    """Every plug-in has a file of its name; every file (variants like model/unet_mc included) names a plug-in."""
    assert set(GROUPS[group].names()) <= set(options(group))
    for option in options(group):
        assert compose_with(f"{group}={option}")[group].name in GROUPS[group].names()


def test_noise_configs_match_registry():
    assert options("noise") == sorted(NOISE_MODELS.names() + ["none", "annotator"])  # annotator: a calibrated preset


@pytest.mark.parametrize("name", options("model"))
def test_model_configs_build(name):
    cfg = compose_with(f"model={name}")
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.model).items() if k != "name"}
    assert build_model(cfg.model.name, **kwargs) is not None


@pytest.mark.parametrize("loss", options("loss"))
@pytest.mark.parametrize("method", options("method"))
def test_loss_and_method_configs_build(loss, method):
    cfg = compose_with(f"loss={loss}", f"method={method}")
    loss_kwargs = {k: v for k, v in OmegaConf.to_container(cfg.loss).items() if k != "name"}
    method_kwargs = {k: v for k, v in OmegaConf.to_container(cfg.method, resolve=True).items() if k != "name"}
    assert build_method(method, build_loss(loss, **loss_kwargs), **method_kwargs).streams


@pytest.mark.parametrize("name", options("data"))
def test_data_configs_compose(name):
    cfg = compose_with(f"data={name}")
    assert cfg.data.name == name and cfg.data.size % 8 == 0


@pytest.mark.parametrize("name", options("experiment") + [f"arm={a}" for a in options("arm")])
def test_experiment_and_arm_configs_compose(name):
    cfg = compose_with(name if name.startswith("arm=") else f"experiment={name}")
    assert cfg.method.name in METHODS.names() and cfg.noise.kind
    if name == "arm=recommended":  # the default arm: no label, since method=... may override its method
        assert cfg.label is None
    elif name.startswith("arm="):
        assert cfg.label == name[4:]
