"""The command lines' common layer: Hydra's entry point with checks before any run folder exists,
``resume=<run>`` with the run's saved configuration, and the commands printed after a stop.
``python -m noisyseg.train`` and ``python -m noisyseg.active`` are thin wrappers around :func:`hydra_main`.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from noisyseg.atomic import prepare_run_dir
from noisyseg.checkpoint import load_checkpoint
from noisyseg.config import CONFIG_DIR, register
from noisyseg.distributed import exit_worker, is_main
from noisyseg.errors import ConfigError, NoisysegError
from noisyseg.schema import check_command_line


# Settings that change how a run computes or reports, never its result: a resumed run may change them.
# Not ``device``: another device (or GPU kind) gives a different result, and resuming promises the same one.
RESUME_NEUTRAL = ("threads", "trainer.progress", "trainer.num_workers", "trainer.tensorboard", "cache_dir")
_BOOKKEEPING = ("resume", "reuse")  # say where the run is, not what it computes


def check_resume(cfg: DictConfig, saved: dict) -> None:
    """Refuse to continue a run whose saved config differs from ``cfg`` (:data:`RESUME_NEUTRAL` aside)."""
    current = OmegaConf.to_container(cfg, resolve=True)
    ignored = (*RESUME_NEUTRAL, *_BOOKKEEPING)
    differ = sorted(k for k in _diff_keys(current, dict(saved)) if k not in ignored)
    if differ:
        raise ConfigError(f"cannot resume: the configuration differs from the checkpoint's in {', '.join(differ)}")


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in a.keys() | b.keys() for k in _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def resume_command(module: str, run_dir: str | Path) -> str:
    """The command that continues ``run_dir``, as printed after an interruption and run as printed."""
    return f"python -m {module} {shlex.quote(f'resume={run_dir}')}"


def stop_note(what: str, kept: str, resumable: bool, module: str, run_dir: Path) -> str:
    """``<what>; <kept>; resume with: python -m <module> resume=<run>`` (or how to start over)."""
    hint = f"resume with: {resume_command(module, run_dir)}" if resumable else "run again to start over"
    return f"{what}; {kept}; {hint}"


def restart_command(module: str, run_dir: str | Path, changes: dict[str, Any]) -> str | None:
    """A command for a new run: the overrides that started ``run_dir`` (as Hydra saved them) with
    ``changes``; None for a run not started from the command line."""
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    kept = [o for o in OmegaConf.load(path) if o.split("=")[0].lstrip("+~") not in {*changes, "resume"}]
    args = [*kept, *(f"{key}={value}" for key, value in changes.items())]
    return f"python -m {module} {' '.join(shlex.quote(a) for a in args)}"


def resume_config(overrides: list[str], checkpoint: str) -> DictConfig | None:
    """The configuration of a command line with ``resume=<run>`` (None without one): the config saved in
    the run's ``checkpoint``, changed only by the other ``overrides`` that leave the result as it is
    (:data:`RESUME_NEUTRAL`). An override that repeats the run's own setting changes nothing and is
    accepted; any other is refused, naming the keys.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = [o for o in OverridesParser.create().parse_overrides(overrides) if not o.is_hydra_override()]
    except HydraException:  # a malformed override: Hydra reports it, with its position, while composing
        return None
    run = next((o.value() for o in parsed if o.key_or_group == "resume"), None)
    if not run:
        return None
    run_dir = Path(str(run))
    path = run_dir / checkpoint
    if not path.is_file():
        raise ConfigError(f"cannot resume {run_dir}: {path} not found (not a run folder, or stopped before its first "
                          f"checkpoint: start it again instead)")
    cfg = OmegaConf.create(load_checkpoint(path)["config"])
    started = _started_with(run_dir)
    changes = [o for o in parsed if o.key_or_group != "resume" and _changes(o, cfg, started)]
    refused = sorted({o.key_or_group for o in changes} - set(RESUME_NEUTRAL))
    if refused:
        raise ConfigError(f"cannot resume: the configuration differs from the checkpoint's in {', '.join(refused)}; "
                          f"a resumed run may change only {', '.join(RESUME_NEUTRAL)} (start a new run to change others)")
    for o in changes:
        OmegaConf.update(cfg, o.key_or_group, o.value(), merge=False)
    cfg.resume = str(run_dir)
    return cfg


