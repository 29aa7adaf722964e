"""``hypergen serve``: load the models once, then serve the app with waitress.

    hypergen serve --host 127.0.0.1 --port 8000
    hypergen serve --checkpoint checkpoints/smollm2-minilm --store /srv/adapters --api-key KEY

Flags override the config file (``--config``) and ``HYPERGEN_*`` environment variables.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections import deque

from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher, WSGITask

from hypergen.config import DTYPE_NAMES
from hypergen.precision import AUTO
from service.errors import body_too_large_message, error_body

logger = logging.getLogger(__name__)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="hypergen serve", description="Serve the adapter API and web page."
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: all)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--config", help="JSON or TOML config file (keys as in service.settings.DEFAULTS)"
    )
    p.add_argument(
        "--checkpoint", help="hypernetwork checkpoint folder (default: trained, else untrained)"
    )
    p.add_argument("--base-model", help="override the checkpoint's base model (name or folder)")
    p.add_argument("--store", help="adapter store folder (default: $HYPERGEN_HOME/store)")
    p.add_argument(
        "--api-key", action="append", dest="api_keys", help="require this key (repeatable)"
    )
    p.add_argument(
        "--threads", type=int, help="waitress worker threads (concurrent requests; default 32)"
    )
    p.add_argument(
        "--reserved-threads",
        type=int,
        help="threads kept for requests other than POSTs, e.g. list and download (default 4)",
    )
    p.add_argument("--connection-limit", type=int, help="most open connections (default 500)")
    p.add_argument(
        "--channel-timeout",
        type=int,
        help="seconds after which an idle or half-sent connection is closed (default 30)",
    )
    p.add_argument("--torch-threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument(
        "--batching",
        choices=("continuous", "window"),
        help="continuous: requests join and leave a running batch between decode steps "
        "(default); window: fixed batches",
    )
    p.add_argument("--max-batch", type=int, help="most prompts per batched forward pass")
    p.add_argument(
        "--batch-window-ms",
        type=float,
        help="how long an idle server waits for a batch to fill (default: 0 with continuous "
        "batching, 10 with window batching)",
    )
    p.add_argument("--device", help="cpu, cuda, mps ...")
    p.add_argument(
        "--dtype",
        choices=(AUTO, *DTYPE_NAMES),  # the names the settings check takes
        help="the base model's dtype (default auto: bfloat16 on a CPU with AMX, else float32)",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def overrides_from(args: argparse.Namespace) -> dict:
    """The config keys the flags set (unset flags leave the file and environment alone)."""
    pairs = {
        "CONFIG_FILE": args.config,
        "CHECKPOINT": args.checkpoint,
        "BASE_MODEL": args.base_model,
        "STORE": args.store,
        "API_KEYS": args.api_keys,
        "TORCH_THREADS": args.torch_threads,
        "BATCHING": args.batching,
        "MAX_BATCH": args.max_batch,
        "BATCH_WINDOW_MS": args.batch_window_ms,
        "DEVICE": args.device,
        "DTYPE": args.dtype,
        "THREADS": args.threads,
        "RESERVED_THREADS": args.reserved_threads,
        "CONNECTION_LIMIT": args.connection_limit,
        "CHANNEL_TIMEOUT_S": args.channel_timeout,
    }
    return {k: v for k, v in pairs.items() if v is not None}


class JSONErrorTask(ErrorTask):
    """Errors waitress answers itself (a body over its limit, a malformed request line or header)
    come as the API's JSON errors too, not plain text."""

    def execute(self):
        err = self.request.error
        message = f"{err.reason}: {err.body}"
        if err.code == 413:
            message = body_too_large_message(self.channel.server.body_limit)
        code = err.reason.lower().replace(" ", "_")
        body = json.dumps(error_body(err.code, message, code=code)).encode()
        self.status = f"{err.code} {err.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        if err.code == 413:
            self.channel.drain_after_close = True  # the body is still on its way: read it away
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


def is_heavy(channel) -> bool:
    """POSTs (completions, adapter generation) can hold a thread for seconds; the rest
    (list, metadata, download, delete, health, metrics) take milliseconds."""
    requests = getattr(channel, "requests", None)
    request = requests[0] if requests else None
    return request is not None and request.error is None and request.command == "POST"


