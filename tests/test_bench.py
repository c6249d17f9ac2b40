"""The micro-benchmarks (noisyseg.bench): smoke runs of ``bench meta`` (every method name form) and
``bench mc``; timings are never asserted."""
import json

import pytest

from noisyseg import bench


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_method_names_parse_into_backend_parameters_refresh_and_weighting():
    assert bench._parse("jvp") == ("jvp", None, 1, "l2rw")
    assert bench._parse("jvp_ad[head+enc]@4") == ("jvp_ad", ["head", "enc"], 4, "l2rw")
    assert bench._parse("jvp@2:mwn") == ("jvp", None, 2, "mwn")


def test_bench_meta_smoke_with_weighting_variants(tmp_path, capsys):
    out = tmp_path / "meta.json"
    bench.main(["meta", "--size", "16", "--batch", "2", "--depth", "2", "--base-width", "4", "--repeats", "1",
                "--warmup", "0", "--no-memory", "--backends", "jvp,jvp:sign,jvp:mwn", "--json", str(out)])
    report = json.loads(out.read_text())
    assert list(report["main"]["results"]) == ["plain", "jvp", "jvp:sign", "jvp:mwn"]
    assert all(row["ratio"] > 0 for row in report["main"]["results"].values())
    assert "jvp:mwn" in capsys.readouterr().out


def test_bench_meta_rejects_an_unknown_weighting():
    with pytest.raises(Exception, match="weighting"):
        bench.main(["meta", "--size", "16", "--batch", "2", "--depth", "2", "--base-width", "4", "--repeats", "1",
                    "--warmup", "0", "--no-memory", "--backends", "jvp:nope"])


def test_bench_mc_smoke(capsys, tmp_path):
    out = tmp_path / "mc.json"
    bench.main(["mc", "--size", "16", "--samples", "2", "--batch", "1", "--depth", "2", "--base-width", "4",
                "--repeats", "1", "--warmup", "0", "--threads", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    assert set(report["positions"]) == {"bottleneck", "decoder", "head"}
    assert all(rows["loop"]["equal"] for rows in report["positions"].values())
    assert "loop" in capsys.readouterr().out
