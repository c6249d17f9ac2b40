"""The benchmark's aggregation (experiments/benchmark) on fabricated run folders: regimes named by the
axis they move, noise-free arms shared across noise slices, the share of the control-to-oracle gap,
the recipe chosen on validation Dice, and the slice commands."""
from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "experiments" / "benchmark" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


aggregate, run = load("aggregate"), load("run")


def fabricate(root: Path, label: str, seed: int, test: float, val: float, target: str = "annotator_mean",
              clean: int = 10, epochs: int = 3) -> None:
    folder = root / "runs" / label / f"{target}-c{clean}" / f"seed={seed}"
    folder.mkdir(parents=True)
    noise = {"kind": "coarse", "level": 0.5, "fraction": 1.0, "missing": 0.0, "target_dice": target}
    results = {"test": {"dice": test}, "val": {"dice": val}, "split_sizes": {"clean": clean, "noisy": 90},
               "noise": {"realised_dice": 0.78 if target == "annotator_mean" else 0.65},
               "config": {"label": label, "seed": seed, "noise": noise, "method": {"name": label}}}
    (folder / "results.json").write_text(json.dumps(results))
    ratio = lambda e: f"{0.5 + 0.5 * e}" if label.startswith("meta") else ""  # noqa: E731  (meta arms log it)
    rows = ["epoch,noisyset_dice_vs_noisy,noisyset_dice_vs_true,train_weight_wrong_right_ratio"] + [
        f"{e},{0.6 + 0.1 * e},{0.7 - 0.05 * e},{ratio(e)}" for e in range(epochs)]
    (folder / "metrics.csv").write_text("\n".join(rows) + "\n")


def test_gap_closed_and_recommendation_on_validation(tmp_path, capsys):
    for seed in range(3):
        fabricate(tmp_path, "clean", seed, 0.70, 0.70)
        fabricate(tmp_path, "balanced", seed, 0.80, 0.80)
        fabricate(tmp_path, "oracle", seed, 0.90, 0.90)
        fabricate(tmp_path, "meta", seed, 0.85, 0.70)           # best test, worse validation
        fabricate(tmp_path, "pooled", seed, 0.60, 0.85)         # worst test, best validation
        fabricate(tmp_path, "meta", seed, 0.75, 0.70, target="severe")
        fabricate(tmp_path, "balanced", seed, 0.70 + 0.01 * seed, 0.7, target="severe")
        fabricate(tmp_path, "pooled", seed, 0.50, 0.80, target="severe")
    aggregate.main([str(tmp_path)])
    rows = {(r["arm"], r["regime"]): r for r in csv.DictReader(open(tmp_path / "summary.csv"))}
    assert float(rows["meta", "default"]["gap_closed"]) == pytest.approx(0.5)       # (0.85 - 0.80) / (0.90 - 0.80)
    assert float(rows["pooled", "default"]["gap_closed"]) == pytest.approx(-2.0)
    # severe reuses the noise-free arms: better control = balanced 0.71, oracle 0.90
    assert rows["oracle", "target=severe"]["test_dice_mean"] == rows["oracle", "default"]["test_dice_mean"]
    assert float(rows["meta", "target=severe"]["gap_closed"]) == pytest.approx((0.75 - 0.71) / (0.90 - 0.71))
    table = (tmp_path / "summary.md").read_text()
    assert "recommended **pooled**, meta_best **meta**" in table  # never the test Dice
    assert "| default (0.78) |" in table and "0.850 ± 0.000 (+50 %)" in table
    assert (tmp_path / "dice_by_regime.png").stat().st_size > 1000 and (tmp_path / "memorisation.png").stat().st_size > 1000
    assert (tmp_path / "weight_ratio.png").stat().st_size > 1000
    capsys.readouterr()
    aggregate.main([str(tmp_path), "--by-arm", "--arms", "balanced,meta"])
    by_arm = capsys.readouterr().out.splitlines()
    assert by_arm[0] == "| arm | default | target=severe | mean (regimes) |"
    assert by_arm[2] == "| balanced | 0.800 ± 0.000 | 0.710 ± 0.010 | 0.755 (2) |"
    meta_severe = 100 * (0.75 - 0.71) / (0.90 - 0.71)
    assert by_arm[3] == (f"| meta | 0.850 ± 0.000 (+50 %) | 0.750 ± 0.000 ({meta_severe:+.0f} %) | "
                         f"0.800 ({(50 + meta_severe) / 2:+.0f} %) (2) |")
    (epochs, mean), = aggregate._mean_curves(aggregate.collect(tmp_path), "meta", aggregate.default_regime(
        aggregate.collect(tmp_path)), ("train_weight_wrong_right_ratio",))
    assert list(epochs) == [0, 1, 2] and list(mean) == [0.5, 1.0, 1.5]


