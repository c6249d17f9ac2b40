"""Cost per training step of benchmark arms, side by side, in a preset's own setting.

    python experiments/benchmark/cost.py bench_quick --arms balanced,meta,meta_sign,meta_mwn_mean
    python experiments/benchmark/cost.py bench_paper --arms balanced,meta_mwn_mean --steps 5 --set device=cuda

Each arm's run is built as ``python -m noisyseg.train experiment=<preset> arm=<arm>`` builds it (data,
augmentation, method, model, optimiser), and trained in rounds of ``--steps`` steps (whole
``Trainer.train_epoch`` calls: data loading, the method's step, backward, optimiser), the arms
interleaved in a shuffled order every round so that a shared machine slows them alike. Printed: the
median process CPU time and wall time per step after ``--warmup`` rounds, each with its ratio to the
first arm's (on a CPU read the CPU time, less sensitive to a shared machine; on a GPU the wall time).
"""
from __future__ import annotations

import argparse
import random
import statistics
import time
import warnings

import torch
from omegaconf import DictConfig

from noisyseg.build import build_run
from noisyseg.config import compose
from noisyseg.device import resolve_device, synchronize
from noisyseg.engine import Trainer
from noisyseg.errors import NoisysegError


def arm_config(preset: str, arm: str, extra: list[str]) -> DictConfig:
    """The config of ``python -m noisyseg.train experiment=<preset> arm=<arm> <extra>``."""
    return compose(f"experiment={preset}", f"arm={arm}", "trainer.progress=false", *extra)


def trainer_for(cfg: DictConfig, steps: int, run_dir: str) -> Trainer:
    """The run's trainer, built as the training run builds it, doing ``steps`` steps per ``train_epoch``."""
    trainer = build_run(cfg, run_dir, resolve_device(cfg.device)).trainer
    trainer.steps_per_epoch = steps
    return trainer


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("preset")
    p.add_argument("--arms", required=True, help="comma-separated; the first is the reference (ratio 1)")
    p.add_argument("--steps", type=int, default=10, help="steps per timed round")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", nargs="*", default=[], help="extra overrides for every arm")
    p.add_argument("--run-dir", default="/tmp/noisyseg-cost", help="where data building may write its notes")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.set_num_threads(args.threads)
    arms = args.arms.split(",")
    try:  # every arm composed before any data is built: an unknown preset, arm or key fails at once
        configs = {arm: arm_config(args.preset, arm, args.set) for arm in arms}
        trainers = {arm: trainer_for(cfg, args.steps, args.run_dir) for arm, cfg in configs.items()}
    except NoisysegError as err:  # named, without a traceback
        p.error(str(err))
    cpu: dict[str, list[float]] = {arm: [] for arm in arms}
    wall: dict[str, list[float]] = {arm: [] for arm in arms}
    for r in range(args.warmup + args.repeats):
        for arm in random.Random(r).sample(arms, len(arms)):
            trainer = trainers[arm]
            start_cpu, start_wall = time.process_time(), time.perf_counter()
            trainer.train_epoch(r)
            synchronize(trainer.device)
            if r >= args.warmup:
                cpu[arm].append((time.process_time() - start_cpu) / args.steps)
                wall[arm].append((time.perf_counter() - start_wall) / args.steps)
    medians = {name: {arm: statistics.median(t[arm]) for arm in arms} for name, t in (("cpu", cpu), ("wall", wall))}
    print(f"{args.preset}, {args.threads} thread(s): median s per step over {args.repeats} rounds of {args.steps}")
    print(f"| arm | wall s / step | × {arms[0]} | CPU s / step | × {arms[0]} |\n|---|---|---|---|---|")
    for arm in arms:
        w, c = medians["wall"][arm], medians["cpu"][arm]
        print(f"| `{arm}` | {w:.3f} | {w / medians['wall'][arms[0]]:.2f} | {c:.3f} | {c / medians['cpu'][arms[0]]:.2f} |")


if __name__ == "__main__":
    main()
