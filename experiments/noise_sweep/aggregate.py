"""Aggregate a noise sweep: run folders -> CSV, markdown table and a Dice-vs-noise plot.

    python experiments/noise_sweep/aggregate.py experiments/results/noise_sweep_quick

Reads every ``results.json`` under ``<root>/runs``, groups by (label, noise level), and writes
``<root>/summary.csv``, ``<root>/summary.md`` and ``<root>/dice_vs_noise.png``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from noisyseg.atomic import write_csv
from noisyseg.sweep import errorbar_plot, load_results, ordered, read_sweep, summarise

METRICS = ("dice", "jaccard")
ORDER = ["clean", "noisy_only", "pooled", "balanced", "gce", "bootstrap", "meta", "meta_clean"]


def collect(root: Path) -> list[dict]:
    """One row per finished run: label, level, seed, realised noise and test metrics."""
    return [{
        "label": results["config"].get("label") or results["config"]["method"]["name"],
        "level": float(results["config"]["noise"]["level"]),
        "seed": results["config"]["seed"],
        "realised_dice": results["noise"]["realised_dice"],
        **{m: results["test"][m] for m in METRICS},
    } for results in load_results(root)]


def markdown(summary: list[dict], order: list[str]) -> str:
    levels = sorted({s["level"] for s in summary})
    cell = {(s["label"], s["level"]): s for s in summary}
    realised = {lv: np.mean([s["realised_dice"] for s in summary if s["level"] == lv]) for lv in levels}
    lines = ["| method | " + " | ".join(f"level {lv:g} (noisy-label Dice {realised[lv]:.2f})" for lv in levels) + " |",
             "|---|" + "---|" * len(levels)]
    for label in order:
        values = [cell.get((label, lv)) for lv in levels]
        lines.append(f"| {label} | " + " | ".join(
            f"{v['dice_mean']:.3f} ± {v['dice_std']:.3f} / {v['jaccard_mean']:.3f}" if v else "–" for v in values) + " |")
    n = max(s["n"] for s in summary)
    return "\n".join(lines) + f"\n\nTest Dice mean ± std / mean Jaccard over {n} seeds per cell.\n"


def main(argv: list[str] | None = None) -> None:
    root, rows = read_sweep(argv, __doc__.splitlines()[0], collect)
    summary = summarise(rows, ("label", "level"), METRICS, means=("realised_dice",))
    order = ordered((s["label"] for s in summary), ORDER)
    write_csv(root / "summary.csv", summary)
    (root / "summary.md").write_text(markdown(summary, order))
    errorbar_plot(summary, "level", "dice", root / "dice_vs_noise.png", order=order, title=root.name,
                  xlabel="annotation noise level of the noisy set", ylabel="test Dice",
                  dashed=[label for label in order if label.startswith("meta")])
    print((root / "summary.md").read_text())


if __name__ == "__main__":
    main()
