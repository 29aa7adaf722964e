"""Distributed meta-training equals single-process training.

Two CPU processes launched by ``accelerate launch`` (torchrun launcher, gloo backend since the
config sets ``cpu: true``) each train on half of every global batch; DDP averages their
gradients. Because the global batch of a step depends only on (seed, step) and the loss is a
per-example mean, the result must equal one process training on the whole batch, up to float
rounding (different padding widths and the all-reduce order): we require max |diff| <= 1e-5 over
all hypernetwork weights after 3 AdamW steps (measured: 3.4e-7, with and without accumulation).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_training import TINY, max_diff, overrides, weights, write_toy_suite

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "training" / "meta_train.py"
TOLERANCE = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A launch takes seconds. A rank that finished training once hung at interpreter exit in gloo's
# teardown (meta_train.py now exits with os._exit); should a launch still hang, it is killed,
# ranks included, and retried once with a fresh port, so the suite tests the recipe.
LAUNCH_TIMEOUT_S = 150
LAUNCH_ATTEMPTS = 2
# a test may wait for the module's fixture launch and its own, each retried once
pytestmark = pytest.mark.timeout(2 * LAUNCH_ATTEMPTS * LAUNCH_TIMEOUT_S + 60)


MARKER = "HYPERGEN_TEST_LAUNCH"


def _kill_marked(marker: str) -> None:
    """SIGKILL every process whose environment carries ``MARKER=marker``."""
    needle = f"{MARKER}={marker}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
        except OSError:  # gone (ProcessLookupError), or not ours to read
            pass


def _launch(args: list[str], processes: int) -> subprocess.CompletedProcess:
    for attempt in range(1, LAUNCH_ATTEMPTS + 1):
        if processes == 1:
            cmd = [sys.executable, str(SCRIPT)]
        else:
            cmd = [
                sys.executable, "-m", "accelerate.commands.launch",
                "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
                str(SCRIPT),
            ]  # fmt: skip
        marker = f"{os.getpid()}-{attempt}-{time.monotonic_ns()}"
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT),
            MARKER: marker,
        }
        # Own session for the launcher; torchrun starts each rank in a session of its own, so a
        # timeout also finds the ranks by the marker in their environment (a stranded rank
        # keeps the CPU busy after the test has failed).
        with subprocess.Popen(
            cmd + args,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        ) as proc:
            try:
                out, err = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                _kill_marked(marker)
                proc.communicate()
                if attempt == LAUNCH_ATTEMPTS:
                    raise
                continue
        assert proc.returncode == 0, err[-3000:]
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, llama_dir):
    root = tmp_path_factory.mktemp("ddp")
    suite, split = write_toy_suite(root)
    toy = {"base_model": llama_dir, "data_dir": str(suite), "split": str(split)}
    _launch(["--config", str(TINY), *overrides(toy, root / "one", steps=3)], processes=1)
    return toy, root


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_two_processes_equal_one(single_process, grad_accum):
    toy, root = single_process
    out = root / f"two-accum{grad_accum}"
    _launch(
        ["--config", str(TINY), *overrides(toy, out, steps=3, grad_accum=grad_accum)], processes=2
    )
    record = json.loads((out / "final" / "hypernet_config.json").read_text())["training"]
    assert record["num_processes"] == 2
    diff = max_diff(weights(out / "final"), weights(root / "one" / "final"))
    assert diff <= TOLERANCE, f"2-process result differs from 1-process by {diff:.3g}"
    # and the logged losses (all-reduced means) agree
    logs = [
        [
            json.loads(line)["loss"]
            for line in (d / "log.jsonl").read_text().splitlines()
            if '"loss"' in line
        ]
        for d in (out, root / "one")
    ]
    assert logs[0] == pytest.approx(logs[1], abs=1e-5)


def test_a_stranded_rank_is_found_by_its_marker(tmp_path):
    """The timeout path: a process in a session of its own (as torchrun starts ranks) dies."""
    marker = f"test-{time.monotonic_ns()}"
    env = {**os.environ, MARKER: marker}
    with subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"], env=env, start_new_session=True
    ) as proc:
        _kill_marked(marker)
        assert proc.wait(timeout=30) == -signal.SIGKILL
