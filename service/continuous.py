"""Continuous batching: jobs join a running batch at the next decode step and leave it the step
they finish (``BATCHING=continuous``, the default; ``service.batcher.Batcher`` is the other).

The worker holds one ``hypergen.decoding.Decoder`` (``Engine.decoder``): the running rows with
their KV cache, each under its own adapter. Between two decode steps it takes the jobs waiting in
the queue, as many as there are free places (``max_batch`` minus the rows running), prefills them
in one forward pass of their own and merges them into the batch; then it runs one step, which
gives every row its next token (streamed at once through ``Job.on_token``) and lets the finished
rows leave: their futures are resolved right away. A request that arrives while a batch decodes
waits for at most one step, not for the whole batch. An idle worker collects the first jobs for
``window_s`` and, while announced requests are on their way, up to ``max_wait_s`` (see
``service.batcher``), so a burst of clients starts with one prefill. The service's window is 0
for this batcher (``BATCH_WINDOW_MS``): a lone request starts at once, and one that was not yet
announced joins at the next step.

Every guarantee of the window batcher holds: a row that fails on its own (sampling, text, a
stream whose client went away) ends alone; a prefill that raises is rerun in halves until the
failing jobs are alone, and a decode step that raises is retried in halves by the decoder, so
only a row that fails on its own gets the exception; the queue's wait is bounded
(``max_queue_wait_s``), estimated from how long recent rows took.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future

from hypergen.decoding import Decoder, Job
from service.batcher import JobQueue

logger = logging.getLogger(__name__)


class ContinuousBatcher(JobQueue):
    """Jobs join and leave one running batch between decode steps.

    Args:
        decoder: makes an empty ``Decoder`` (``Engine.decoder``); called again whenever the
            batch has emptied, so a decoder never outlives a quiet moment.
        join_rows: while more jobs wait than the batch has free places, newcomers join it this
            many at a time (1: each joins at the next step); where all that wait fit, they join
            at the next step.
        join_steps: decode steps they may be held back, with a free place, for the others.
        max_batch, window_s, max_wait_s, max_queue, max_queue_wait_s, on_batch, on_prefill: as
            ``service.batcher.JobQueue`` (``max_batch``: the most rows decoding together;
            ``on_batch`` is called after every decode step).
    """

    thread_name = "hypergen-continuous-batcher"

    def __init__(
        self, decoder: Callable[[], Decoder], join_rows: int = 4, join_steps: int = 4, **settings
    ):
        super().__init__(**settings)
        if join_rows < 1 or join_steps < 0:
            raise ValueError(
                f"ContinuousBatcher needs join_rows >= 1 and join_steps >= 0, got {join_rows} "
                f"and {join_steps}"
            )
        self.make_decoder = decoder
        self.join_rows, self.join_steps = join_rows, join_steps
        self.row_seconds = 0.0  # exponential average of recent rows' time in the batch

    def estimated_wait(self, ahead: int) -> float:
        """Seconds until a job with ``ahead`` jobs queued before it starts: none while there is
        a free place for it (it joins within ``join_steps`` steps), else a row's time for each
        ``max_batch`` jobs that must start before it (0 before a row has finished)."""
        free = self.max_batch - self.running
        if ahead < free:
            return 0.0
        return ((ahead - free) // self.max_batch + 1) * self.row_seconds

    def _loop(self) -> None:
        decoder: Decoder | None = None
        running: dict[int, tuple[Future, float]] = {}  # row id -> (future, when it joined)
        held = 0  # decode steps that newcomers have waited for others to join with them
        try:
            while not self._stop.is_set():
                if running:
                    free = self.max_batch - len(running)
                    queued = self.waiting
                    if self._join_now(queued, free, held):
                        waiting, held = self._take(free), 0
                    else:  # none can join, or they wait for company
                        self.run_calls()
                        waiting, held = [], held + 1 if min(queued, free) else 0
                else:
                    waiting = self._collect(self.max_batch)
                    decoder = None  # a fresh one for every busy period
                start = time.perf_counter()
                admit = [(job, f) for job, f in waiting if f.set_running_or_notify_cancel()]
                if admit:
                    try:
                        decoder = decoder or self.make_decoder()
                    except Exception as err:
                        logger.exception("could not start a batch")
                        for _, future in admit:
                            future.set_exception(err)
                        continue
                    self._admit(decoder, admit, running)
                    self.running = len(running)
                if not running:
                    continue
                try:
                    finished = decoder.step()
                except Exception as err:  # not a row's fault: fail the batch, go on
                    logger.exception("a decode step failed; failing its %d rows", len(running))
                    for future, _ in running.values():
                        future.set_exception(err)
                    running.clear()
                    self.running = 0
                    continue
                if self.on_batch is not None:
                    self.on_batch(len(running), time.perf_counter() - start)
                self._finish(finished, running)
                self.running = len(running)
        finally:
            for future, _ in running.values():
                future.set_exception(RuntimeError("the service is shutting down"))
            self.running = 0

    def _join_now(self, queued: int, free: int, held: int) -> bool:
        """Whether the jobs that could join the running batch now (as many of the ``queued`` as
        it has ``free`` places) do so before its next step, or are held back for others.

        Held back only while more wait than fit: then the batch runs full, places open one by
        one, and each join is a prefill that stalls every running row, so newcomers gather
        (``join_rows`` at a time, or after ``join_steps`` steps). Where all that wait fit, none
        gains by waiting: on a server below capacity gathering bought no tokens/s and cost
        time to the first token (README "Serving speed").
        """
        ready = min(queued, free)
        return ready > 0 and (queued <= free or ready >= self.join_rows or held >= self.join_steps)

    def _admit(
        self,
        decoder: Decoder,
        jobs: list[tuple[Job, Future]],
        running: dict[int, tuple[Future, float]],
    ) -> None:
        """Prefill ``jobs`` into the batch; if that raises, each half on its own (down to single
        jobs), so only the jobs that fail alone get the exception."""
        try:
            ids = decoder.add([job for job, _ in jobs])
        except Exception as err:  # one bad job must not keep the others out
            if len(jobs) == 1:
                logger.exception("a job failed")
                jobs[0][1].set_exception(err)
                return
            logger.warning(
                "prefill of %d jobs failed (%s: %s); rerunning it in halves",
                len(jobs),
                type(err).__name__,
                err,
            )
            half = len(jobs) // 2
            self._admit(decoder, jobs[:half], running)
            self._admit(decoder, jobs[half:], running)
            return
        now = time.monotonic()
        for row, (_, future) in zip(ids, jobs):
            running[row] = (future, now)
        if self.on_prefill is not None:
            self.on_prefill(len(jobs))

    def _finish(self, finished, running: dict[int, tuple[Future, float]]) -> None:
        """Resolve the futures of rows that left the batch."""
        now = time.monotonic()
        for row, completion in finished:
            future, joined = running.pop(row)
            seconds = now - joined
            self.row_seconds = (
                seconds if self.row_seconds == 0 else 0.8 * self.row_seconds + 0.2 * seconds
            )
            if completion.error is not None:
                future.set_exception(completion.error)
            else:
                future.set_result(completion)
