"""Every config file composes and builds its plug-in; every registered plug-in has a config file."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from noisyseg.active.pseudo import PSEUDO_POLICIES
from noisyseg.active.samplers import SAMPLERS
from noisyseg.data.sources import DATASETS
from noisyseg.losses import LOSSES, build_loss
from noisyseg.methods import METHODS, build_method
from noisyseg.models import MODELS, build_model
from noisyseg.noise import NOISE_MODELS
from noisyseg.optim import OPTIMIZERS, build_optimizer
from noisyseg.config import CONFIG_DIR
from noisyseg.config import compose as noisyseg_compose
from noisyseg.errors import ConfigError

GROUPS = {"model": MODELS, "loss": LOSSES, "method": METHODS, "data": DATASETS}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def compose_with(*overrides: str, name: str = "train"):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose(name, overrides=list(overrides))


@pytest.mark.parametrize("group", GROUPS)
def test_config_files_match_registry(group):
    """Every plug-in has a file of its name; every file (variants like model/unet_mc included) names a plug-in."""
    assert set(GROUPS[group].names()) <= set(options(group))
    for option in options(group):
        assert compose_with(f"{group}={option}")[group].name in GROUPS[group].names()


def test_noise_configs_match_registry():
    assert options("noise") == sorted(NOISE_MODELS.names() + ["none", "annotator"])  # annotator: a calibrated preset


def need_smp() -> None:
    """Skip without segmentation_models_pytorch (the smp extra)."""
    from noisyseg.errors import ConfigError
    from noisyseg.models.smp import import_smp

    try:
        import_smp()
    except ConfigError as err:
        pytest.skip(str(err))


MODEL_OVERRIDES = {  # a model that builds in a blink; model=module needs a target
    "smp": ["model.encoder=resnet18", "model.encoder_depth=3", "model.params={decoder_channels:[16,8,8]}"],
    "module": ["model._target_=noisyseg.models.unet.UNet", "+model.depth=2", "+model.base_width=4"],
}


@pytest.mark.parametrize("name", options("model"))
def test_model_configs_build(name):
    if name == "smp":
        need_smp()
    cfg = compose_with(f"model={name}", "data.size=32", *MODEL_OVERRIDES.get(name, []))
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k != "name"}
    model = build_model(cfg.model.name, **kwargs)
    assert isinstance(model, torch.nn.Module)
    dropouts = [m.p for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    assert dropouts == ([cfg.model.dropout] if cfg.model.get("dropout") else [])
    assert model.eval()(torch.zeros(2, cfg.model.in_channels, 32, 32)).shape == (2, 1, 32, 32)


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


@pytest.mark.parametrize("override, name", [("experiment=bench_quik", "train"), ("debug=fats", "train"),
                                            ("active/arm=cael", "active_loop")])
def test_a_mistyped_option_of_a_group_without_default_is_an_error_not_ignored(override, name):
    """These groups default to no option; Hydra's ``optional`` would silently skip a mistyped one."""
    group, option = override.split("=")
    with pytest.raises(ConfigError, match=f"Could not find '{group}/{option}'(.|\n)*Available options"):
        noisyseg_compose(override, name=name)


@pytest.mark.parametrize("override, message", [("trainer.epoch=3", "did you mean trainer.epochs?"),
                                               ("trainer.epochs=many", "conf/train.yaml with trainer.epochs=many"),
                                               ("trainer.epochs=", "conf/train.yaml with trainer.epochs=")])
