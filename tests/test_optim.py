"""Optimisers by name: every conf/optim file builds its optimiser, every registered optimiser has a file."""
from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from noisyseg.errors import ConfigError
from noisyseg.optim import OPTIMIZERS, build_optimizer, lr_factor
from noisyseg.config import CONFIG_DIR
from test_config import options

CLASSES = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def optim_node(name: str) -> dict:
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return OmegaConf.to_container(compose("train", overrides=[f"optim={name}"]).optim, resolve=True)


def test_every_registered_optimiser_has_a_config_file_and_back():
    assert OPTIMIZERS.names() == options("optim") == sorted(CLASSES)


@pytest.mark.parametrize("name", options("optim"))
def test_optim_configs_build_their_optimiser(name):
    node = optim_node(name)
    assert node["name"] == name
    weights = torch.nn.Parameter(torch.ones(3))
    optimizer, scheduler = build_optimizer([weights], 10, **node)
    assert type(optimizer) is CLASSES[name]
    group = optimizer.param_groups[0]
    assert group["weight_decay"] == node["weight_decay"] and group["lr"] == pytest.approx(node["lr"] * lr_factor(
        0, 10, node["schedule"], node["warmup_steps"], node["min_lr_ratio"]))
    if name == "sgd":
        assert group["momentum"] == node["momentum"]


def test_unknown_optimiser_or_option_lists_the_valid_ones():
    schedule = {"schedule": "constant", "warmup_steps": 0, "min_lr_ratio": 0.0}
    with pytest.raises(ConfigError, match="unknown optimizer 'lamb'; valid choices: adam, adamw, sgd"):
        build_optimizer([torch.nn.Parameter(torch.ones(1))], 1, "lamb", **schedule)
    with pytest.raises(ConfigError, match="optimizer 'adam'.*momentum.*valid options: params, lr, weight_decay"):
        build_optimizer([torch.nn.Parameter(torch.ones(1))], 1, "adam", momentum=0.9, **schedule)
    with pytest.raises(ConfigError, match="optim.lr=0 must be positive"):
        build_optimizer([torch.nn.Parameter(torch.ones(1))], 1, "sgd", lr=0, **schedule)


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    assert [lr_factor(s, 10, "cosine", 2, 0.1) for s in (0, 1)] == [0.5, 1.0]
    assert lr_factor(2, 10, "cosine", 2, 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 10, "cosine", 2, 0.1) == pytest.approx(0.1)
    assert lr_factor(7, 10, "constant", 2, 0.1) == 1.0


def test_train_builds_the_configured_optimiser(monkeypatch, tmp_path):
    import noisyseg.build
    import noisyseg.train

    seen = {}

    class Built(Exception):
        pass

    def spy(params, total_steps, **kwargs):
        seen.update(kwargs)
        raise Built

    monkeypatch.setattr(noisyseg.build, "build_optimizer", spy)
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["debug=fast", "data.params.count=40", "optim=sgd", "cache_dir=null"])
    with pytest.raises(Built):
        noisyseg.train.train(cfg, tmp_path)
    assert seen.get("name") == "sgd"  # node_kwargs dropped optim.name until session 5: optim=sgd trained Adam


def test_step_schedule_divides_by_ten_after_each_third():
    """The released code of Mirikharaji et al.: MultiStepLR at epochs 100 and 200 of 300, gamma 0.1."""
    factors = [lr_factor(s, 300, "step", 0, 0.0) for s in (0, 99, 100, 199, 200, 299)]
    assert factors == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
