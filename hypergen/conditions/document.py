"""Document conditioner: a context document of any length -> one vector, by chunk and pool.

    conditioner = DocumentConditioner("all-minilm-l6-v2")   # or "hash-64" (tests, no model)
    conditioner.normalize(" Ada  lives in\\nParis. ")       # "Ada lives in Paris."
    conditioner.encode([long_document])                     # (1, 384), unit norm

The document is split into windows of the wrapped sentence encoder's own tokens (word pieces for
a sentence-transformers model, whitespace words for the hashing encoder), each window embedded by
that encoder, and the windows' unit vectors averaged and renormalised.

Sizes. ``chunk_tokens=128``: all-MiniLM-L6-v2 truncates at 256 word pieces but was trained on
128-token inputs, and its embeddings of longer inputs degrade; a window of 128 is what it knows.
``overlap=32`` (a quarter): an English sentence is about 20-30 word pieces, so a fact cut by one
window's end appears whole at the start of the next, and the cost is a third more windows.

Pooling: the mean. Every window is a unit vector in the space the encoder was trained for, and
their mean stays in that space (a max over dimensions does not: it mixes coordinates of different
windows into a vector no text has) and keeps ``dim`` equal to the description encoder's, so a
document checkpoint has the hypernetwork of a description one. Its cost is dilution: one fact in
a 200-window document moves the mean by about 1/200 of a vector. That is measurable (the tests
check that a fact only in the last window changes the vector) but small; the Generative Adapter
alternative, the frozen base model's own hidden states over the document, is the future option
for long documents (README).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

MAX_DOCUMENT_CHARS = 100_000  # also the service's request limit (service.schemas reads it)
DEFAULT_CHUNK_TOKENS = 128
DEFAULT_OVERLAP = 32
ENCODE_BATCH = 64  # windows per forward pass of the wrapped encoder


def normalize_document(condition: Any, max_chars: int = MAX_DOCUMENT_CHARS) -> str:
    """Canonical document: a non-empty string with all whitespace collapsed to single spaces.

    Raises:
        TypeError: ``condition`` is not a string.
        ValueError: it is empty (or only whitespace), or longer than ``max_chars`` once collapsed.
    """
    if not isinstance(condition, str):
        raise TypeError(f"a document must be a string, got {type(condition).__name__}")
    text = " ".join(condition.split())
    if not text:
        raise ValueError("a document must not be empty")
    if len(text) > max_chars:
        raise ValueError(f"a document must be at most {max_chars} characters, got {len(text)}")
    return text


def build_sentence_encoder(name: str, device: str | torch.device, max_chars: int):
    """The wrapped encoder: ``hash-<dim>`` is the hashing encoder, anything else a
    sentence-transformers model (built-in name, folder or Hub id)."""
    from hypergen.conditions.hashing import HashingConditioner
    from hypergen.conditions.text import TextConditioner

    if name.startswith("hash-"):
        return HashingConditioner(name, device=device, max_chars=max_chars)
    return TextConditioner(name, device=device, max_chars=max_chars)


def chunk_spans(
    token_spans: Sequence[tuple[int, int]], chunk_tokens: int, overlap: int
) -> list[tuple[int, int]]:
    """(start, end) character spans of windows of ``chunk_tokens`` tokens, consecutive windows
    sharing ``overlap`` tokens; the last window ends at the last token, so every token is in one.
    """
    assert 0 <= overlap < chunk_tokens, "overlap must be smaller than the window"
    if not token_spans:
        return []
    stride = chunk_tokens - overlap
    windows, start = [], 0
    while True:
        end = min(start + chunk_tokens, len(token_spans))
        windows.append((token_spans[start][0], token_spans[end - 1][1]))
        if end == len(token_spans):
            return windows
        start += stride


class DocumentConditioner:
    """Documents -> unit-norm vectors: chunked by the wrapped encoder's tokens, embedded, mean-pooled.

    Args:
        name: the wrapped sentence encoder (``build_sentence_encoder``).
        device: where the encoder runs.
        max_chars: longer documents are rejected.
        chunk_tokens, overlap: window size and overlap in the encoder's tokens (module docstring).
    """

    kind = "document"
    parts = ("document",)

    def __init__(
        self,
        name: str = "all-minilm-l6-v2",
        device: str | torch.device = "cpu",
        max_chars: int = MAX_DOCUMENT_CHARS,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        overlap: int = DEFAULT_OVERLAP,
    ):
        if not 0 <= overlap < chunk_tokens:
            raise ValueError(
                f"overlap must be in [0, chunk_tokens), got {overlap} and {chunk_tokens}"
            )
        self.encoder = build_sentence_encoder(name, device, max_chars)
        model = getattr(self.encoder, "model", None)  # sentence-transformers: its tokenizer
        if model is not None and model.max_seq_length:
            window = model.max_seq_length - 2  # [CLS] and [SEP]
            if chunk_tokens > window:
                raise ValueError(f"chunk_tokens {chunk_tokens} exceeds {name}'s window of {window}")
        self.name, self.dim, self.max_chars = name, self.encoder.dim, max_chars
        self.chunk_tokens, self.overlap = chunk_tokens, overlap

    def networks(self) -> list[torch.nn.Module]:
        """The torch modules ``encode`` runs (for inference-time speed-ups such as packed linears)."""
        return self.encoder.networks()

    def normalize(self, condition: Any) -> str:
        """Canonical document (``normalize_document``): the text the content-hash id is of."""
        return normalize_document(condition, self.max_chars)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the wrapped encoder's tokens of ``text``."""
        model = getattr(self.encoder, "model", None)
        if model is None:  # the hashing encoder splits on whitespace
            return [m.span() for m in re.finditer(r"\S+", text)]
        encoded = model.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        return [tuple(span) for span in encoded["offset_mapping"]]

    def chunks(self, condition: Any) -> list[str]:
        """The windows of one document, in order (what ``encode`` embeds)."""
        text = self.normalize(condition)
        spans = chunk_spans(self.token_spans(text), self.chunk_tokens, self.overlap)
        return [text[a:b] for a, b in spans] or [text]

    def encode(self, conditions: Sequence[Any]) -> Tensor:
        windows = [self.chunks(c) for c in conditions]
        flat = [w for ws in windows for w in ws]
        vectors = torch.cat(
            [
                self.encoder.encode(flat[i : i + ENCODE_BATCH]).float()
                for i in range(0, len(flat), ENCODE_BATCH)
            ]
        )  # (total windows, dim)
        owner = torch.repeat_interleave(
            torch.arange(len(windows)), torch.tensor([len(ws) for ws in windows])
        ).to(vectors.device)
        pooled = torch.zeros(len(windows), self.dim, device=vectors.device)
        pooled.index_add_(
            0, owner, vectors
        )  # sums; renormalising turns them into the mean's direction
        return torch.nn.functional.normalize(pooled, dim=1)
