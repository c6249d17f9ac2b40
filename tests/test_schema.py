"""Config validation: schemas reject unknown keys and wrong types, RULES reject bad values, before any work."""
from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from noisyseg.active.loop import run_active
from noisyseg.errors import ConfigError
from noisyseg.schema import check_command_line, validate
from noisyseg.config import CONFIG_DIR
from noisyseg.train import train

ROOT = Path(__file__).resolve().parents[1]


def compose_with(*overrides: str, name: str = "train"):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose(name, overrides=list(overrides))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def test_every_shipped_config_is_valid_and_fills_its_schema():
    """Schemas add no key: every field is set by a yaml file (only data.params.root and model=module's
    model._target_ are left to the user).
    Groups whose nodes are schemaless plug-in options (loss, method, arm, ...) are composed in test_config."""
    runs = [("train", f"{group}={option}") for group in ("data", "model", "noise", "optim", "experiment", "debug")
            for option in options(group)]
    runs += [("active_loop", f"active/arm={option}") for option in options("active/arm")]
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        for name, override in runs:
            cfg = compose(name, overrides=[override])
            assert OmegaConf.missing_keys(cfg) <= {"data.params.root", "model._target_"}, override  # the user's
            validate(cfg)


@pytest.fixture(scope="module")
def base():
    return {"train": compose_with("debug=fast"), "active_loop": compose_with(name="active_loop")}


def with_values(cfg, **values):
    """``cfg`` with dotted keys set as an override would set them (typed nodes convert the value)."""
    cfg = cfg.copy()
    for key, value in values.items():
        OmegaConf.update(cfg, key.replace("__", "."), value, force_add=True)
    return cfg


@pytest.mark.parametrize("values, message", [
    ({"optim__lr": -0.1}, "optim.lr=-0.1 is invalid: need optim.lr > 0"),
    ({"optim__weight_decay": -1}, "optim.weight_decay >= 0"),
    ({"trainer__epochs": 0}, "trainer.epochs >= 1"),
    ({"trainer__steps_per_epoch": 0}, "trainer.steps_per_epoch >= 1"),
    ({"trainer__batch_size": 0}, "trainer.batch_size >= 1"),
    ({"trainer__eval_batch_size": 0}, "trainer.eval_batch_size >= 1"),
    ({"trainer__grad_clip": 0}, "trainer.grad_clip null or > 0"),
    ({"model__depth": 3, "data__size": 36}, "data.size=36 must be divisible by 2**model.depth = 8"),
    ({"data__split__clean": 1.5}, "data.split.clean a count >= 0 or a fraction in [0, 1)"),
    ({"data__split__val": -2}, "data.split.val=-2"),
    ({"noise__level": 1.5}, "noise.level in [0, 1]"),
    ({"noise__fraction": -0.1}, "noise.fraction in [0, 1]"),
    ({"meta__lr": 0}, "meta.lr null or > 0"),
    ({"meta__clean_batch_size": 0}, "meta.clean_batch_size a count >= 1 or 'all'"),
    ({"meta__normalize": "pixel"}, "meta.normalize one of batch, image, class, mean, none"),
    ({"meta__zero_policy": "drop"}, "meta.zero_policy one of skip, uniform"),
    ({"meta__backend": "fast"}, "meta.backend one of"),
    ({"meta__clean_loss_weight": -1}, "meta.clean_loss_weight >= 0"),
    ({"meta__clean_every": 0}, "meta.clean_every >= 1 (an integer)"),
    ({"meta__clean_every": 2, "meta__backend": "higher"}, "meta.clean_every=2 (a reused clean gradient) needs"),
    ({"model__dropout": 1.0}, "model.dropout in [0, 1)"),
    ({"device": "gpu"}, "device one of auto, cpu, cuda, cuda:N"),
    ({"seed": -1}, "seed >= 0"),
    ({"trainer__epoch": 3}, "unknown key 'trainer.epoch' (did you mean trainer.epochs?); valid keys of trainer: amp, "),
])
def test_bad_values_are_named_with_their_range(base, values, message):
    with pytest.raises(ConfigError) as err:
        validate(with_values(base["train"], **values))
    assert message in str(err.value)


@pytest.mark.parametrize("values, message", [
    ({"active__initial": 0}, "active.initial a count >= 1 or 'all'"),
    ({"active__initial": "some"}, "active.initial='some'"),
    ({"active__rounds": -1}, "active.rounds >= 0"),
    ({"active__queries": 0}, "active.queries >= 1"),
    ({"active__epochs": 0}, "active.epochs >= 1"),
    ({"active__epochs_per_round": -1}, "active.epochs_per_round >= 0"),
    ({"active__mc_samples": 0}, "active.mc_samples >= 1"),
    ({"active__chunk": 0}, "active.chunk >= 1"),
    ({"active__mc_mode": "fast"}, "active.mc_mode one of loop, batched, naive"),
])
def test_bad_active_values_are_named_with_their_range(base, values, message):
    with pytest.raises(ConfigError) as err:
        validate(with_values(base["active_loop"], **values))
    assert message in str(err.value)


@pytest.mark.parametrize("root, key, edge, beyond", [
    ("train", "trainer.grad_clip", None, 0),
    ("train", "meta.lr", None, 0),
    ("train", "data.split.clean", 0.5, 1.5),
    ("train", "data.split.val", 0, -1),
    ("train", "noise.level", 0, -0.01),
    ("train", "noise.fraction", 1, 1.01),
    ("train", "device", "cuda:1", "cuda:x"),
    ("active_loop", "active.initial", "all", 0),
    ("active_loop", "active.rounds", 0, -1),
    ("active_loop", "active.epochs_per_round", 0, -1),
])
def test_edge_values_pass_and_the_next_ones_fail(base, root, key, edge, beyond):
    """Each range ends exactly where its message says: the edge value passes, one step beyond fails."""
    cfg = with_values(base[root], **{key.replace(".", "__"): edge})
    assert OmegaConf.select(cfg, key) == edge
    validate(cfg)
    with pytest.raises(ConfigError, match=f"^{key}="):
        validate(with_values(base[root], **{key.replace(".", "__"): beyond}))


