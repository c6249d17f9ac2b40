"""``python -m noisyseg.bench meta``: one full training step of every meta backend (pixel weights + weighted
backward + optimizer step) against the plain noisy step (forward, mean loss, backward, step) on the default
U-Net (or ``--model smp --arch Unet --encoder resnet34``; ``--sizes 128,256`` for several sizes in one
run), with the ops of the model that have no tangent rule (so ``jvp`` falls back to forward_ad), interleaved round-robin in one process (the order is shuffled each round so no method always
follows the same one) and reported as medians after warm-up, with wall-clock and process CPU time
(the CPU time is less sensitive to other load on a shared machine). Peak memory: CUDA max allocated
on GPU; on CPU the peak RSS of a fresh subprocess per method (its ``VmHWM``; ``ru_maxrss`` where
there is no /proc) minus that of a process that only builds the model and data. ``--scaling`` repeats the comparison over image and batch sizes and plots
it. Each method trains its own copy of the model with SGD (momentum 0.9); the virtual step size is
the current learning rate, as in the paper."""
from __future__ import annotations

import argparse
import copy
import functools
import json
import random
import re
import resource
import statistics
import subprocess
import sys
import time
import warnings
from typing import Callable

import torch

from noisyseg.device import resolve_device, synchronize
from noisyseg.losses import BCELoss
from noisyseg.meta import META_BACKENDS, MetaReweightedLoss
from noisyseg.models import UNet, build_model
from noisyseg.progress import progress_bar
from noisyseg.tangents import unsupported_ops

LR = 0.01
APPROXIMATIONS = ["jvp[head]", "jvp_ad[head]", "jvp@2", "jvp@4"]  # meta.params=[head]: a virtual step on the
# output layer only; @k: meta.clean_every=k, the clean gradient reused for k steps
TARGETS = {"jvp_ratio_max": 2.5, "higher_over_jvp_min": 2.5, "jvp_mem_ratio_max": 1.5}


def _model(args: argparse.Namespace) -> torch.nn.Module:
    """``--model unet``: the U-Net of ``--depth`` and ``--base-width``; ``--model smp``: ``--arch`` over ``--encoder``."""
    if getattr(args, "model", "unet") == "smp":
        return build_model("smp", arch=args.arch, encoder=args.encoder)
    return UNet(depth=args.depth, base_width=args.base_width, norm="batch")


def _model_name(args: argparse.Namespace) -> str:
    if getattr(args, "model", "unet") == "smp":
        return f"smp {args.arch}/{args.encoder}"
    return f"U-Net depth {args.depth} base {args.base_width}"


def _setup(args: argparse.Namespace, size: int, batch: int, device: torch.device):
    """The model (see :func:`_model`) and synthetic noisy/clean batches (disc masks, a quarter of noisy pixels flipped)."""
    torch.manual_seed(0)
    model = _model(args).to(device).train()
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 3) ** 2).float().expand(batch, 1, size, size)
    flip = (torch.rand(batch, 1, size, size) < 0.25).float()
    noisy = (torch.randn(batch, 3, size, size).to(device), ((disc + flip) % 2).to(device))
    clean = (torch.randn(batch, 3, size, size).to(device), disc.clone().to(device))
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        noisy = (noisy[0].contiguous(memory_format=torch.channels_last), noisy[1])
        clean = (clean[0].contiguous(memory_format=torch.channels_last), clean[1])
    return model, noisy, clean


def _make_step(method: str, model: torch.nn.Module, noisy, clean, amp: bool = False) -> Callable[[], None]:
    """One full training step of ``method`` on its own copy of the model and optimizer; for
    ``backend@k`` (``clean_every=k``) one cycle of k steps, with ``step.steps = k`` to divide by.
    ``amp``: the forward passes under bfloat16 autocast, backward outside it, as ``trainer.amp`` does."""
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    loss_fn = BCELoss()
    autocast = functools.partial(torch.autocast, noisy[0].device.type, dtype=torch.bfloat16, enabled=amp)
    if method == "plain":
        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with autocast():
                loss = loss_fn(model(noisy[0]), noisy[1])
            loss.backward()
            opt.step()
        return step
    backend, params, every, weighting = _parse(method)
    meta = MetaReweightedLoss(loss_fn, LR, backend=backend, zero_policy="uniform", params=params,  # always a backward
                              clean_every=every, weighting=weighting)

    def step() -> None:
        for _ in range(every):
            opt.zero_grad(set_to_none=True)
            with autocast():
                result = meta(model, noisy, clean, lr=opt.param_groups[0]["lr"])
            if result.loss is not None:
                result.loss.backward()
                opt.step()
    step.steps = every
    return step