def test_slices_move_one_axis_and_skip_noise_free_arms_on_noise_axes():
    commands = run.commands("bench_quick", ["default", "level", "experts"], jobs=2, extra=["data.params.root=/x"])
    arms = [next(a for a in c if a.startswith("arm=")) for c in commands]
    everything = "clean,pooled,balanced,meta,adele_balanced,mtcl,coteach_balanced,oracle"
    assert arms[0] == f"arm={everything},{','.join(run.META_VARIANTS)}"             # default point, meta variants too
    assert arms[1] == arms[2] == "arm=pooled,balanced,meta,adele_balanced,mtcl,coteach_balanced"  # noise slices
    assert arms[3] == arms[4] == f"arm={everything}"                                # expert-count slices
    assert all("experiment=bench_quick" in c and "data.params.root=/x" in c and "threads=1" in c for c in commands)
    assert ["noise.target_dice=severe" in c for c in commands] == [False, False, True, False, False]
    only = run.commands("bench_quick", ["default", "level"], jobs=1, extra=[], only=["clean", "meta"])
    assert [next(a for a in c if a.startswith("arm=")) for c in only] == ["arm=clean,meta", "arm=meta", "arm=meta"]
    assert not any("threads=1" in c for c in only)  # one job: no launcher, no thread cap
    variant = run.commands("bench_quick", ["level"], jobs=1, extra=[], only=["meta_sign", "balanced"])
    assert [next(a for a in c if a.startswith("arm=")) for c in variant] == ["arm=balanced,meta_sign"] * 2
    other = run.commands("bench_quick", ["level"], jobs=1, extra=[], only=["balanced_down_sep"])  # not in a list
    assert [next(a for a in c if a.startswith("arm=")) for c in other] == ["arm=balanced_down_sep"] * 2


def test_recipes_are_chosen_over_presets_among_the_arms_that_ran_every_regime(tmp_path):
    choose = load("choose")
    quick, ph2 = tmp_path / "bench_quick", tmp_path / "bench_ph2"
    for seed in range(2):
        for root, edge in ((quick, 0.02), (ph2, -0.01)):  # dual_batch ahead on one preset, behind on the other
            for target in ("annotator_mean", "severe"):
                fabricate(root, "clean", seed, 0.70, 0.70, target=target)
                fabricate(root, "balanced", seed, 0.80, 0.80, target=target)
                fabricate(root, "meta_mwn_mean", seed, 0.80, 0.85, target=target)
                fabricate(root, "dual_batch", seed, 0.90, 0.85 + edge, target=target)
        fabricate(quick, "meta_sign", seed, 0.95, 0.99)  # best everywhere it ran, but it ran one regime only
    for root in (quick, ph2):
        aggregate.main([str(root)])
    out = tmp_path / "recipes.md"
    choose.main([str(quick), str(ph2), "--out", str(out)])
    text = out.read_text()
    assert "over 4 regimes of bench_ph2, bench_quick: recommended **dual_batch**, meta_best **meta_mwn_mean**" in text
    assert "| meta_sign | 1 | 0.9900 | 0.9500 | no (not every regime) |" in text
    assert "Paired over 4 regimes, dual_batch − meta_mwn_mean: validation +0.0050" in text
    with pytest.raises(SystemExit, match="summary.csv does not exist"):
        choose.main([str(tmp_path / "bench_paper")])


def test_the_mix_severe_point_moves_kind_and_level_together():
    (command,) = run.commands("bench_ph2", ["mix_severe"], jobs=1, extra=[], only=["balanced"])
    assert command[-3:] == ["arm=balanced", "noise=mix", "noise.target_dice=severe"]


def test_cost_times_each_arm_as_its_training_run_builds_it(tmp_path, capsys):
    cost = load("cost")
    tiny = ["debug=fast", "data.params.count=60", "trainer.batch_size=2"]
    allclean = cost.trainer_for(cost.arm_config("bench_quick", "meta_allclean", tiny), 2, str(tmp_path))
    assert allclean.steps_per_epoch == 2
    assert allclean.method.batch_sizes(2)["clean"] == len(allclean.streams["clean"])  # the whole expert set
    cost.main(["bench_quick", "--arms", "balanced,meta_sign", "--steps", "1", "--repeats", "1", "--warmup", "0",
               "--run-dir", str(tmp_path), "--set", *tiny])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith("| `balanced` |") and lines[-2].endswith("| 1.00 |")
    assert lines[-1].startswith("| `meta_sign` |") and float(lines[-1].split("|")[3]) > 0 and float(lines[-1].split("|")[5]) > 0


