"""Dynamic batching: concurrent requests, each with its own adapter, share one forward pass.

``JobQueue`` is what both batchers share: request threads ``submit`` jobs (all of a request's, or
none when the wait would be too long) and wait on futures; one worker thread runs them. This
module's ``Batcher`` runs fixed batches (``BATCHING=window``); ``service.continuous`` lets jobs
join and leave a running batch between decode steps (``BATCHING=continuous``, the default).

``Batcher``: the worker takes the first waiting job, keeps collecting for a short window (or
until ``max_batch`` jobs), runs them as one batch (``Engine.complete``) and resolves the futures.
Jobs that arrive while a batch runs wait for the next one, so under load batches fill up by
themselves and an idle server adds at most the window to a request's latency.

A request thread may ``announce`` its jobs when it starts preparing them (parsing, making an
adapter, tokenizing; all under the GIL, so a burst of requests reaches ``submit`` one after
another): while announced jobs are on their way, the worker keeps collecting past the window, up
to ``max_wait_s``, so a burst of concurrent clients becomes one batch rather than two.

Waiting is bounded (``max_queue_wait_s``): ``submit`` refuses jobs that would wait longer than
that, estimated from how long recent batches took (an exponential average), so a client is told
at once to come back later instead of timing out; a request thread that still finds its jobs not
started by then cancels them (``service.api``).

One bad request never fails its batch: a row that fails on its own comes back as a completion
with an ``error`` (only its future fails), and when a whole batch raises, the worker reruns it in
halves until the failing jobs are alone, so every other job still gets its answer.

The worker is the process's only torch thread: other threads hand it their torch work with
``call`` (the service loads its models and makes adapters that way), and it runs that work
between decode steps. Why one thread: every thread that runs a parallel torch op gets its own GNU
OpenMP team, and once the process has more OpenMP threads than CPUs, libgomp's workers stop
spinning between parallel regions and sleep, so every op then waits for them to wake (measured on
2 cores: a 15-token forward 77 ms alone, 110-130 ms once one other thread had run one forward;
README "Serving speed").
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TypeVar

from hypergen.decoding import Completion, Job

logger = logging.getLogger(__name__)
T = TypeVar("T")


# Put in the job queue by ``call`` to wake an idle worker; never a job.
_WAKE = (None, None)


class Overloaded(RuntimeError):
    """The queue is full or too slow; the caller should retry later (HTTP 503).

    Args:
        message: why.
        retry_after: seconds after which a retry may succeed (an estimate), or None.
    """

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class JobQueue:
    """Jobs submitted by many threads, run by one worker thread (``_loop``, in subclasses).

    Args:
        max_batch: the most jobs running together.
        window_s: how long the worker, idle, waits for more jobs after the first one.
        max_wait_s: how long it may keep waiting for announced jobs.
        max_queue: the most jobs waiting; ``submit`` raises ``Overloaded`` beyond it.
        max_queue_wait_s: ``submit`` raises ``Overloaded`` for jobs estimated to wait longer
            than this before they start (None: no limit).
        on_batch: called with (rows, seconds) after each batch (window) or decode step
            (continuous), for metrics.
        on_prefill: called with the number of jobs of each prefill (a batch's start, or jobs
            joining a running batch), for metrics.
    """

    thread_name = "hypergen-batcher"

    def __init__(
        self,
        max_batch: int = 16,
        window_s: float = 0.01,
        max_wait_s: float = 0.1,
        max_queue: int = 256,
        max_queue_wait_s: float | None = None,
        on_batch: Callable[[int, float], None] | None = None,
        on_prefill: Callable[[int], None] | None = None,
    ):
        if max_batch < 1:
            raise ValueError(f"{type(self).__name__}.max_batch must be >= 1, got {max_batch}")
        if window_s < 0:
            raise ValueError(f"{type(self).__name__}.window_s must be >= 0, got {window_s}")
        self.max_batch, self.on_batch, self.on_prefill = max_batch, on_batch, on_prefill
        self.window_s, self.max_wait_s = window_s, max(window_s, max_wait_s)
        self.max_queue_wait_s = max_queue_wait_s
        self.running = 0  # jobs running now
        self._announced = 0
        self._wakes = 0  # wake-ups (``call``) in the job queue, which are no jobs
        self._queue: queue.Queue[tuple[Job, Future]] = queue.Queue(maxsize=max_queue)
        self._calls: queue.SimpleQueue[tuple[Callable[[], object], Future]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def announce(self) -> None:
        """A request will ``submit(..., announced=True)`` soon (or ``withdraw``)."""
        with self._lock:
            self._announced += 1

    def withdraw(self) -> None:
        """An announced request failed before submitting."""
        with self._lock:
            self._announced -= 1

    def estimated_wait(self, ahead: int) -> float:
        """Seconds until a job with ``ahead`` jobs queued before it starts."""
        raise NotImplementedError

    def submit(
        self, jobs: Sequence[Job], announced: bool = False, waited_s: float = 0.0
    ) -> list[Future]:
        """Queue ``jobs`` (all or none); each future resolves to its ``Completion``.

        Args:
            jobs: one request's jobs.
            announced: the request called ``announce`` before.
            waited_s: how long the request has waited already (for a thread of the server).

        Raises:
            Overloaded: the queue is full, or the last job would start more than
                ``max_queue_wait_s`` after the request arrived.
        """
        self._ensure_started()
        with self._lock:  # all of a request's jobs, or none of them
            if announced:
                self._announced -= 1
            queued = self.waiting
            wait = self.estimated_wait(queued + len(jobs) - 1)
            if self._queue.qsize() + len(jobs) > self._queue.maxsize:
                raise Overloaded(f"{queued} jobs are waiting; try again shortly", wait)
            limit = self.max_queue_wait_s
            if limit is not None and waited_s + wait > limit:
                raise Overloaded(
                    f"the request would wait about {waited_s + wait:.1f} s for its turn (the "
                    f"limit is {limit:g} s; {queued} jobs are queued)",
                    wait,
                )
            futures = []
            for job in jobs:
                future: Future = Future()
                self._queue.put_nowait((job, future))
                futures.append(future)
        return futures

    @property
    def waiting(self) -> int:
        """Jobs queued (cancelled ones included until the worker drops them)."""
        return max(0, self._queue.qsize() - self._wakes)

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on the worker thread (between two decode steps, or at once when idle);
        its result or exception comes back to the caller. From the worker itself it runs inline.

        Raises:
            RuntimeError: the batcher is closed.
        """
        if threading.current_thread() is self._thread:
            return fn()
        self._ensure_started()
        future: Future = Future()
        self._calls.put((fn, future))
        with self._lock:
            # An idle worker blocks on the job queue: wake it. A busy one runs calls between
            # steps (and may take no job for a while, so wake-ups would pile up in the queue).
            if not self.running:
                try:
                    self._queue.put_nowait(_WAKE)
                    self._wakes += 1
                except queue.Full:
                    pass  # a full queue means a busy worker
        while True:
            try:
                return future.result(timeout=1.0)
            except TimeoutError:
                if self._stop.is_set() and not self._thread.is_alive():
                    raise RuntimeError("the service is shutting down") from None

    def run_calls(self) -> None:
        """Run the calls waiting for the worker (on the worker thread, between steps)."""
        while True:
            try:
                fn, future = self._calls.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as err:  # noqa: BLE001 - re-raised in the calling thread
                future.set_exception(err)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker after its current batch (or step); jobs still queued fail."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for pending in (self._queue, self._calls):
            while True:
                try:
                    _, future = pending.get_nowait()
                except queue.Empty:
                    break
                if future is not None:  # not a wake-up
                    future.set_exception(RuntimeError("the service is shutting down"))

    def _ensure_started(self) -> None:
        with self._lock:
            if self._stop.is_set():
                raise RuntimeError("the batcher is closed")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name=self.thread_name, daemon=True
                )
                self._thread.start()

    def _loop(self) -> None:
        raise NotImplementedError

    def _get(self, timeout: float) -> tuple[Job, Future] | None:
        """The next job, waiting up to ``timeout`` s (0: only one already queued), or None;
        calls that arrive meanwhile are run."""
        try:
            item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            item = None
        self.run_calls()
        if item is _WAKE:
            self._woken()
            return None
        return item

    def _take(self, limit: int) -> list[tuple[Job, Future]]:
        """Up to ``limit`` jobs already waiting (the batch is running: no waiting for more),
        after the calls waiting for the worker (``JobQueue.call``)."""
        self.run_calls()
        jobs = []
        while len(jobs) < limit:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _WAKE:
                self._woken()
            else:
                jobs.append(job)
        return jobs

    def _woken(self) -> None:
        with self._lock:
            self._wakes -= 1

    def _collect(self, limit: int) -> list[tuple[Job, Future]]:
        """Up to ``limit`` jobs: block for a first one, then gather for ``window_s``, and longer
        (up to ``max_wait_s``) while announced jobs are still on their way."""
        self.run_calls()  # any that came as the last batch ended, without a wake-up (``call``)
        first = self._get(timeout=0.1)
        if first is None:
            return []
        batch = [first]
        start = time.monotonic()
        while len(batch) < limit:
            elapsed = time.monotonic() - start
            if elapsed < self.window_s:
                timeout = self.window_s - elapsed
            elif self._announced > 0 and elapsed < self.max_wait_s:
                timeout = min(0.002, self.max_wait_s - elapsed)
            else:
                timeout = 0.0
            job = self._get(timeout)
            if job is not None:
                batch.append(job)
            elif timeout == 0:
                break
        return batch