def _parse(method: str) -> tuple[str, list[str] | None, int, str]:
    """``"jvp[head]"`` -> ("jvp", ["head"], 1, "l2rw"): the virtual step moves only the head (meta.params);
    ``"jvp@4"`` -> ("jvp", None, 4, "l2rw"): the clean gradient reused for 4 steps (meta.clean_every);
    ``"jvp:mwn"`` -> ("jvp", None, 1, "mwn"): another weighting (meta.weighting)."""
    method, _, weighting = method.partition(":")
    method, _, every = method.partition("@")
    backend, _, restricted = method.partition("[")
    return (backend, restricted.rstrip("]").split("+") if restricted else None, int(every) if every else 1,
            weighting or "l2rw")


def _time(args, methods, size, batch, device, repeats, warmup, desc):
    model, noisy, clean = _setup(args, size, batch, device)
    steps = {m: _make_step(m, model, noisy, clean, args.amp) for m in methods}
    wall = {m: [] for m in methods}
    cpu = {m: [] for m in methods}
    order = list(methods)
    rng = random.Random(0)
    with progress_bar(total=(warmup + repeats) * len(methods), desc=desc) as bar:
        for r in range(warmup + repeats):
            rng.shuffle(order)
            for m in order:
                synchronize(device)
                t0, c0 = time.perf_counter(), time.process_time()
                steps[m]()
                synchronize(device)
                if r >= warmup:  # per training step (a @k method's call is k steps)
                    wall[m].append((time.perf_counter() - t0) / getattr(steps[m], "steps", 1))
                    cpu[m].append((time.process_time() - c0) / getattr(steps[m], "steps", 1))
                bar.update()
    gpu_mem = {}
    if device.type == "cuda":  # peak allocated during one step, above model, data and optimizer state
        for m in methods:
            synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            steps[m]()
            synchronize(device)
            gpu_mem[m] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return wall, cpu, gpu_mem


def _peak_rss_mb() -> float:
    """Peak RSS of this process. On Linux ``ru_maxrss`` survives fork+exec (a child of the big
    benchmark process would report the parent's peak), so read the ``VmHWM`` of this image instead."""
    try:
        with open("/proc/self/status") as f:
            return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) / 1024
    except (OSError, AttributeError):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB elsewhere


def _rss_worker(args: argparse.Namespace) -> None:
    """Subprocess: build model and data, run ``--method`` (or nothing) twice, print peak RSS in MB."""
    device = resolve_device(args.device)
    model, noisy, clean = _setup(args, args.size, args.batch, device)
    if args.method != "none":
        step = _make_step(args.method, model, noisy, clean, args.amp)
        for _ in range(2):
            step()
    print(json.dumps({"maxrss_mb": _peak_rss_mb()}))


def _cpu_mem(args, methods, size, batch) -> dict[str, float]:
    def run(method: str) -> float:
        cmd = [sys.executable, "-m", "noisyseg.bench", "_rss", "--method", method, "--size", str(size),
               "--batch", str(batch), "--base-width", str(args.base_width), "--depth", str(args.depth),
               "--device", "cpu", "--model", args.model, "--arch", args.arch, "--encoder", args.encoder] \
            + (["--channels-last"] if args.channels_last else []) + (["--amp"] if args.amp else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])["maxrss_mb"]

    base = run("none")
    return {m: run(m) - base for m in methods}


def _compare(args, methods, size, batch, device, repeats, warmup) -> dict:
    wall, cpu, mem = _time(args, methods, size, batch, device, repeats, warmup, f"{size}px x{batch}")
    if device.type == "cpu" and not args.no_memory:
        mem = _cpu_mem(args, methods, size, batch)
    plain_wall, plain_cpu = statistics.median(wall["plain"]), statistics.median(cpu["plain"])
    rows = {}
    for m in methods:
        row = {"wall_s": statistics.median(wall[m]), "cpu_s": statistics.median(cpu[m]), "wall_all_s": wall[m]}
        row["ratio"] = row["wall_s"] / plain_wall
        row["cpu_ratio"] = row["cpu_s"] / plain_cpu
        if m in mem:
            row["peak_mb"] = mem[m]
            row["mem_ratio"] = mem[m] / mem["plain"] if mem.get("plain") else None
        rows[m] = row
    return {"size": size, "batch": batch, "results": rows}


