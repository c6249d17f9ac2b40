"""Shared fixtures: tiny on-disk datasets in every supported layout, built per test."""
from __future__ import annotations

import multiprocessing.process
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from noisyseg.config import register

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def matplotlib_font_cache():
    """matplotlib's first import on a machine lists the system fonts with ``fc-list`` (a subprocess) and
    caches them; done here, before any test's subprocess guard, so that on a fresh machine the first plotting
    test is not refused for starting one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.font_manager  # noqa: F401


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and on a busy machine idle-spinning OpenMP workers make
    them 10x slower: ``pytestmark = pytest.mark.usefixtures("one_thread")`` in such a test module."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def subprocesses_only_in_slow_tests(request, monkeypatch):
    """A test that starts a subprocess (a CLI run, torchrun, ``mp.spawn``) must be marked ``slow``: the
    default local ``pytest -q`` skips those, CI (``.ci/run``) runs them. DataLoader workers (fork) are fine."""
    if request.node.get_closest_marker("slow"):
        return

    def refuse(*args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} starts a subprocess: mark it @pytest.mark.slow")

    start = multiprocessing.process.BaseProcess.start

    def start_unless_spawned(self):
        if getattr(self, "_start_method", None) == "spawn":
            refuse()
        return start(self)

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", start_unless_spawned)


def write_pair(image_path: Path, mask_path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> np.ndarray:
    """Write a random RGB image and a {0, 255} mask; return the {0, 1} mask."""
    rng = np.random.default_rng(seed)
    width, height = size
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4: height // 4 + 5 + seed % 7, width // 3: width // 3 + 6 + seed % 5] = 1
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(image_path)
    Image.fromarray(mask * 255).save(mask_path)
    return mask


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    for i in range(6):
        write_pair(tmp_path / "images" / f"case{i}.png", tmp_path / "masks" / f"case{i}_mask.png", i)
    return tmp_path


@pytest.fixture
def isic_root(tmp_path: Path) -> Path:
    """ISIC 2017 layout with training, validation and test folders (and superpixel decoys)."""
    for split, folder, ids in (("Training", "Training", range(0, 8)), ("Validation", "Validation", range(8, 10)),
                               ("Test_v2", "Test_v2", range(10, 13))):
        for i in ids:
            sid = f"ISIC_{i:07d}"
            write_pair(tmp_path / f"ISIC-2017_{folder}_Data" / f"{sid}.jpg",
                       tmp_path / f"ISIC-2017_{folder}_Part1_GroundTruth" / f"{sid}_segmentation.png", i)
            if split == "Training":
                Image.new("RGB", (40, 30)).save(tmp_path / f"ISIC-2017_{folder}_Data" / f"{sid}_superpixels.png")
    return tmp_path


@pytest.fixture
def ph2_tree(tmp_path: Path) -> Path:
    """The original PH2 distribution tree (BMP files)."""
    base = tmp_path / "PH2Dataset" / "PH2 Dataset images"
    for i in (2, 3, 4, 6):
        sid = f"IMD{i:03d}"
        write_pair(base / sid / f"{sid}_Dermoscopic_Image" / f"{sid}.bmp", base / sid / f"{sid}_lesion" / f"{sid}_lesion.bmp", i)
    return tmp_path


def shared_or_skip(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent (real data samples live in ../shared/data)")
    return path


def raise_at_epoch(monkeypatch, epoch: int, error: type[BaseException]) -> None:
    """Make ``Trainer.train_epoch`` raise ``error`` when ``epoch`` starts: a kill or Ctrl-C mid-run."""
    from noisyseg.engine import Trainer

    original = Trainer.train_epoch

    def train_epoch(self, e):
        if e == epoch:
            raise error
        return original(self, e)

    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)


def run_cli_in_process(monkeypatch, main, prog: str, *args: str) -> int:
    """``python -m <prog> *args`` run by its ``main`` in this process; returns the exit status (-2: a
    Ctrl-C escaped, which the CLI must turn into 130 and must never stop pytest)."""
    import sys

    from hydra.core.global_hydra import GlobalHydra

    monkeypatch.setattr(sys, "argv", [prog, *args, "hydra/job_logging=none", "hydra/hydra_logging=none"])
    try:
        main()
        return 0
    except SystemExit as exit:
        return exit.code
    except KeyboardInterrupt:
        return -2
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture(autouse=True, scope="session")
def _registered_config():
    """Tests compose ``conf/`` directly, as a notebook would: register its schemas and resolvers once."""
    register()
