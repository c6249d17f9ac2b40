"""``python -m noisyseg.train``: a thin Hydra entry point around :func:`train`.

Everything below :func:`main` is plain Python: ``train(cfg)`` takes a config (an OmegaConf
``DictConfig`` or a dict) and returns the results dict that it also writes to ``results.json``.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

import numpy as np
import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from noisyseg.atomic import prepare_run_dir, write_image, write_json
from noisyseg.checkpoint import load_checkpoint, save_checkpoint
from noisyseg.data.cache import load_arrays
from noisyseg.data.calibration import calibrate
from noisyseg.data.dataset import SegmentationDataset
from noisyseg.data.sources import build_source
from noisyseg.data.splits import load_manifest, make_splits, save_manifest
from noisyseg.data.transforms import build_transform
from noisyseg.distributed import barrier, broadcast, data_parallel, is_main, main_first, setup, unwrap
from noisyseg.engine import Trainer, TrainingDiverged, evaluate, predict_probs
from noisyseg.errors import ConfigError, DataError, NoisysegError
from noisyseg.losses import build_loss
from noisyseg.methods import build_method
from noisyseg.metrics import per_image_scores, score
from noisyseg.models import build_model
from noisyseg.noise import MaskNoise, realised_dice, target_dice
from noisyseg.optim import build_optimizer
from noisyseg.runlog import RunLog, denormalise, image_grid
from noisyseg.schema import check_command_line, validate  # also registers the config schemas with Hydra

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
CHECKPOINT_FORMAT = 1


def node_kwargs(node: DictConfig, drop: tuple[str, ...] = ("name",)) -> dict[str, Any]:
    """A config group's options as keyword arguments for its plug-in (``name`` dropped)."""
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True, throw_on_missing=True).items() if k not in drop}


