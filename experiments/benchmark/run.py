"""Run one benchmark preset: its default point and the one-axis slices around it, then aggregate.

    python experiments/benchmark/run.py bench_quick [--jobs 2] [--slices default,level] [--arms meta,balanced] [--set key=value ...]

Without ``--arms``, every slice runs :data:`ARMS` and the default point also the meta variants; ``--arms``
picks from both on every slice.

Every slice is one Hydra multirun (``python -m noisyseg.train -m experiment=<preset> ...``) over the
arms and the preset's seeds; finished cells are reused, so an interrupted benchmark continues where it
stopped. Arms whose result cannot depend on the noise (``clean``: expert images only; ``oracle``: true
masks) run only where the expert set changes; the aggregation reuses them across noise slices.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ARMS = ("clean", "pooled", "balanced", "meta", "adele_balanced", "mtcl", "coteach_balanced", "oracle")
NOISE_FREE = ("clean", "oracle")
# candidates for arm=meta_best (docs/methods.md): every meta variant in conf/arm but that alias itself; run at
# the default point by default, and on any slice when --arms names them
ARM_CONFIGS = Path(__file__).resolve().parents[2] / "conf" / "arm"
META_VARIANTS = tuple(sorted(path.stem for path in ARM_CONFIGS.glob("meta_*.yaml") if path.stem != "meta_best"))
SLICES: dict[str, list[list[str]]] = {  # one axis at a time around the preset's default point
    "default": [[]],
    "level": [["noise.target_dice=realistic"], ["noise.target_dice=severe"]],
    "kind": [["noise=mix"], ["noise=morph"]],
    "fraction": [["noise.fraction=0.5"]],
    "missing": [["noise.missing=0.1"]],
    "experts": [["data.split.clean=5"], ["data.split.clean=20"]],
    # the one point off the axes: the goal regimes of the meta-variant and rival issues are coarse and mix
    # noise at annotator_mean and severe, and mix at severe moves two axes
    "mix_severe": [["noise=mix", "noise.target_dice=severe"]],
}
EXPERT_AXES = ("experts",)  # slices that change what the noise-free arms see


def commands(preset: str, slices: list[str], jobs: int, extra: list[str], only: list[str] | None = None) -> list[list[str]]:
    """One ``python -m noisyseg.train -m`` command line per slice point (``only``: these arms alone)."""
    launcher = [f"hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}", "threads=1"] if jobs > 1 else []
    out = []
    for name in slices:
        known = [*ARMS, *META_VARIANTS]
        arms = known if name == "default" or only else list(ARMS)
        arms += [a for a in only or () if a not in known]  # any other arm named with --arms (e.g. balanced_down_sep)
        arms = [a for a in arms if (only is None or a in only) and (name in EXPERT_AXES or a not in NOISE_FREE
                                                                     or name == "default")]
        if not arms:
            continue
        for overrides in SLICES[name]:
            out.append([sys.executable, "-m", "noisyseg.train", "-m", f"experiment={preset}", f"arm={','.join(arms)}",
                        *overrides, *launcher, *extra])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", help="bench_quick, bench_ph2, bench_paper or bench_full")
    parser.add_argument("--jobs", type=int, default=2, help="cells run at once (joblib launcher)")
    parser.add_argument("--slices", default=",".join(SLICES), help=f"comma-separated, of {', '.join(SLICES)}")
    parser.add_argument("--arms", default=None, help="comma-separated arms to run (default: all of the slice's)")
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides for every run (e.g. data.params.root=...)")
    args = parser.parse_args(argv)
    unknown = set(args.slices.split(",")) - set(SLICES)
    if unknown:
        parser.error(f"unknown slice(s) {', '.join(sorted(unknown))}; choose from {', '.join(SLICES)}")
    only = args.arms.split(",") if args.arms else None
    for command in commands(args.preset, args.slices.split(","), args.jobs, args.set, only):
        print("+", " ".join(command[1:]), flush=True)
        subprocess.run(command, check=True)
    root = Path("experiments/results") / args.preset
    subprocess.run([sys.executable, str(Path(__file__).with_name("aggregate.py")), str(root)], check=True)


if __name__ == "__main__":
    main()
