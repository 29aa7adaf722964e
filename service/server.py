"""``hypergen serve``: load the models once, then serve the app with waitress.

    hypergen serve --host 127.0.0.1 --port 8000
    hypergen serve --checkpoint checkpoints/smollm2-minilm --store /srv/adapters --api-key KEY

Flags override the config file (``--config``) and ``HYPERGEN_*`` environment variables.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

logger = logging.getLogger(__name__)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="hypergen serve", description="Serve the adapter API and web page."
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: all)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--config", help="JSON or TOML config file (keys as in service.DEFAULTS)")
    p.add_argument(
        "--checkpoint", help="hypernetwork checkpoint folder (default: trained, else untrained)"
    )
    p.add_argument("--base-model", help="override the checkpoint's base model (name or folder)")
    p.add_argument("--store", help="adapter store folder (default: $HYPERGEN_HOME/store)")
    p.add_argument(
        "--api-key", action="append", dest="api_keys", help="require this key (repeatable)"
    )
    p.add_argument(
        "--threads", type=int, default=32, help="waitress worker threads (concurrent requests)"
    )
    p.add_argument("--torch-threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--max-batch", type=int, help="most prompts per batched forward pass")
    p.add_argument("--batch-window-ms", type=float, help="how long to wait for a batch to fill")
    p.add_argument("--device", help="cpu, cuda, mps ...")
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
        "MAX_BATCH": args.max_batch,
        "BATCH_WINDOW_MS": args.batch_window_ms,
        "DEVICE": args.device,
    }
    return {k: v for k, v in pairs.items() if v is not None}


def make_server(app, host: str = "127.0.0.1", port: int = 0, threads: int = 32, **adjustments):
    """A waitress server for ``app`` (port 0: an ephemeral port, see ``server.effective_port``);
    ``adjustments`` are waitress settings."""
    from waitress.server import create_server

    # Flask enforces MAX_CONTENT_LENGTH with a JSON 413; waitress's own (plain-text) limit sits
    # above it, only as a backstop against huge bodies.
    return create_server(
        app,
        host=host,
        port=port,
        threads=threads,
        ident="hypergen",
        max_request_body_size=4 * app.config["MAX_CONTENT_LENGTH"],
        **adjustments,
    )


class BackgroundServer:
    """``app`` served by waitress from a daemon thread on an ephemeral port (tests, benchmarks).

    Attributes:
        url: the base URL, e.g. ``http://127.0.0.1:43210``.
    """

    def __init__(self, app, host: str = "127.0.0.1", threads: int = 32):
        # a short loop timeout lets stop() end the loop thread at once
        self.server = make_server(app, host, 0, threads, asyncore_loop_timeout=0.05)
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
            channel.handle_close()  # idle keep-alive connections would hold up the workers
        self.server.task_dispatcher.shutdown(timeout=timeout)
        self.server.close()
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
        server = make_server(app, args.host, args.port, args.threads)
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
