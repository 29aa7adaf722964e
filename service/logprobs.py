"""Token log-probabilities in OpenAI's two response shapes.

``/v1/completions`` (``logprobs: k``)::

    {"tokens": [...], "token_logprobs": [...], "top_logprobs": [{token: logprob}, ...],
     "text_offset": [...]}

``/v1/chat/completions`` (``logprobs: true, top_logprobs: k``)::

    {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]}

A token is shown as it decodes alone (one holding part of a multi-byte character shows as
U+FFFD); ``text_offset`` is the sum of the lengths of the tokens before it. When a stop string
cut the text, the tokens that start past the cut are left out. Log-probabilities that are not finite are sent as null (JSON has no
-inf).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from hypergen.decoding import Completion

Detokenize = Callable[[list[int]], str]  # token ids -> text (skipping special tokens)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _visible(result: Completion, detokenize: Detokenize) -> tuple[list[int], list[str], list[int]]:
    """(token ids, their strings, their offsets in the text) of the tokens the text shows: all of
    them, unless a stop string cut the text (then those that start before the cut)."""
    cut = detokenize(result.token_ids) != result.text
    ids, pieces, offsets, offset = [], [], [], 0
    for token in result.token_ids:
        if cut and offset >= len(result.text):
            break
        piece = detokenize([token])
        ids.append(token)
        pieces.append(piece)
        offsets.append(offset)
        offset += len(piece)
    return ids, pieces, offsets


def completion_logprobs(result: Completion, detokenize: Detokenize) -> dict | None:
    """The ``logprobs`` object of one ``/v1/completions`` choice (None if not asked for)."""
    if result.logprobs is None:
        return None
    ids, pieces, offsets = _visible(result, detokenize)
    entries = result.logprobs[: len(ids)]
    top = []
    for entry in entries:
        alternatives: dict[str, float | None] = {}
        for token, logprob in entry.top:  # most likely first: keep it when two decode alike
            alternatives.setdefault(detokenize([token]), _finite(logprob))
        top.append(alternatives)
    return {
        "tokens": pieces,
        "token_logprobs": [_finite(e.logprob) for e in entries],
        "top_logprobs": top,
        "text_offset": offsets,
    }


def chat_logprobs(result: Completion, detokenize: Detokenize) -> dict | None:
    """The ``logprobs`` object of one ``/v1/chat/completions`` choice (None if not asked for)."""
    if result.logprobs is None:
        return None
    ids, pieces, _ = _visible(result, detokenize)

    def item(text: str, logprob: float) -> dict:
        return {"token": text, "logprob": _finite(logprob), "bytes": list(text.encode())}

    content = []
    for piece, entry in zip(pieces, result.logprobs[: len(ids)]):
        top = [item(detokenize([token]), logprob) for token, logprob in entry.top]
        content.append({**item(piece, entry.logprob), "top_logprobs": top})
    return {"content": content}
