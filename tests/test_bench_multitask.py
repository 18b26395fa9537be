"""The benchmark script runs (tiny settings; no timing is asserted)."""

import json

import pytest

from tests.helpers.scripts import load_script


@pytest.mark.slow
def test_benchmark_script_runs_and_reports_every_variant(tmp_path, capsys):
    module = load_script("benchmarks/bench_multitask.py")
    out = tmp_path / "bench.json"
    assert (
        module.main(
            [
                "--size",
                "32",
                "--batch-size",
                "8",
                "--steps",
                "1",
                "--rounds",
                "2",
                "--warmup-steps",
                "1",
                "--device",
                "cpu",
                "--head-repeats",
                "5",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    results = json.loads(out.read_text())
    assert set(results["variants"]) == {"single-task", "multi-task", "multi-task, per-head loop"}
    assert results["tasks"] == 22 and results["precision"] == "fp32"
    assert all(v["images_per_second"] > 0 for v in results["variants"].values())
    assert "| multi-task |" in capsys.readouterr().out