def _started_with(run_dir: Path) -> tuple[set[str], dict[str, Any]]:
    """The run's command-line overrides and config-group choices, as Hydra saved them (empty for a run
    started from Python)."""
    hydra_dir = run_dir / ".hydra"
    overrides = OmegaConf.load(hydra_dir / "overrides.yaml") if (hydra_dir / "overrides.yaml").is_file() else []
    choices = {}
    if (hydra_dir / "hydra.yaml").is_file():
        choices = OmegaConf.to_container(OmegaConf.load(hydra_dir / "hydra.yaml").hydra.runtime.choices)
    return set(overrides), choices


def _changes(override: Any, cfg: DictConfig, started: tuple[set[str], dict[str, Any]]) -> bool:
    """Whether a command-line override would change the saved config ``cfg``."""
    overrides, choices = started
    key = override.key_or_group
    if override.input_line in overrides:
        return False
    if key in choices:  # a config group: data=ph2, experiment=..., debug=fast
        return str(override.value()) != str(choices[key])
    missing = object()
    return override.is_delete() or OmegaConf.select(cfg, key, default=missing) != override.value()


def fail(error: object) -> NoReturn:
    """The command line's answer to bad input: ``error: ...`` on stderr and exit status 2."""
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


class CheckOutputDir(Callback):
    """Hydra callback (``hydra.callbacks`` in ``conf/train.yaml``): an output folder that cannot be
    written fails with ``error: ...`` and status 2 before Hydra itself tries to create it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _writable_or_exit(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _writable_or_exit(config.hydra.sweep.dir)


def _writable_or_exit(path: str) -> None:
    try:
        prepare_run_dir(path)
    except NoisysegError as err:
        fail(err)


def _one_run_dir_for_all_ranks(overrides: list[str]) -> None:
    """Under torchrun every rank must write to one folder, but Hydra's default name is a timestamp that
    may differ by a second between ranks: name it after torchrun's run id unless one is given."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or any(o.startswith(("hydra.run.dir=", "resume=")) for o in overrides):
        return
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if run_id == "none":
        fail("under torchrun without --standalone or --rdzv-id, pass hydra.run.dir=<folder> "
             "(every process must write to the same run folder)")
    sys.argv.append(f"hydra.run.dir=runs/torchrun_{run_id}")


def hydra_main(config_name: str, run: Callable[[DictConfig, str], dict], summary: Callable[[dict], dict],
               checkpoint: str) -> None:
    """Call ``run(cfg, run_dir)`` under Hydra with ``conf/<config_name>.yaml``; print ``summary(results)``
    as JSON. Configuration and data errors print ``error: ...`` and exit with status 2.

    ``resume=<run>`` runs with the config saved in ``<run>/<checkpoint>`` instead (see :func:`resume_config`)."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    register()  # the schemas and the run-folder resolver, before Hydra composes

    @hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=config_name)
    def _main(cfg: DictConfig) -> None:
        _run_and_report(run, cfg, HydraConfig.get().runtime.output_dir, summary)

    from hydra._internal.utils import get_args_parser  # Hydra's own command-line parser

    args = get_args_parser().parse_args()
    _one_run_dir_for_all_ranks(args.overrides)
    if not (args.config_path or args.config_dir or args.cfg or args.help or args.hydra_help or args.info
            or args.shell_completion or args.experimental_rerun):
        try:  # before Hydra creates a run folder: a typo names the valid keys, a bad value its range
            cfg = None if args.multirun else resume_config(args.overrides, checkpoint)
            if cfg is None:
                check_command_line(CONFIG_DIR, args.config_name or config_name, args.overrides)
        except (NoisysegError, OmegaConfBaseException) as err:
            fail(err)
        if cfg is not None:  # the saved config, not a new composition: Hydra would also overwrite the run's .hydra/
            _run_and_report(run, cfg, cfg.resume, summary)
            return exit_worker()
    _main()
    exit_worker()  # under torchrun: leave without the interpreter's teardown (see exit_worker)


def _run_and_report(run: Callable[[DictConfig, str], dict], cfg: DictConfig, run_dir: str,
                    summary: Callable[[dict], dict]) -> None:
    try:
        results = run(cfg, run_dir)
    except (NoisysegError, OmegaConfBaseException) as err:
        fail(err)
    except KeyboardInterrupt:
        sys.exit(130)  # train() has printed where it stopped and how to resume
    if is_main():
        print(json.dumps({"run_dir": run_dir, **summary(results)}, indent=2))
