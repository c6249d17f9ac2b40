"""Config validation: structured-config schemas, range rules, and typos on the command line.

Everything here runs before any data is loaded:

1. **Keys and types.** The dataclasses below are registered with Hydra's ConfigStore (by
   :func:`register_schemas`, which :func:`noisyseg.config.register` calls) as part of
   ``train_schema`` (listed first in ``conf/train.yaml``'s defaults) and ``active_schema`` (the
   ``active`` node, first in ``conf/active_loop.yaml``). While composing, Hydra rejects an unknown key
   or a value of the wrong type in a config file or an override. Plug-in options whose keys differ per
   plug-in (``loss``, ``method``, ``optim``, ``data.params``, ``active.sampler``, ``active.pseudo``)
   stay plain dicts: the registry's ``build`` rejects unknown options and lists the valid ones. The
   ``model`` node too, but :func:`validate` checks its keys against the schema of its model
   (:data:`MODEL_SCHEMAS`; none for ``model=module``, whose keys are the user's network's arguments). Every
   schema field is ``MISSING``, so the yaml files stay the only place that holds defaults and the
   composed config is the same as without schemas.
2. **Ranges.** :func:`validate` checks :data:`RULES`, the U-Net's size constraint, and that the schema
   nodes hold no unknown key (``+trainer.epoch=3`` gets past Hydra, and a plain dict passed to
   ``train()`` never meets Hydra). ``train()`` and ``run_active()`` call it first.
3. **The command line.** :func:`check_command_line` composes the config as Hydra is about to (a sweep
   at its first value) and runs :func:`validate`, so a bad override fails before Hydra creates a run
   folder, and an override of a key that does not exist names the valid keys of its node.
"""
import difflib
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError
from omegaconf.nodes import BooleanNode, IntegerNode, StringNode

from noisyseg.errors import ConfigError
from noisyseg.inference.mc import MODES as MC_MODES
from noisyseg.meta import FORWARD_MODE_BACKENDS, META_BACKENDS, NORMALIZE, ZERO_POLICIES
from noisyseg.meta.weightnet import FEATURES, check_features
from noisyseg.meta.weights import weighting_names
from noisyseg.models.unet import DROPOUT_POSITIONS, INITS, NORMS
from noisyseg.noise import NAMED_DICE
from noisyseg.optim import SCHEDULES

Options = Dict[str, Any]  # a plug-in's options: keys checked by its registry


# -- 1. schemas (field order = the composed config's key order) ----------------------------------
@dataclass
class SplitConfig:
    clean: Any = MISSING  # a count (int) or a fraction (float < 1)
    val: Any = MISSING
    test: Any = MISSING
    pool: Any = MISSING


@dataclass
class DataConfig:
    name: str = MISSING
    size: int = MISSING
    params: Optional[Options] = MISSING
    split: SplitConfig = field(default_factory=SplitConfig)
    splits_file: Optional[str] = MISSING
    augment: List[Any] = MISSING


@dataclass
class ModelConfig:
    """``model=unet`` (and ``unet_mc``)."""

    name: str = MISSING
    in_channels: int = MISSING
    depth: int = MISSING
    base_width: int = MISSING
    norm: str = MISSING
    dropout: float = MISSING
    dropout_position: str = MISSING
    init: str = MISSING


@dataclass
class SMPModelConfig:
    """``model=smp``: noisyseg.models.smp.build_smp."""

    name: str = MISSING
    arch: str = MISSING
    encoder: str = MISSING
    encoder_weights: Optional[str] = MISSING
    encoder_depth: int = MISSING
    in_channels: int = MISSING
    dropout: float = MISSING
    dropout_position: str = MISSING
    params: Optional[Options] = MISSING


# The model node's keys depend on the model: checked by validate() against the schema of model.name.
# model=module has none: its keys are the keyword arguments of the user's network.
MODEL_SCHEMAS: dict[str, type] = {"unet": ModelConfig, "smp": SMPModelConfig}


@dataclass
class NoiseConfig:
    kind: str = MISSING
    level: float = MISSING
    fraction: float = MISSING
    seed: int = MISSING
    missing: float = MISSING
    target_dice: Any = MISSING  # null, a Dice in (0, 1) or a name of noisyseg.noise.NAMED_DICE


@dataclass
class TrainerConfig:
    epochs: int = MISSING
    steps_per_epoch: int = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    num_workers: int = MISSING
    grad_clip: Optional[float] = MISSING
    amp: bool = MISSING
    channels_last: bool = MISSING
    compile: bool = MISSING
    tensorboard: bool = MISSING
    progress: bool = MISSING
    fit_curve_images: int = MISSING


