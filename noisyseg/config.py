"""Where ``conf/`` is, and the one explicit place that prepares Hydra to compose it.

Composing ``conf/`` needs two things registered first: the structured-config schemas
(:mod:`noisyseg.schema`) and the ``noisyseg_run_dir`` resolver of ``conf/train.yaml``. The command
lines call :func:`register`; a notebook or a test calls :func:`compose`, which does too:

    from noisyseg.config import compose
    cfg = compose("method=meta", "noise.target_dice=severe")
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from noisyseg.errors import ConfigError
from noisyseg.schema import check_command_line, register_schemas

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def _run_dir(resume: str | None, default: str) -> str:
    """``hydra.run.dir``: a resumed run writes into its own folder."""
    return resume or default


def register() -> None:
    """Register the schemas and resolvers that ``conf/`` needs (idempotent)."""
    register_schemas()
    OmegaConf.register_new_resolver("noisyseg_run_dir", _run_dir, replace=True)


def compose(*overrides: str, name: str = "train") -> DictConfig:
    """``conf/<name>.yaml`` composed with ``overrides``, as the command line would (no run folder).

    Raises:
        ConfigError: an override names an unknown key (the message lists the valid ones), a missing group
            option (Hydra's message lists the options), or is malformed. Values are not validated here:
            :func:`noisyseg.schema.validate` does that; ``train()`` and ``build_run()`` call it.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    register()
    try:
        with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
            return hydra_compose(name, overrides=list(overrides))
    except HydraException as err:
        check_command_line(CONFIG_DIR, name, list(overrides))  # raises the did-you-mean error for an unknown key
        raise ConfigError(f"conf/{name}.yaml with {' '.join(overrides)}: {err}") from None