def test_compose_raises_the_documented_error_naming_the_override(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        noisyseg_compose(override)


# group -> (registry, root config, where the plug-in's options sit in the composed config). The noise
# kinds are left out: their functions take no options with defaults (noise.* is read by MaskNoise).
PLUGINS = {
    "model": (MODELS, "train", "model"),
    "loss": (LOSSES, "train", "loss"),
    "method": (METHODS, "train", "method"),
    "optim": (OPTIMIZERS, "train", "optim"),
    "data": (DATASETS, "train", "data.params"),
    "active/sampler": (SAMPLERS, "active_loop", "active.sampler"),
    "active/pseudo": (PSEUDO_POLICIES, "active_loop", "active.pseudo"),
}


def python_defaults(plugin) -> dict:
    """A plug-in's signature defaults, tuples as lists (YAML has no tuples)."""
    return {k: list(p.default) if isinstance(p.default, tuple) else p.default
            for k, p in inspect.signature(plugin).parameters.items() if p.default is not p.empty}


@pytest.mark.parametrize("group, name", [(g, n) for g, (reg, _, _) in PLUGINS.items() for n in reg.names()])
def test_python_defaults_agree_with_the_config_file(group, name):
    """One default per option: where a plug-in's signature and ``conf/<group>/<name>.yaml`` both give a
    value, they are equal (variant files such as model/unet_mc differ on purpose and are not compared)."""
    registry, root, path = PLUGINS[group]
    node = OmegaConf.to_container(OmegaConf.select(compose_with(f"{group}={name}", name=root), path), resolve=True)
    defaults = python_defaults(registry.get(name))
    shared = sorted(set(defaults) & set(node))
    assert {k: node[k] for k in shared} == {k: defaults[k] for k in shared}
    options = set(node) - {"name"}
    if group == "optim":  # the schedule keys have no Python default: the YAML file is their only home
        schedule = [k for k, p in inspect.signature(build_optimizer).parameters.items() if p.kind is p.KEYWORD_ONLY]
        assert schedule and not set(schedule) & set(python_defaults(build_optimizer)) and set(schedule) <= options
        options -= set(schedule)
    assert options <= set(inspect.signature(registry.get(name)).parameters)  # the file names no other option


@pytest.mark.parametrize("name", METHODS.names())
def test_method_classes_are_named_after_their_config(name):
    """method=noisy is NoisyPooled, method=noisy_only NoisyOnly, method=meta MetaReweighted, ..."""
    assert METHODS.get(name).__name__.lower().startswith(name.replace("_", ""))  # ADELE, MTCL, CoTeaching too


def test_active_learning_with_meta_uses_the_benchmarks_best_meta_variant():
    """active/arm=ceal_meta (CEAL's pseudo-labels reweighted by the meta step) runs arm=meta_best's options,
    so the active-learning curve measures the variant the benchmark chose on validation data."""
    best = compose_with("arm=meta_best").meta
    active = compose_with("active/arm=ceal_meta", name="active_loop").meta
    assert OmegaConf.to_container(active) == OmegaConf.to_container(best)
    assert compose_with("active/arm=ceal_meta", name="active_loop").method.name == "meta"


def _keys(node, prefix: str = "") -> set[str]:
    """The dotted keys a config file sets (its defaults list as ``defaults:/group`` entries)."""
    keys = set()
    for key, value in node.items():
        if key == "defaults":
            keys |= {f"defaults:{next(iter(d))}" for d in value if isinstance(d, dict)}
        elif key != "hydra":
            keys |= _keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
    return keys


def test_what_an_arm_sets_holds_in_every_experiment():
    """Arms are applied after experiments (conf/train.yaml): where both set a key, the arm's value holds
    (an experiment's meta.clean_batch_size once undid arm=meta_allclean in every benchmark)."""
    load = lambda group, name: OmegaConf.load(Path(CONFIG_DIR) / group / f"{name}.yaml")  # noqa: E731
    clashes = 0
    for arm in options("arm"):
        arm_node = load("arm", arm)
        for experiment in options("experiment"):
            shared = _keys(OmegaConf.to_container(arm_node)) & _keys(OmegaConf.to_container(load("experiment", experiment)))
            if not shared - {"label"}:
                continue
            clashes += 1
            cfg = compose_with(f"experiment={experiment}", f"arm={arm}")
            for key in shared - {"label"}:
                if key.startswith("defaults:override /"):  # the arm's choice of that group
                    group = key.split("/", 1)[1]
                    chosen = next(d[f"override /{group}"] for d in arm_node.defaults if f"override /{group}" in d)
                    assert cfg[group].name == chosen, f"experiment={experiment} undoes arm={arm}'s {group}"
                else:
                    assert OmegaConf.select(cfg, key) == OmegaConf.select(arm_node, key), (experiment, arm, key)
    assert clashes  # the test compares something: arm=gce's loss against experiment=meta_paper's
    cfg = compose_with("experiment=bench_quick", "arm=meta_allclean")
    assert cfg.meta.clean_batch_size == "all" and compose_with("experiment=bench_paper").meta.clean_batch_size == 16
