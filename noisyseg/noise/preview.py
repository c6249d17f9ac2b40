"""``python -m noisyseg.noise preview``: one PNG of every noise kind at several levels, on synthetic
lesions or a PH2-like folder. The only part of :mod:`noisyseg.noise` that reads data: a tool on top of
the noise models and the data layer (which itself uses the noise models), run by ``noisyseg/noise/__main__.py``."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from noisyseg.data.sources import folder, ph2
from noisyseg.data.synthetic import make_lesion
from noisyseg.errors import ConfigError, DataError, NoisysegError
from noisyseg.noise.models import NOISE_MODELS, check_unit, corrupt
from noisyseg.noise.noisy_set import realised_dice


def _load_lesions(root: str | None, count: int, seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, image, mask)`` for a few lesions: synthetic, or spread over a PH2-like folder."""
    if root is None:
        return [(f"synthetic #{i}", *make_lesion(seed, i, 256)) for i in range(count)]
    try:
        source = ph2(root)
    except DataError:  # not PH2-named: any images/ + masks/ folder
        source = folder(root)
    picks = np.linspace(0, len(source.ids) - 1, min(count, len(source.ids))).astype(int)
    return [(source.ids[i], *source.load(source.ids[i])) for i in picks]


def _tile(image: np.ndarray, clean: np.ndarray, noisy: np.ndarray | None, width: int = 192) -> np.ndarray:
    """The image, shrunk to ``width``, with the clean (green) and noisy (red) contours."""
    scale = width / image.shape[1]
    size = (width, max(round(image.shape[0] * scale), 1))
    tile = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    for mask, colour in ((clean, (0, 255, 0)), (noisy, (255, 0, 0))):
        if mask is not None:  # contours from the native mask, drawn at the tile's scale
            contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
            scaled = [np.round((c + 0.5) * scale - 0.5).astype(np.int32) for c in contours]
            cv2.drawContours(tile, scaled, -1, colour, 2)
    return tile


def preview(out: str | Path, levels: Sequence[float] = (0.25, 0.5, 1.0), count: int = 3,
            root: str | None = None, seed: int = 0) -> Path:
    """Write one PNG: rows are lesions, columns each noise kind at each level (clean green, noisy red).

    Args:
        out: PNG path to write.
        levels: Noise levels shown for every kind.
        count: Number of lesions (rows).
        root: A PH2-like folder (``images/`` + ``masks/``); the synthetic generator when None.
        seed: Synthetic dataset seed, also the base noise seed of each row.

    Returns:
        The written path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [check_unit("noise.level", level) for level in levels]
    if count < 1:
        raise ConfigError(f"preview count={count} must be at least 1")
    lesions = _load_lesions(root, count, seed)
    columns = [(kind, level) for kind in NOISE_MODELS.names() for level in levels]
    fig, axes = plt.subplots(len(lesions), len(columns) + 1, squeeze=False,
                             figsize=(1.6 * (len(columns) + 1), 1.6 * len(lesions) + 0.4))
    for row, (name, image, mask) in enumerate(lesions):
        axes[row, 0].imshow(_tile(image, mask, None))
        axes[row, 0].set_ylabel(name, fontsize=8)
        for col, (kind, level) in enumerate(columns, start=1):
            noisy = corrupt(mask, kind, level, seed + row)
            axes[row, col].imshow(_tile(image, mask, noisy))
            axes[row, col].set_xlabel(f"Dice {realised_dice(noisy, mask):.2f}", fontsize=8, labelpad=1)
    for col, title in enumerate(["clean"] + [f"{kind} {level:g}" for kind, level in columns]):
        axes[0, col].set_title(title, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle("Annotation noise: clean contour green, noisy contour red", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m noisyseg.noise preview --out noise_preview.png [--levels ...] [--count N] [--root PATH]``."""
    parser = argparse.ArgumentParser(prog="python -m noisyseg.noise", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("preview", help="write one PNG showing every noise kind at several levels")
    cmd.add_argument("--out", default="noise_preview.png", help="PNG to write")
    cmd.add_argument("--levels", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    cmd.add_argument("--count", type=int, default=3, help="number of lesions (rows)")
    cmd.add_argument("--root", default=None, help="PH2-like folder with images/ and masks/ (default: synthetic)")
    cmd.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        print(preview(args.out, args.levels, args.count, args.root, args.seed))
    except NoisysegError as err:  # bad input: a one-line message, not a traceback
        parser.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    main()
