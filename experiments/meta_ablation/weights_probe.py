"""Which pixels do the meta weights favour as a model learns, and why? The probe behind the meta variants.

    python experiments/meta_ablation/weights_probe.py [--noise coarse] [--level 0.5] [--steps 400] [--out DIR]
    python experiments/meta_ablation/weights_probe.py --checkpoint RUN [RUN ...]   # models trained by a benchmark

Trains a small U-Net on 20 clean synthetic 48x48 images (bce+dice, Adam) and, every ``--every`` steps,
computes the exact meta gradient u of 8 noisy images against 8 clean ones it never trains on (per-pixel
BCE, the loss the mechanism is written for). For BCE with logit z and label y,

    a_i = −u_i = α · |σ(z_i) − y_i| · q_i,    q_i = sign(y_i − σ(z_i)) · ⟨∇θ z_i, g⟩,

the paper's weight max(a_i, 0) is a *residual* factor |σ − y| times a *sign* factor q_i (does moving
this pixel's logit toward its label help the clean batch?). Printed per probe step, for pixels whose
noisy label is wrong / right: the mean residual, the share passing the sign test (q > 0), the mean q of
those that pass, and per label class the pass rate (a sign set by the clean batch's global bias passes
one class and fails the other). Then the wrong:right weight ratio (mean weight of wrong-label pixels
over that of right ones; < 1 is what a weighting should achieve) of every stateless weighting.
Writes ``probe.csv`` and ``wrong_right_ratio.png`` to ``--out``. With ``--checkpoint``, probes the
final models of benchmark runs instead (at their image size, no training): does the sign test still pass
one label class and fail the other in a model trained on noisy masks, and which class?
"""
from __future__ import annotations

import argparse
import csv
import warnings
from pathlib import Path

import torch

from noisyseg.data.dataset import to_tensor
from noisyseg.data.synthetic import make_lesion
from noisyseg.losses import BCEDiceLoss, BCELoss
from noisyseg.meta import reweight
from noisyseg.meta.weights import WEIGHTINGS, Pixels, _normalize
from noisyseg.models import UNet
from noisyseg.noise import corrupt

LR = 1e-3


def batch(indices: range, kind: str, level: float, size: int = 48) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images, labels, truth = [], [], []
    for i in indices:
        image, mask = make_lesion(0, i, size)
        images.append(to_tensor(image))
        labels.append(torch.from_numpy(corrupt(mask, kind, level, seed=i)).float()[None])
        truth.append(torch.from_numpy(mask).float()[None])
    return torch.stack(images), torch.stack(labels), torch.stack(truth)


def ratio(weights: torch.Tensor, wrong: torch.Tensor) -> float:
    """Mean weight of wrong-label pixels over that of right ones (nan when no weight is positive)."""
    if not weights.sum() > 0:
        return float("nan")
    return (weights[wrong].mean() / weights[~wrong].mean().clamp_min(1e-30)).item()


def probe(model: torch.nn.Module, noisy: tuple, truth: torch.Tensor, clean: tuple) -> dict[str, float]:
    """The decomposition of a = −u into residual and sign factors, and each weighting's wrong:right ratio."""
    grad, p = reweight._meta_gradient(model, BCELoss().per_pixel, noisy, clean, LR, "jvp")
    a, labels = -grad.u, noisy[1]
    sigma = torch.sigmoid(p.noisy_logits.detach())
    residual = (sigma - labels).abs()
    q = a / (LR * residual.clamp_min(1e-12))
    wrong, lesion = (labels > 0.5) != (truth > 0.5), labels > 0.5
    row = {}
    for name, pixels in (("wrong", wrong), ("right", ~wrong)):
        passed = pixels & (q > 0)
        row[f"{name}_residual"] = residual[pixels].mean().item()
        row[f"{name}_pass"] = passed.float().sum().item() / max(pixels.sum().item(), 1)
        row[f"{name}_q_passed"] = q[passed].mean().item() if passed.any() else float("nan")
    row["lesion_label_pass"] = (q[lesion] > 0).float().mean().item()
    row["skin_label_pass"] = (q[~lesion] > 0).float().mean().item()
    info = Pixels(labels, slope=residual)
    for name in WEIGHTINGS.names():
        row[f"ratio_{name}"] = ratio(_normalize(WEIGHTINGS.get(name)(a, info), "batch"), wrong)
    row["ratio_class"] = ratio(_normalize(WEIGHTINGS.get("l2rw")(a, info), "class", labels), wrong)
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in [k for k in rows[0] if k.startswith("ratio_")]:
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], marker="o", label=key[6:])
    ax.axhline(1.0, color="grey", linestyle=":")
    ax.set(xlabel="training step of the probed model", ylabel="wrong:right mean weight", yscale="log",
           title="Meta weights of wrong-label pixels (< 1: told apart)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def probe_checkpoints(args: argparse.Namespace) -> None:
    from noisyseg.predict import load_predictor

    print("run | pass wrong right | pass lesion-label skin-label | wrong:right l2rw sign")
    for run in args.checkpoint:
        predictor = load_predictor(run, "cpu")
        model = predictor.model.train()
        noisy_x, noisy_y, truth = batch(range(100, 116), args.noise, args.level, predictor.size)
        meta_x, meta_y, _ = batch(range(200, 216), args.noise, 0.0, predictor.size)
        row = probe(model, (noisy_x, noisy_y), truth, (meta_x, meta_y))
        print(f"{run} | {row['wrong_pass']:.2f} {row['right_pass']:.2f} | {row['lesion_label_pass']:.2f} "
              f"{row['skin_label_pass']:.2f} | {row['ratio_l2rw']:.2f} {row['ratio_sign']:.2f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", default="coarse")
    parser.add_argument("--level", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("experiments/results/weights_probe"))
    parser.add_argument("--checkpoint", nargs="*", default=[], help="probe these runs' models (run folders)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    if args.checkpoint:
        return probe_checkpoints(args)
    torch.manual_seed(args.seed)
    model = UNet(depth=3, base_width=8).train()
    clean_x, clean_y, _ = batch(range(20), args.noise, 0.0)
    noisy_x, noisy_y, truth = batch(range(100, 108), args.noise, args.level)
    meta_x, meta_y, _ = batch(range(200, 208), args.noise, 0.0)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    rows = []
    print("step | residual wrong right | pass wrong right | q|pass wrong right | pass lesion-label skin-label | "
          "wrong:right " + " ".join(WEIGHTINGS.names()) + " class")
    for step in range(args.steps + 1):
        if step % args.every == 0:
            row = {"step": step, **probe(model, (noisy_x, noisy_y), truth, (meta_x, meta_y))}
            rows.append(row)
            ratios = " ".join(f"{row[f'ratio_{n}']:.2f}" for n in [*WEIGHTINGS.names(), "class"])
            print(f"{step:4d} | {row['wrong_residual']:.2f} {row['right_residual']:.2f} | {row['wrong_pass']:.2f} "
                  f"{row['right_pass']:.2f} | {row['wrong_q_passed']:.2e} {row['right_q_passed']:.2e} | "
                  f"{row['lesion_label_pass']:.2f} {row['skin_label_pass']:.2f} | {ratios}", flush=True)
        picked = torch.randint(0, 20, (8,))
        optimizer.zero_grad()
        BCEDiceLoss()(model(clean_x[picked]), clean_y[picked]).backward()
        optimizer.step()
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "probe.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.out / "wrong_right_ratio.png")
    print(f"wrote {args.out / 'probe.csv'} and wrong_right_ratio.png")


if __name__ == "__main__":
    main()
