"""One run: train, select the best-validation checkpoint, test, write everything to the run folder.

``train(cfg)`` takes a config (an OmegaConf ``DictConfig`` or a dict) and returns the results dict that
it also writes to ``results.json``; the objects it trains come from :mod:`noisyseg.build`, and
``python -m noisyseg.train`` is :func:`main`, a thin wrapper around :func:`noisyseg.cli.hydra_main`.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from noisyseg.atomic import prepare_run_dir, write_image, write_json
from noisyseg.build import build_data, build_trainer
from noisyseg.checkpoint import load_checkpoint, save_checkpoint
from noisyseg.cli import check_resume, hydra_main, restart_command, stop_note
from noisyseg.data.dataset import SegmentationDataset
from noisyseg.distributed import barrier, broadcast, main_first, setup, unwrap
from noisyseg.engine import Trainer, TrainingDiverged, evaluate, predict_probs
from noisyseg.metrics import per_image_scores, score
from noisyseg.runlog import RunLog, denormalise, image_grid
from noisyseg.schema import validate

CHECKPOINT_FORMAT = 1


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
        arrays, noise = build_data(cfg, run_dir, manifest=main)
    parts = build_trainer(cfg, arrays, device, rank, world)
    method, net, optimizer, trainer = parts.method, parts.net, parts.optimizer, parts.trainer
    evalsets = {s: SegmentationDataset(arrays[s]["images"], {"mask": arrays[s]["masks"]}) for s in ("val", "test")}
    fitset = _fit_subset(arrays["noisy"], cfg.trainer.fit_curve_images)

    start_epoch, best, history = 0, {"dice": -1.0, "epoch": -1}, []
    if cfg.resume:
        start_epoch, best, history = _restore(cfg, run_dir / "last.pt", trainer)

    log = RunLog(run_dir, cfg.trainer.tensorboard and main)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    epoch, saved = start_epoch, start_epoch - 1  # saved: the epoch that last.pt holds
    clock = (time.perf_counter(), time.process_time())
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
        # the epochs this process ran (a resumed run: since the resume), with validation, checkpoints and test;
        # CPU time is this process's, all threads
        "time": {"epochs": cfg.trainer.epochs - start_epoch, "wall_s": round(time.perf_counter() - clock[0], 2),
                 "cpu_s": round(time.process_time() - clock[1], 2)},
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


def main() -> None:
    hydra_main("train", train, summary, checkpoint="last.pt")


def summary(results: dict) -> dict:
    """What the command line prints: the test scores next to the noise the model was trained with."""
    noise = {k: results["noise"][k] for k in ("kind", "target_dice", "level", "realised_dice") if k in results["noise"]}
    return {"method": results["config"]["method"]["name"], "noise": noise, "test": results["test"]}


if __name__ == "__main__":
    main()