@dataclass
class MetaConfig:
    backend: str = MISSING
    lr: Optional[float] = MISSING
    clean_batch_size: Any = MISSING  # a count or "all"
    normalize: str = MISSING
    zero_policy: str = MISSING
    clean_loss_weight: float = MISSING
    params: Optional[List[str]] = MISSING
    clean_every: int = MISSING
    weighting: str = MISSING
    center_step: float = MISSING
    weight_net_hidden: int = MISSING
    weight_net_lr: float = MISSING
    weight_net_features: List[str] = MISSING
    weight_net_boundary_reach: float = MISSING
    bootstrap: float = MISSING
    memory: Optional[float] = MISSING
    memory_freeze_after: Optional[int] = MISSING
    correct: bool = MISSING
    correct_tau: float = MISSING
    correct_r: float = MISSING
    steps_per_epoch: int = MISSING


# The root is a dict of typed nodes, not a dataclass: experiment files for python -m noisyseg.active add
# ``active`` to it, and test_config composes every experiment with conf/train.yaml.
TRAIN_SCHEMA: dict[str, Any] = {
    "label": StringNode(MISSING, is_optional=True),
    "seed": IntegerNode(MISSING, is_optional=False),
    "device": StringNode(MISSING, is_optional=False),
    "threads": IntegerNode(MISSING, is_optional=True),
    "resume": StringNode(MISSING, is_optional=True),
    "reuse": BooleanNode(MISSING, is_optional=False),
    "cache_dir": StringNode(MISSING, is_optional=True),
    "data": DataConfig,
    "model": MISSING,  # per model: MODEL_SCHEMAS
    "loss": MISSING,
    "method": MISSING,
    "noise": NoiseConfig,
    "optim": MISSING,
    "trainer": TrainerConfig,
    "meta": MetaConfig,
}


@dataclass
class ActiveConfig:
    """The ``active`` node of ``conf/active_loop.yaml``: ``python -m noisyseg.active``."""

    initial: Any = MISSING  # a positive count or "all"
    rounds: int = MISSING
    queries: int = MISSING
    epochs: int = MISSING
    epochs_per_round: int = MISSING
    finetune: bool = MISSING
    mc_samples: int = MISSING
    mc_mode: str = MISSING
    chunk: int = MISSING
    sampler: Options = MISSING
    pseudo: Options = MISSING


def register_schemas() -> None:
    """Store ``train_schema`` and ``active_schema`` in Hydra's ConfigStore (idempotent); called by
    :func:`noisyseg.config.register`, before anything composes ``conf/``."""
    ConfigStore.instance().store(name="train_schema", node=TRAIN_SCHEMA)
    ConfigStore.instance().store(name="active_schema", node=ActiveConfig, package="active")


# -- 2. range rules ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    ok: Callable[[Any], bool]
    text: str  # the allowed values, read after the key: "active.queries >= 1"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _known_features(v: Any) -> bool:
    if not (OmegaConf.is_list(v) or isinstance(v, list)):
        return False
    try:
        check_features(list(v))
    except ConfigError:
        return False
    return True


def at_least(low: float, integer: bool = False, strict: bool = False, null: bool = False) -> Rule:
    kind = _is_int if integer else _is_num
    text = f"{'>' if strict else '>='} {low}" + (" (an integer)" if integer else "")
    return Rule(lambda v: (null and v is None) or (kind(v) and (v > low if strict else v >= low)),
                f"null or {text}" if null else text)


def within(low: float, high: float, closed: bool = True) -> Rule:
    return Rule(lambda v: _is_num(v) and low <= v and (v <= high if closed else v < high),
                f"in [{low}, {high}{']' if closed else ')'}")


def one_of(*choices: Any) -> Rule:
    return Rule(lambda v: v in choices, f"one of {', '.join(map(str, choices))}")


SPLIT_SIZE = Rule(lambda v: _is_num(v) and v >= 0 and (v < 1 or float(v).is_integer()),
                  "a count >= 0 or a fraction in [0, 1)")

