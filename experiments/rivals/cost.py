"""Cost per training step of the rivals against the plain balanced step (forward, loss, backward,
optimiser step), on the default U-Net and synthetic batches, interleaved round-robin, medians after
warm-up, in process CPU time (less sensitive to a shared machine than wall-clock).

    python experiments/rivals/cost.py [--size 64] [--batch 16] [--repeats 10] [--threads 1]
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from noisyseg.losses import BCEDiceLoss
from noisyseg.methods import Balanced
from noisyseg.models import UNet
from noisyseg.rivals import ADELE, CoTeaching, MTCL


def methods(loss) -> dict:
    correcting = ADELE(loss, 0.5)
    correcting.corrector.start_epoch = [0, 0]  # after the memorisation onset: multi-scale passes and consistency
    return {"balanced": Balanced(loss), "adele (before onset)": ADELE(loss, 0.5), "adele (correcting)": correcting,
            "mtcl": MTCL(loss, 0.5), "coteach": CoTeaching(loss, 0.5), "jocor": CoTeaching(loss, 0.5, agreement=0.5)}


def batches(size: int, batch: int) -> dict:
    g = torch.Generator().manual_seed(0)

    def one(n: int) -> dict:
        true = (torch.rand(n, 1, size, size, generator=g) > 0.5).float()
        return {"image": torch.randn(n, 3, size, size, generator=g), "mask": true, "true_mask": true}

    return {"noisy": one(batch // 2), "clean": one(batch - batch // 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data, runs = batches(args.size, args.batch), {}
    for name, method in methods(BCEDiceLoss()).items():
        torch.manual_seed(0)
        model = UNet(depth=3, base_width=16, norm="batch").train()
        runs[name] = (method, model, torch.optim.Adam(model.parameters(), lr=1e-3))
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.warmup + args.repeats):
        for name in random.Random(r).sample(list(runs), len(runs)):
            method, model, opt = runs[name]
            start = time.process_time()
            opt.zero_grad(set_to_none=True)
            method.step(model, data, 1e-3).loss.backward()
            opt.step()
            if r >= args.warmup:
                times[name].append(time.process_time() - start)
    base = statistics.median(times["balanced"])
    print(f"size {args.size}, batch {args.batch}, {args.threads} thread(s), median CPU s/step of {args.repeats}")
    for name, values in times.items():
        print(f"{name:22s} {statistics.median(values):7.3f} s  {statistics.median(values) / base:5.2f}x")


if __name__ == "__main__":
    main()
