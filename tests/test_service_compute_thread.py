"""The service runs all its torch work on one thread, the batcher's (``JobQueue.call``).

Why it matters: each thread that runs a parallel torch op gets its own OpenMP team, and once a
process has more OpenMP threads than CPUs, GNU OpenMP's workers sleep between parallel regions,
which made every forward pass of the served model slower after the first request (README
"Serving speed"). These tests check where the work runs, not how fast: the models are loaded and
adapters are made on the batcher's thread, calls from other threads run between decode steps of
a running batch (both batchers), and a call that fails fails its caller only.
"""

from __future__ import annotations

import threading

import pytest

from hypergen.decoding import Job, SamplingParams
from service.batcher import Batcher
from service.continuous import ContinuousBatcher
from service.engine import Engine
from tests.test_service_batching import GatedDecoder


def _in_thread(fn):
    """Run ``fn`` in a new thread; returns (thread, result box)."""
    box: dict = {}

    def run():
        try:
            box["result"] = fn()
        except Exception as err:  # noqa: BLE001 - checked by the test
            box["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def test_a_call_runs_on_the_worker_between_two_decode_steps():
    decoder = GatedDecoder()
    batcher = ContinuousBatcher(lambda: decoder, max_batch=4, window_s=0.0)
    try:
        [future] = batcher.submit([Job([1], None, SamplingParams(3))])
        decoder.wait_ready(1)  # the first step is waiting for the gate
        caller, box = _in_thread(lambda: batcher.call(threading.current_thread))
        decoder.go()  # step 1 runs; the call runs before step 2
        caller.join(30)
        assert box["result"] is batcher._thread, "the call ran on the worker"
        assert decoder.log == [("join", 1), ("step", 1)] and not future.done()
        decoder.go()
        decoder.go()
        assert future.result(timeout=30).finish_reason == "length"
    finally:
        decoder.gate.release(100)
        batcher.close()


def test_an_idle_worker_runs_calls_and_a_failing_call_fails_its_caller_only():
    decoder = GatedDecoder()
    batcher = ContinuousBatcher(lambda: decoder, max_batch=4, window_s=0.0)
    try:
        assert batcher.call(threading.current_thread) is batcher._thread

        def broken():
            raise ValueError("this call breaks")

        with pytest.raises(ValueError, match="this call breaks"):
            batcher.call(broken)
        assert batcher.call(lambda: 42) == 42, "the worker survives a failing call"
        decoder.gate.release(1)
        [future] = batcher.submit([Job([1], None, SamplingParams(1))])
        assert future.result(timeout=30).finish_reason == "length"
        # from the worker itself a call runs inline (no deadlock)
        assert batcher.call(lambda: batcher.call(lambda: 7)) == 7
    finally:
        batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.call(lambda: 1)


def test_the_window_batcher_runs_calls_between_the_steps_of_its_batch(engine):
    """``Engine.complete(between_steps=...)``: a call made while a fixed batch decodes is run
    before the batch ends, not after it."""
    seen = []

    def run(jobs):
        return engine.complete(jobs, between_steps=lambda: seen.append(batcher.run_calls()))

    batcher = Batcher(run, max_batch=2, window_s=0.0)
    try:
        steps = threading.Semaphore(0)
        prompt = engine.tokenize("The cat")

        def on_token(token: int) -> bool:
            steps.release()
            return True

        [future] = batcher.submit(
            [Job(prompt, None, SamplingParams(40, ignore_eos=True), on_token)]
        )
        assert steps.acquire(timeout=30)  # the batch is decoding
        assert batcher.call(lambda: future.done()) is False, "ran before the batch ended"
        assert len(future.result(timeout=60).token_ids) == 40
        assert len(seen) == 40, "between_steps after the prefill and between every two steps"
    finally:
        batcher.close()


def test_the_service_loads_its_models_and_makes_adapters_on_the_batcher_thread(
    make_app, engine, checkpoint_dir, monkeypatch
):
    threads = {}

    def load(*args, **kwargs):
        threads["load"] = threading.current_thread().name
        return engine

    generate = engine.generator.generate

    def recording(conditions):
        threads["generate"] = threading.current_thread().name
        return generate(conditions)

    monkeypatch.setattr(Engine, "load", load)
    monkeypatch.setattr(engine.generator, "generate", recording)
    for mode, batcher in (("continuous", ContinuousBatcher), ("window", Batcher)):
        threads.clear()
        app = make_app(engine=None, CHECKPOINT=checkpoint_dir, BATCHING=mode)
        answer = app.test_client().post("/v1/adapters", json={"description": f"Sort {mode}."})
        assert answer.status_code == 201, answer.get_json()
        assert threads == {"load": batcher.thread_name, "generate": batcher.thread_name}
        app.extensions["hypergen"].close()
        # the engine outlives its app: it makes adapters in the calling thread again
        engine.make_adapters([f"Count {mode}."])
        assert threads["generate"] == threading.current_thread().name
