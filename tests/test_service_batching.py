"""Continuous batching (issue 10, item 12): jobs join a running batch between decode steps and
leave it the step they finish, each row under its own adapter, and every row gets what it gets
alone (greedy tokens exactly, log-probabilities to fp32 rounding).

On the tiny test model: ``hypergen.decoding.Decoder`` directly (rows joining mid-decode, leaving
early, a step failing for one row), then ``service.continuous.ContinuousBatcher`` with the real
engine (a request arriving mid-decode joins and finishes first; cancellation frees the place;
a failing prefill fails alone)."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import pytest
import torch

from hypergen.decoding import Completion, Job, SamplingParams, model_forward, new_cache
from hypergen.models import load_base_model
from service import create_app
from service.batched import RowAdapters
from service.batched_lora import BatchedLora
from service.batcher import Batcher
from service.continuous import ContinuousBatcher
from tests.conftest import make_bottleneck_generator, make_generator


def _alone(engine, job: Job):
    return engine.complete([Job(job.prompt_ids, job.adapter, job.params)])[0]


def _assert_same(got, alone) -> None:
    assert got.token_ids == alone.token_ids
    assert got.text == alone.text and got.finish_reason == alone.finish_reason
    assert got.error is None
    if alone.logprobs is not None:
        for mine, theirs in zip(got.logprobs, alone.logprobs, strict=True):
            assert mine.logprob == pytest.approx(theirs.logprob, abs=1e-4)
            assert [t for t, _ in mine.top] == [t for t, _ in theirs.top]
            assert [lp for _, lp in mine.top] == pytest.approx(
                [lp for _, lp in theirs.top], abs=1e-4
            )


@pytest.fixture(scope="module")
def adapters(engine, llama, llama_dir, conditioner):
    """Two LoRAs of the engine's generator, one of another (rank 2, other modules) and a
    bottleneck adapter (Houlsby placement)."""
    made = engine.make_adapters(["Translate English to French.", "Classify sentiment."])
    other = make_generator(llama[0], llama_dir, conditioner, ["v_proj", "down_proj"], rank=2)
    blocks = make_bottleneck_generator(llama[0], llama_dir, conditioner, placement="houlsby")
    return [*made, other.generate(["x"]), blocks.generate(["y"])]


def test_rows_joining_mid_decode_get_what_they_get_alone(engine, adapters):
    long_prompt = engine.tokenize("Translate English to French. The cat sits on the mat and")
    first = Job(engine.tokenize("The cat"), adapters[0], SamplingParams(12, ignore_eos=True))
    decoder = engine.decoder()
    [a] = decoder.add([first])
    done = {}
    for _ in range(4):
        done.update(decoder.step())
    assert not done and len(decoder) == 1
    joining = [
        Job(long_prompt, adapters[1], SamplingParams(6, ignore_eos=True, logprobs=3)),  # wider
        Job(engine.tokenize("Hi"), None, SamplingParams(5, ignore_eos=True)),  # narrower
        Job(engine.tokenize("What is 2 plus"), adapters[2], SamplingParams(7)),
        Job(engine.tokenize("I loved it"), adapters[3], SamplingParams(6, ignore_eos=True)),
    ]
    ids = decoder.add(joining)
    assert len(decoder) == 5
    # the merged cache is as wide as its longest row: the first row's 2 + 4 tokens are shorter
    # than the joining prompt, so the first row is padded on the left, not the newcomers
    assert decoder.mask.shape[1] == len(long_prompt)
    assert decoder.mask.sum(1).tolist() == [
        len(first.prompt_ids) + 4,
        *(len(j.prompt_ids) for j in joining),
    ]
    done.update(decoder.step())
    late = Job(engine.tokenize("I loved it. It was"), adapters[0], SamplingParams(4, logprobs=0))
    [z] = decoder.add([late])
    while len(decoder):
        done.update(decoder.step())
    for row, job in zip([a, *ids, z], [first, *joining, late]):
        _assert_same(done[row], _alone(engine, job))


def test_finished_rows_leave_at_once_and_the_cache_shrinks(engine, adapters):
    decoder = engine.decoder()
    short = Job(engine.tokenize("Hello there friend"), adapters[0], SamplingParams(2))
    long = Job(engine.tokenize("Hi"), adapters[1], SamplingParams(9, ignore_eos=True))
    stopping = Job(engine.tokenize("The cat sits"), None, SamplingParams(8, ignore_eos=True))
    stop = _alone(engine, stopping).text[2:4]
    stopping.params = SamplingParams(8, ignore_eos=True, stop=(stop,))
    s, g, st = decoder.add([short, long, stopping])
    done = {}
    sizes = []
    while len(decoder):
        done.update(decoder.step())
        sizes.append(len(decoder))
    assert done[s].completion_tokens == 2 and sizes[1] < 3, "left the step it finished"
    assert done[st].finish_reason == "stop" and sizes == sorted(sizes, reverse=True)
    assert sizes[-1] == 0 and decoder.cache is None
    # the long row runs on; a newcomer's merge drops the columns only the leavers needed
    decoder = engine.decoder()
    [g] = decoder.add([long])
    [s] = decoder.add([short])  # wider prompt: the long row is padded on the left
    assert decoder.mask.shape[1] == len(short.prompt_ids)
    done = {}
    while len(decoder) == 2:
        done.update(decoder.step())
    steps = done[s].completion_tokens  # the long row has fed as many tokens
    assert decoder.mask.shape[1] == len(short.prompt_ids) + steps
    decoder.add([Job(engine.tokenize("Hi"), None, SamplingParams(1))])
    assert decoder.mask.shape[1] == len(long.prompt_ids) + steps, "the leaver's columns went"
    while len(decoder):
        done.update(decoder.step())
    _assert_same(done[g], _alone(engine, long))


def test_a_decode_step_failing_for_one_row_fails_that_row_only(engine, adapters):
    """The step's forward pass raises whenever row ``bad`` is in it (after its prefill): the
    decoder retries it in halves, the bad row ends with the error, the others decode on."""
    decoder = engine.decoder()
    jobs = [
        Job(engine.tokenize(p), adapters[k % 2], SamplingParams(5, ignore_eos=True))
        for k, p in enumerate(["The cat", "Hello", "What is 2", "I loved", "Q: What day"])
    ]
    forward = decoder.forward
    bad = 3

    def failing(rows, input_ids, *args):
        if bad in rows.tolist() and input_ids.shape[1] == 1:  # a decode step, not the prefill
            raise RuntimeError("this row's decode step fails")
        return forward(rows, input_ids, *args)

    decoder.forward = failing
    assert max(len(job.prompt_ids) for job in jobs) > 1
    ids = decoder.add(jobs)
    done = {}
    while len(decoder):
        done.update(decoder.step())
    for row, job in zip(ids, jobs):
        if row == bad:
            assert done[row].finish_reason == "error"
            assert "decode step fails" in str(done[row].error)
        else:
            _assert_same(done[row], _alone(engine, job))


def _started(event_after: int):
    """An ``on_token`` that sets the returned event after ``event_after`` tokens."""
    seen, event = [], threading.Event()

    def on_token(token: int) -> bool:
        seen.append(token)
        if len(seen) >= event_after:
            event.set()
        return True

    return on_token, event


def test_a_request_arriving_mid_decode_joins_and_leaves_first(engine, adapters):
    long = Job(engine.tokenize("The cat"), adapters[0], SamplingParams(120, ignore_eos=True))
    short = Job(engine.tokenize("What is 2 plus 3?"), adapters[1], SamplingParams(3))
    # before the worker runs: the model's adapter hooks are not for two threads at once
    expected = [_alone(engine, long), _alone(engine, short)]
    prefills = []
    batcher = ContinuousBatcher(engine.decoder, max_batch=4, on_prefill=prefills.append)
    try:
        on_token, going = _started(3)
        [running] = batcher.submit([Job(long.prompt_ids, long.adapter, long.params, on_token)])
        assert going.wait(30)
        [joined] = batcher.submit([short])
        result = joined.result(timeout=30)
        assert not running.done(), "the newcomer did not wait for the running batch"
        assert prefills == [1, 1]
        _assert_same(result, expected[1])
        _assert_same(running.result(timeout=60), expected[0])
        assert batcher.running == 0
    finally:
        batcher.close()


def test_cancelling_a_stream_frees_its_place(engine):
    """With one place, a streamed row whose client went away leaves at its next token and the
    queued job starts right away."""
    batcher = ContinuousBatcher(engine.decoder, max_batch=1)
    try:
        gone = threading.Event()
        tokens = []

        def on_token(token: int) -> bool:
            tokens.append(token)
            return not gone.is_set()

        stream = Job(engine.tokenize("The cat"), None, SamplingParams(200, ignore_eos=True))
        stream.on_token = on_token
        [streamed] = batcher.submit([stream])
        deadline = time.monotonic() + 30
        while len(tokens) < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        [queued] = batcher.submit([Job(engine.tokenize("Hi"), None, SamplingParams(2))])
        assert not queued.running(), "one place: the second job waits"
        gone.set()  # the client disconnects
        assert queued.result(timeout=30).completion_tokens <= 2
        cancelled = streamed.result(timeout=30)
        assert cancelled.finish_reason == "cancelled" and cancelled.completion_tokens < 200
    finally:
        batcher.close()


def test_a_failing_prefill_fails_alone_and_the_batch_runs_on(engine):
    """Jobs joining together whose prefill raises (one prompt holds a token id the model does not
    have) are rerun in halves: only that job gets the exception; the running row goes on."""
    jobs = [Job(engine.tokenize(t), None, SamplingParams(3)) for t in ("Hi", "Hello", "Q:")]
    expected = [_alone(engine, job) for job in jobs]
    jobs.insert(1, Job([len(engine.tokenizer) + 5], None, SamplingParams(3)))
    expected.insert(1, None)
    prefills = []
    batcher = ContinuousBatcher(engine.decoder, max_batch=8, on_prefill=prefills.append)
    try:
        on_token, going = _started(2)
        long = Job(engine.tokenize("The cat"), None, SamplingParams(40, ignore_eos=True), on_token)
        [running] = batcher.submit([long])
        assert going.wait(30)
        futures = batcher.submit(jobs)
        for k, future in enumerate(futures):
            if k == 1:
                with pytest.raises(IndexError):
                    future.result(timeout=30)
            else:
                _assert_same(future.result(timeout=30), expected[k])
        assert running.result(timeout=30).completion_tokens == 40
        # prefills that succeeded: the long row; of the four (failed), [Hi, bad] failed again,
        # then Hi alone and [Hello, Q:]
        assert sorted(prefills) == [1, 1, 2]
    finally:
        batcher.close()


def test_estimated_wait_counts_free_places_then_rows():
    batcher = ContinuousBatcher(lambda: None, max_batch=4)
    batcher.row_seconds = 2.0
    batcher.running = 1
    assert batcher.estimated_wait(0) == 0.0 and batcher.estimated_wait(2) == 0.0  # free places
    assert batcher.estimated_wait(3) == pytest.approx(2.0)  # behind the 3 that fill the batch
    assert batcher.estimated_wait(7) == pytest.approx(4.0)


def test_an_idle_continuous_batcher_waits_only_for_announced_requests(make_app):
    """A lone request on an idle server starts at once with continuous batching (one arriving
    later joins at the next step: waiting 10 ms bought nothing and cost every lone request 10
    ms); the window batcher keeps its 10 ms, since a late request waits for the whole batch; an
    explicit BATCH_WINDOW_MS wins. Announced requests are still waited for."""
    assert make_app().extensions["hypergen"].batcher.window_s == 0
    assert make_app(BATCHING="window").extensions["hypergen"].batcher.window_s == 0.01
    assert make_app(BATCH_WINDOW_MS=25).extensions["hypergen"].batcher.window_s == 0.025
    with pytest.raises(ValueError, match="BATCH_WINDOW_MS must be a number >= 0"):
        make_app(BATCH_WINDOW_MS=-1)

    decoder = GatedDecoder()
    batcher = ContinuousBatcher(lambda: decoder, max_batch=4, window_s=0.0, max_wait_s=5.0)
    with _stopped_after(batcher, decoder):
        batcher.announce()  # a request is preparing its job
        first = batcher.submit([Job([1], None, SamplingParams(1))])
        time.sleep(0.2)
        assert decoder.log == [], "an announced request holds the first prefill"
        second = batcher.submit([Job([1], None, SamplingParams(1))], announced=True)
        decoder.wait_ready(1)
        assert decoder.log == [("join", 2)]
        decoder.go()
        third = batcher.submit([Job([1], None, SamplingParams(1))])  # nobody announced
        decoder.wait_ready(2)
        assert decoder.log[-1] == ("join", 1)
        decoder.go()
        for future in [*first, *second, *third]:
            assert future.result(timeout=30).finish_reason == "length"


def test_batching_is_a_setting(make_app, engine, monkeypatch):
    assert isinstance(make_app().extensions["hypergen"].batcher, ContinuousBatcher)
    assert isinstance(make_app(BATCHING="window").extensions["hypergen"].batcher, Batcher)
    with pytest.raises(ValueError, match="BATCHING must be one of continuous, window"):
        make_app(BATCHING="static")
    monkeypatch.setenv("HYPERGEN_BATCHING", "window")
    app = create_app(engine=engine)
    try:
        assert app.config["BATCHING"] == "window"
    finally:
        app.extensions["hypergen"].close()


def test_completions_over_both_batchers_agree(make_app):
    body = {"model": "base", "prompt": ["The cat", "Hello there"], "max_tokens": 6, "n": 2}
    answers = [
        make_app(BATCHING=mode).test_client().post("/v1/completions", json=body).json
        for mode in ("continuous", "window")
    ]
    assert answers[0]["choices"] == answers[1]["choices"]
    assert answers[0]["usage"] == answers[1]["usage"]


@torch.inference_mode()
def test_decode_is_one_add_and_steps(engine, adapters):
    """``Engine.complete`` (the window batcher's) and a decoder fed jobs one by one agree."""
    jobs = [
        Job(engine.tokenize(p), a, SamplingParams(6))
        for p, a in zip(["The cat", "What is", "Hello"], [adapters[0], None, adapters[2]])
    ]
    together = engine.complete(jobs)
    decoder = engine.decoder()
    ids, done = [], {}
    for job in jobs:
        ids += decoder.add([job])
        done.update(decoder.step())
    while len(decoder):
        done.update(decoder.step())
    for row, got in zip(ids, together):
        _assert_same(done[row], got)


def test_a_forward_returns_each_rows_last_logits_in_fp32(llama_dir):
    """``model_forward`` keeps only the last position's logits (a prompt's as a gathered copy,
    a decode step's as the last slice): they equal the full forward's, in fp32, for a bf16 model
    too."""
    for dtype in (torch.float32, torch.bfloat16):
        model, _ = load_base_model(llama_dir, dtype=dtype)
        ids = torch.randint(3, model.config.vocab_size, (3, 6))
        mask = torch.ones_like(ids)
        mask[0, :2] = 0  # a left-padded row
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        with torch.inference_mode():
            full = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
            last = model_forward(model)(torch.arange(3), ids, mask, positions, new_cache(model))
        assert last.dtype == torch.float32
        assert torch.equal(last, full[:, -1].float())


def test_row_adapters_follow_the_rows(adapters):
    """The factors of a batch after rows left and joined equal those stacked from scratch."""
    rows = RowAdapters()
    jobs = [Job([1], a) for a in (adapters[0], None, adapters[2], adapters[1], None)]
    rows.join([0, 1], jobs[:2])
    running = rows.batch(torch.tensor([0, 1]))
    assert rows.batch(torch.tensor([0, 1])) is running, "a repeated batch is reused"
    rows.join([2, 3], jobs[2:4])
    rows.batch(torch.tensor([2, 3]))  # the newcomers' prefill
    rows.leave([0])
    merged = rows.batch(torch.tensor([1, 2, 3]))  # a running row and the newcomers
    expected = BatchedLora.stack([None, adapters[2], adapters[1]])
    assert sorted(merged.module_names) == sorted(expected.module_names)
    for name in expected.module_names:
        torch.testing.assert_close(merged.At[name], expected.At[name], rtol=0, atol=0)
        torch.testing.assert_close(merged.Bt[name], expected.Bt[name], rtol=0, atol=0)
    left = rows.batch(torch.tensor([1, 3]))
    for name in expected.module_names:
        torch.testing.assert_close(left.At[name], expected.At[name][[0, 2]], rtol=0, atol=0)
    rows.join([4], jobs[4:])
    assert rows.batch(torch.tensor([4])) is None, "rows without adapters: the bare model"
    assert BatchedLora.cat([(None, 2), (None, 1)]) is None


def test_concurrent_new_adapters_are_made_in_one_pass(engine, monkeypatch):
    """Calls to ``make_adapters`` that queue while the generator runs are made together by the
    next one (requests with new descriptions arriving at once); each gets its own adapters, and a
    call whose pass fails is rerun alone, so it fails alone."""
    descriptions = [f"Task {k}: answer about topic {k}." for k in range(6)]
    alone = [engine.make_adapters([d])[0] for d in descriptions]
    passes, running, release = [], threading.Event(), threading.Event()
    generate = engine.generator.generate

    def slow(conditions):
        passes.append(sorted(conditions))
        running.set()
        assert release.wait(30)
        if "BAD" in conditions:
            raise RuntimeError("this condition breaks the generator")
        return generate(conditions)

    monkeypatch.setattr(engine.generator, "generate", slow)
    made: list = [None] * 6

    def make(k):
        try:
            made[k] = engine.make_adapters(
                ["BAD"] if k == 5 else [descriptions[k]], "float32" if k % 2 else "bfloat16"
            )
        except RuntimeError as err:
            made[k] = err

    first = threading.Thread(target=make, args=(0,))
    first.start()
    assert running.wait(30)
    others = [threading.Thread(target=make, args=(k,)) for k in range(1, 6)]
    for t in others:
        t.start()
    deadline = time.monotonic() + 30
    while len(engine._orders) < 5 and time.monotonic() < deadline:
        time.sleep(0.001)
    release.set()
    for t in [first, *others]:
        t.join(30)
    queued = sorted([*descriptions[1:5], "BAD"])
    assert passes[:2] == [descriptions[:1], queued], "the five queued calls: one pass"
    assert sorted(passes[2:]) == sorted([[c] for c in queued]), "it failed: one pass each"
    assert isinstance(made[5], RuntimeError)
    for k, [lora] in enumerate(made[:5]):
        dtype = torch.float32 if k % 2 else torch.bfloat16
        for name in lora.A:
            expected = alone[k].A[name].to(dtype).float()
            torch.testing.assert_close(lora.A[name], expected, rtol=1e-2, atol=1e-5)
            assert torch.equal(lora.A[name], lora.A[name].to(dtype).float()), "rounded to dtype"


@contextmanager
def _stopped_after(batcher, decoder: GatedDecoder):
    """The test's body, then the batcher closed: its worker stops after the step it is in (the
    gate opened for good), and rows still decoding fail."""
    try:
        yield
    finally:
        batcher.close(timeout=0)
        decoder.gate.release(1000)
        batcher._thread.join(30)


class GatedDecoder:
    """A stand-in for ``Decoder`` whose steps each wait for the test (``go``): rows finish after
    their ``max_tokens`` steps. ``log`` records joins and steps in order."""

    def __init__(self):
        self.rows: dict[int, int] = {}
        self.log: list[tuple[str, int]] = []
        self.gate = threading.Semaphore(0)
        self.ready = 0  # steps started (waiting for the gate or done)
        self.next_id = 0

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, jobs):
        ids = list(range(self.next_id, self.next_id + len(jobs)))
        self.next_id += len(jobs)
        self.rows.update({row: job.params.max_tokens for row, job in zip(ids, jobs)})
        self.log.append(("join", len(jobs)))
        return ids

    def step(self):
        self.ready += 1
        assert self.gate.acquire(timeout=30), "the test never let the step run"
        self.log.append(("step", len(self.rows)))
        for row in self.rows:
            self.rows[row] -= 1
        done = [row for row, left in self.rows.items() if left == 0]
        for row in done:
            del self.rows[row]
        return [(row, Completion("", [], "length", 1)) for row in done]

    def wait_ready(self, count: int) -> None:
        deadline = time.monotonic() + 30
        while self.ready < count and time.monotonic() < deadline:
            time.sleep(0.001)
        assert self.ready >= count

    def go(self) -> None:
        """Let one step run, and wait until the worker has let in whoever joins before the next
        one (or has emptied)."""
        ready = self.ready
        self.gate.release()
        deadline = time.monotonic() + 30
        while self.ready == ready and self.rows and time.monotonic() < deadline:
            time.sleep(0.001)


