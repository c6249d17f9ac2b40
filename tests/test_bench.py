"""The micro-benchmarks (noisyseg.bench): a smoke run of ``bench mc``."""
from __future__ import annotations

import json

from noisyseg import bench


def test_bench_mc_smoke(capsys, tmp_path):
    out = tmp_path / "mc.json"
    bench.main(["mc", "--size", "16", "--samples", "2", "--batch", "1", "--depth", "2", "--base-width", "4",
                "--repeats", "1", "--warmup", "0", "--threads", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    assert set(report["positions"]) == {"bottleneck", "decoder", "head"}
    assert all(rows["loop"]["equal"] for rows in report["positions"].values())
    assert "loop" in capsys.readouterr().out
