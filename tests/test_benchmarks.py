"""The benchmark scripts run end to end on the tiny model (their figures are not asserted: speed is
measured by running them, not by timed tests)."""

from __future__ import annotations

import json

from benchmarks import decode_floor


def test_decode_floor_reports_every_batch(llama_dir, tmp_path):
    out = tmp_path / "floor.json"
    args = ["--model", llama_dir, "--threads", "1", "--batch", "1,3", "--steps", "2"]
    args += [
        "--repeats",
        "1",
        "--rounds",
        "1",
        "--probe-mb",
        "8",
        "--probe-n",
        "64",
        "--json",
        str(out),
    ]
    assert decode_floor.main(args) == 0
    results = json.loads(out.read_text())
    assert set(results["batches"]) == {"1", "3"}
    for row in results["batches"].values():
        assert all(row[k] > 0 for k in ("model_ms", "matmuls_ms", "bandwidth_floor_ms"))
    assert results["weight_mb"] > 0 and results["gemm_peak_gflop_s"] > 0
    assert set(results["packed"]) == {"1", "3"}  # the prepacked model, same process