def test_jobs_join_at_the_next_step_up_to_the_free_places_and_close_fails_the_rest():
    decoder = GatedDecoder()
    batcher = ContinuousBatcher(lambda: decoder, max_batch=4, window_s=0.0, join_rows=1)
    with _stopped_after(batcher, decoder):
        futures = batcher.submit([Job([1], None, SamplingParams(100)) for _ in range(2)])
        decoder.wait_ready(1)  # two rows decoding, their first step waiting
        futures += batcher.submit([Job([1], None, SamplingParams(k)) for k in (2, 100, 100)])
        decoder.go()
        assert decoder.log == [("join", 2), ("step", 2), ("join", 2)], "two free places"
        assert batcher.waiting == 1 and batcher.running == 4
        decoder.go()
        decoder.go()  # the 2-token row leaves: the waiting job takes its place at once
        assert decoder.log[-2:] == [("step", 4), ("join", 1)] and len(decoder) == 4
        assert futures[2].result(timeout=30).finish_reason == "length"
    for future in [*futures[:2], *futures[3:]]:  # rows still decoding fail; none hangs
        with pytest.raises(RuntimeError, match="shutting down"):
            future.result(timeout=30)


def test_newcomers_that_all_fit_join_at_the_next_step_however_full_the_batch():
    """Where every waiting job has a free place, none gains by waiting: one newcomer beside 7
    rows of 8 joins at the next step (``join_rows`` 4 notwithstanding)."""
    decoder = GatedDecoder()
    batcher = ContinuousBatcher(lambda: decoder, max_batch=8, join_rows=4, join_steps=100)
    with _stopped_after(batcher, decoder):
        batcher.submit([Job([1], None, SamplingParams(100)) for _ in range(7)])
        decoder.wait_ready(1)
        batcher.submit([Job([1], None, SamplingParams(100))])
        decoder.go()
        assert decoder.log == [("join", 7), ("step", 7), ("join", 1)]


