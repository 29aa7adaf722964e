"""Demonstrations as the condition: a handful of a task's input/output pairs -> one vector.

    conditioner = DemonstrationsConditioner("all-minilm-l6-v2")   # or "hash-64"
    conditioner.normalize([{"input": "2 + 2", "output": "4"}])    # [{"input": ..., "output": ...}]
    conditioner.encode([[{"input": "2 + 2", "output": "4"}, ...]])  # (1, 384)

The pairs are rendered as ``Input: ...\\nOutput: ...`` blocks into one text and encoded by the
document path (``DocumentConditioner``: chunked, embedded, mean-pooled), as Generative Adapter
treats in-context demonstrations as a document.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from hypergen.conditions.document import MAX_DOCUMENT_CHARS, DocumentConditioner

MAX_EXAMPLES = 32  # also the service's request limit (service.schemas reads it)
MAX_FIELD_CHARS = 2000  # one input or output, as a description


def _field(example: Mapping, key: str, index: int) -> str:
    value = example[key]
    if not isinstance(value, str):
        raise TypeError(f"examples[{index}].{key} must be a string, got {type(value).__name__}")
    text = " ".join(value.split())
    if not text:
        raise ValueError(f"examples[{index}].{key} must not be empty")
    if len(text) > MAX_FIELD_CHARS:
        raise ValueError(
            f"examples[{index}].{key} must be at most {MAX_FIELD_CHARS} characters, got {len(text)}"
        )
    return text


def normalize_examples(condition: Any, max_examples: int = MAX_EXAMPLES) -> list[dict[str, str]]:
    """Canonical demonstrations: a list of ``{"input": ..., "output": ...}`` with whitespace
    collapsed, in the order given (order is part of the condition).

    Raises:
        TypeError: not a list of mappings of strings.
        ValueError: no examples, more than ``max_examples``, other keys, or an empty field.
    """
    if isinstance(condition, (str, bytes, Mapping)) or not isinstance(condition, Sequence):
        raise TypeError(
            "examples must be a list of {'input': ..., 'output': ...} objects, "
            f"got {type(condition).__name__}"
        )
    if not 1 <= len(condition) <= max_examples:
        raise ValueError(f"examples must hold 1 to {max_examples} pairs, got {len(condition)}")
    normalized = []
    for i, example in enumerate(condition):
        if not isinstance(example, Mapping):
            raise TypeError(f"examples[{i}] must be an object, got {type(example).__name__}")
        if set(example) != {"input", "output"}:
            raise ValueError(
                f"examples[{i}] must have exactly the keys 'input' and 'output', got {sorted(example)}"
            )
        normalized.append({key: _field(example, key, i) for key in ("input", "output")})
    return normalized


def render_examples(examples: Sequence[Mapping[str, str]]) -> str:
    """Demonstrations as one text: ``Input: ...\\nOutput: ...`` blocks separated by a blank line."""
    return "\n\n".join(f"Input: {e['input']}\nOutput: {e['output']}" for e in examples)


class DemonstrationsConditioner:
    """Input/output demonstrations -> the document vector of their rendered text.

    Args:
        name: the wrapped sentence encoder (``hypergen.conditions.document``).
        device: where the encoder runs.
        max_examples: more demonstrations than this are rejected.
    """

    kind = "demonstrations"
    parts = ("examples",)

    def __init__(
        self,
        name: str = "all-minilm-l6-v2",
        device: str | torch.device = "cpu",
        max_examples: int = MAX_EXAMPLES,
    ):
        self.document = DocumentConditioner(name, device=device, max_chars=MAX_DOCUMENT_CHARS)
        self.name, self.dim, self.max_examples = name, self.document.dim, max_examples

    def networks(self) -> list[torch.nn.Module]:
        """The torch modules ``encode`` runs (for inference-time speed-ups such as packed linears)."""
        return self.document.networks()

    def normalize(self, condition: Any) -> list[dict[str, str]]:
        """Canonical demonstrations (``normalize_examples``); also checks the rendered size."""
        examples = normalize_examples(condition, self.max_examples)
        self.document.normalize(render_examples(examples))
        return examples

    def encode(self, conditions: Sequence[Any]) -> Tensor:
        return self.document.encode([render_examples(self.normalize(c)) for c in conditions])