def test_cost_names_an_unknown_arm_or_preset(capsys):
    cost = load("cost")
    for argv, named in ((["bench_quick", "--arms", "balanced,nosuch"], "Could not find 'arm/nosuch'"),
                        (["no_preset", "--arms", "balanced"], "Could not find 'experiment/no_preset'"),
                        (["bench_quick", "--arms", "balanced", "--set", "trainer.epoch=3"], "did you mean trainer.epochs?"),
                        (["bench_quick", "--arms", "balanced", "--set", "optim.lr=-1"], "optim.lr=-1 is invalid")):
        with pytest.raises(SystemExit) as exit_:
            cost.main(argv)
        assert exit_.value.code == 2 and named in capsys.readouterr().err


def test_a_new_machine_extends_the_tables_instead_of_emptying_them(tmp_path, capsys):
    """Run folders are not in git: the previous summary.csv's cells stay where the runs here hold fewer seeds."""
    import shutil

    for seed in range(3):
        for label, test in (("clean", 0.70), ("balanced", 0.80), ("oracle", 0.90), ("meta", 0.85)):
            fabricate(tmp_path, label, seed, test, test)
        fabricate(tmp_path, "balanced", seed, 0.72, 0.72, target="severe")
    aggregate.main([str(tmp_path)])
    memorisation = (tmp_path / "memorisation.png").read_bytes()
    shutil.rmtree(tmp_path / "runs")  # another machine: only the committed summary is left
    for seed in range(3):
        fabricate(tmp_path, "meta", seed, 0.81, 0.81, target="severe")  # a new cell
    fabricate(tmp_path, "balanced", 0, 0.60, 0.60, target="severe")      # one seed of a cell that had three
    capsys.readouterr()
    aggregate.main([str(tmp_path)])
    assert "memorisation.png and weight_ratio.png kept" in capsys.readouterr().out
    assert (tmp_path / "memorisation.png").read_bytes() == memorisation
    rows = {(r["arm"], r["regime"]): r for r in csv.DictReader(open(tmp_path / "summary.csv"))}
    assert rows["meta", "default"]["source"] == "earlier" and rows["meta", "target=severe"]["source"] == "runs"
    assert float(rows["balanced", "target=severe"]["test_dice_mean"]) == pytest.approx(0.72)  # 3 earlier seeds > 1 here
    assert rows["oracle", "target=severe"]["shared"] == "True" and rows["oracle", "target=severe"]["source"] == "earlier"
    assert float(rows["meta", "target=severe"]["gap_closed"]) == pytest.approx((0.81 - 0.72) / (0.90 - 0.72))
    table = (tmp_path / "summary.md").read_text()
    assert "| default (0.78) | 0.700 ± 0.000 † | 0.800 ± 0.000 † | 0.850 ± 0.000 (+50 %) † | 0.900 ± 0.000 † |" in table
    assert "† kept from an earlier aggregation's summary.csv (their runs are not in runs/): balanced, clean, meta, oracle." in table
    aggregate.main([str(tmp_path)])  # idempotent: the shared and kept cells are read back as they were
    assert {(r["arm"], r["regime"]): r for r in csv.DictReader(open(tmp_path / "summary.csv"))} == rows
    damaged = (tmp_path / "summary.csv").read_text().replace(",3,", ",three,", 1)
    (tmp_path / "summary.csv").write_text(damaged)
    with pytest.raises(SystemExit, match=r"summary.csv, line 2: not a summary this script wrote .*--fresh"):
        aggregate.main([str(tmp_path)])
    assert (tmp_path / "summary.csv").read_text() == damaged  # nothing rewritten
    aggregate.main([str(tmp_path), "--fresh"])  # the runs alone: one seed of balanced, no oracle, no gap shares
    rows = {(r["arm"], r["regime"]): r for r in csv.DictReader(open(tmp_path / "summary.csv"))}
    assert set(rows) == {("balanced", "default"), ("meta", "default")} and rows["balanced", "default"]["n"] == "1"
