"""Where do a trained run's errors lie, and where does its learned weighting put weight, by distance to
the true outline? The probe behind the account of why ``meta_mwn_mean`` buys little at paper scale.

    python experiments/meta_ablation/outline_probe.py RUN [RUN ...] [--reach 6] [--images 512] [--out CSV]

For each run folder it rebuilds the run's splits and noisy masks from the config in its checkpoint, and
bins every pixel by its chessboard distance to the *true* outline (0: touching the other class, capped
at ``--reach``). It prints, per bin:

- ``errors``: the share of the best-validation model's test-set errors (prediction ≠ truth) in the bin,
  and ``err rate``, the bin's own error rate: where the gap to the oracle can still be closed;
- for runs with a learned weighting (``meta.weighting=mwn``), on ``--images`` noisy training images,
  the share of wrong labels in the bin, unweighted and weighted (the label noise the real step sees
  there), and the mean weight the run's last weighting network gives the
  bin's right-label and wrong-label pixels, relative to the mean weight of all pixels (1 = average).
  The network is the run's last (``last.pt``), with the last model's loss and probability as inputs, in
  eval mode (batch-norm running statistics) and without augmentation, so the numbers describe the end of
  training, not the best epoch.
"""
from __future__ import annotations

import argparse
import csv
import warnings
from pathlib import Path
from tempfile import TemporaryDirectory

import torch
from omegaconf import OmegaConf

from noisyseg.build import build_data, build_run_method
from noisyseg.checkpoint import load_checkpoint
from noisyseg.data.dataset import to_tensor
from noisyseg.errors import NoisysegError
from noisyseg.meta.weightnet import outline_distance
from noisyseg.predict import load_predictor


def bins(reach: int) -> list[tuple[int, int]]:
    """Distance bins [lo, hi]: one per pixel near the outline, then wider ones."""
    edges = [0, 1, 2, 3, 5, reach]
    return [(lo, hi - 1) for lo, hi in zip(edges, edges[1:]) if lo < reach] + [(reach, reach)]


def regions(truth: torch.Tensor, distance: torch.Tensor, reach: int):
    """(side, lo, hi, pixel mask) per side of the true outline (lesion, skin) and distance bin."""
    for side, on_side in (("lesion", truth > 0.5), ("skin", truth <= 0.5)):
        for lo, hi in bins(reach):
            yield side, lo, hi, on_side & (distance >= lo) & (distance <= hi)


def as_batch(images) -> torch.Tensor:
    return torch.stack([to_tensor(image) for image in images])


@torch.no_grad()
def logits_of(model: torch.nn.Module, images, chunk: int = 64) -> torch.Tensor:
    return torch.cat([model(as_batch(images[i:i + chunk])) for i in range(0, len(images), chunk)])


def masks(array) -> torch.Tensor:
    return torch.from_numpy(array).float()[:, None]


def label(lo: int, hi: int, reach: int) -> str:
    return f"{lo}+" if lo == reach else f"{lo}-{hi}" if hi > lo else str(lo)


def probe_run(run: Path, reach: int, count: int) -> list[dict]:
    """One row per side and distance bin: where the run's best model errs on test, and, for a learned
    weighting, how its last network weighs ``count`` noisy training images."""
    last = load_checkpoint(run / "last.pt", "cpu")
    cfg = OmegaConf.create(last["config"])
    torch.manual_seed(cfg.seed)
    with TemporaryDirectory() as tmp:
        arrays, _ = build_data(cfg, tmp, manifest=False)
    rows = [{"run": str(run), **row} for row in error_rows(load_predictor(run, "cpu").model, arrays["test"], reach)]
    method = build_run_method(cfg)
    learned = getattr(getattr(method, "meta_loss", None), "learned", None)
    if learned is not None:
        method.load_state_dict(last["method"])
        add_weight_columns(rows, method, load_predictor(run / "last.pt", "cpu").model, arrays["noisy"], reach, count)
    return rows


def error_rows(model: torch.nn.Module, test: dict, reach: int) -> list[dict]:
    truth = masks(test["masks"])
    errors = (logits_of(model, test["images"]) > 0) != (truth > 0.5)
    return [{"side": side, "bin": label(lo, hi, reach), "pixels": in_bin.float().mean().item(),
             "errors": (errors & in_bin).sum().item() / max(errors.sum().item(), 1),
             "error_rate": errors[in_bin].float().mean().item()}
            for side, lo, hi, in_bin in regions(truth, outline_distance(truth, reach), reach)]


def add_weight_columns(rows: list[dict], method, model: torch.nn.Module, noisy: dict, reach: int, count: int) -> None:
    labels, truth = masks(noisy["noisy_masks"][:count]), masks(noisy["masks"][:count])
    logits = logits_of(model, noisy["images"][:count])
    with torch.no_grad():
        weights = method.meta_loss.learned.net(method.loss.per_pixel(logits, labels), logits, labels)
    weights = weights / weights.mean()
    wrong = (labels > 0.5) != (truth > 0.5)
    for row, (*_, in_bin) in zip(rows, regions(truth, outline_distance(truth, reach), reach)):
        row.update(wrong_share=wrong[in_bin].float().mean().item(),
                   weighted_wrong_share=(weights[in_bin & wrong].sum() / weights[in_bin].sum()).item(),
                   weight_right=weights[in_bin & ~wrong].mean().item(),
                   weight_wrong=weights[in_bin & wrong].mean().item() if (in_bin & wrong).any() else float("nan"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (with best.pt and last.pt)")
    parser.add_argument("--reach", type=int, default=6, help="the last bin: this many pixels or farther")
    parser.add_argument("--images", type=int, default=512, help="noisy training images to weigh")
    parser.add_argument("--out", type=Path, help="also write the rows to this CSV")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    every = []
    for run in args.runs:
        try:
            rows = probe_run(run, args.reach, args.images)
        except NoisysegError as err:  # a folder that is not a finished run: named, no traceback, no CSV
            parser.error(str(err))
        every += rows
        print(f"\n{run}\nside distance | pixels | errors err-rate | wrong-share weighted | weight(right) weight(wrong)")
        for r in rows:
            weights = "–" if "wrong_share" not in r else (
                f"{r['wrong_share']:.3f} {r['weighted_wrong_share']:.3f} | {r['weight_right']:.2f} {r['weight_wrong']:.2f}")
            print(f"{r['side']:>6} {r['bin']:>8} | {r['pixels']:.3f} | {r['errors']:.3f} {r['error_rate']:.4f} | {weights}",
                  flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fields = list(dict.fromkeys(k for r in every for k in r))
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(every)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
