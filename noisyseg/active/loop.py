"""The CEAL active-learning loop (Górriz et al. 2017): ``python -m noisyseg.active``.

Round 0 trains on ``active.initial`` oracle-labeled images drawn at random from the training data
(everything outside the val and test splits). Each later round:

1. scores the unlabeled pool with MC dropout (the sampler's score, plus the mean predictive entropy
   as the confidence for pseudo-labels) — one MC pass over the pool serves both;
2. asks the oracle about ``active.queries`` images chosen by the sampler (fewer when the pool runs
   low; the loop stops cleanly when it is empty), recording the answers in ``oracle.json`` at once;
3. pseudo-labels the most confident remaining images with the model's own dropout-free prediction
   (recomputed every round; they stay in the pool);
4. fine-tunes the model (or retrains it from scratch, ``active.finetune=false``) and tests it.

The training method decides how oracle and pseudo labels are used: ``method=noisy`` (default) pools
them unweighted, as CEAL does; ``method=meta`` makes the oracle-labeled images the clean set and the
pseudo-labeled ones the noisy set, so the meta step reweights the pseudo-labels pixel by pixel;
``method=clean`` ignores pseudo-labels. A round without pseudo-labels trains on the oracle labels alone.

Every random draw is seeded from ``(seed, round)`` or ``(seed, epoch)``, so the state saved after each
round (``state.pt``, atomically: model, optimizer, labeled ids with their round, pseudo ids, per-round
metrics) is all a resumed run needs to end with the same result as an uninterrupted one (on CPU).

This module is the round loop; the pool of images is :mod:`noisyseg.active.pool`, the bookkeeping of
labels and the state files :mod:`noisyseg.active.state`, the objects trained come from :mod:`noisyseg.build`.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from noisyseg.active.oracle import OracleLog, SimulatedOracle
from noisyseg.active.pool import Pool, load_pool
from noisyseg.active.pseudo import PseudoPolicy, build_pseudo_policy
from noisyseg.active.samplers import Sampler, UncertaintySampler, build_sampler, score_pool
from noisyseg.active.state import ActiveState
from noisyseg.atomic import prepare_run_dir, write_image, write_json
from noisyseg.build import build_model_parts, build_run_method, build_streams, make_trainer, node_kwargs
from noisyseg.checkpoint import load_checkpoint
from noisyseg.cli import check_resume, hydra_main, resume_command, stop_note
from noisyseg.distributed import barrier, gather, is_main, main_first, setup
from noisyseg.engine import epoch_seed, evaluate
from noisyseg.errors import ConfigError, DataError
from noisyseg.inference.mc import dropout_modules, mc_predict, predict
from noisyseg.inference.uncertainty import pixel_uncertainty
from noisyseg.methods import CleanOnly, Method
from noisyseg.metrics import score
from noisyseg.runlog import RunLog, image_grid
from noisyseg.schema import validate

MC_TAG, QUERY_TAG, INITIAL_TAG = 101, 102, 103  # keep the round seeds apart from the epoch seeds


def _initial_ids(pool: Pool, initial: int | str, seed: int) -> list[str]:
    if initial == "all":
        return list(pool.ids)
    if initial > len(pool.ids):
        raise DataError(f"active.initial={initial} asks for more images than the {len(pool.ids)} training images "
                        f"(outside val and test)")
    order = np.random.default_rng(epoch_seed(seed, 0, INITIAL_TAG)).permutation(len(pool.ids))
    return [pool.ids[k] for k in sorted(order[:initial])]


def _check_mc(cfg: DictConfig, sampler: Sampler, model: torch.nn.Module) -> None:
    if not sampler.needs_mc:
        return
    if not dropout_modules(model):
        raise ConfigError(f"active/sampler={cfg.active.sampler.name} needs MC dropout, but the model has no dropout; "
                          f"set model.dropout (e.g. 0.5, CEAL's value) or use active/sampler=random")
    if cfg.active.mc_samples < sampler.min_samples:
        raise ConfigError(f"active/sampler={cfg.active.sampler.name} needs active.mc_samples >= {sampler.min_samples}, "
                          f"got {cfg.active.mc_samples}")


def interleave(parts: list[np.ndarray]) -> np.ndarray:
    """Undo a strided split: ``parts[r]`` holds items ``r, r + N, r + 2N, ...`` of the whole (N = len(parts))."""
    out = np.empty(sum(len(p) for p in parts), np.float64)
    for r, part in enumerate(parts):
        out[r::len(parts)] = part
    return out


class ActiveLoop:
    """One active-learning run, resumable from its run folder. :meth:`run` returns the results."""

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        self.cfg, self.run_dir, self.a = cfg, run_dir, cfg.active
        self.rank, self.world, self.device = setup(cfg.device)  # (0, 1, device) unless run by torchrun
        self.main = self.rank == 0  # the process that asks the oracle, evaluates and writes files
        with main_first():  # rank 0 decodes and caches the data, the others then read the cache
            self.pool, self.evalsets, self.evalmasks = load_pool(cfg, run_dir, self.main)
        self.initial = _initial_ids(self.pool, self.a.initial, cfg.seed)
        self.full = self.a.initial == "all"  # full supervision: the loop's total epochs at once, no queries
        self.rounds = 0 if self.full else self.a.rounds
        # one learning-rate schedule spans the epochs one model is trained for
        self.schedule_epochs = self.a.epochs + self.a.rounds * self.a.epochs_per_round if (
            self.a.finetune or self.full) else self.a.epochs
        self.sampler: Sampler = build_sampler(**node_kwargs(self.a.sampler, drop=()))
        self.pseudo: PseudoPolicy = build_pseudo_policy(**node_kwargs(self.a.pseudo, drop=()))
        self.method: Method = build_run_method(cfg)
        self.oracle_only = CleanOnly(self.method.loss)  # rounds without pseudo-labels
        self.config = OmegaConf.to_container(cfg, resolve=True)
        self._new_model()
        _check_mc(cfg, self.sampler, self.net)
        self.state = ActiveState()
        self.oracle_log = OracleLog(run_dir / "oracle.json", write=self.main)
        self.oracle = SimulatedOracle({i: self.pool.answers[k] for k, i in enumerate(self.pool.ids)}, self.oracle_log.all_ids())

    # the bookkeeping's labeled and pseudo-labeled ids, also readable and settable on the loop itself
    @property
    def labeled(self) -> dict[str, int]:
        return self.state.labeled

    @labeled.setter
    def labeled(self, value: dict[str, int]) -> None:
        self.state.labeled = value

    @property
    def pseudo_ids(self) -> list[str]:
        return self.state.pseudo

    @pseudo_ids.setter
    def pseudo_ids(self, value: list[str]) -> None:
        self.state.pseudo = value

    # -- model and training ------------------------------------------------------------------
    def _new_model(self) -> None:
        torch.manual_seed(self.cfg.seed)  # initialisation, also for a retrain from scratch
        self.parts = build_model_parts(self.cfg, self.device, self.world, self.schedule_epochs)
        self.net = self.parts.net  # evaluates; self.parts.model trains

    def _streams_and_method(self, pseudo_masks: np.ndarray) -> tuple[Method, dict]:
        method = self.method if self.pseudo_ids else self.oracle_only
        return method, build_streams(self.cfg, method, self.state.splits(self.pool, pseudo_masks))

    def _train(self, epochs: int, pseudo_masks: np.ndarray) -> None:
        method, streams = self._streams_and_method(pseudo_masks)
        state = self.state
        trainer = make_trainer(self.cfg, method, streams, self.parts, self.device, self.rank, self.world, state.counters)
        for _ in range(epochs):
            logs = trainer.train_epoch(state.epoch)
            state.epochs.append({"round": len(state.history), "epoch": state.epoch, "step": state.counters["steps"],
                                 **{f"train_{k}": v for k, v in logs.items()}})
            state.epoch += 1

    # -- one round ---------------------------------------------------------------------------
    def _query(self, round_: int) -> tuple[list[str], list[str]]:
        """The ids the oracle labels this round, and the ids to pseudo-label."""
        unlabeled = self.state.unlabeled(self.pool)
        scores, confidence = self._score(round_, unlabeled)
        queried = self.oracle_log.ids(round_)  # answered before an interruption: never ask again
        if queried is None:
            rng = np.random.default_rng(epoch_seed(self.cfg.seed, round_, QUERY_TAG))
            queried = self.sampler.select(scores, unlabeled, self.a.queries, rng)
            self.oracle.label(queried)
            self.oracle_log.record(round_, queried)
        if confidence is None:
            return queried, []
        asked = set(queried)
        rest = [k for k, i in enumerate(unlabeled) if i not in asked]
        return queried, self.pseudo.choose(round_, confidence[rest], [unlabeled[k] for k in rest])

    def _score(self, round_: int, unlabeled: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """Sampler scores and (if pseudo-labels need them) confidences of the pool. With N processes each
        scores every N-th image and all gather the rest, so every rank takes the same decisions."""
        mine = unlabeled[self.rank::self.world]
        chunk = self.a.chunk
        batches = (self.pool.tensors(mine[i:i + chunk]).to(self.device) for i in range(0, len(mine), chunk))
        torch.manual_seed(epoch_seed(self.cfg.seed, round_, MC_TAG, *([self.rank] if self.world > 1 else [])))
        args = (self.sampler, self.net, batches, self.a.mc_samples, chunk, self.a.mc_mode)
        scores, confidence = score_pool(*args, confidence=True) if self.pseudo.needs_confidence else (score_pool(*args), None)
        if self.world == 1:
            return scores, confidence
        parts = gather((scores, confidence))
        scores = interleave([p[0] for p in parts])
        return scores, None if confidence is None else interleave([p[1] for p in parts])

    def _pseudo_masks(self) -> np.ndarray:
        if not self.pseudo_ids:
            return np.zeros((0, *self.pool.masks.shape[1:]), np.uint8)
        probs = predict(self.net, self.pool.tensors(self.pseudo_ids).to(self.device), chunk=self.a.chunk)
        return (probs >= 0.5).cpu().numpy().astype(np.uint8)

    def _save_uncertainty(self, round_: int, queried: list[str], count: int = 8) -> None:
        """image | prediction | uncertainty (scaled to each image's max) | oracle's mask, for queried images."""
        ids = queried[:count]
        if not ids or not dropout_modules(self.net) or not self.main:
            return
        x = self.pool.tensors(ids).to(self.device)
        torch.manual_seed(epoch_seed(self.cfg.seed, round_, MC_TAG))
        probs = mc_predict(self.net, x, max(self.a.mc_samples, 2), self.a.mc_mode)
        pred = predict(self.net, x)
        if isinstance(self.sampler, UncertaintySampler):
            pixels = self.sampler.pixel_map(probs, pred)
        else:
            pixels = pixel_uncertainty(probs, "entropy")
        pixels = (pixels / pixels.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]).cpu().numpy()
        rows = self.pool.rows(ids)
        grid = image_grid([self.pool.images[rows], pred.cpu().numpy(), pixels, self.pool.answers[rows].astype(np.float32)])
        write_image(self.run_dir / "uncertainty" / f"round_{round_:02d}.png", grid)

    def _evaluate(self, round_: int, queried: list[str], pseudo_masks: np.ndarray) -> dict[str, Any]:
        bs = self.cfg.trainer.eval_batch_size
        test, _ = evaluate(self.net, self.evalsets["test"], self.evalmasks["test"], bs, self.device)
        val, _ = evaluate(self.net, self.evalsets["val"], self.evalmasks["val"], bs, self.device)
        row = {"round": round_, "labeled": len(self.labeled), "queried": len(queried), "pseudo": len(self.pseudo_ids),
               "epoch": self.state.epoch, "step": self.state.counters["steps"]}
        if self.pseudo_ids:  # how good the self-labels were
            row["pseudo_dice"] = score(pseudo_masks > 0, self.pool.masks[self.pool.rows(self.pseudo_ids)] > 0)["dice"]
        return {**row, **{f"test_{k}": v for k, v in test.items()}, **{f"val_{k}": v for k, v in val.items()}}

    def _round(self, round_: int) -> None:
        if round_ == 0:
            queried = self.oracle_log.ids(0)
            if queried is None:
                queried = self.initial
                self.oracle.label(queried)
                self.oracle_log.record(0, queried)
            self.pseudo_ids = []
        else:
            queried, self.pseudo_ids = self._query(round_)
            self._save_uncertainty(round_, queried)
        pseudo_masks = self._pseudo_masks()  # from the model before this round's training, as CEAL
        self.labeled.update({i: round_ for i in queried})
        if round_ > 0 and not self.a.finetune:
            self._new_model()
        if round_ == 0:
            epochs = self.schedule_epochs if self.full else self.a.epochs
        else:
            epochs = self.a.epochs_per_round if self.a.finetune else self.a.epochs
        self._train(epochs, pseudo_masks)
        self.state.history.append(self._evaluate(round_, queried, pseudo_masks))

    # -- state ---------------------------------------------------------------------------------
    def _restore(self, path: Path) -> None:
        state = load_checkpoint(path, self.device)
        check_resume(self.cfg, state["config"])
        self.state.load_state_dict(state)
        self.net.load_state_dict(state["model"])
        self.parts.optimizer.load_state_dict(state["optimizer"])
        self.parts.scheduler.load_state_dict(state["scheduler"])
        self.method.load_state_dict(state["method"])

    def _save(self, log: RunLog) -> None:
        if not self.main:
            return barrier()
        self.state.save(self.run_dir, {"model": self.net.state_dict(), "optimizer": self.parts.optimizer.state_dict(),
                                       "scheduler": self.parts.scheduler.state_dict(),
                                       "method": self.method.state_dict(), "config": self.config})
        log.scalars(self.state.history[-1], self.state.history[-1]["labeled"], prefix="active/")
        barrier()  # no rank starts the next round before state.pt holds this one

    def _stopped(self, what: str) -> None:
        state = self.run_dir / "state.pt"
        kept = f"{state} holds the last complete round" if state.exists() else "no round was saved yet"
        if self.main:
            print(stop_note(f"{what} in round {len(self.state.history)}", kept, state.exists(), "noisyseg.active", self.run_dir),
                  file=sys.stderr)

    def run(self) -> dict[str, Any]:
        if (self.run_dir / "state.pt").exists():
            self._restore(self.run_dir / "state.pt")
        log = RunLog(self.run_dir, self.cfg.trainer.tensorboard and self.main)
        try:
            for round_ in range(len(self.state.history), self.rounds + 1):
                if round_ > 0 and len(self.labeled) == len(self.pool.ids):
                    break  # every image is labeled: stop cleanly
                self._round(round_)
                self._save(log)
        except KeyboardInterrupt:  # state.pt (atomic) holds the last complete round
            self._stopped("interrupted")
            raise
        except Exception:  # a crash: say how to continue once it is fixed
            self._stopped("stopped by an error")
            raise
        finally:
            log.close()
        history = self.state.history
        stopped = "rounds" if len(history) == self.rounds + 1 else "pool exhausted"
        results = {
            "test": {k[5:]: v for k, v in history[-1].items() if k.startswith("test_")},
            "rounds": history, "labeled": len(self.labeled), "oracle_queries": len(self.oracle_log.all_ids()),
            "stopped": stopped, "split_sizes": {"train": len(self.pool.ids), "val": len(self.evalmasks["val"]),
                                                "test": len(self.evalmasks["test"])},
            "device": str(self.device), "config": self.config,
        }
        if self.main:
            write_json(self.run_dir / "results.json", results)
        return results


def run_active(cfg: DictConfig | dict, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Run (or resume) the active-learning loop as configured; write everything to ``run_dir``; return the results."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    validate(cfg)  # unknown keys and out-of-range values, before any work
    run_dir = Path(cfg.resume or run_dir or "runs/active")
    if cfg.get("reuse") and (run_dir / "results.json").exists():  # sweeps: never recompute a finished cell
        return json.loads((run_dir / "results.json").read_text())
    if (run_dir / "state.pt").exists() and not (cfg.resume or cfg.get("reuse")):
        raise ConfigError(f"{run_dir} already holds an active-learning run; continue it with "
                          f"{resume_command('noisyseg.active', run_dir)}, or choose another folder")
    if is_main():
        prepare_run_dir(run_dir)
    if cfg.get("threads"):
        torch.set_num_threads(cfg.threads)
    return ActiveLoop(cfg, run_dir).run()


def main() -> None:
    hydra_main("active_loop", run_active, lambda results: {"test": results["test"], "labeled": results["labeled"]},
               checkpoint="state.pt")


if __name__ == "__main__":
    main()
