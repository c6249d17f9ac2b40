"""Aggregate a noise sweep: run folders -> CSV, markdown table and a Dice-vs-noise plot.

    python experiments/noise_sweep/aggregate.py experiments/results/noise_sweep_quick

Reads every ``results.json`` under ``<root>/runs``, groups by (label, noise level), and writes
``<root>/summary.csv``, ``<root>/summary.md`` and ``<root>/dice_vs_noise.png``.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

METRICS = ("dice", "jaccard")


def collect(root: Path) -> list[dict]:
    """One row per finished run: label, level, seed, realised noise and test metrics."""
    rows = []
    for path in sorted(root.rglob("results.json")):
        results = json.loads(path.read_text())
        config = results["config"]
        rows.append({
            "label": config.get("label") or config["method"]["name"],
            "level": float(config["noise"]["level"]),
            "seed": config["seed"],
            "realised_dice": results["noise"]["realised_dice"],
            **{m: results["test"][m] for m in METRICS},
        })
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict[tuple[str, float], list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["label"], row["level"]].append(row)
    summary = []
    for (label, level), runs in sorted(groups.items()):
        entry = {"label": label, "level": level, "n": len(runs),
                 "realised_dice": float(np.mean([r["realised_dice"] for r in runs]))}
        for m in METRICS:
            values = np.array([r[m] for r in runs])
            entry[f"{m}_mean"], entry[f"{m}_std"] = float(values.mean()), float(values.std(ddof=1) if len(values) > 1 else 0.0)
        summary.append(entry)
    return summary


def write_csv(summary: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)


def markdown(summary: list[dict], order: list[str] | None = None) -> str:
    levels = sorted({s["level"] for s in summary})
    labels = order or sorted({s["label"] for s in summary})
    cell = {(s["label"], s["level"]): s for s in summary}
    realised = {lv: np.mean([s["realised_dice"] for s in summary if s["level"] == lv]) for lv in levels}
    lines = ["| method | " + " | ".join(f"level {lv:g} (noisy-label Dice {realised[lv]:.2f})" for lv in levels) + " |",
             "|---|" + "---|" * len(levels)]
    for label in labels:
        values = [cell.get((label, lv)) for lv in levels]
        lines.append(f"| {label} | " + " | ".join(
            f"{v['dice_mean']:.3f} ± {v['dice_std']:.3f} / {v['jaccard_mean']:.3f}" if v else "–" for v in values) + " |")
    n = max(s["n"] for s in summary)
    return "\n".join(lines) + f"\n\nTest Dice mean ± std / mean Jaccard over {n} seeds per cell.\n"


def plot(summary: list[dict], path: Path, title: str, order: list[str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in order or sorted({s["label"] for s in summary}):
        cells = sorted((s for s in summary if s["label"] == label), key=lambda s: s["level"])
        if cells:
            ax.errorbar([c["level"] for c in cells], [c["dice_mean"] for c in cells], yerr=[c["dice_std"] for c in cells],
                        marker="o", capsize=3, label=label, linestyle="--" if label.startswith("meta") else "-")
    ax.set_xlabel("annotation noise level of the noisy set")
    ax.set_ylabel("test Dice")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


ORDER = ["clean", "noisy_only", "pooled", "balanced", "gce", "bootstrap", "meta", "meta_clean"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the sweep folder (holding runs/)")
    args = parser.parse_args(argv)
    rows = collect(args.root / "runs" if (args.root / "runs").is_dir() else args.root)
    if not rows:
        sys.exit(f"error: no results.json under {args.root}")
    summary = summarise(rows)
    order = [o for o in ORDER if any(s["label"] == o for s in summary)] + sorted({s["label"] for s in summary} - set(ORDER))
    write_csv(summary, args.root / "summary.csv")
    (args.root / "summary.md").write_text(markdown(summary, order))
    plot(summary, args.root / "dice_vs_noise.png", args.root.name, order)
    print((args.root / "summary.md").read_text())


if __name__ == "__main__":
    main()
