"""Why does the paper's meta step stay on the all-background plateau? Step by step, in the real training.

    python experiments/meta_ablation/plateau_probe.py [--steps 300] [override ...]
    python experiments/meta_ablation/plateau_probe.py --steps 300 arm=meta seed=1   # meta_paper's stuck seed

Builds the run exactly as ``python -m noisyseg.train experiment=meta_paper <overrides>`` does (same seed,
data, initialisation, batches) and trains it for ``--steps`` steps, recording at every step of a
reweighting method, without changing its trajectory:

- ``clean_bias``: mean σ(z) − mean label on the step's clean (meta) batch. Negative: the model
  under-segments the clean batch, and the clean gradient asks for more lesion everywhere;
- ``lesion_mass``: the share of the step's weight mass on pixels the noisy batch labels lesion, next
  to ``lesion_share``, their share of the pixels (equal: the weighting is class-neutral);
- ``noisy_prob``: the mean predicted probability on the noisy batch, and ``zero``: the share of
  zero-weight pixels.

The account under test (docs/benchmark.md, "The authors' own recipe"): near the plateau the network
predicts about the lesion prior everywhere, every pixel's ∇θ z_i is nearly the same vector, and the sign
test passes one label class and fails the other according to the sign of ``clean_bias``; the weighted
loss then only moves the output bias back and forth around the prior, and never trains the network
to tell lesion from skin. Prints one line per ``--every`` steps and the correlation over all steps;
writes ``plateau.csv`` to ``--out``.
"""
from __future__ import annotations

import argparse
import csv
import warnings
from pathlib import Path

import torch

from noisyseg.build import build_run
from noisyseg.config import compose
from noisyseg.engine import Trainer
from noisyseg.errors import NoisysegError


def record(method, rows: list[dict]) -> None:
    """Wrap ``method.step`` so that every call appends the statistics above to ``rows``."""
    step = method.step

    def recorded(model, batches, lr):
        out = step(model, batches, lr)
        clean, noisy = batches["clean"], batches["noisy"]
        # no effect on the run: its dropout draws are forked, batch-norm running statistics restored
        buffers = {name: b.clone() for name, b in model.named_buffers()}
        with torch.no_grad(), torch.random.fork_rng():
            clean_prob = torch.sigmoid(model(clean["image"])).mean().item()
            noisy_prob = torch.sigmoid(model(noisy["image"])).mean().item()
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        weights, lesion = method.last["weights"].detach(), method.last["mask"] > 0.5
        total = weights.sum().item()
        rows.append({"step": len(rows) + 1, "clean_bias": clean_prob - clean["mask"].float().mean().item(),
                     "noisy_prob": noisy_prob, "lesion_share": lesion.float().mean().item(),
                     "lesion_mass": weights[lesion].sum().item() / total if total > 0 else float("nan"),
                     "zero": (weights == 0).float().mean().item()})
        return out

    method.step = recorded


def build(overrides: list[str], run_dir: Path) -> Trainer:
    """The trainer of ``python -m noisyseg.train experiment=meta_paper arm=meta <overrides>``, on the CPU."""
    return build_run(compose("experiment=meta_paper", "arm=meta", *overrides), run_dir, "cpu").trainer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--out", type=Path, default=Path("experiments/results/weights_probe/plateau"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides after experiment=meta_paper (arm=meta seed=1)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        trainer, rows = build(args.overrides, args.out), []
    except NoisysegError as err:  # a mistyped override or a bad value: named, no traceback
        parser.error(str(err))
    record(trainer.method, rows)
    per_epoch = trainer.steps_per_epoch
    for epoch in range(-(-args.steps // per_epoch)):
        trainer.train_epoch(epoch)
        for row in rows[epoch * per_epoch:]:
            if row["step"] % args.every == 0:
                print("step {step:4d} | clean bias {clean_bias:+.3f} | noisy prob {noisy_prob:.3f} | lesion "
                      "mass {lesion_mass:.3f} of share {lesion_share:.3f} | zero {zero:.2f}".format(**row), flush=True)
    with open(args.out / "plateau.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    bias = torch.tensor([r["clean_bias"] for r in rows])
    excess = torch.tensor([r["lesion_mass"] - r["lesion_share"] for r in rows])
    corr = torch.corrcoef(torch.stack([bias, excess]))[0, 1].item()
    print(f"correlation of clean bias with the lesion mass's excess over its share, {len(rows)} steps: {corr:+.2f}; "
          f"steps where the lesion mass exceeds its share: {(excess > 0).float().mean():.2f}, "
          f"of those the clean bias is negative: {(bias[excess > 0] < 0).float().mean():.2f}")
    print(f"wrote {args.out / 'plateau.csv'}")


if __name__ == "__main__":
    main()