def _backlog(join_steps: int, steps: int, second: int = 3) -> list[tuple[str, int]]:
    """The decoder's log when three newcomers queue beside a full batch (``max_batch`` 4,
    ``join_rows`` 2) whose rows finish after 2, ``second``, 100 and 100 steps, and ``steps``
    steps are let through."""
    decoder = GatedDecoder()
    batcher = ContinuousBatcher(lambda: decoder, max_batch=4, join_rows=2, join_steps=join_steps)
    with _stopped_after(batcher, decoder):
        batcher.submit([Job([1], None, SamplingParams(k)) for k in (2, second, 100, 100)])
        decoder.wait_ready(1)
        batcher.submit([Job([1], None, SamplingParams(100)) for _ in range(3)])
        for _ in range(steps):
            decoder.go()
        return list(decoder.log)


def test_a_backlog_joins_join_rows_at_a_time():
    """While more wait than fit, each join is a prefill that stalls a full batch, so newcomers
    gather: the place freed after step 2 is held until a second one frees after step 3, and two
    newcomers join together."""
    log = _backlog(join_steps=100, steps=4)
    assert log == [("join", 4), ("step", 4), ("step", 4), ("step", 3), ("join", 2), ("step", 4)]


def test_a_held_newcomer_waits_at_most_join_steps():
    """... or once it has waited ``join_steps`` steps with a free place: with 1, the place freed
    after step 2 is taken after step 3 (no second place frees before step 50); with 0 at once."""
    log = _backlog(join_steps=1, steps=3, second=50)
    assert log == [("join", 4), ("step", 4), ("step", 4), ("step", 3), ("join", 1)]
    log = _backlog(join_steps=0, steps=3)
    assert log == [("join", 4), ("step", 4), ("step", 4), ("join", 1), ("step", 4), ("join", 1)]


