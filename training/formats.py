"""The text formats training shows the LM: the two ways the service feeds it.

    plain  the task's prompt as built by ``hypergen.data.tasks`` ("Q: {input}\\nA:") and its completion,
           what ``/v1/completions`` sends;
    chat   the same question as a user turn through the model's chat template, the answer as the
           assistant turn, what ``/v1/chat/completions`` sends.

Training samples end with the end-of-turn token (``end_of_answer``), so an adapter learns where an
answer stops instead of looping until ``max_tokens`` (the shipped adapters did: "No. No. No.").
Evaluation losses use ``plain`` without the end token, comparable with earlier runs.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from transformers import PreTrainedTokenizerBase

from hypergen.data.text_batches import tokenize_pairs

FORMATS = ("plain", "chat")
_QUESTION, _ANSWER = "Q: ", "\nA:"


def chat_question(prompt: str) -> str:
    """A task prompt as a user would type it: without the "Q: ... A:" scaffolding."""
    return prompt.removesuffix(_ANSWER).removeprefix(_QUESTION)


def render(
    tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str, fmt: str, prefix: str = ""
) -> tuple[str, str]:
    """(prompt text, completion text) of one example in format ``fmt``, with ``prefix`` (e.g. the
    task's description) before the question: before the prompt, or at the start of the user turn."""
    if fmt == "plain":
        return prefix + prompt, completion
    if fmt == "chat":
        if not getattr(tokenizer, "chat_template", None):
            # a base model without a template is only served plain
            return prefix + prompt, completion
        messages = [{"role": "user", "content": prefix + chat_question(prompt)}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text, completion.strip()
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")


def end_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that ends an answer: the tokenizer's end-of-sequence (``<|im_end|>`` in SmolLM2)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token to end answers with")
    return tokenizer.eos_token_id


def tokenize_formatted(
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[tuple[str, str, str]],
    max_length: int,
    end_of_answer: bool,
    prefixes: Sequence[str] | None = None,
) -> dict[str, Tensor]:
    """Token batch (``tokenize_pairs``) of ``(prompt, completion, format)`` items, each with its
    prompt prefix from ``prefixes`` (None: none)."""
    prefixes = prefixes if prefixes is not None else [""] * len(items)
    if len(prefixes) != len(items):
        raise ValueError(f"{len(prefixes)} prefixes for {len(items)} items")
    pairs = [render(tokenizer, p, c, fmt, pre) for (p, c, fmt), pre in zip(items, prefixes)]
    return tokenize_pairs(
        tokenizer,
        [p for p, _ in pairs],
        [c for _, c in pairs],
        max_length,
        end_token_id=end_token(tokenizer) if end_of_answer else None,
    )