def load_splits(cfg: DictConfig, run_dir: Path, manifest: bool = True
                ) -> tuple[Any, dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """Build the data source, split it (or reuse a manifest) and decode every split (cached); write
    ``splits.json`` unless ``manifest=False``. Returns the source, the arrays and the noise report."""
    source = build_source(cfg.data.name, **node_kwargs(cfg.data.params, drop=()))
    if cfg.data.splits_file:
        splits = load_manifest(cfg.data.splits_file, source.ids)
    else:
        splits = make_splits(source.ids, cfg.seed, **node_kwargs(cfg.data.split, drop=()), official=source.official)
    if manifest:
        save_manifest(run_dir / "splits.json", splits)
    noise, calibration = build_noise(cfg.noise, source, splits["noisy"], cfg.data.size, cfg.cache_dir)
    arrays = {
        name: load_arrays(source, ids, cfg.data.size, cfg.cache_dir, noise=noise if name == "noisy" else None, split=name,
                          progress=cfg.trainer.progress)
        for name, ids in splits.items()
    }
    return source, arrays, noise_report(cfg.noise, noise, calibration, splits["noisy"], arrays["noisy"])


def build_noise(node: DictConfig, source: Any = None, ids: list[str] = (), size: int = 0,
                cache_dir: str | None = None) -> tuple[MaskNoise | None, dict[str, float]]:
    """The annotation-noise model applied to the noisy split (None for ``noise=none``) and, when
    ``noise.target_dice`` is set, the calibration that chose its level on ``ids`` of ``source``."""
    if node.kind == "none":
        return None, {}
    noise = MaskNoise(node.kind, node.level, node.fraction, node.seed, node.missing)
    if node.target_dice is None:
        return noise, {}
    return calibrate(noise, target_dice(node.target_dice), source, list(ids), size, cache_dir)


def noise_report(node: DictConfig, noise: MaskNoise | None, calibration: dict[str, float], ids: list[str],
                 noisy: dict[str, np.ndarray]) -> dict[str, Any]:
    """The configured noise, the level used, and the realised noise: mean Dice(noisy, true) over the
    noisy split, and over its corrupted images alone (neither missing nor left clean)."""
    report = {**node_kwargs(node, drop=()), **calibration, "realised_dice": 1.0}
    if noise is None or not len(ids):
        return report
    corrupted = np.array([noise.is_corrupted(i) and not noise.is_missing(i) for i in ids])
    report.update(level=noise.level, realised_dice=realised_dice(noisy["noisy_masks"], noisy["masks"]),
                  corrupted_count=int(corrupted.sum()), missing_count=int(sum(noise.is_missing(i) for i in ids)))
    if corrupted.any():
        report["realised_dice_corrupted"] = realised_dice(noisy["noisy_masks"][corrupted], noisy["masks"][corrupted])
    return report


def _stream_dataset(arrays: dict[str, dict[str, np.ndarray]], splits: tuple[str, ...], transform) -> SegmentationDataset:
    parts = [arrays[s] for s in splits]
    images = np.concatenate([p["images"] for p in parts])
    true = np.concatenate([p["masks"] for p in parts])
    target = np.concatenate([p.get("noisy_masks", p["masks"]) for p in parts])  # what the learner sees
    return SegmentationDataset(images, {"mask": target, "true_mask": true}, transform)


def build_streams(cfg: DictConfig, method, arrays) -> dict[str, SegmentationDataset]:
    transform = build_transform(OmegaConf.to_container(cfg.data.augment, resolve=True))
    streams = {}
    for name, splits in method.streams.items():
        if sum(len(arrays[s]["images"]) for s in splits) == 0:
            raise DataError(f"method={cfg.method.name} trains on the {'+'.join(splits)} split(s), which are empty; check data.split")
        streams[name] = _stream_dataset(arrays, splits, transform)
    return streams


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


def _fit_subset(noisy: dict[str, np.ndarray], count: int) -> dict[str, Any] | None:
    """Up to ``count`` noisy-set images (spread evenly) with their noisy and true masks, for the
    memorisation curve; None without annotation noise or with ``count=0``."""
    if "noisy_masks" not in noisy or not count or not len(noisy["images"]):
        return None
    picks = np.linspace(0, len(noisy["images"]) - 1, min(count, len(noisy["images"]))).astype(int)
    return {"data": SegmentationDataset(noisy["images"][picks], {"mask": noisy["masks"][picks]}),
            "noisy": noisy["noisy_masks"][picks] > 0, "true": noisy["masks"][picks] > 0}


def _noisy_set_fit(net, fitset: dict[str, Any] | None, batch_size: int, device) -> dict[str, float]:
    """Dice of the model on noisy-set images against their noisy labels and against the truth: a model
    that starts to fit the noise (memorisation) raises the first while the second falls."""
    if fitset is None:
        return {}
    pred = predict_probs(net, fitset["data"], batch_size, device) >= 0.5
    return {"noisyset_dice_vs_noisy": score(pred, fitset["noisy"])["dice"],
            "noisyset_dice_vs_true": score(pred, fitset["true"])["dice"]}


def _preview(model, dataset: SegmentationDataset, masks: np.ndarray, probs: np.ndarray, count: int = 6) -> np.ndarray:
    images = denormalise(torch.stack([dataset[i]["image"] for i in range(count)]))
    return image_grid([images, masks[:count].astype(np.float32), probs[:count]])


def _weight_grid(last: dict[str, torch.Tensor], count: int = 6) -> np.ndarray:
    """image | noisy mask | weight map (scaled to its max) | true mask, for a few noisy images."""
    weights = last["weights"][:count, 0].float()
    scaled = weights / weights.flatten(1).amax(1).clamp_min(1e-30)[:, None, None]
    columns = [denormalise(last["image"][:count]), last["mask"][:count, 0], scaled, last["true_mask"][:count, 0]]
    return image_grid([c if isinstance(c, np.ndarray) else c.detach().cpu().float().numpy() for c in columns])


def _log_weights(log: RunLog, method, run_dir: Path, epoch: int) -> None:
    last = getattr(method, "last", None)
    if not last:
        return
    grid = _weight_grid(last)
    log.images("meta/image_noisy_weights_true", grid, epoch)
    write_image(run_dir / "weights" / f"epoch_{epoch:03d}.png", grid)


def _training_state(trainer: Trainer, epoch: int, best: dict, history: list, config: dict) -> dict[str, Any]:
    """Everything needed to continue after ``epoch``: a plain dict, loadable with weights_only=True."""
    return {
        "format": CHECKPOINT_FORMAT, "model": unwrap(trainer.model).state_dict(), "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(), "method": trainer.method.state_dict(),
        "counters": dict(trainer.counters), "epoch": epoch, "best": best, "history": history, "config": config,
    }


def _restore(cfg: DictConfig, path: Path, trainer: Trainer) -> tuple[int, dict, list]:
    """Load a :func:`_training_state` checkpoint into ``trainer``; returns (next epoch, best, history)."""
    state = load_checkpoint(path, trainer.device)
    check_resume(cfg, state["config"])
    unwrap(trainer.model).load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.method.load_state_dict(state["method"])
    trainer.counters.update(state["counters"])
    return state["epoch"] + 1, state["best"], state["history"]


def _kept(run_dir: Path, epoch: int) -> str:
    """What a stopped run leaves behind: ``last.pt`` of its last complete epoch (-1: none yet)."""
    return f"{run_dir / 'last.pt'} from epoch {epoch} is kept" if epoch >= 0 else "no checkpoint was written yet"


def stop_note(what: str, kept: str, resumable: bool, module: str, run_dir: Path) -> str:
    """``<what>; <kept>; resume with: python -m <module> resume=<run>`` (or how to start over)."""
    hint = f"resume with: {resume_command(module, run_dir)}" if resumable else "run again to start over"
    return f"{what}; {kept}; {hint}"


def train(cfg: DictConfig | dict, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Train and test one model as configured; write everything to ``run_dir``; return the results."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    validate(cfg)  # unknown keys and out-of-range values, before any work
    run_dir = Path(cfg.resume or run_dir or "runs/latest")
    if cfg.get("reuse") and not cfg.resume:  # sweeps: never recompute a finished cell
        if (run_dir / "results.json").exists():
            return json.loads((run_dir / "results.json").read_text())
        if (run_dir / "last.pt").exists():
            cfg = cfg.copy()
            cfg.resume = str(run_dir)
    rank, world, device = setup(cfg.device)  # (0, 1, device) unless run by torchrun
    main = rank == 0  # the process that writes files and evaluates
    if main:
        prepare_run_dir(run_dir)  # an unwritable folder fails here, naming it
    if cfg.get("threads"):
        torch.set_num_threads(cfg.threads)  # e.g. 1 per job when sweep cells run in parallel
    torch.manual_seed(cfg.seed)  # model initialisation

    with main_first():  # rank 0 decodes and caches the splits, the others then read the cache
        _, arrays, noise = load_splits(cfg, run_dir, manifest=main)
    loss = build_loss(cfg.loss.name, **node_kwargs(cfg.loss))
    method = build_method(cfg.method.name, loss, **node_kwargs(cfg.method))
    streams = build_streams(cfg, method, arrays)
    if hasattr(method, "set_stream_sizes"):  # rivals drawing expert images at their pooled share
        method.set_stream_sizes({name: len(data) for name, data in streams.items()})
    evalsets = {s: SegmentationDataset(arrays[s]["images"], {"mask": arrays[s]["masks"]}) for s in ("val", "test")}
    fitset = _fit_subset(arrays["noisy"], cfg.trainer.fit_curve_images)
    net = build_model(cfg.model.name, **node_kwargs(cfg.model)).to(device)
    if cfg.trainer.channels_last:
        net = net.to(memory_format=torch.channels_last)  # convolutions then take NHWC inputs as they come
    model = data_parallel(net, device, world)
    if cfg.trainer.compile:
        model = torch.compile(model)
    total_steps = cfg.trainer.epochs * cfg.trainer.steps_per_epoch
    optimizer, scheduler = build_optimizer(model.parameters(), total_steps, **node_kwargs(cfg.optim, drop=()))
    trainer = Trainer(model, method, streams, optimizer, scheduler, device, cfg.seed, cfg.trainer.batch_size,
                      cfg.trainer.steps_per_epoch, cfg.trainer.num_workers, cfg.trainer.grad_clip, cfg.trainer.progress,
                      cfg.trainer.amp, rank=rank, world=world)

    start_epoch, best, history = 0, {"dice": -1.0, "epoch": -1}, []
    if cfg.resume:
        start_epoch, best, history = _restore(cfg, run_dir / "last.pt", trainer)

    log = RunLog(run_dir, cfg.trainer.tensorboard and main)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    epoch, saved = start_epoch, start_epoch - 1  # saved: the epoch that last.pt holds
    try:
        for epoch in range(start_epoch, cfg.trainer.epochs):
            logs = trainer.train_epoch(epoch)
            if main:
                val, probs = evaluate(net, evalsets["val"], arrays["val"]["masks"], cfg.trainer.eval_batch_size, device)
                row = {"epoch": epoch, "step": trainer.counters["steps"], "lr": optimizer.param_groups[0]["lr"],
                       **{f"train_{k}": v for k, v in logs.items()}, **{f"val_{k}": v for k, v in val.items()}}
                row.update(_noisy_set_fit(net, fitset, cfg.trainer.eval_batch_size, device))
                history.append(row)
                log.epoch(history, trainer.counters["steps"])
                log.images("val/image_truth_prediction", _preview(net, evalsets["val"], arrays["val"]["masks"], probs), epoch)
                _log_weights(log, method, run_dir, epoch)
                if val["dice"] > best["dice"]:
                    best = {"dice": val["dice"], "epoch": epoch, "val": val}
                    save_checkpoint(run_dir / "best.pt", {"model": net.state_dict(), "epoch": epoch, "config": resolved})
                save_checkpoint(run_dir / "last.pt", _training_state(trainer, epoch, best, history, resolved))
            barrier()  # no rank starts the next epoch before last.pt holds this one
            saved = epoch
    except TrainingDiverged as err:  # resuming would replay the same steps: a new run needs a new config
        again = restart_command("noisyseg.train", run_dir, {"optim.lr": f"{cfg.optim.lr / 10:g}"})
        advice = f"; lower optim.lr or set trainer.grad_clip in a new run{f', e.g. {again}' if again else ''}"
        raise TrainingDiverged(f"{err}; {_kept(run_dir, saved)}{advice}") from None
    except KeyboardInterrupt:  # checkpoints are written atomically: last.pt holds the last complete epoch
        if main:
            print(stop_note(f"interrupted at epoch {epoch}", _kept(run_dir, saved), saved >= 0, "noisyseg.train", run_dir),
                  file=sys.stderr)
        raise
    except Exception:  # a crash (a full disk, out of memory, ...): say how to continue once it is fixed
        if main:
            print(stop_note(f"stopped by an error at epoch {epoch}", _kept(run_dir, saved), saved >= 0, "noisyseg.train",
                            run_dir), file=sys.stderr)
        raise
    finally:
        log.close()

    if not main:
        return broadcast(None)  # rank 0's results
    net.load_state_dict(load_checkpoint(run_dir / "best.pt", device)["model"])
    test, test_probs = evaluate(net, evalsets["test"], arrays["test"]["masks"], cfg.trainer.eval_batch_size, device)
    _write_per_image(run_dir / "test_per_image.csv", test_probs >= 0.5, arrays["test"]["masks"] > 0)
    results = {
        "test": test, "val": best["val"], "best_epoch": best["epoch"], "epochs": cfg.trainer.epochs,
        "steps": trainer.counters["steps"], "skipped_steps": trainer.counters["skipped"], "method_state": _scalars(method.state_dict()),
        "split_sizes": {name: len(a["images"]) for name, a in arrays.items()}, "noise": noise,
        "device": str(device), "processes": world, "config": resolved,
    }
    write_json(run_dir / "results.json", results)
    return broadcast(results)


def _scalars(state: dict) -> dict:
    """A method's checkpoint state without its tensors (e.g. a reused clean gradient), for results.json."""
    def has_tensor(v: Any) -> bool:
        return isinstance(v, torch.Tensor) or isinstance(v, dict) and any(has_tensor(x) for x in v.values())
    return {k: v for k, v in state.items() if not has_tensor(v)}


def _write_per_image(path: Path, pred: np.ndarray, target: np.ndarray) -> None:
    scores = per_image_scores(pred, target)
    lines = ["index," + ",".join(scores)]
    lines += [f"{i}," + ",".join(f"{scores[k][i]:.6f}" for k in scores) for i in range(len(pred))]
    path.write_text("\n".join(lines) + "\n")


def _run_dir(resume: str | None, default: str) -> str:
    return resume or default


OmegaConf.register_new_resolver("noisyseg_run_dir", _run_dir, replace=True)


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
            return _run_and_report(run, cfg, cfg.resume, summary)
    _main()


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


def main() -> None:
    hydra_main("train", train, summary, checkpoint="last.pt")


def summary(results: dict) -> dict:
    """What the command line prints: the test scores next to the noise the model was trained with."""
    noise = {k: results["noise"][k] for k in ("kind", "target_dice", "level", "realised_dice") if k in results["noise"]}
    return {"method": results["config"]["method"]["name"], "noise": noise, "test": results["test"]}


if __name__ == "__main__":
    main()