class LaneDispatcher(ThreadedTaskDispatcher):
    """Waitress's thread pool with two lanes, so cheap requests never queue behind slow ones.

    Heavy tasks (``is_heavy``) may occupy every thread but ``reserved``; cheap tasks are taken
    first by any free thread. Under a flood of completions, the reserved threads keep answering
    list, download, health and metrics requests at once. Each task is stamped with when it was
    queued (``queued_at``, monotonic), which the app counts as waiting time (``MAX_QUEUE_WAIT_S``).

    Args:
        reserved: threads heavy tasks may not use.
        is_heavy: which tasks go to the heavy lane.
    """

    def __init__(self, reserved: int, is_heavy=is_heavy):
        super().__init__()
        self.reserved, self.is_heavy = reserved, is_heavy
        self.heavy: deque = deque()
        self.heavy_running = 0

    def _heavy_limit(self) -> int:
        return max(1, len(self.threads) - self.stop_count - self.reserved)

    def _ready(self) -> bool:
        return bool(self.queue) or bool(self.heavy and self.heavy_running < self._heavy_limit())

    def add_task(self, task):
        requests = getattr(task, "requests", None)
        if requests and getattr(requests[0], "queued_at", None) is None:
            requests[0].queued_at = time.monotonic()
        with self.lock:
            (self.heavy if self.is_heavy(task) else self.queue).append(task)
            self.queue_cv.notify()

    def handler_thread(self, thread_no):
        # waitress's loop (ThreadedTaskDispatcher.handler_thread), taking from two lanes
        while True:
            with self.lock:
                while not self._ready() and self.stop_count == 0:
                    self.active_count -= 1
                    self.queue_cv.wait()
                    self.active_count += 1
                if self.stop_count > 0:
                    self.active_count -= 1
                    self.stop_count -= 1
                    self.threads.discard(thread_no)
                    self.thread_exit_cv.notify()
                    break
                heavy = not self.queue
                task = self.heavy.popleft() if heavy else self.queue.popleft()
                self.heavy_running += heavy
            try:
                task.service()
            except BaseException:
                self.logger.exception("Exception when servicing %r", task)
            finally:
                if heavy:
                    with self.lock:
                        self.heavy_running -= 1
                        self.queue_cv.notify()

    def shutdown(self, cancel_pending=True, timeout=5):
        done = super().shutdown(cancel_pending, timeout)
        if cancel_pending:
            with self.lock:
                while self.heavy:
                    self.heavy.popleft().cancel()
        return done


class StampedTask(WSGITask):
    """Passes when the request was queued for a thread to the app (``hypergen.queued_at``)."""

    def get_environment(self):
        environ = super().get_environment()
        environ.setdefault("hypergen.queued_at", getattr(self.request, "queued_at", None))
        return environ


class JSONErrorChannel(HTTPChannel):
    """Waitress's channel with JSON errors, and a bounded "lingering close" after a refused body.

    Closing a socket with unread data makes the kernel send a reset, and a client still sending
    its body would lose the 413 it was sent. So after a 413 the channel half-closes (the answer
    and a FIN go out) and reads and discards the rest of the body, at most ``DRAIN_BYTES`` or
    ``DRAIN_S`` seconds, then closes.
    """

    error_task_class = JSONErrorTask
    task_class = StampedTask
    DRAIN_BYTES = 64 << 20
    DRAIN_S = 10.0
    drain_after_close = False
    drain_deadline: float | None = None
    drained = 0

    def send_continue(self):
        # never invite a client to send a body that is refused already (one over the limit):
        # answer the error at once instead of reading the body first
        if self.request.error is None:
            super().send_continue()

    def handle_close(self):
        if self.drain_after_close and self.drain_deadline is None and self.connected:
            try:
                self.socket.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            else:  # stay in the loop, readable, until the client is done or a bound is hit
                self.will_close = False
                self.drain_deadline = time.monotonic() + self.DRAIN_S
                return
        super().handle_close()

    def handle_read(self):
        if self.drain_deadline is None:
            super().handle_read()
            return
        self.drain_after_close = False  # from here on, any close is the real one
        try:
            data = self.socket.recv(self.adj.recv_bytes)
        except OSError:
            data = b""
        self.drained += len(data)
        self.last_activity = time.time()
        if not data or self.drained > self.DRAIN_BYTES or time.monotonic() > self.drain_deadline:
            self.handle_close()