def _table(run: dict) -> str:
    lines = [f"{run['size']}x{run['size']}, batch {run['batch']} noisy + {run['batch']} clean",
             f"{'method':<16} {'wall s':>8} {'img/s':>7} {'x plain':>8} {'cpu s':>8} {'x plain':>8} {'peak MB':>9} {'x plain':>8}"]
    for m, r in run["results"].items():
        mem = f"{r['peak_mb']:>9.0f} {r['mem_ratio'] or float('nan'):>8.2f}" if "peak_mb" in r else f"{'-':>9} {'-':>8}"
        lines.append(f"{m:<16} {r['wall_s']:>8.3f} {run['batch'] / r['wall_s']:>7.1f} {r['ratio']:>8.2f} {r['cpu_s']:>8.3f} {r['cpu_ratio']:>8.2f} {mem}")
    return "\n".join(lines)


def _targets(run: dict) -> dict:
    r = run["results"]
    out = {}
    if "jvp" in r:
        out["jvp_ratio"] = r["jvp"]["ratio"]
        out["jvp_ratio_ok"] = r["jvp"]["ratio"] <= TARGETS["jvp_ratio_max"]
        if r["jvp"].get("mem_ratio") is not None:
            out["jvp_mem_ratio_ok"] = r["jvp"]["mem_ratio"] <= TARGETS["jvp_mem_ratio_max"]
        if "higher" in r:
            out["higher_over_jvp"] = r["higher"]["wall_s"] / r["jvp"]["wall_s"]
            out["higher_over_jvp_ok"] = out["higher_over_jvp"] >= TARGETS["higher_over_jvp_min"]
    return out


def _plot(runs: list[dict], args, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 8))
    for col, (key, fixed, label) in enumerate((("size", "batch", "image size (px)"), ("batch", "size", "batch size"))):
        sel = sorted((r for r in runs if r[fixed] == getattr(args, fixed)), key=lambda r: r[key])
        for m in sel[0]["results"]:
            xs = [r[key] for r in sel]
            axes[0, col].plot(xs, [r["results"][m]["ratio"] for r in sel], "o-", label=m)
            if "peak_mb" in sel[0]["results"][m]:
                axes[1, col].plot(xs, [r["results"][m]["peak_mb"] for r in sel], "o-", label=m)
        axes[0, col].set(xlabel=label, ylabel="step time / plain step", title=f"time ({fixed}={getattr(args, fixed)})")
        axes[1, col].set(xlabel=label, ylabel="peak memory (MB)", title="memory")
        for ax in axes[:, col]:
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def meta_main(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    methods = ["plain"] + (args.backends.split(",") if args.backends else META_BACKENDS.names() + APPROXIMATIONS)
    for m in methods[1:]:
        META_BACKENDS.get(_parse(m)[0])
    warnings.filterwarnings("ignore", message=".*torch.jit.*", category=DeprecationWarning)
    report = {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "config": {k: v for k, v in vars(args).items() if k != "func"}, "targets": TARGETS}
    sizes = [int(v) for v in args.sizes.split(",")] if args.sizes else [args.size]
    torch.manual_seed(0)
    probe = _model(args).train()
    report["model"] = _model_name(args)
    report["fallback_ops"] = unsupported_ops(probe, torch.randn(2, 3, sizes[0], sizes[0]))
    del probe
    print(f"{report['model']}, {device}, {torch.get_num_threads()} threads")
    print("ops without a tangent rule (jvp falls back to forward_ad for this model): "
          + ("; ".join(report["fallback_ops"]) or "none"))
    runs = []
    for size in sizes:  # --sizes: one table per size, one process
        runs.append(_compare(args, methods, size, args.batch, device, args.repeats, args.warmup))
        print(_table(runs[-1]))
        print("targets:", json.dumps(_targets(runs[-1])))
    main = runs[0]
    report["main"], report["main_targets"] = main, _targets(main)
    if len(runs) > 1:
        report["sizes"] = [{"run": r, "targets": _targets(r)} for r in runs]
    if args.scaling:
        runs = [main]
        configs = [(s, args.batch) for s in (64, 128, 256)] + [(args.size, b) for b in (4, 8, 16)]
        for size, batch in dict.fromkeys(configs):
            if (size, batch) != (args.size, args.batch):
                runs.append(_compare(args, methods, size, batch, device, args.scaling_repeats, 1))
                print(_table(runs[-1]))
        report["scaling"] = runs
        _plot(runs, args, args.plot)
        print(f"plot: {args.plot}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"json: {args.json}")
    return report
