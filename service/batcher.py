"""Dynamic batching: concurrent requests, each with its own adapter, share one forward pass.

Request threads ``submit`` jobs and wait on futures. One worker thread takes the first waiting
job, keeps collecting for a short window (or until ``max_batch`` jobs), runs them as one batch
(``Engine.complete``) and resolves the futures. Jobs that arrive while a batch runs wait for the
next one, so under load batches fill up by themselves and an idle server adds at most the window
to a request's latency.

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
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from hypergen.decoding import Completion, Job

logger = logging.getLogger(__name__)


class Overloaded(RuntimeError):
    """The queue is full or too slow; the caller should retry later (HTTP 503).

    Args:
        message: why.
        retry_after: seconds after which a retry may succeed (an estimate), or None.
    """

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Batcher:
    """Collects jobs from many threads into batches run by one worker thread.

    Args:
        run: runs one batch, e.g. ``engine.complete``; returns one completion per job.
        max_batch: the most jobs in one batch.
        window_s: how long the worker waits for more jobs after the first one.
        max_wait_s: how long it may keep waiting for announced jobs.
        max_queue: the most jobs waiting; ``submit`` raises ``Overloaded`` beyond it.
        max_queue_wait_s: ``submit`` raises ``Overloaded`` for jobs estimated to wait longer
            than this before their batch starts (None: no limit).
        on_batch: called with (batch size, seconds) after each batch (metrics).
    """

    def __init__(
        self,
        run: Callable[[Sequence[Job]], list[Completion]],
        max_batch: int = 16,
        window_s: float = 0.01,
        max_wait_s: float = 0.1,
        max_queue: int = 256,
        max_queue_wait_s: float | None = None,
        on_batch: Callable[[int, float], None] | None = None,
    ):
        if max_batch < 1:
            raise ValueError(f"Batcher.max_batch must be >= 1, got {max_batch}")
        if window_s < 0:
            raise ValueError(f"Batcher.window_s must be >= 0, got {window_s}")
        self.run, self.max_batch, self.on_batch = run, max_batch, on_batch
        self.window_s, self.max_wait_s = window_s, max(window_s, max_wait_s)
        self.max_queue_wait_s = max_queue_wait_s
        self.batch_seconds = 0.0  # exponential average of recent batches' durations
        self._running = False
        self._announced = 0
        self._queue: queue.Queue[tuple[Job, Future]] = queue.Queue(maxsize=max_queue)
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
        """Seconds until a job with ``ahead`` jobs queued before it starts: the running batch
        plus the full batches ahead, each as long as recent batches (0 before the first)."""
        batches = int(self._running) + ahead // self.max_batch
        return batches * self.batch_seconds

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
            queued = self._queue.qsize()
            wait = self.estimated_wait(queued + len(jobs) - 1)
            if queued + len(jobs) > self._queue.maxsize:
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
        return self._queue.qsize()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker after its current batch; jobs still queued fail."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        while True:
            try:
                _, future = self._queue.get_nowait()
            except queue.Empty:
                break
            future.set_exception(RuntimeError("the service is shutting down"))

    def _ensure_started(self) -> None:
        with self._lock:
            if self._stop.is_set():
                raise RuntimeError("the batcher is closed")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="hypergen-batcher", daemon=True
                )
                self._thread.start()

    def _collect(self) -> list[tuple[Job, Future]]:
        """The next batch: block for a first job, then gather for ``window_s``, and longer (up to
        ``max_wait_s``) while announced jobs are still on their way."""
        try:
            batch = [self._queue.get(timeout=0.1)]
        except queue.Empty:
            return []
        start = time.monotonic()
        while len(batch) < self.max_batch:
            elapsed = time.monotonic() - start
            if elapsed < self.window_s:
                timeout = self.window_s - elapsed
            elif self._announced > 0 and elapsed < self.max_wait_s:
                timeout = min(0.002, self.max_wait_s - elapsed)
            else:
                timeout = 0.0
            try:
                batch.append(
                    self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
                )
            except queue.Empty:
                if timeout == 0:
                    break
        return batch

    def _loop(self) -> None:
        while not self._stop.is_set():
            batch = [
                (job, future)
                for job, future in self._collect()
                if future.set_running_or_notify_cancel()
            ]
            if not batch:
                continue
            self._running = True
            start = time.perf_counter()
            try:
                self._run_isolated(batch)
            finally:
                self._running = False
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
        if self.on_batch is not None:
            self.on_batch(len(batch), time.perf_counter() - start)
        for (_, future), result in zip(batch, results):
            if getattr(result, "error", None) is not None:
                future.set_exception(result.error)
            else:
                future.set_result(result)