RULES: dict[str, Rule] = {
    "seed": at_least(0, integer=True),
    "device": Rule(lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None,
                   "one of auto, cpu, cuda, cuda:N"),
    "threads": at_least(1, integer=True, null=True),
    "data.size": at_least(1, integer=True),
    **{f"data.split.{name}": SPLIT_SIZE for name in ("clean", "val", "test", "pool")},
    "model.depth": at_least(1, integer=True),
    "model.base_width": at_least(1, integer=True),
    "model.norm": one_of(*NORMS),
    "model.dropout": within(0, 1, closed=False),
    "model.dropout_position": one_of(*DROPOUT_POSITIONS),  # smp: a subset, checked by its builder
    "model.init": one_of(*INITS),
    "model.encoder_depth": at_least(1, integer=True),
    "model.input_size": at_least(1, integer=True),
    "noise.level": within(0, 1),
    "noise.fraction": within(0, 1),
    "noise.missing": within(0, 1),
    "noise.target_dice": Rule(lambda v: v is None or v in NAMED_DICE or (_is_num(v) and 0 < v < 1),
                              f"null, a Dice in (0, 1) or one of {', '.join(NAMED_DICE)}"),
    "optim.lr": at_least(0, strict=True),
    "optim.weight_decay": at_least(0),
    "optim.momentum": at_least(0),
    "optim.schedule": one_of(*SCHEDULES),
    "optim.warmup_steps": at_least(0, integer=True),
    "optim.min_lr_ratio": within(0, 1),
    "trainer.epochs": at_least(1, integer=True),
    "trainer.steps_per_epoch": at_least(1, integer=True),
    "trainer.batch_size": at_least(1, integer=True),
    "trainer.eval_batch_size": at_least(1, integer=True),
    "trainer.num_workers": at_least(0, integer=True),
    "trainer.grad_clip": at_least(0, strict=True, null=True),
    "trainer.fit_curve_images": at_least(0, integer=True),
    "meta.backend": Rule(lambda v: v in META_BACKENDS, f"one of {', '.join(META_BACKENDS.names())}"),
    "meta.lr": at_least(0, strict=True, null=True),
    "meta.clean_batch_size": Rule(lambda v: v == "all" or (_is_int(v) and v >= 1), "a count >= 1 or 'all'"),
    "meta.normalize": one_of(*NORMALIZE),
    "meta.zero_policy": one_of(*ZERO_POLICIES),
    "meta.clean_loss_weight": at_least(0),
    "meta.clean_every": at_least(1, integer=True),
    "meta.weighting": Rule(lambda v: v in weighting_names(), f"one of {', '.join(weighting_names())}"),
    "meta.center_step": at_least(0, strict=True),
    "meta.weight_net_hidden": at_least(1, integer=True),
    "meta.weight_net_lr": at_least(0, strict=True),
    "meta.weight_net_boundary_reach": Rule(lambda v: _is_num(v) and 0 < v <= 1, "in (0, 1]"),
    "meta.weight_net_features": Rule(_known_features, f"distinct names from {', '.join(FEATURES.names())}"),
    "meta.bootstrap": at_least(0),
    "meta.memory": Rule(lambda v: v is None or (_is_num(v) and 0 <= v < 1), "null or in [0, 1)"),
    "meta.memory_freeze_after": at_least(1, integer=True, null=True),
    "meta.correct_tau": within(0.5, 1, closed=False),
    "meta.correct_r": Rule(lambda v: _is_num(v) and 0 < v < 1, "in (0, 1)"),
    "meta.steps_per_epoch": at_least(1, integer=True),
    "active.initial": Rule(lambda v: v == "all" or (_is_int(v) and v >= 1), "a count >= 1 or 'all'"),
    "active.rounds": at_least(0, integer=True),
    "active.queries": at_least(1, integer=True),
    "active.epochs": at_least(1, integer=True),
    "active.epochs_per_round": at_least(0, integer=True),
    "active.mc_samples": at_least(1, integer=True),
    "active.mc_mode": one_of(*MC_MODES),
    "active.chunk": at_least(1, integer=True),
}
_ABSENT = object()


