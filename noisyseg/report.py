"""``python -m noisyseg.report RUN_DIR [--out PATH]``: one self-contained HTML page per run.

The page shows what the run folder holds: a summary (method, noise, split sizes, scores), the
training curves from ``metrics.csv`` (loss, validation metrics, meta-weight statistics), the test
Dice against labeled images from ``rounds.csv`` (active runs), the meta weight-map grids
(``weights/epoch_NNN.png``), the uncertainty grids (``uncertainty/round_NN.png``), the best and worst
test images with prediction and ground-truth contours, and the resolved config. Every image is an
embedded base64 PNG, so the page can be mailed or archived on its own. The report reads files only
(and rebuilds the shown test images from the saved config); it needs none of the training loops' code.
"""
from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from noisyseg.atomic import write_atomic
from noisyseg.checkpoint import load_checkpoint
from noisyseg.data.cache import load_arrays
from noisyseg.data.dataset import SegmentationDataset
from noisyseg.data.sources import build_source
from noisyseg.device import resolve_device
from noisyseg.engine import predict_probs
from noisyseg.errors import NoisysegError
from noisyseg.metrics import METRIC_KEYS, per_image_scores
from noisyseg.models import build_model
from noisyseg.runlog import contour_overlay

RUN_FILES = ("results.json", "metrics.csv", "rounds.csv")  # a folder with none of these is not a run
CASES = 3  # best and worst test images shown
ROUND_COLUMNS = ("round", "labeled", "queried", "pseudo", "pseudo_dice", "test_dice", "test_jaccard", "val_dice")
CSS = """body{font-family:sans-serif;max-width:1150px;margin:1em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
th{background:#f3f3f3}.row{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}
figcaption{font-size:90%;text-align:center}pre{background:#f6f6f6;padding:8px;font-size:85%;overflow:auto}
.note{color:#a15c00}.grids figure{flex:1 1 0;min-width:0;max-width:560px}.grids img{width:100%}
.pixels img{image-rendering:pixelated}h2{border-bottom:1px solid #ddd}pre{column-count:3}"""


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    """Numeric columns of a CSV as float arrays (missing or non-numeric cells become NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = list(rows[0]) if rows else []

    def number(text: str | None) -> float:
        try:
            return float(text)
        except (TypeError, ValueError):
            return float("nan")

    return {c: np.array([number(r.get(c)) for r in rows]) for c in columns}


def _png(rgb: np.ndarray) -> str:
    _, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return base64.b64encode(data.tobytes()).decode()


def _figure_png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _img(b64: str, caption: str) -> str:
    return f'<figure><img src="data:image/png;base64,{b64}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _table(rows: dict[str, dict[str, Any]], keys: list[str]) -> str:
    """One row per entry of ``rows``, one column per key; floats with 3 decimals."""
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))  # noqa: E731
    head = "<tr><th></th>" + "".join(f"<th>{html.escape(k)}</th>" for k in keys) + "</tr>"
    body = "".join(f"<tr><th>{html.escape(name)}</th>" + "".join(f"<td>{fmt(row.get(k, ''))}</td>" for k in keys)
                   + "</tr>" for name, row in rows.items())
    return f"<table>{head}{body}</table>"


def _summary(run_dir: Path, results: dict, cfg: DictConfig | None) -> str:
    parts = []
    if cfg is not None:
        get = lambda key: OmegaConf.select(cfg, key, throw_on_missing=False)  # noqa: E731
        noisy = get("noise.kind") not in (None, "none")
        facts = {"method": get("method.name"), "loss": get("loss.name"),
                 "noise": f"{get('noise.kind')} level {get('noise.level')}" if noisy else "none",
                 "data": f"{get('data.name')} {get('data.size')} px", "seed": get("seed")}
        if "realised_dice" in results.get("noise", {}):
            facts["noisy-label Dice"] = round(results["noise"]["realised_dice"], 3)
        for key in ("best_epoch", "epochs", "steps", "skipped_steps", "device"):
            if key in results:
                facts[key.replace("_", " ")] = results[key]
        parts.append(_table({"run": facts}, list(facts)))
    if results.get("split_sizes"):
        parts.append(_table({"images": results["split_sizes"]}, list(results["split_sizes"])))
    scores = {name: results[name] for name in ("test", "val") if isinstance(results.get(name), dict)}
    if scores:
        parts.append(_table(scores, [k for k in METRIC_KEYS if any(k in s for s in scores.values())]))
    rounds = results.get("rounds")
    if isinstance(rounds, list) and rounds and all(isinstance(r, dict) for r in rounds):  # active learning
        keys = [k for k in ROUND_COLUMNS if any(k in r for r in rounds)]
        parts.append(_table({f"round {r.get('round', k)}": r for k, r in enumerate(rounds)}, keys))
    if not (run_dir / "results.json").exists():
        parts.append(_note("No results.json: the run has not finished (or it crashed); the curves show the epochs done."))
    return "".join(parts)


def _curves(metrics: dict[str, np.ndarray], best_epoch: int | None) -> str:
    """Training loss, validation metrics and (meta runs) weight statistics against the epoch."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state
    from matplotlib.ticker import MaxNLocator

    panels = [("training loss", ["train_loss"]), ("validation", ["val_dice", "val_jaccard"]),
              ("fit of the noisy set (memorisation)", ["noisyset_dice_vs_noisy", "noisyset_dice_vs_true"]),
              ("meta weights", ["train_weight_zero_fraction", "train_weight_wrong_right_ratio"])]
    panels = [(title, [c for c in columns if c in metrics]) for title, columns in panels]
    panels = [(title, columns) for title, columns in panels if columns]
    if not panels:
        return _note("metrics.csv has none of train_loss, val_dice, val_jaccard")
    fig = Figure(figsize=(3.6 * len(panels), 3.0))
    epoch = metrics.get("epoch", np.arange(len(next(iter(metrics.values())))))
    for k, (title, columns) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        for column in columns:
            ax.plot(epoch, metrics[column], "o-", ms=3, label=column.replace("train_weight_", "").replace("_", " "))
        if "round" in metrics:  # active learning: a red dotted line where each query round starts
            for start in epoch[1:][np.diff(metrics["round"]) > 0]:
                ax.axvline(start, color="tab:red", lw=0.8, ls=":", alpha=0.6)
        if title == "validation" and best_epoch is not None and best_epoch >= 0:
            ax.axvline(best_epoch, color="grey", ls=":", label=f"best epoch {best_epoch}")
        if title == "meta weights":
            ax.axhline(1.0, color="grey", lw=0.5, ls=":")  # wrong/right ratio 1: no discrimination
        ax.set(title=title, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _img(_figure_png(fig), "metrics.csv")


def _rounds_curve(rounds: dict[str, np.ndarray]) -> str:
    """Active learning: test scores against the number of labeled images, one point per round."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7.2 if "pseudo" in rounds else 3.6, 3.0))
    x = rounds.get("labeled", rounds.get("round"))
    ax = fig.add_subplot(1, 2 if "pseudo" in rounds else 1, 1)
    for column in ("test_dice", "test_jaccard", "pseudo_dice"):
        if column in rounds and not np.isnan(rounds[column]).all():
            ax.plot(x, rounds[column], "o-", ms=3, label=column.replace("_", " "))
    ax.set(title="test scores per round", xlabel="labeled images" if "labeled" in rounds else "round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if "pseudo" in rounds:
        ax = fig.add_subplot(1, 2, 2)
        ax.plot(rounds.get("round", np.arange(len(x))), rounds["pseudo"], "o-", ms=3)
        ax.set(title="pseudo-labeled images", xlabel="round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _img(_figure_png(fig), "rounds.csv")


def _grids(folder: Path, label: str, count: int = 4) -> str:
    """Up to ``count`` of the PNGs in ``folder``, evenly spaced from the first to the last."""
    paths = sorted(folder.glob("*.png"))
    shown = min(count, len(paths))
    picked = [paths[round(j * (len(paths) - 1) / max(shown - 1, 1))] for j in range(shown)]
    figures = [_img(base64.b64encode(p.read_bytes()).decode(), f"{label} {p.stem.split('_')[-1]}") for p in picked]
    return (f"<p>{len(paths)} grids in {html.escape(folder.name)}/, showing {len(picked)}.</p>"
            f"<div class='row grids pixels'>{''.join(figures)}</div>")


def _overlay(image: np.ndarray, truth: np.ndarray, prob: np.ndarray, tile: int = 168) -> np.ndarray:
    """image with truth (green) and prediction (magenta) contours | probability map, uint8 RGB."""
    side = image.shape[0]  # images are square (data.size)
    size = side * max(1, tile // side) if side <= tile else tile  # integer zoom, or shrink big images
    smooth = cv2.INTER_NEAREST if size >= side else cv2.INTER_AREA
    resize = lambda a, how=cv2.INTER_NEAREST: cv2.resize(a, (size, size), interpolation=how)  # noqa: E731
    masks = [resize((m > 0).astype(np.uint8)) for m in (prob >= 0.5, truth)]
    canvas = contour_overlay(resize(image, smooth), *masks, thickness=max(1, size // 72))
    grey = np.repeat(resize((np.clip(prob, 0, 1) * 255).astype(np.uint8), smooth)[..., None], 3, axis=-1)
    gap = np.full((canvas.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([canvas, gap, grey], axis=1)


def _model(run_dir: Path, cfg: DictConfig, device: torch.device) -> tuple[torch.nn.Module, str]:
    """The run's model with its saved weights, and the checkpoint's file name."""
    for name in ("best.pt", "state.pt"):  # training runs keep best.pt; active-learning runs state.pt
        if (run_dir / name).exists():
            state = load_checkpoint(run_dir / name, device)
            if "model" not in state:
                raise NoisysegError(f"{run_dir / name}: no 'model' entry in the checkpoint")
            kwargs = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k != "name"}
            model = build_model(cfg.model.name, pretrained=False, **kwargs).to(device)  # weights: the checkpoint's
            model.load_state_dict(state["model"])
            return model, name
    raise NoisysegError(f"{run_dir}: no checkpoint (best.pt or state.pt)")


def _rank(dice: np.ndarray) -> tuple[list[int], list[int]]:
    """Indices of the ``CASES`` best (highest Dice first) and worst (lowest first) images."""
    order = [int(i) for i in np.argsort(-dice, kind="stable")]
    return order[:CASES], order[::-1][:CASES]


def _cases(run_dir: Path, cfg: DictConfig, device: torch.device) -> str:
    """The best and worst test images by Dice, re-predicted with the run's checkpoint."""
    splits_path = run_dir / "splits.json"
    if not splits_path.exists():
        raise NoisysegError(f"{splits_path} not found")
    ids = json.loads(splits_path.read_text()).get("test")
    if not ids:
        raise NoisysegError(f"{splits_path} lists no test images")
    source = build_source(cfg.data.name, **OmegaConf.to_container(cfg.data.params, resolve=True))
    model, checkpoint = _model(run_dir, cfg, device)
    size, batch = cfg.data.size, cfg.get("trainer", {}).get("eval_batch_size", 16)

    def predict(arrays: dict[str, np.ndarray]) -> np.ndarray:
        return predict_probs(model, SegmentationDataset(arrays["images"], {"mask": arrays["masks"]}), batch, device)

    notes = ""
    per_image = run_dir / "test_per_image.csv"
    if per_image.exists():  # rank by the saved scores and decode only the images shown
        dice = _read_csv(per_image)["dice"]
        if len(dice) != len(ids):
            raise NoisysegError(f"{per_image} has {len(dice)} rows but splits.json lists {len(ids)} test images")
        best, worst = _rank(dice)
        shown = list(dict.fromkeys(best + worst))
        arrays = load_arrays(source, [ids[i] for i in shown], size, None, split="report")
        probs = predict(arrays)
        drift = np.abs(per_image_scores(probs >= 0.5, arrays["masks"] > 0)["dice"] - dice[shown]).max()
        if drift > 0.01:
            notes = _note(f"re-predicted Dice differs from test_per_image.csv by up to {drift:.3f} "
                          "(another device, or the checkpoint changed?)")
    else:  # e.g. an active-learning run: score the whole test split here
        arrays = load_arrays(source, ids, size, cfg.get("cache_dir"), split="test")
        probs = predict(arrays)
        dice = per_image_scores(probs >= 0.5, arrays["masks"] > 0)["dice"]
        best, worst = _rank(dice)
        shown = list(dict.fromkeys(best + worst))
        arrays, probs = {k: v[shown] for k, v in arrays.items()}, probs[shown]
        notes = _note("no test_per_image.csv: ranked by Dice of the checkpoint's predictions, computed here")

    parts = [f"<p>Predictions of {checkpoint}. Left: image with <b style='color:#00b000'>ground truth</b> and "
             "<b style='color:#e000e0'>prediction (p ≥ 0.5)</b> contours; right: predicted probability (white = 1).</p>",
             notes]
    for title, picked in (("best", best), ("worst", worst)):
        figures = [_img(_png(_overlay(arrays["images"][k], arrays["masks"][k], probs[k])),
                        f"test #{i} {ids[i]}: Dice {dice[i]:.3f}") for i in picked for k in [shown.index(i)]]
        parts.append(f"<h3>{title} {len(picked)} of {len(ids)} by Dice</h3>"
                     f"<div class='row pixels'>{''.join(figures)}</div>")
    return "".join(parts)


def _config(run_dir: Path, results: dict) -> DictConfig | None:
    if "config" in results:
        return OmegaConf.create(results["config"])
    hydra_config = run_dir / ".hydra" / "config.yaml"
    return OmegaConf.load(hydra_config) if hydra_config.exists() else None


def build_report(run_dir: str | Path, out: str | Path | None = None, device: str = "cpu") -> Path:
    """Write the HTML report of one run folder (default ``RUN_DIR/report.html``); return its path.

    Raises:
        NoisysegError: ``run_dir`` is not a run folder (none of results.json, metrics.csv, rounds.csv).
    """
    run_dir = Path(run_dir)
    try:
        device = resolve_device(device)
    except RuntimeError as err:
        raise NoisysegError(f"--device {device}: {err}") from None
    if not run_dir.is_dir() or not any((run_dir / name).exists() for name in RUN_FILES):
        raise NoisysegError(f"{run_dir}: not a run folder (no {', '.join(RUN_FILES)})")
    results = {}
    if (run_dir / "results.json").exists():
        try:
            results = json.loads((run_dir / "results.json").read_text())
        except json.JSONDecodeError as err:
            raise NoisysegError(f"{run_dir / 'results.json'}: not valid JSON ({err})") from None
    cfg = _config(run_dir, results)

    sections = [("summary", "Summary", _summary(run_dir, results, cfg))]
    curves = []
    if (run_dir / "metrics.csv").exists() and (metrics := _read_csv(run_dir / "metrics.csv")):
        curves.append(_curves(metrics, results.get("best_epoch")))
    if (run_dir / "rounds.csv").exists() and (rounds := _read_csv(run_dir / "rounds.csv")):
        curves.append(_rounds_curve(rounds))
    curves_html = f"<div class='row'>{''.join(curves)}</div>" if curves else _note("no rows in metrics.csv or rounds.csv")
    sections.append(("curves", "Curves", curves_html))
    if (run_dir / "weights").is_dir():
        sections.append(("weights", "Meta weight maps: image | noisy mask | weight (scaled to its max) | true mask",
                         _grids(run_dir / "weights", "epoch")))
    if (run_dir / "uncertainty").is_dir():
        sections.append(("uncertainty", "Uncertainty maps", _grids(run_dir / "uncertainty", "round")))
    if cfg is None or not (run_dir / "results.json").exists():
        cases = _note("test cases need a finished run (results.json with its config)")
    else:
        try:
            cases = _cases(run_dir, cfg, device)
        except (NoisysegError, OSError, OmegaConfBaseException) as err:  # e.g. the data folder is elsewhere
            cases = _note(f"test images not available: {err}")
    sections.append(("cases", "Best and worst test images", cases))
    config_text = OmegaConf.to_yaml(cfg) if cfg is not None else "no config found (results.json or .hydra/config.yaml)"
    sections.append(("config", "Resolved config", f"<pre>{html.escape(config_text)}</pre>"))

    title = f"noisyseg run {run_dir.resolve().name}"
    body = "".join(f'<section id="{key}"><h2>{html.escape(head)}</h2>{content}</section>'
                   for key, head, content in sections)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style>"
            f"</head><body><h1>{html.escape(title)}</h1><p>{html.escape(str(run_dir.resolve()))}</p>{body}</body></html>")
    out = Path(out) if out else run_dir / "report.html"
    write_atomic(out, lambda tmp: tmp.write_text(page, encoding="utf-8"))  # a reader never sees half a page
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m noisyseg.report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run folder written by noisyseg.train (or the active-learning loop)")
    parser.add_argument("--out", help="output HTML file (default: RUN_DIR/report.html)")
    parser.add_argument("--device", default="cpu", help="device for re-predicting the test cases: cpu (default), cuda, auto")
    args = parser.parse_args(argv)
    try:
        path = build_report(args.run_dir, args.out, args.device)
    except NoisysegError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
