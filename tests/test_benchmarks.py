"""The benchmark scripts run end to end on the tiny model (their figures are not asserted: speed is
measured by running them, not by timed tests)."""

from __future__ import annotations

import json

import pytest

from benchmarks import decode_floor


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_decode_floor_reports_every_batch(llama_dir, tmp_path, dtype):
    out = tmp_path / "floor.json"
    args = ["--model", llama_dir, "--threads", "1", "--batch", "1,3", "--steps", "2"]
    args += ["--dtype", dtype]
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
    assert results["dtype"] == dtype
    assert set(results["packed"]) == {"1", "3"}  # the prepacked model, same process


def test_serving_benchmark_talks_to_a_server_process(checkpoint_dir, tmp_path):
    """Parts 2-4 of ``benchmarks/serving.py`` run against ``hypergen serve`` processes."""
    from benchmarks.serving import ServerProcess, _post

    config = {"STORE": str(tmp_path / "store"), "BATCHING": "window", "TORCH_THREADS": 1}
    server = ServerProcess(config, tmp_path / "server", checkpoint_dir)
    try:
        assert server.prefills() == 0
        body = {"adapter_description": "Sort the words.", "prompt": "b a", "max_tokens": 2}
        answer = _post(f"{server.url}/v1/completions", {**body, "ignore_eos": True})
        assert answer["usage"]["completion_tokens"] == 2
        assert server.prefills() == 1
    finally:
        server.stop()
    assert server.process.returncode == 0, server.log.read_text()


def test_poisson_rounds_put_every_server_in_every_position():
    from benchmarks.serving import round_order

    modes = ["continuous", "window", "continuous, JOIN_ROWS 1"]
    orders = [round_order(modes, k) for k in range(3)]
    for position in range(3):
        assert sorted(order[position] for order in orders) == sorted(modes)
    assert round_order(modes, 3) == modes and round_order(modes, 0) == modes