class Batcher(JobQueue):
    """Fixed batches: the worker collects jobs for a window, runs them as one batch to the end,
    and only then takes the next (``BATCHING=window``).

    Args:
        run: runs one batch, e.g. ``engine.complete``; returns one completion per job.
        max_batch, window_s, max_wait_s, max_queue, max_queue_wait_s, on_batch, on_prefill: as
            ``JobQueue`` (``window_s``: how long the worker waits for more jobs after the first).
    """

    def __init__(self, run: Callable[[Sequence[Job]], list[Completion]], **settings):
        super().__init__(**settings)
        self.run = run
        self.batch_seconds = 0.0  # exponential average of recent batches' durations

    def estimated_wait(self, ahead: int) -> float:
        """Seconds until a job with ``ahead`` jobs queued before it starts: the running batch
        plus the full batches ahead, each as long as recent batches (0 before the first)."""
        batches = int(self.running > 0) + ahead // self.max_batch
        return batches * self.batch_seconds

    def _loop(self) -> None:
        while not self._stop.is_set():
            batch = [
                (job, future)
                for job, future in self._collect(self.max_batch)
                if future.set_running_or_notify_cancel()
            ]
            if not batch:
                continue
            self.running = len(batch)
            start = time.perf_counter()
            try:
                self._run_isolated(batch)
            finally:
                self.running = 0
            seconds = time.perf_counter() - start
            self.batch_seconds = (
                seconds if self.batch_seconds == 0 else 0.8 * self.batch_seconds + 0.2 * seconds
            )

    def _run_isolated(self, batch: list[tuple[Job, Future]]) -> None:
        """Run ``batch``; if it raises, run each half on its own (down to single jobs), so only
        the jobs that fail alone get the exception."""
        start = time.perf_counter()
        try:
            results = self.run([job for job, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} completions for {len(batch)} jobs")
        except Exception as err:  # one bad job must not fail the others
            if len(batch) == 1:
                logger.exception("a job failed")
                batch[0][1].set_exception(err)
                return
            logger.warning(
                "batch of %d failed (%s: %s); rerunning it in halves",
                len(batch),
                type(err).__name__,
                err,
            )
            half = len(batch) // 2
            self._run_isolated(batch[:half])
            self._run_isolated(batch[half:])
            return
        if self.on_prefill is not None:
            self.on_prefill(len(batch))
        if self.on_batch is not None:
            self.on_batch(len(batch), time.perf_counter() - start)
        for (_, future), result in zip(batch, results):
            if getattr(result, "error", None) is not None:
                future.set_exception(result.error)
            else:
                future.set_result(result)