def _value(cfg: DictConfig, key: str) -> Any:
    """The (resolved) value at ``key``; ``_ABSENT`` when the key, or its value (``???``), is missing."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig) or leaf not in node or OmegaConf.is_missing(node, leaf):
        return _ABSENT
    return node[leaf]


SCHEMA_NODES: dict[str, type] = {
    "data": DataConfig, "data.split": SplitConfig, "noise": NoiseConfig,
    "trainer": TrainerConfig, "meta": MetaConfig, "active": ActiveConfig,
}


def validate(cfg: DictConfig | dict) -> None:
    """Check the keys of :data:`SCHEMA_NODES` and every value that :data:`RULES` covers.

    Absent keys are skipped, so a partial config (a test's, a notebook's) is checked as far as it goes.

    Raises:
        ConfigError: naming each unknown key with the valid ones, and each bad value with its range,
            e.g. ``optim.lr=-0.1 is invalid: need optim.lr > 0``.
    """
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    errors = []
    nodes = dict(SCHEMA_NODES)
    if _value(cfg, "model.name") in MODEL_SCHEMAS:
        nodes["model"] = MODEL_SCHEMAS[_value(cfg, "model.name")]
    for path, schema in nodes.items():
        node = _value(cfg, path)
        valid = [f.name for f in fields(schema)]
        if isinstance(node, DictConfig):
            errors += [unknown_key(f"{path}.{key}", valid) for key in node if key not in valid]
    for key, rule in RULES.items():
        value = _value(cfg, key)
        if value is not _ABSENT and not rule.ok(value):
            errors.append(f"{key}={value!r} is invalid: need {key} {rule.text}")
    size, depth = _value(cfg, "data.size"), _value(cfg, "model.depth")  # other models: check_contract at build
    if _is_int(size) and _is_int(depth) and size > 0 and depth >= 1 and size % 2**depth:
        errors.append(f"data.size={size} must be divisible by 2**model.depth = {2**depth}: the U-Net halves it "
                      f"{depth} times")
    if _value(cfg, "trainer.compile") is True and _value(cfg, "method.name") == "meta":
        errors.append("trainer.compile=true does not apply to method=meta: the meta step calls the model "
                      "functionally, around the compiled module")
    if _value(cfg, "noise.kind") == "none" and (_value(cfg, "noise.missing") not in (0, 0.0, _ABSENT)
                                                 or _value(cfg, "noise.target_dice") not in (None, _ABSENT)):
        errors.append("noise.missing and noise.target_dice need a noise kind (noise=coarse, mix, morph, ...), "
                      "not noise=none")
    every, backend = _value(cfg, "meta.clean_every"), _value(cfg, "meta.backend")
    if _is_int(every) and every > 1 and backend in META_BACKENDS and backend not in FORWARD_MODE_BACKENDS:
        errors.append(f"meta.clean_every={every} (a reused clean gradient) needs meta.backend in "
                      f"{', '.join(FORWARD_MODE_BACKENDS)}, got {backend}")
    if errors:
        raise ConfigError("; ".join(errors))


def unknown_key(full_key: str, valid: list[str]) -> str:
    """``unknown key 'trainer.epoch' (did you mean trainer.epochs?); valid keys of trainer: ...``"""
    parent, _, leaf = full_key.rpartition(".")
    close = difflib.get_close_matches(leaf, valid, n=1)
    hint = f" (did you mean {parent + '.' if parent else ''}{close[0]}?)" if close else ""
    return f"unknown key {full_key!r}{hint}; valid keys of {parent or 'the top level'}: {', '.join(sorted(valid))}"


# -- 3. the command line -------------------------------------------------------------------------
def check_command_line(config_dir: str, config_name: str, overrides: list[str]) -> None:
    """Compose ``config_name`` with the command-line ``overrides`` (a sweep at its first value) and
    :func:`validate` it. Problems other than an unknown key or a bad value are left to Hydra, which
    reports them while composing.

    Raises:
        ConfigError: an override names a key that does not exist (the message lists the valid keys of
            its node), or :func:`validate` fails.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        single = []
        for override in OverridesParser.create().parse_overrides(overrides):
            if override.is_hydra_override():
                continue
            if override.is_sweep_override():
                if not (override.is_choice_sweep() or override.is_range_sweep()):
                    continue  # glob(...) and interval(...) need Hydra's sweeper
                value = next(iter(override.sweep_string_iterator()), None)
                if value is not None:
                    single.append(f"{override.get_key_element()}={value}")
            else:
                single.append(override.input_line)
        with initialize_config_dir(config_dir, version_base="1.3"):
            cfg = compose(config_name, overrides=single)
    except HydraException as err:
        cause = err.__cause__
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and isinstance(cause.parent_node, DictConfig):
            valid = [str(k) for k in cause.parent_node if k != "hydra"]
            message = unknown_key(str(cause.full_key), valid)
            if "." not in str(cause.full_key):  # a mistyped group name, perhaps
                groups = sorted({p.parent.relative_to(config_dir).as_posix() for p in Path(config_dir).glob("*/**/*.yaml")})
                message += f"; config groups: {', '.join(g for g in groups if g != 'hydra' and not g.startswith('hydra/'))}"
            raise ConfigError(message) from None
        return
    validate(cfg)