def make_server(app, host: str = "127.0.0.1", port: int = 0, **adjustments):
    """A waitress server for ``app`` (port 0: an ephemeral port, see ``server.effective_port``).

    Threads, connection limit and timeouts come from ``app.config`` (``THREADS``,
    ``RESERVED_THREADS``, ``CONNECTION_LIMIT``, ``CHANNEL_TIMEOUT_S``, ``CLEANUP_INTERVAL_S``,
    ``BACKLOG``); other waitress settings may be passed as ``adjustments`` (they win). Threads
    run requests in two lanes (``LaneDispatcher``).

    Idle and half-sent connections cost a socket each, not a thread: waitress keeps up to
    ``CONNECTION_LIMIT`` of them (polled with ``poll``, so past 1024 file descriptors too) and
    closes those idle for ``CHANNEL_TIMEOUT_S``, so a crowd of idle clients cannot lock others out.
    """
    from waitress.server import create_server

    config = app.config
    limit = config["MAX_CONTENT_LENGTH"]
    settings = {
        "threads": config["THREADS"],
        "connection_limit": config["CONNECTION_LIMIT"],
        "channel_timeout": config["CHANNEL_TIMEOUT_S"],
        "cleanup_interval": config["CLEANUP_INTERVAL_S"],
        "backlog": config["BACKLOG"],
        "asyncore_use_poll": True,
        "ident": "hypergen",
        # Flask answers bodies up to 4x its MAX_CONTENT_LENGTH with a JSON 413 once waitress has
        # read them; larger ones waitress refuses after the headers, before reading them, with the
        # same JSON 413 (JSONErrorTask), so a huge upload is never buffered
        "max_request_body_size": 4 * limit,
        **adjustments,
    }
    dispatcher = LaneDispatcher(reserved=min(config["RESERVED_THREADS"], settings["threads"] - 1))
    dispatcher.set_thread_count(settings["threads"])
    server = create_server(app, host=host, port=port, _dispatcher=dispatcher, **settings)
    for listener in [server, *getattr(server, "map", {}).values()]:  # one socket, or several
        if isinstance(listener, BaseWSGIServer):
            listener.channel_class = JSONErrorChannel
            listener.body_limit = limit
    return server


class BackgroundServer:
    """``app`` served by waitress from a daemon thread on an ephemeral port (tests, benchmarks).

    Attributes:
        url: the base URL, e.g. ``http://127.0.0.1:43210``.
    """

    def __init__(self, app, host: str = "127.0.0.1", threads: int | None = None, **adjustments):
        if threads is not None:
            adjustments["threads"] = threads
        # waitress reads asyncore_loop_timeout as an int: the 0.05 s this once asked for became 0,
        # a poll loop that never slept and took a core (and the GIL) from the requests it served;
        # stop() wakes the loop through its trigger instead
        self.server = make_server(app, host, 0, **adjustments)
        self.url = f"http://{host}:{self.server.effective_port}"
        self.thread = threading.Thread(target=self._run, name="hypergen-waitress", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.server.run()
        except (OSError, ValueError):  # its sockets were closed by stop()
            pass

    def stop(self, timeout: float = 5.0) -> None:
        """Close the client connections, let the worker threads finish, then close the
        listening socket (which ends the loop thread)."""
        listeners = (self.server, self.server.trigger)
        for channel in [d for d in list(self.server._map.values()) if d not in listeners]:
            channel.drain_after_close = False  # close at once, no lingering
            channel.handle_close()  # idle keep-alive connections would hold up the workers
        self.server.task_dispatcher.shutdown(timeout=timeout)
        self.server.close()
        self.server.trigger.close()  # wakes the loop; with the map empty, it ends
        self.thread.join(timeout)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    from service import create_app
    from service.errors import EngineUnavailable
    from service.runtime import get_runtime

    try:
        app = create_app(overrides=overrides_from(args))
        with app.app_context():
            runtime = get_runtime()
            engine = runtime.engine  # load the models once, before listening
            runtime.store  # noqa: B018 - open the store (and reconcile it) before listening
        server = make_server(app, args.host, args.port)
    except (EngineUnavailable, ValueError, OSError) as err:  # OSError: e.g. the port is taken
        print(f"hypergen serve: error: {err}", file=sys.stderr)
        return 2
    label = "UNTRAINED (adapters are no-ops)" if engine.untrained else "trained"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop like Ctrl-C: close cleanly
    print(
        f"hypergen: serving {engine.base_model} with {label} checkpoint {engine.checkpoint} "
        f"on http://{args.host}:{server.effective_port}/",
        flush=True,
    )
    try:
        server.run()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.close()
        runtime.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
