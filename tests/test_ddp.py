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
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
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


# A launch takes seconds. A rank that finished training sometimes hung while its trainer was
# freed (gloo's teardown; meta_train.py now keeps it and exits with os._exit). Should a launch
# still hang, it is killed, ranks included (their stacks first), and retried once with a fresh
# port and output folder.
LAUNCH_TIMEOUT_S = 150
LAUNCH_ATTEMPTS = 2
# a test may wait for the module's fixture launch and its own, each retried once
pytestmark = pytest.mark.timeout(2 * LAUNCH_ATTEMPTS * LAUNCH_TIMEOUT_S + 60)


MARKER = "HYPERGEN_TEST_LAUNCH"


def _kill_marked(marker: str, sig: int = signal.SIGKILL) -> int:
    """Send ``sig`` to every process whose environment carries ``MARKER=marker``; returns how many."""
    needle = f"{MARKER}={marker}".encode()
    sent = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), sig)
                sent += 1
        except OSError:  # gone (ProcessLookupError), or not ours to read
            pass
    return sent


def _launch(args: list[str], processes: int, out: Path) -> subprocess.CompletedProcess:
    """Run the recipe writing to ``out``; a launch that hangs is killed with its ranks (their
    Python stacks first, via faulthandler on SIGABRT, into a warning) and retried once afresh."""
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
            "PYTHONFAULTHANDLER": "1",  # SIGABRT prints every thread's Python stack
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
                _kill_marked(marker, signal.SIGABRT)
                time.sleep(2)  # the stacks reach stderr
                _kill_marked(marker)
                _, err = proc.communicate()
                stacks = f"launch hung for {LAUNCH_TIMEOUT_S} s; its stacks:\n{err[-6000:]}"
                if attempt == LAUNCH_ATTEMPTS:
                    raise AssertionError(stacks) from None
                warnings.warn(stacks, stacklevel=2)
                shutil.rmtree(out, ignore_errors=True)  # the retry writes what one launch would
                continue
        assert proc.returncode == 0, err[-3000:]
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, llama_dir):
    root = tmp_path_factory.mktemp("ddp")
    suite, split = write_toy_suite(root)
    toy = {"base_model": llama_dir, "data_dir": str(suite), "split": str(split)}
    _launch(["--config", str(TINY), *overrides(toy, root / "one", steps=3)], 1, root / "one")
    return toy, root


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_two_processes_equal_one(single_process, grad_accum):
    toy, root = single_process
    out = root / f"two-accum{grad_accum}"
    _launch(["--config", str(TINY), *overrides(toy, out, steps=3, grad_accum=grad_accum)], 2, out)
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
    """The timeout path: a process in a session of its own (as torchrun starts ranks) prints its
    stack on SIGABRT and dies."""
    marker = f"test-{time.monotonic_ns()}"
    env = {**os.environ, MARKER: marker, "PYTHONFAULTHANDLER": "1"}
    code = "import time\ntime.sleep(120)\n"
    with subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        start_new_session=True,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        time.sleep(1)  # into the sleep
        _kill_marked(marker, signal.SIGABRT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGABRT
        assert 'File "<string>", line 2' in err  # the stack of the stuck line
    with subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True) as proc:
        # Popen returns once exec has begun, a moment before the kernel shows the new
        # environment in /proc (a CI run read it empty), so look again until it is there.
        deadline = time.monotonic() + 30
        while not _kill_marked(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            proc.kill()