def test_plain_dicts_are_checked_too(base):
    cfg = OmegaConf.to_container(base["train"])
    validate(cfg)
    cfg["optim"]["lr"] = "fast"
    with pytest.raises(ConfigError, match="optim.lr='fast' is invalid"):
        validate(cfg)


def test_every_error_is_reported_at_once():
    with pytest.raises(ConfigError, match=r"optim.lr=-1 .*trainer.epochs=0|trainer.epochs=0.*optim.lr=-1"):
        validate(compose_with("optim.lr=-1", "trainer.epochs=0"))


def test_schema_rejects_wrong_types_while_composing():
    with pytest.raises(ConfigCompositionException) as err:
        compose_with("trainer.epochs=many")
    assert "trainer.epochs" in str(err.value.__cause__)


def test_train_and_run_active_validate_before_any_work(tmp_path):
    """A plain dict never meets Hydra: validate() still names the unknown key; nothing is written."""
    cfg = OmegaConf.to_container(compose_with("debug=fast"))
    cfg["trainer"]["epoch"] = 3
    with pytest.raises(ConfigError, match="valid keys of trainer: amp, batch_size, channels_last, compile, epochs"):
        train(cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match="active.chunk >= 1"):
        run_active(compose_with("active.chunk=0", name="active_loop"), tmp_path / "active")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("overrides, message", [
    (["trainer.epoch=3"], "unknown key 'trainer.epoch' (did you mean trainer.epochs?); valid keys of trainer: "),
    (["sed=1"], "unknown key 'sed' (did you mean seed?); valid keys of the top level: cache_dir, data, "),
    (["armm=meta"], "config groups: active/arm, active/pseudo, active/sampler, arm, data, "),
    (["loss=gce", "loss.qq=0.5"], "unknown key 'loss.qq' (did you mean loss.q?); valid keys of loss: name, q"),
    (["seed=0,1,2", "noise.lvl=0.1,0.5"], "unknown key 'noise.lvl' (did you mean noise.level?)"),
    (["optim.lr=-1,0.1"], "optim.lr=-1 is invalid"),  # a sweep is checked at its first value
])
def test_command_line_typos_name_the_valid_keys(overrides, message):
    with pytest.raises(ConfigError) as err:
        check_command_line(CONFIG_DIR, "train", overrides)
    assert message in str(err.value)


def test_command_line_leaves_other_problems_to_hydra(monkeypatch):
    """A missing group option is Hydra's to report (it lists the options); a sweep is checked at its
    first value, hydra.* overrides are skipped."""
    import noisyseg.schema

    checked = []
    monkeypatch.setattr(noisyseg.schema, "validate", checked.append)
    assert check_command_line(CONFIG_DIR, "train", ["model=resnet"]) is None
    assert checked == []  # not validated: Hydra reports it while composing, listing the options of model/
    with pytest.raises(ConfigCompositionException, match="Could not find 'model/resnet'"):
        compose_with("model=resnet")
    # a glob sweep cannot be expanded without Hydra's config loader: the whole line is left to Hydra
    # (so a typo next to a glob is reported by Hydra, without the list of valid keys)
    check_command_line(CONFIG_DIR, "train", ["arm=glob(*)", "hydra.run.dir=/x", "trainer.epochs=3"])
    assert checked == []
    check_command_line(CONFIG_DIR, "active_loop", ["active.queries=3,5", "active/arm=ceal", "hydra.run.dir=/x"])
    assert [(cfg.active.queries, cfg.active.sampler.name) for cfg in checked] == [(3, "ceal")]  # the first value


@pytest.mark.slow  # starts a subprocess
def test_cli_typo_fails_before_hydra_creates_the_run_folder(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "noisyseg.train", "debug=fast", "trainer.epoch=3",
                           f"hydra.run.dir={out}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "trainer.epoch" in proc.stderr and "epochs" in proc.stderr
    assert not out.exists()


def _parameters(plugin) -> list[str]:
    return [name for name in inspect.signature(plugin).parameters if name != "self"]


def test_schemas_of_plugin_nodes_match_the_plugin_signatures():
    """The typed schema nodes that hold one plug-in's options list exactly its parameters, in order
    (model: each model's; meta: the meta method minus the loss it gets built); the range rules of the
    schemaless optim node name options that some optimiser (or the schedule) takes."""
    from dataclasses import fields

    from noisyseg.methods import METHODS
    from noisyseg.models import MODELS
    from noisyseg.optim import OPTIMIZERS, build_optimizer
    from noisyseg.schema import MODEL_SCHEMAS, RULES, MetaConfig

    assert set(MODELS.names()) == set(MODEL_SCHEMAS) | {"module"}  # module: the user's network's arguments
    for name, schema in MODEL_SCHEMAS.items():
        assert [f.name for f in fields(schema)] == ["name", *_parameters(MODELS.get(name))], name
    assert [f.name for f in fields(MetaConfig)] == [p for p in _parameters(METHODS.get("meta")) if p != "loss"]
    optim_options = {p for name in OPTIMIZERS.names() for p in _parameters(OPTIMIZERS.get(name))}
    optim_options |= set(_parameters(build_optimizer))
    assert {key.split(".", 1)[1] for key in RULES if key.startswith("optim.")} <= optim_options
