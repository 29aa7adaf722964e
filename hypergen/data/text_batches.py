"""Prompt/completion pairs -> padded token batches, and the log-likelihood of completions.

Used in training: the LoRA library and the PEFT LoRAs (``tokenize_pairs``), meta-training's
completion-only cross-entropy (``completion_logprobs``, via ``training.objectives``). Evaluation
scores options its own way (``evaluation.scoring``: one prompt pass, a shared KV cache) but
tokenizes the same way. Prompt and completion are tokenized separately and concatenated, so the
completion's tokens are exactly known; sequences are right-padded; labels are -100 outside the
completion.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from hypergen.decoding import pad_token_id

IGNORE_INDEX = -100


def tokenize_pairs(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completions: Sequence[str],
    max_length: int = 512,
    end_token_id: int | None = None,
) -> dict[str, Tensor]:
    """Build ``input_ids``, ``attention_mask`` and completion-only ``labels`` (all (b, n)).

    Too-long pairs lose tokens from the start of the prompt; the completion is always kept whole
    (up to ``max_length``), since it is what the loss or the score is about.

    Args:
        end_token_id: appended to every completion (and labelled), so a model trained on the
            batch learns where an answer ends (the end-of-turn token the service stops on).
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False).input_ids
    completion_ids = tokenizer(list(completions), add_special_tokens=False).input_ids
    rows, labels = [], []
    for p, c in zip(prompt_ids, completion_ids):
        c = c[: max_length - 1] + [end_token_id] if end_token_id is not None else c[:max_length]
        p = p[max(0, len(p) + len(c) - max_length) :]
        rows.append(p + c)
        labels.append([IGNORE_INDEX] * len(p) + c)
    width = max(len(r) for r in rows)
    pad = pad_token_id(tokenizer)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    label_ids = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, lab) in enumerate(zip(rows, labels)):
        input_ids[i, : len(r)] = torch.tensor(r)
        label_ids[i, : len(lab)] = torch.tensor(lab)
        attention_mask[i, : len(r)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": label_ids}


def completion_logprobs(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Summed log-probability of each row's labelled tokens, and how many there are.

    Args:
        logits: (b, n, vocab) from the model on ``input_ids``.
        labels: (b, n) with ``IGNORE_INDEX`` outside the completion.

    Returns:
        (b,) summed log-likelihood, (b,) token counts.
    """
    logits, labels = logits[:, :-1].float(), labels[:, 1:]  # position t predicts token t+1
    # cross_entropy is fused: no (b, n, vocab) log-softmax copy; ignored positions give 0.
    nll = F.cross_entropy(
        rearrange(logits, "b n v -> b v n"), labels, ignore_index=IGNORE_INDEX, reduction="none"
    )
    return -nll.sum(dim=1), (labels != IGNORE_INDEX).sum(dim=1)
