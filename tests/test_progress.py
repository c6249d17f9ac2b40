"""One progress policy: silent with ``trainer.progress=false``, a bar on a terminal, one line per stage in a log."""
from __future__ import annotations

import io
import re

from hydra import compose, initialize_config_dir
from tqdm import tqdm

from noisyseg.progress import OneLine, progress_bar
from noisyseg.config import CONFIG_DIR
from noisyseg.train import train

# 80 images - 3 x 8 (clean, val, test) = 56 noisy ones: enough for the split-decoding report (50+)
TINY = ("debug=fast", "data.params.count=80", "threads=1")


def config(*overrides: str):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=[*TINY, *overrides])


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_disabled_prints_nothing(capsys):
    with progress_bar(total=3, desc="stage", enabled=False) as bar:
        bar.update(3)
    assert list(progress_bar(range(4), desc="stage", enabled=False)) == [0, 1, 2, 3]
    assert capsys.readouterr().err == ""


def test_a_log_gets_one_line_per_stage(capsys):
    bar = progress_bar(range(5), desc="epoch 0")
    assert isinstance(bar, OneLine)  # capsys' stderr is not a terminal
    for _ in bar:
        bar.set_postfix(loss="0.500")
    with progress_bar(total=10, desc="predict", unit="img") as bar:
        bar.update(4)  # a stage that stops early says so
    assert re.fullmatch(r"epoch 0: 5 it in \d+\.\ds, loss=0\.500\npredict: 4/10 img in \d+\.\ds\n", capsys.readouterr().err)


def test_a_terminal_gets_a_bar(monkeypatch):
    monkeypatch.setattr("sys.stderr", Terminal())
    assert isinstance(progress_bar(range(3), desc="stage"), tqdm)


def test_progress_false_silences_every_stage_of_a_run(tmp_path, capsys):
    train(config("trainer.progress=false"), tmp_path)
    assert capsys.readouterr().err == ""  # the split-decoding bar printed here before


def test_a_redirected_run_logs_one_line_per_stage_and_no_bar_frames(tmp_path, capsys):
    train(config("trainer.progress=true"), tmp_path)
    err = capsys.readouterr().err
    assert "\r" not in err
    stages = [line.split(":")[0] for line in err.splitlines()]
    assert stages == ["decode noisy", "epoch 0", "epoch 1"], err
