"""Summaries of sweeps: finished runs -> mean ± std per cell -> error-bar plots (CSV: ``atomic.write_csv``).

The experiment scripts (``experiments/*/aggregate.py``) say which runs form a cell and how a table
reads; the grouping, the statistics and the plotting live here once.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np


def read_sweep(argv: list[str] | None, description: str, collect: Callable[[Path], list[dict]]) -> tuple[Path, list[dict]]:
    """The command line of an aggregation script: ``ROOT`` (a sweep folder holding ``runs/``, or a runs
    folder) and ``collect``'s rows from it; no finished run is an error naming the folder."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("root", type=Path, help="the sweep folder (holding runs/)")
    root = parser.parse_args(argv).root
    rows = collect(root / "runs" if (root / "runs").is_dir() else root)
    if not rows:
        sys.exit(f"error: no results.json under {root}")
    return root, rows


def load_results(root: str | Path) -> list[dict]:
    """Every ``results.json`` under ``root`` (sorted by path), parsed."""
    return [json.loads(path.read_text()) for path in sorted(Path(root).rglob("results.json"))]


def summarise(rows: Iterable[dict], keys: Sequence[str], metrics: Sequence[str], means: Sequence[str] = ()) -> list[dict]:
    """One entry per distinct ``keys`` tuple (sorted): ``n``, ``<metric>_mean``/``_std`` (sample std, 0 for one
    run) for each of ``metrics``, and the plain mean of each of ``means`` under its own name."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in keys)].append(row)
    summary = []
    for cell, runs in sorted(groups.items()):
        entry = {**dict(zip(keys, cell)), "n": len(runs)}
        entry.update({m: float(np.mean([r[m] for r in runs])) for m in means})
        for m in metrics:
            values = np.array([r[m] for r in runs], np.float64)
            entry[f"{m}_mean"] = float(values.mean())
            entry[f"{m}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def ordered(labels: Iterable[str], preferred: Sequence[str]) -> list[str]:
    """``preferred`` labels that occur, in that order, then the others sorted."""
    present = set(labels)
    return [p for p in preferred if p in present] + sorted(present - set(preferred))


def errorbar_plot(summary: list[dict], x: str, metric: str, path: Path, *, order: Sequence[str], xlabel: str,
                  ylabel: str, title: str, dashed: Sequence[str] = (), lines: dict[str, float] | None = None) -> None:
    """``metric`` mean ± std against ``x``, one series per ``label`` (in ``order``); ``dashed`` labels are drawn
    dashed; ``lines`` adds horizontal reference lines (label -> value)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in order:
        cells = sorted((s for s in summary if s["label"] == label), key=lambda s: s[x])
        if cells:
            ax.errorbar([c[x] for c in cells], [c[f"{metric}_mean"] for c in cells],
                        yerr=[c[f"{metric}_std"] for c in cells], marker="o", capsize=3, label=label,
                        linestyle="--" if label in dashed else "-")
    for label, value in (lines or {}).items():
        ax.axhline(value, color="k", linestyle=":", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