def test_join_settings_are_checked(make_app):
    batcher = make_app(JOIN_ROWS=2, JOIN_STEPS=0).extensions["hypergen"].batcher
    assert (batcher.join_rows, batcher.join_steps) == (2, 0)
    with pytest.raises(ValueError, match="JOIN_ROWS must be a positive integer"):
        make_app(JOIN_ROWS=0)
    with pytest.raises(ValueError, match="JOIN_STEPS must be an integer >= 0"):
        make_app(JOIN_STEPS=-1)


def test_calls_during_a_batch_run_between_steps_and_are_no_waiting_jobs():
    """A call made while a batch decodes runs between two steps; it neither counts as a waiting
    job (which would make two newcomers that fit look like a backlog, and hold them back) nor
    leaves a wake-up in the queue."""
    decoder = GatedDecoder()
    batcher = ContinuousBatcher(lambda: decoder, max_batch=8, join_rows=4, join_steps=100)
    with _stopped_after(batcher, decoder):
        batcher.submit([Job([1], None, SamplingParams(100)) for _ in range(6)])
        decoder.wait_ready(1)
        result = []
        caller = threading.Thread(target=lambda: result.append(batcher.call(lambda: "ran")))
        caller.start()
        time.sleep(0.05)
        batcher.submit([Job([1], None, SamplingParams(100)) for _ in range(2)])
        assert batcher.waiting == 2 and batcher._queue.qsize() == 2
        decoder.go()
        caller.join(30)
        assert result == ["ran"]
        assert decoder.log == [("join", 6), ("step", 6), ("join", 2)], "2 waiting, 2 free places"
