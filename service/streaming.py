"""Server-sent events for ``stream: true``: token ids from the decode loop -> text deltas.

The batcher's worker calls each streamed job's ``on_token`` (``Job.on_token``) with every token
it chooses; ``TokenStream`` queues them for the request's thread, which turns them into text
deltas (``Deltas``) and writes one SSE event per delta in OpenAI's chunk format, then
``data: [DONE]``. When the client goes away, writing fails, the response's generator is closed,
and ``TokenStream.close`` makes ``on_token`` answer False: the decode loop drops the row at its
next step (and jobs still queued are cancelled), so a disconnected client frees its place.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

DONE = "data: [DONE]\n\n"


def sse(payload: dict) -> str:
    """One server-sent event holding ``payload`` as JSON."""
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


class TokenStream:
    """Tokens of several jobs (choice indices), in the order they were chosen.

    ``get`` returns ``(index, token id)`` for a token and ``(index, None)`` once the job's future
    is done.
    """

    def __init__(self):
        self._events: queue.Queue[tuple[int, int | None]] = queue.Queue()
        self._closed = threading.Event()
        self.futures: list[Future] = []

    def hook(self, index: int) -> Callable[[int], bool]:
        """The ``on_token`` of choice ``index``."""

        def on_token(token: int) -> bool:
            self._events.put((index, token))
            return not self._closed.is_set()

        return on_token

    def watch(self, futures: Sequence[Future]) -> None:
        self.futures = list(futures)
        for index, future in enumerate(self.futures):
            future.add_done_callback(lambda _, index=index: self._events.put((index, None)))

    def get(self, timeout: float) -> tuple[int, int | None]:
        """The next event; raises ``queue.Empty`` after ``timeout`` seconds."""
        return self._events.get(timeout=max(0.0, timeout))

    def close(self) -> None:
        """Nobody reads any more: rows end at their next token, queued jobs are cancelled."""
        self._closed.set()
        for future in self.futures:
            future.cancel()


class Deltas:
    """A choice's text so far -> the part not sent yet that is safe to send.

    Held back: one trailing U+FFFD (a multi-byte character still incomplete) and any end of the text
    that could be the start of a stop string (the decode loop cuts the text there if it
    completes). The final text (``finish``) is authoritative.
    """

    def __init__(self, detokenize: Callable[[list[int]], str], stops: Sequence[str]):
        self.detokenize, self.stops = detokenize, tuple(stops)
        self.tokens: list[int] = []
        self.sent = ""

    def add(self, token: int) -> str:
        self.tokens.append(token)
        text = self.detokenize(self.tokens)
        # an incomplete character at the end decodes to one U+FFFD; hold only that one back
        safe = len(text) - text.endswith("\ufffd")
        whole = [i for i in (text.find(stop) for stop in self.stops) if i >= 0]
        safe = min([safe, *whole])  # a stop string the decode loop is about to cut at
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:size]):
                    safe = min(safe, len(text) - size)
                    break
        if safe <= len(self.sent) or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent) : safe], text[:safe]
        return delta

    def finish(self, text: str) -> str:
        """What is left to send of the final ``text``."""
        delta = text[len(self.sent) :] if text.startswith(self.sent) else ""
        self.sent = text
        return delta
