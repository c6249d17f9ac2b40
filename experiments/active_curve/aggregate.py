"""Aggregate an active-learning sweep: run folders -> CSV, markdown table and a Dice-vs-labels plot.

    python experiments/active_curve/aggregate.py experiments/results/active_curve_quick

Reads every ``results.json`` under ``<root>/runs`` (one per arm and seed, each with its per-round
rows), groups by (arm, oracle-labeled images), and writes ``<root>/summary.csv``, ``<root>/summary.md``
and ``<root>/dice_vs_labels.png``. The ``full`` arm (every training image labeled) is a reference line.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from noisyseg.atomic import write_csv
from noisyseg.sweep import errorbar_plot, load_results, ordered, read_sweep, summarise

METRICS = ("dice", "jaccard")
ORDER = ["random", "entropy", "bald", "ceal", "ceal_meta", "ceal_meta_only", "ceal_head", "full"]


def collect(root: Path) -> list[dict]:
    """One row per (run, round): label, seed, labeled, pseudo and test metrics, plus the run's mean Dice over rounds."""
    rows = []
    for results in load_results(root):
        config, rounds = results["config"], results["rounds"]
        label = config.get("label") or config["active"]["sampler"]["name"]
        area = float(np.mean([r["test_dice"] for r in rounds]))  # the curve's mean height: one number per run
        rows += [{"label": label, "seed": config["seed"], "labeled": r["labeled"], "pseudo": r["pseudo"],
                  "area": area, **{m: r[f"test_{m}"] for m in METRICS}} for r in rounds]
    return rows


def markdown(summary: list[dict], runs: list[dict], order: list[str], columns: int = 6) -> str:
    curve = [s for s in summary if s["label"] != "full"]
    counts = sorted({s["labeled"] for s in curve})
    shown = [counts[i] for i in np.unique(np.linspace(0, len(counts) - 1, min(columns, len(counts))).round().astype(int))]
    cell = {(s["label"], s["labeled"]): s for s in summary}
    area = {s["label"]: s for s in summarise(runs, ("label",), ("area",))}
    lines = ["| arm | " + " | ".join(f"{n} labeled" for n in shown) + " | mean over rounds |",
             "|---|" + "---|" * (len(shown) + 1)]
    for label in order:
        if label == "full":
            full = [s for s in summary if s["label"] == "full"]
            lines.append(f"| full ({full[0]['labeled']} labeled) | " + " | ".join("" for _ in shown) +
                         f" | {full[0]['dice_mean']:.3f} ± {full[0]['dice_std']:.3f} |")
            continue
        values = [cell.get((label, n)) for n in shown]
        lines.append(f"| {label} | " + " | ".join(f"{v['dice_mean']:.3f} ± {v['dice_std']:.3f}" if v else "–"
                                                for v in values)
                     + f" | {area[label]['area_mean']:.3f} ± {area[label]['area_std']:.3f} |")
    n = max(s["n"] for s in summary)
    return "\n".join(lines) + (f"\n\nTest Dice mean ± std over {n} seeds, against the number of oracle-labeled "
                               f"images; the last column is each run's mean test Dice over all rounds.\n")


def main(argv: list[str] | None = None) -> None:
    root, rows = read_sweep(argv, __doc__.splitlines()[0], collect)
    summary = summarise(rows, ("label", "labeled"), METRICS, means=("pseudo",))
    runs = list({(r["label"], r["seed"]): r for r in rows}.values())
    order = ordered((s["label"] for s in summary), ORDER)
    write_csv(root / "summary.csv", summary)
    (root / "summary.md").write_text(markdown(summary, runs, order))
    full = [s for s in summary if s["label"] == "full"]
    errorbar_plot([s for s in summary if s["label"] != "full"], "labeled", "dice", root / "dice_vs_labels.png",
                  order=[o for o in order if o != "full"], title=root.name, xlabel="oracle-labeled images",
                  ylabel="test Dice", dashed=["ceal_meta", "ceal_meta_only", "ceal_head"],
                  lines={f"full supervision ({full[0]['labeled']} images)": full[0]["dice_mean"]} if full else None)
    print((root / "summary.md").read_text())


if __name__ == "__main__":
    main()
