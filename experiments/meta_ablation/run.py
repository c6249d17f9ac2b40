"""Why does meta not beat the baselines? Variants of the meta step at the hardest noise level.

    python experiments/meta_ablation/run.py [--jobs 2] [--root experiments/results/meta_ablation_quick]
    python experiments/noise_sweep/aggregate.py experiments/results/meta_ablation_quick

Every variant is the ``noise_sweep_quick`` preset at morph noise level 1.0 (noisy-label Dice 0.47)
with three seeds, run as one Hydra multirun per variant (finished cells are reused). Baselines at
the same setting are in ``experiments/results/noise_sweep_quick``; ``few_clean_*`` variants shrink
the expert set to 5 images, the regime where the noisy set should matter most; ``flip_*`` variants
replace the moved borders of morph noise by blobs of flipped labels.
"""
from __future__ import annotations

import argparse
import subprocess
import sys

VARIANTS: dict[str, list[str]] = {
    "meta": ["arm=meta"],
    "meta_bce": ["arm=meta", "loss=bce"],                        # a per-pixel loss without the image-level Dice term
    "meta_image_norm": ["arm=meta", "meta.normalize=image"],     # every image gets the same total weight
    "meta_all_clean": ["arm=meta", "meta.clean_batch_size=20"],  # the whole expert set in every meta step
    "meta_head": ["arm=meta", "meta.params=[head]"],              # approximation: virtual step on the output layer only
    "meta_clean_every2": ["arm=meta", "meta.clean_every=2"],      # approximation: clean gradient reused for 2 steps
    "meta_clean_every4": ["arm=meta", "meta.clean_every=4"],      # ... for 4 steps
    "meta_clean_half": ["arm=meta_clean", "meta.clean_loss_weight=0.5"],
    "flip_clean": ["arm=clean", "noise=flip"],                   # blobs of flipped labels instead of moved borders
    "flip_balanced": ["arm=balanced", "noise=flip"],
    "flip_meta": ["arm=meta", "noise=flip"],
    "few_clean_clean": ["arm=clean", "data.split.clean=5"],
    "few_clean_balanced": ["arm=balanced", "data.split.clean=5"],
    "few_clean_meta": ["arm=meta", "data.split.clean=5", "meta.clean_batch_size=5"],
    "few_clean_meta_clean": ["arm=meta_clean", "data.split.clean=5", "meta.clean_batch_size=5"],
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="experiments/results/meta_ablation_quick")
    parser.add_argument("--jobs", type=int, default=2, help="cells run at once (joblib launcher)")
    parser.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    args = parser.parse_args(argv)
    chosen = args.only.split(",") if args.only else list(VARIANTS)
    for label in chosen:
        command = [sys.executable, "-m", "noisyseg.train", "-m", "experiment=noise_sweep_quick", *VARIANTS[label],
                   f"label={label}", "noise.level=1.0", "seed=0,1,2", "threads=1",
                   f"hydra.sweep.dir={args.root}/runs", f"hydra.sweep.subdir='{label}/seed=${{seed}}'",
                   "hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.jobs}"]
        print("+", " ".join(command), flush=True)
        subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
