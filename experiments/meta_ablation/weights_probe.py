"""Which pixels do the meta weights favour as a model learns? A probe behind the meta ablation.

    python experiments/meta_ablation/weights_probe.py [--noise morph] [--level 1.0]

Trains a small U-Net on 20 clean synthetic 48x48 images (bce+dice, Adam) and, every 100 steps,
computes the exact meta weights of 8 noisy images against 8 clean ones (8 of the 20 it trains on, or
with ``--held-out`` 8 it never sees). Printed per loss: the share
of zero weights and the mean weight (1 = uniform) of pixels labeled foreground / background and of
pixels whose noisy label is wrong / right, and the share of wrong / right pixels with a positive weight.
"""
from __future__ import annotations

import argparse
import warnings

import torch

from noisyseg.data.dataset import to_tensor
from noisyseg.data.synthetic import make_lesion
from noisyseg.losses import BCEDiceLoss, BCELoss
from noisyseg.meta import pixel_weights
from noisyseg.models import UNet
from noisyseg.noise import corrupt


def batch(indices: range, kind: str, level: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images, labels, truth = [], [], []
    for i in indices:
        image, mask = make_lesion(0, i, 48)
        images.append(to_tensor(image))
        labels.append(torch.from_numpy(corrupt(mask, kind, level, seed=i)).float()[None])
        truth.append(torch.from_numpy(mask).float()[None])
    return torch.stack(images), torch.stack(labels), torch.stack(truth)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", default="morph")
    parser.add_argument("--level", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--held-out", action="store_true",
                        help="meta clean batch: 8 clean images the model never trains on (default: 8 of its 20)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.manual_seed(0)
    model = UNet(depth=3, base_width=8).train()
    clean_x, clean_y, _ = batch(range(20), args.noise, 0.0)
    noisy_x, noisy_y, truth = batch(range(100, 108), args.noise, args.level)
    meta_x, meta_y, _ = batch(range(200, 208), args.noise, 0.0) if args.held_out else (clean_x[:8], clean_y[:8], None)
    foreground, wrong = noisy_y > 0.5, (noisy_y > 0.5) != (truth > 0.5)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    print("step loss      zero  fg-label bg-label  wrong  right  | weight > 0: wrong  right")
    for step in range(args.steps + 1):
        if step % 100 == 0:
            for name, loss in (("bce", BCELoss()), ("bce_dice", BCEDiceLoss())):
                w = pixel_weights(model, loss, (noisy_x, noisy_y), (meta_x, meta_y), lr=1e-3)
                rel = w * w.numel() / w.sum()
                print(f"{step:4d} {name:<8} {(w == 0).float().mean():5.2f} {rel[foreground].mean():8.2f} "
                      f"{rel[~foreground].mean():8.2f} {rel[wrong].mean():6.2f} {rel[~wrong].mean():6.2f}  |"
                      f"             {(w[wrong] > 0).float().mean():5.2f} {(w[~wrong] > 0).float().mean():6.2f}")
        picked = torch.randint(0, 20, (8,))
        optimizer.zero_grad()
        BCEDiceLoss()(model(clean_x[picked]), clean_y[picked]).backward()
        optimizer.step()


if __name__ == "__main__":
    main()
