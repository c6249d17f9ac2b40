"""Aggregate a benchmark: run folders -> one table of regimes x arms, the share of the control-to-oracle
gap each arm closes, the recipe chosen on validation data, and three plots.

    python experiments/benchmark/aggregate.py experiments/results/bench_quick [--arms clean,balanced,oracle]

A *regime* is (noise kind, named noise level, fraction of noisy images corrupted, share of missing
masks, number of expert images). Rows are the preset's default regime and the one-axis slices around
it, named by what differs from the default. ``clean`` and ``oracle`` do not depend on the noise, so a
noise slice reuses their runs at the same number of expert images. For every cell: test Dice mean ±
std over seeds and the share of the gap between the better control (``clean`` or ``balanced``) and
the ``oracle`` that the arm closes. The recommended recipe is the non-oracle arm with the best mean
*validation* Dice over all regimes, ``meta_best`` the best meta variant (never the test Dice; :func:`choose`). Writes ``summary.csv``, ``summary.md``,
``dice_by_regime.png``, ``memorisation.png`` and ``weight_ratio.png`` (the meta arms' wrong:right weight
ratio during training) next to ``runs/``.

Run folders are not kept in git and a later session may be on another machine, so the cells of the
previous ``summary.csv`` are kept (marked †) wherever the runs here hold fewer seeds than they did:
adding an arm or a regime on a new machine extends the tables instead of emptying them (``--fresh``
starts from the runs alone).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from noisyseg.atomic import write_csv
from noisyseg.sweep import ordered, read_sweep

ORDER = ["clean", "pooled", "balanced", "balanced_w05", "balanced_full", "balanced_down", "balanced_down_sep", "finetune", "meta", "meta_clean",
         "meta_sign", "meta_cosine", "meta_centered", "meta_class", "meta_mwn", "meta_mwn_mean",
         "meta_mwn_mean_frozen", "meta_mwn_correct", "meta_boot", "meta_allclean", "meta_sign_pure",
         "meta_sign_class", "meta_sign_boot", "meta_sign_allclean", "meta_memory", "adele", "adele_balanced",
         "mtcl", "mtcl_pooled", "coteach", "coteach_balanced", "jocor", "oracle"]
CONTROLS, ORACLE, NOISE_FREE = ("clean", "balanced"), "oracle", ("clean", "oracle")
# ablations that isolate one factor of a recipe (docs/benchmark.md): shown in the tables, never chosen
ABLATIONS = ("balanced_w05", "balanced_full", "balanced_down", "meta_mwn_mean_frozen")
AXES = ("kind", "target", "fraction", "missing", "experts")
AXIS_TYPES = {"kind": str, "target": str, "fraction": float, "missing": float, "experts": int}  # as collect() reads them
STATISTICS = ("realised_dice", "test_dice_mean", "test_dice_std", "val_dice_mean", "val_dice_std")


def collect(root: Path) -> list[dict]:
    """One row per finished run: arm, regime, seed, realised noise, test and validation Dice, and the
    per-epoch fit of the noisy set (from the run's metrics.csv)."""
    rows = []
    for path in sorted(root.rglob("results.json")):
        results = json.loads(path.read_text())
        config = results["config"]
        noise = config["noise"]
        rows.append({
            "label": config.get("label") or config["method"]["name"], "seed": config["seed"],
            "kind": noise["kind"], "target": str(noise.get("target_dice") or f"level {noise['level']}"),
            "fraction": float(noise["fraction"]), "missing": float(noise.get("missing", 0.0)),
            "experts": results["split_sizes"]["clean"], "noisy_images": results["split_sizes"]["noisy"],
            "realised_dice": results["noise"]["realised_dice"], "test_dice": results["test"]["dice"],
            "val_dice": results["val"]["dice"], "run_dir": str(path.parent),
        })
    return rows


def regime(row: dict) -> tuple:
    return tuple(row[a] for a in AXES)


def default_regime(cells: list[dict]) -> tuple:
    """The preset's default: per axis, the value most runs share (every slice moves one axis only).
    ``cells``: runs, or cells of ``n`` runs each."""
    counts = [Counter() for _ in AXES]
    for cell in cells:
        for count, axis in zip(counts, AXES):
            count[cell[axis]] += cell.get("n", 1)
    return tuple(count.most_common(1)[0][0] for count in counts)


def regime_name(value: tuple, default: tuple) -> str:
    differ = [f"{axis}={v}" for axis, v, d in zip(AXES, value, default) if v != d]
    return ", ".join(differ) or "default"


def stats(runs: list[dict], key: str) -> tuple[float, float]:
    values = np.array([r[key] for r in runs])
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def measured_cells(rows: list[dict]) -> dict[tuple[str, tuple], dict]:
    """(arm, regime) -> the cell's statistics over its runs here."""
    by_cell: dict[tuple[str, tuple], list[dict]] = defaultdict(list)
    for row in rows:
        by_cell[row["label"], regime(row)].append(row)
    cells = {}
    for (arm, value), runs in by_cell.items():
        (test, test_std), (val, val_std) = stats(runs, "test_dice"), stats(runs, "val_dice")
        cells[arm, value] = {"arm": arm, **dict(zip(AXES, value)), "n": len(runs),
                             "realised_dice": float(np.mean([r["realised_dice"] for r in runs])),
                             "test_dice_mean": test, "test_dice_std": test_std, "val_dice_mean": val,
                             "val_dice_std": val_std, "source": "runs", "shared": False}
    return cells


def earlier_cells(path: Path) -> dict[tuple[str, tuple], dict]:
    """(arm, regime) -> the cell as an earlier aggregation wrote it to ``summary.csv`` (its runs may be on
    another machine), less the noise-free cells it shared from another regime."""
    if not path.exists():
        return {}
    cells, seen = {}, set()
    with open(path, newline="") as f:
        for line, r in enumerate(csv.DictReader(f), start=2):
            try:
                value = tuple(AXIS_TYPES[axis](r[axis]) for axis in AXES)
                numbers = tuple(float(r[k]) for k in STATISTICS)
                n = int(r["n"])
            except (KeyError, TypeError, ValueError) as err:
                sys.exit(f"error: {path}, line {line}: not a summary this script wrote ({err!r}); "
                         "--fresh aggregates the runs alone and rewrites it")
            # a shared cell repeats its source's numbers (written without a shared column before there was one)
            if r.get("shared") == "True" or (r["arm"] in NOISE_FREE and (r["arm"], value[-1], numbers) in seen):
                continue
            seen.add((r["arm"], value[-1], numbers))
            cells[r["arm"], value] = {"arm": r["arm"], **dict(zip(AXES, value)), "n": n,
                                      **dict(zip(STATISTICS, numbers)), "source": "earlier", "shared": False}
    return cells


def merge(measured: dict, earlier: dict) -> dict[tuple[str, tuple], dict]:
    """The cells measured here, and an earlier aggregation's where the runs here hold fewer seeds (none:
    they ran on another machine); then the noise-free arms shared to every noise slice with their expert
    count, from the default noise."""
    cells = dict(measured)
    for key, cell in earlier.items():
        if cell["n"] > cells.get(key, {"n": 0})["n"]:
            cells[key] = cell
    default = default_regime(list(cells.values()))
    for value in {regime(c) for c in cells.values()}:
        for arm in NOISE_FREE:
            base = (*default[:-1], value[-1])  # the default noise, this many experts
            if (arm, value) not in cells and (arm, base) in cells:
                cells[arm, value] = {**cells[arm, base], **dict(zip(AXES, value)), "shared": True}
    return cells


def summarise(cells: dict[tuple[str, tuple], dict]) -> tuple[list[dict], list[tuple], list[str], dict, tuple]:
    """Summary entries (arm, regime, n, test/val Dice mean ± std, gap closed), the regimes in order
    (default first), the arms in order, the recipes chosen on validation (:func:`choose`) and the default."""
    default = default_regime([c for c in cells.values() if not c["shared"]])
    regimes = sorted({v for _, v in cells}, key=lambda v: (v != default, regime_name(v, default)))
    arms = ordered((a for a, _ in cells), ORDER)
    summary = []
    for value in regimes:
        means = {a: cells[a, value]["test_dice_mean"] for a in arms if (a, value) in cells}
        better = max((means[c] for c in CONTROLS if c in means), default=None)
        room = means[ORACLE] - better if better is not None and ORACLE in means else None
        for arm in arms:
            if (arm, value) not in cells:
                continue
            cell = cells[arm, value]
            summary.append({
                "arm": arm, "regime": regime_name(value, default), **dict(zip(AXES, value)), "n": cell["n"],
                **{k: cell[k] for k in STATISTICS}, "source": cell["source"], "shared": cell["shared"],
                "gap_closed": (cell["test_dice_mean"] - better) / room if room and room > 0 else None,
            })
    return summary, regimes, arms, choose(summary, arms), default


def candidates(summary: list[dict], arms: list[str]) -> list[str]:
    """The arms a recipe may be chosen from: not the oracle, not an ablation, and run in every regime."""
    ran = {a: {s["regime"] for s in summary if s["arm"] == a} for a in arms}
    every = set().union(*ran.values())
    return [a for a in arms if a not in ABLATIONS and a != ORACLE and ran[a] == every]


def choose(summary: list[dict], arms: list[str]) -> dict[str, str | None]:
    """The recipes named on validation Dice (never test Dice), each the best mean over every regime among
    the :func:`candidates`: ``recommended`` among them all, ``meta_best`` among the meta variants (a
    variant screened at a few regimes becomes a candidate once it has run the rest)."""
    means = {a: np.mean([s["val_dice_mean"] for s in summary if s["arm"] == a]) for a in arms}
    eligible = candidates(summary, arms)

    def best(names: list[str]) -> str | None:
        return max(names, key=means.get) if names else None

    return {"recommended": best(eligible), "meta_best": best([a for a in eligible if a.startswith("meta")])}


REFERENCES = CONTROLS + (ORACLE,)  # the arms the gap share is measured against: no share of their own


def _cell(s: dict | None, arm: str) -> str:
    """One table cell: test Dice mean ± std, and the share of the gap closed (not for the references)."""
    if s is None:
        return "–"
    gap = "" if s["gap_closed"] is None or arm in REFERENCES else f" ({100 * s['gap_closed']:+.0f} %)"
    return f"{s['test_dice_mean']:.3f} ± {s['test_dice_std']:.3f}{gap}{EARLIER if s['source'] == 'earlier' else ''}"


EARLIER = " †"  # marks a cell kept from an earlier aggregation


def markdown(summary: list[dict], regimes: list[tuple], arms: list[str], chosen: dict[str, str], default: tuple) -> str:
    entry = {(s["arm"], s["regime"]): s for s in summary}
    names = [regime_name(v, default) for v in regimes]
    lines = ["| regime (noisy-mask Dice) | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for name in names:
        noisy = [entry[a, name]["realised_dice"] for a in arms if (a, name) in entry and a not in NOISE_FREE]
        cells = [_cell(entry.get((arm, name)), arm) for arm in arms]
        lines.append(f"| {name} ({np.mean(noisy) if noisy else 1.0:.2f}) | " + " | ".join(cells) + " |")
    d = dict(zip(AXES, default))
    n = max(s["n"] for s in summary)
    return ("\n".join(lines) + f"\n\nTest Dice, mean ± std over {n} seeds; in brackets, the share of the gap between the "
            "better control (clean, balanced) and the oracle that the arm closes. Default regime: "
            f"{d['kind']} noise at {d['target']}, fraction {d['fraction']:g}, missing {d['missing']:g}, {d['experts']} "
            f"expert images. Chosen on validation Dice (mean over regimes): recommended **{chosen['recommended']}**, "
            f"meta_best **{chosen['meta_best']}**.{_earlier_note(summary)}\n")


def _earlier_note(summary: list[dict]) -> str:
    kept = sorted({s["arm"] for s in summary if s["source"] == "earlier"})
    return (f" {EARLIER.strip()} kept from an earlier aggregation's summary.csv (their runs are not in runs/): "
            f"{', '.join(kept)}." if kept else "")


def markdown_by_arm(summary: list[dict], regimes: list[tuple], arms: list[str], default: tuple) -> str:
    """The same cells turned round, an arm per row (many arms, few regimes), with each arm's mean test
    Dice and gap share over the regimes it ran."""
    entry = {(s["arm"], s["regime"]): s for s in summary}
    names = [regime_name(v, default) for v in regimes]
    lines = ["| arm | " + " | ".join(names) + " | mean (regimes) |", "|---|" + "---|" * (len(names) + 1)]
    for arm in arms:
        ran = [entry[arm, n] for n in names if (arm, n) in entry]
        cells = [_cell(entry.get((arm, name)), arm) for name in names]
        shares = [s["gap_closed"] for s in ran if s["gap_closed"] is not None]
        mean = f"{np.mean([s['test_dice_mean'] for s in ran]):.3f}" + (
            f" ({100 * np.mean(shares):+.0f} %)" if shares and arm not in REFERENCES else "") + f" ({len(ran)})"
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(lines) + "\n"


def plot_regimes(summary: list[dict], regimes: list[tuple], arms: list[str], default: tuple, path: Path) -> None:
    plt = _pyplot()
    names = [regime_name(v, default) for v in regimes]
    entry = {(s["arm"], s["regime"]): s for s in summary}
    fig, ax = plt.subplots(figsize=(max(7, 1.3 * len(names)) + 2, 4.5))
    width = 0.8 / len(arms)
    for k, arm in enumerate(arms):
        xs = [i + (k - (len(arms) - 1) / 2) * width for i, n in enumerate(names) if (arm, n) in entry]
        ys = [entry[arm, n] for n in names if (arm, n) in entry]
        ax.errorbar(xs, [s["test_dice_mean"] for s in ys], yerr=[s["test_dice_std"] for s in ys], fmt="o",
                    capsize=3, label=arm, linestyle="none")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="test Dice", title=f"{path.parent.name}: every arm per regime (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the axes: never over a point
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_memorisation(rows: list[dict], default: tuple, path: Path) -> None:
    """Per arm at the default regime: Dice of the model on noisy-set images against their noisy masks
    (solid) and against the truth (dashed), mean over seeds, per epoch."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, arm in enumerate(ordered({r["label"] for r in rows}, ORDER)):
        curves = _mean_curves(rows, arm, default, ("noisyset_dice_vs_noisy", "noisyset_dice_vs_true"))
        for (epochs, mean), style, versus in zip(curves, ("-", "--"), ("noisy", "true")):
            ax.plot(epochs, mean, style, color=plt.cm.tab20(k % 20), label=f"{arm} vs {versus}")
    _save(plt, fig, ax, path, xlabel="epoch", ylabel="Dice on noisy-set images",
          title="Fit of the noisy set: vs its noisy masks (solid) and the truth (dashed)")


def plot_weight_ratio(rows: list[dict], default: tuple, path: Path) -> None:
    """Per meta arm at the default regime: the mean weight of wrong-label pixels over that of right ones
    during training (per-epoch mean of the steps, mean over seeds); below 1, the weights tell them apart."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for k, arm in enumerate(ordered({r["label"] for r in rows}, ORDER)):
        for epochs, mean in _mean_curves(rows, arm, default, ("train_weight_wrong_right_ratio",)):
            ax.plot(epochs, mean, marker="o", color=plt.cm.tab20(k % 20), label=arm)
            drawn = True
    if not drawn:
        plt.close(fig)
        return
    ax.axhline(1.0, color="grey", linestyle=":")
    _save(plt, fig, ax, path, xlabel="epoch", ylabel="wrong:right mean weight", yscale="log",
          title="Meta weights of wrong-label pixels over right ones (< 1: told apart)")


def _save(plt, fig, ax, path: Path, **labels) -> None:
    """Label, grid and legend a curve plot, write it, close it."""
    ax.set(**labels)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mean_curves(rows: list[dict], arm: str, default: tuple, columns: tuple[str, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(epochs, mean over seeds) per column of ``metrics.csv`` for ``arm`` at the default regime; [] if none."""
    curves = [_curve(r["run_dir"], columns) for r in rows if r["label"] == arm and regime(r) == default and r["run_dir"]]
    curves = [c for c in curves if c is not None]
    if not curves:
        return []
    length = min(len(c[0]) for c in curves)
    return [(curves[0][0][:length], np.mean([c[k][:length] for c in curves], axis=0)) for k in range(1, len(columns) + 1)]


def _curve(run_dir: str, columns: tuple[str, ...]) -> tuple[np.ndarray, ...] | None:
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        return None
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if all(r.get(c) for c in columns)]
    if not rows:
        return None
    return tuple(np.array([float(r[c]) for r in rows]) for c in ("epoch", *columns))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="the benchmark folder (holding runs/)")
    parser.add_argument("--arms", help="comma-separated: print the table with these arms only (the files keep every arm)")
    parser.add_argument("--by-arm", action="store_true", help="print an arm per row and a regime per column")
    parser.add_argument("--fresh", action="store_true",
                        help="ignore summary.csv's earlier cells (by default kept where the runs here hold fewer seeds)")
    args = parser.parse_args(argv)
    root, rows = read_sweep([args.root], __doc__.splitlines()[0], collect)
    earlier = {} if args.fresh else earlier_cells(root / "summary.csv")
    summary, regimes, arms, chosen, default = summarise(merge(measured_cells(rows), earlier))
    write_csv(root / "summary.csv", summary)
    (root / "summary.md").write_text(markdown(summary, regimes, arms, chosen, default))
    plot_regimes(summary, regimes, arms, default, root / "dice_by_regime.png")
    if any(s["source"] == "earlier" and s["regime"] == "default" for s in summary):
        # the curves are in the runs' metrics.csv: redrawn without some arms they would lose them
        print(f"memorisation.png and weight_ratio.png kept: some default-regime cells' runs are not in {root / 'runs'}")
    else:
        plot_memorisation(rows, default, root / "memorisation.png")
        plot_weight_ratio(rows, default, root / "weight_ratio.png")
    shown = [a for a in args.arms.split(",") if a in arms] if args.arms else arms
    print(markdown_by_arm(summary, regimes, shown, default) if args.by_arm else markdown(summary, regimes, shown, chosen, default))


if __name__ == "__main__":
    main()
