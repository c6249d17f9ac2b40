"""Choose the named recipes over several benchmark presets at once, on validation Dice only.

    python experiments/benchmark/choose.py experiments/results/bench_quick experiments/results/bench_ph2

Each preset's ``summary.csv`` (written by ``aggregate.py``) is read, and its regimes named by preset
(``bench_ph2: target=severe``), so that the rule of :func:`aggregate.choose` applies to all of them
together: ``recommended`` is the arm with the best mean validation Dice among the arms that ran every
regime of every preset, ``meta_best`` the best meta variant among them. Prints, and
writes to ``experiments/results/recipes.md`` (``--out``), the candidates' mean validation and test Dice
and, for the two best candidates, the paired per-regime difference with its standard error: a
difference inside two standard errors is a tie, and the README says so.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np


def _aggregate():
    spec = importlib.util.spec_from_file_location("benchmark_aggregate", Path(__file__).with_name("aggregate.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


aggregate = _aggregate()


def read_summaries(roots: list[Path]) -> list[dict]:
    """Every preset's summary entries, regimes prefixed by the preset's folder name."""
    summary = []
    for root in roots:
        path = root / "summary.csv"
        if not path.is_file():
            sys.exit(f"error: {path} does not exist; run experiments/benchmark/aggregate.py {root} first")
        with open(path) as f:
            for entry in csv.DictReader(f):
                summary.append({**entry, "regime": f"{root.name}: {entry['regime']}",
                                "val_dice_mean": float(entry["val_dice_mean"]),
                                "test_dice_mean": float(entry["test_dice_mean"])})
    return summary


def paired(summary: list[dict], a: str, b: str, key: str = "val_dice_mean") -> tuple[float, float, int]:
    """Mean over the regimes both ran of ``a``'s minus ``b``'s ``key``, its standard error, and the count."""
    by = {(s["arm"], s["regime"]): s[key] for s in summary}
    diffs = np.array([by[a, r] - by[b, r] for (arm, r) in by if arm == a and (b, r) in by])
    se = float(diffs.std(ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1 else float("nan")
    return float(diffs.mean()), se, len(diffs)


def report(summary: list[dict], arms: list[str], chosen: dict[str, str | None]) -> str:
    regimes = {s["regime"] for s in summary}
    eligible = aggregate.candidates(summary, arms)
    rows = []
    for arm in arms:
        if arm == aggregate.ORACLE:
            continue
        mine = [s for s in summary if s["arm"] == arm]
        rows.append((np.mean([s["val_dice_mean"] for s in mine]), arm, len(mine),
                     np.mean([s["test_dice_mean"] for s in mine])))
    lines = [f"Recipes chosen on validation Dice over {len(regimes)} regimes of "
             f"{', '.join(sorted({r.split(':')[0] for r in regimes}))}: recommended **{chosen['recommended']}**, "
             f"meta_best **{chosen['meta_best']}**.", "",
             "| arm | regimes run | mean validation Dice | mean test Dice | candidate for recommended |",
             "|---|---|---|---|---|"]
    for val, arm, n, test in sorted(rows, reverse=True):
        why = "yes" if arm in eligible else "no (ablation)" if arm in aggregate.ABLATIONS else "no (not every regime)"
        lines.append(f"| {arm} | {n} | {val:.4f} | {test:.4f} | {why} |")
    ranked = sorted(((v, a) for v, a, _, _ in rows if a in eligible), reverse=True)
    if len(ranked) > 1:
        (_, first), (_, second) = ranked[:2]
        diff, se, n = paired(summary, first, second)
        lines += ["", f"Paired over {n} regimes, {first} − {second}: validation {diff:+.4f} (standard error "
                  f"{se:.4f}), test {paired(summary, first, second, 'test_dice_mean')[0]:+.4f}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="benchmark folders holding summary.csv")
    parser.add_argument("--out", type=Path, default=Path("experiments/results/recipes.md"))
    args = parser.parse_args(argv)
    summary = read_summaries(args.roots)
    arms = aggregate.ordered({s["arm"] for s in summary}, aggregate.ORDER)
    text = report(summary, arms, aggregate.choose(summary, arms))
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
