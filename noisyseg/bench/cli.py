"""Benchmarks. ``python -m noisyseg.bench meta --help``, ``python -m noisyseg.bench mc --help``.

The command line: :mod:`noisyseg.bench.meta` and :mod:`noisyseg.bench.mc` are the two benchmarks; ``_rss`` is
the internal worker that ``meta`` starts once per method for its CPU peak memory."""
from __future__ import annotations

import argparse

from noisyseg.bench.mc import mc_main
from noisyseg.bench.meta import _rss_worker, meta_main


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=int, default=128, help="image height and width")
    p.add_argument("--batch", type=int, default=8, help="noisy and clean batch size")
    p.add_argument("--base-width", type=int, default=32)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--channels-last", action="store_true", help="model and images in channels_last")
    p.add_argument("--amp", action="store_true", help="forward passes under bfloat16 autocast (as trainer.amp)")
    p.add_argument("--model", default="unet", choices=("unet", "smp"), help="the built-in U-Net, or an smp network")
    p.add_argument("--arch", default="Unet", help="--model smp: the architecture")
    p.add_argument("--encoder", default="resnet34", help="--model smp: the encoder (random initialisation)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m noisyseg.bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="{meta,mc}")
    p = sub.add_parser("meta", help="meta step backends vs the plain step: time and peak memory")
    _common(p)
    p.add_argument("--sizes", default="", help="comma-separated image sizes, one table each (default: --size)")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds (median), after --warmup rounds")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--backends", default="", help="comma-separated meta backends, 'backend[p1+p2]' for a virtual step "
                   "on parameters p1, p2 only, 'backend@k' for the clean gradient reused over k steps (default: all "
                   "registered, plus jvp[head], jvp_ad[head], jvp@2 and jvp@4); 'backend:weighting' for a meta.weighting "
                   "variant, e.g. jvp:sign, jvp:mwn")
    p.add_argument("--scaling", action="store_true", help="also sizes 64/128/256 and batches 4/8/16, plotted")
    p.add_argument("--scaling-repeats", type=int, default=3, help="timed rounds per scaling point")
    p.add_argument("--plot", default="bench_meta_scaling.png", help="PNG for --scaling")
    p.add_argument("--json", default="", help="write the results here")
    p.add_argument("--no-memory", action="store_true", help="skip the CPU peak-RSS subprocesses")
    p.set_defaults(func=meta_main)
    p = sub.add_parser("mc", help="MC-dropout scoring: naive vs loop vs batched, per dropout position")
    p.add_argument("--samples", type=int, default=20, help="MC samples T")
    p.add_argument("--batch", type=int, default=8, help="images scored at once")
    p.add_argument("--size", type=int, default=128, help="image height and width")
    p.add_argument("--base-width", type=int, default=32)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--dropout", type=float, default=0.5, help="dropout probability (CEAL: 0.5)")
    p.add_argument("--positions", default="", help="comma-separated dropout positions (default: all)")
    p.add_argument("--chunk", type=int, default=None, help="mc_predict chunk (default: the whole batch)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (median), after --warmup rounds")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--json", default="", help="write the results here")
    p.set_defaults(func=mc_main)
    w = sub.add_parser("_rss")  # internal (unlisted): one fresh process per method, for peak RSS
    _common(w)
    w.add_argument("--method", required=True)
    w.set_defaults(func=_rss_worker)
    args = parser.parse_args(argv)
    args.func(args)
