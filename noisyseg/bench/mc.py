"""``python -m noisyseg.bench mc``: MC-dropout scoring (T samples, then the summed variance per image) of one
batch with the naive (T full forwards), ``loop`` (prefix once, suffix T times) and ``batched`` (suffix once
on the prefix state repeated T times) modes of :func:`noisyseg.active.mc_predict`, for each dropout position
of the default U-Net (batch norm in eval, dropout 0.5), interleaved round-robin (shuffled) and
reported as median images per second and speed-up over naive, with a check that ``loop`` gives the
same samples as naive under the same seed."""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch

from noisyseg.device import resolve_device, synchronize
from noisyseg.inference import MODES, image_scores, mc_predict
from noisyseg.models import UNet
from noisyseg.models.unet import DROPOUT_POSITIONS

MC_TARGETS = {"bottleneck": 1.4, "head": 5.0}  # loop speed-up over naive at T = 20 (issue 6)


def _same(check: dict) -> str:
    """Same samples as naive: bit for bit, up to float rounding (other batch shapes), or other masks."""
    word = "equal" if check["equal"] else "equal up to rounding" if check["max_abs_diff"] <= 1e-5 else "differs"
    return f"{word} (max |diff| {check['max_abs_diff']:.1e})"


def mc_main(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    positions = args.positions.split(",") if args.positions else list(DROPOUT_POSITIONS)
    modes = ["naive"] + [m for m in MODES if m != "naive"]
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    report = {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "config": {k: v for k, v in vars(args).items() if k != "func"}, "targets": MC_TARGETS, "positions": {}}
    print(f"MC scoring, T={args.samples}, batch {args.batch}, {args.size}x{args.size}, U-Net depth {args.depth} "
          f"base {args.base_width}, {device}, {torch.get_num_threads()} threads; medians of {args.repeats} rounds")
    print(f"{'position':<11} {'mode':<8} {'img/s':>9} {'x naive':>8}   check")
    for pos in positions:
        torch.manual_seed(0)
        model = UNet(depth=args.depth, base_width=args.base_width, norm="batch", dropout=args.dropout,
                     dropout_position=pos).to(device).eval()
        samples = {}
        for m in modes:  # same seed for every mode: loop must equal naive exactly
            torch.manual_seed(1)
            samples[m] = mc_predict(model, images, args.samples, mode=m, chunk=args.chunk)
        check = {m: {"equal": torch.equal(samples[m], samples["naive"]),
                     "max_abs_diff": (samples[m] - samples["naive"]).abs().max().item()} for m in modes[1:]}
        del samples
        wall = {m: [] for m in modes}
        order, rng = list(modes), random.Random(0)
        for r in range(args.warmup + args.repeats):
            rng.shuffle(order)
            for m in order:
                synchronize(device)
                t0 = time.perf_counter()
                image_scores(mc_predict(model, images, args.samples, mode=m, chunk=args.chunk), "variance", "sum")
                synchronize(device)
                if r >= args.warmup:
                    wall[m].append(time.perf_counter() - t0)
        naive = statistics.median(wall["naive"])
        rows = {}
        for m in modes:
            t = statistics.median(wall[m])
            rows[m] = {"wall_s": t, "images_per_s": args.batch / t, "speedup": naive / t, "wall_all_s": wall[m], **check.get(m, {})}
            note = "" if m == "naive" else _same(check[m])
            print(f"{pos:<11} {m:<8} {rows[m]['images_per_s']:>9.2f} {rows[m]['speedup']:>8.2f}   {note}")
        report["positions"][pos] = rows
    report["target_check"] = {pos: {"loop_speedup": report["positions"][pos]["loop"]["speedup"], "target": t,
                                    "ok": report["positions"][pos]["loop"]["speedup"] >= t}
                              for pos, t in MC_TARGETS.items() if pos in report["positions"]}
    print(f"targets (loop, for T=20; this run T={args.samples}):", json.dumps(report["target_check"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"json: {args.json}")
    return report
