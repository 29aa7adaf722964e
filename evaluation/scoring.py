"""Batched scoring through a frozen causal LM, with an optional adapter per example.

Multiple choice: the log-likelihood of each option given the prompt. The prompt of an example
runs once; its key/value cache is repeated for the example's options, which then run together
(all (example, option) rows of a batch in one forward pass, each row with its example's adapter).
This gives the same numbers as scoring every prompt+option row whole (``tests`` check it), for a
fraction of the work when options are short and prompts long.

    raw pick        = argmax_k  sum_t log p(option_k token t | prompt, earlier tokens)
    normalised pick = argmax_k (that sum / number of option_k tokens)      [tokens, not chars]

Generation: greedy decoding through the library's one decode loop (``hypergen.decoding.decode``,
the service's too), stopped at a set of stop tokens. Task answers stop at the first newline or
end-of-sequence token (prompts end in "A:", so the answer is the rest of that line;
``greedy_answers``); free replies (chat) stop only at the model's end-of-sequence ids
(``hypergen.decoding.eos_token_ids``, ``greedy_generations``) and say whether they ended by
themselves or hit the token cap.

Prompts and options are tokenized separately without special tokens and concatenated, as in
``hypergen.data.text_batches.tokenize_pairs``. Scoring rows are right-padded; attention masks hide the
padding and position ids continue each row from its own prompt length.

Axes: b example, m (example, option) row, n prompt token, o option token, v vocabulary, d hidden.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hypergen.adapters.apply import apply_adapters
from hypergen.adapters.bottleneck import BottleneckWeights
from hypergen.adapters.lora import LoraWeights
from hypergen.decoding import (
    Job,
    SamplingParams,
    adapter_forward,
    decode,
    model_call_names,
    new_cache,
    pad_token_id,
)

# what a scoring batch applies: one generated adapter per row, of either kind (or a shared one)
Adapters = LoraWeights | BottleneckWeights

# rows of hidden states turned into logits at once (bounds the (rows, vocab) logit matrix)
_LOGIT_CHUNK = 256


@dataclass(frozen=True)
class OptionScores:
    """Scores of one multiple-choice example.

    Attributes:
        logliks: summed log-likelihood of each option's tokens given the prompt.
        num_tokens: number of tokens of each option.
    """

    logliks: tuple[float, ...]
    num_tokens: tuple[int, ...]

    @property
    def raw_pick(self) -> int:
        """Index of the option with the highest summed log-likelihood (first on ties)."""
        return max(range(len(self.logliks)), key=lambda k: self.logliks[k])

    @property
    def normalized_pick(self) -> int:
        """Index of the option with the highest log-likelihood per token (first on ties)."""
        return max(range(len(self.logliks)), key=lambda k: self.logliks[k] / self.num_tokens[k])


@dataclass(frozen=True)
class ScoringConfig:
    """How to run the LM.

    Args:
        batch_tokens: padded tokens per forward pass (prompt rows plus option rows); a single
            example larger than this still runs, alone.
        max_length: longest row in tokens; longer prompts lose tokens from their start.
        autocast_dtype: run forward passes under ``torch.autocast`` with this dtype (None: off).
    """

    batch_tokens: int = 2048
    max_length: int = 512
    autocast_dtype: torch.dtype | None = None

    def __post_init__(self):
        if self.batch_tokens < 1:
            raise ValueError(f"ScoringConfig.batch_tokens must be >= 1, got {self.batch_tokens}")
        if self.max_length < 2:
            raise ValueError(f"ScoringConfig.max_length must be >= 2, got {self.max_length}")


class _LM:
    """A causal LM split into its backbone (hidden states + cache) and its output head.

    Running the backbone alone lets us turn only the positions we score into logits.
    """

    def __init__(self, model: PreTrainedModel, config: ScoringConfig):
        self.model = model
        self.backbone = model.base_model
        self.head = model.get_output_embeddings()
        if self.backbone is model or self.head is None:
            raise ValueError(f"{type(model).__name__} has no separate backbone and output head")
        self.cache_arg = model_call_names(self.backbone)[0]
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self.device = next(model.parameters()).device
        self.autocast_dtype = config.autocast_dtype

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache
    ) -> Tensor:
        """(b, n) tokens -> (b, n, d) final hidden states; ``cache`` is extended in place."""
        kwargs = {self.cache_arg: cache}
        with self._autocast():
            out = self.backbone(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                position_ids=position_ids.to(self.device),
                use_cache=True,
                **kwargs,
            )
        return out.last_hidden_state

    def log_probs(self, hidden: Tensor) -> Tensor:
        """(m, d) hidden states -> (m, v) float32 log-probabilities, in chunks."""
        out = []
        for chunk in hidden.split(_LOGIT_CHUNK):
            with self._autocast():
                logits = self.head(chunk).float()
            if self.softcap:
                logits = torch.tanh(logits / self.softcap) * self.softcap
            out.append(F.log_softmax(logits, dim=-1))
        return torch.cat(out) if out else hidden.new_zeros(0, 0)

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


def _adapter_rows(adapters: Adapters | None, index: Sequence[int] | None, rows: Sequence[int]):
    """Adapters for a forward batch whose row j belongs to example ``rows[j]``."""
    if adapters is None:
        return None
    if index is None:
        if len(adapters) != 1:
            raise ValueError(
                f"{len(adapters)} adapters but no adapter_index saying which example uses which"
            )
        return adapters  # one adapter shared by every row
    return adapters.select([index[r] for r in rows])


@contextmanager
def _adapted(model: PreTrainedModel, weights: Adapters | None) -> Iterator[None]:
    if weights is None:
        yield
    else:
        with apply_adapters(model, weights):
            yield


def _right_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[Tensor, Tensor]:
    """Token lists -> (b, n) ids and mask, right-padded."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def _batches(costs: Sequence[int], budget: int) -> list[list[int]]:
    """Group item indices, longest first, so each group's padded cost stays within ``budget``.

    ``costs[i]`` is item i's padded size per unit; a group costs len(group) * max cost.
    """
    order = sorted(range(len(costs)), key=lambda i: -costs[i])
    groups: list[list[int]] = []
    for i in order:  # costs only decrease along ``order``, so the group's first item is its max
        if groups and (len(groups[-1]) + 1) * costs[groups[-1][0]] <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def score_options(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    options: Sequence[Sequence[str]],
    adapters: Adapters | None = None,
    adapter_index: Sequence[int] | None = None,
    config: ScoringConfig | None = None,
    on_examples: Callable[[int], None] | None = None,
) -> list[OptionScores]:
    """Log-likelihood of every option of every example.

    Args:
        model: a frozen causal LM.
        tokenizer: its tokenizer.
        prompts: one prompt per example.
        options: each example's options (continuations of the prompt, usually with a leading
            space), at least one each.
        adapters: adapters (LoRA or bottleneck) applied while scoring; None for the bare model.
        adapter_index: example e uses adapter ``adapter_index[e]``; None shares a one-adapter
            ``adapters`` across all examples.
        config: batching, truncation and autocast.
        on_examples: called with the number of examples finished after each batch (progress).

    Returns:
        One ``OptionScores`` per example, in input order.
    """
    config = config or ScoringConfig()
    if len(prompts) != len(options):
        raise ValueError(f"{len(prompts)} prompts but {len(options)} option lists")
    if any(len(opts) == 0 for opts in options):
        raise ValueError("every example needs at least one option")
    if adapter_index is not None and len(adapter_index) != len(prompts):
        raise ValueError(
            f"adapter_index has {len(adapter_index)} entries for {len(prompts)} examples"
        )
    lm = _LM(model, config)
    pad = pad_token_id(tokenizer)
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False).input_ids
    option_ids = [tokenizer(list(opts), add_special_tokens=False).input_ids for opts in options]
    for e, opts in enumerate(option_ids):
        if any(len(o) == 0 for o in opts):
            raise ValueError(f"example {e}: an option tokenizes to nothing: {options[e]}")
        longest = min(max(len(o) for o in opts), config.max_length - 1)
        option_ids[e] = [o[:longest] for o in opts]
        keep = config.max_length - longest
        prompt_ids[e] = prompt_ids[e][-keep:] if prompt_ids[e] else prompt_ids[e]
        if not prompt_ids[e]:
            raise ValueError(f"example {e}: empty prompt (the first option token needs a context)")

    # cost per example: its prompt row plus its option rows, at this example's widths
    costs = [len(p) + len(o) * max(len(x) for x in o) for p, o in zip(prompt_ids, option_ids)]
    results: list[OptionScores | None] = [None] * len(prompts)
    with torch.inference_mode():
        for group in _batches(costs, config.batch_tokens):
            scores = _score_group(lm, pad, group, prompt_ids, option_ids, adapters, adapter_index)
            for e, s in zip(group, scores):
                results[e] = s
            if on_examples is not None:
                on_examples(len(group))
    return results  # type: ignore[return-value]


def _score_group(
    lm: _LM, pad: int, group, prompt_ids, option_ids, adapters, adapter_index
) -> list[OptionScores]:
    """Score the options of the examples in ``group``: one prompt pass, one option pass."""
    prompts = [prompt_ids[e] for e in group]
    lengths = torch.tensor([len(p) for p in prompts])
    ids, mask = _right_pad(prompts, pad)  # (b, n)
    positions = torch.arange(ids.shape[1]).expand(len(group), -1)
    cache = new_cache(lm.model)
    with _adapted(lm.model, _adapter_rows(adapters, adapter_index, group)):
        hidden = lm.forward(ids, mask, positions, cache)  # (b, n, d)
    # the last prompt token predicts each option's first token
    first = lm.log_probs(hidden[torch.arange(len(group)), lengths - 1])  # (b, v)

    row_example = [
        b for b, e in enumerate(group) for _ in option_ids[e]
    ]  # (m,) batch row of each option
    rows = [o for e in group for o in option_ids[e]]
    opt_ids, opt_mask = _right_pad(rows, pad)  # (m, o)
    row_index = torch.tensor(row_example)
    cache.batch_select_indices(row_index.to(lm.device))  # repeat each prompt's cache per option
    full_mask = torch.cat([mask[row_index], opt_mask], dim=1)  # (m, n + o)
    opt_positions = lengths[row_index, None] + torch.arange(opt_ids.shape[1])  # (m, o)
    with _adapted(
        lm.model, _adapter_rows(adapters, adapter_index, [group[b] for b in row_example])
    ):
        hidden = lm.forward(opt_ids, full_mask, opt_positions, cache)  # (m, o, d)

    row_lengths = opt_mask.sum(dim=1)
    first_ll = first[row_index, opt_ids[:, 0].to(first.device)]  # (m,)
    # option token t >= 1 is predicted by option position t - 1
    later = opt_mask[:, 1:].bool()  # (m, o-1)
    rest_ll = torch.zeros(len(rows))
    if later.any():
        logp = lm.log_probs(hidden[:, :-1][later.to(hidden.device)])  # (tokens, v)
        targets = opt_ids[:, 1:][later].to(logp.device)
        token_ll = logp.gather(1, targets[:, None])[:, 0].cpu()
        row_of_token = torch.arange(len(rows))[:, None].expand_as(later)[later]
        rest_ll.index_add_(0, row_of_token, token_ll)
    total = (first_ll.cpu() + rest_ll).tolist()

    out, start = [], 0
    for e in group:
        k = len(option_ids[e])
        out.append(
            OptionScores(
                tuple(total[start : start + k]), tuple(row_lengths[start : start + k].tolist())
            )
        )
        start += k
    return out


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Tokens that end a greedy answer: end-of-sequence and every token whose text has a newline."""
    ids = {i for i in (tokenizer.eos_token_id,) if i is not None}
    pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    ids.update(i for i, text in enumerate(pieces) if "\n" in text)
    return ids


@dataclass(frozen=True)
class Generation:
    """One greedy reply.

    Attributes:
        text: the decoded new tokens (special tokens skipped), stripped.
        num_tokens: new tokens kept (the stop token excluded).
        ended: True if a stop token came before the ``max_new_tokens`` cap (the reply ended by
            itself), False if the cap cut it.
    """

    text: str
    num_tokens: int
    ended: bool


def greedy_generations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
    adapters: Adapters | None = None,
    adapter_index: Sequence[int] | None = None,
    config: ScoringConfig | None = None,
    stop_ids: set[int] | None = None,
    on_examples: Callable[[int], None] | None = None,
) -> list[Generation]:
    """Greedy replies, each cut before its first stop token or at ``max_new_tokens``.

    Args:
        model: a frozen causal LM.
        tokenizer: its tokenizer.
        prompts: one prompt per example (already formatted, e.g. by a chat template; tokenized
            without adding special tokens).
        max_new_tokens: longest reply in tokens.
        adapters: adapters (LoRA or bottleneck) applied while decoding; None for the bare model.
        adapter_index: example e uses adapter ``adapter_index[e]``; None shares one adapter.
        config: batching, truncation and autocast.
        stop_ids: token ids that end a reply (default: ``stop_token_ids(tokenizer)``, newlines
            and end-of-sequence; ``hypergen.decoding.eos_token_ids(tokenizer, model)`` for free
            replies). Pass it
            in when calling often: computing the default decodes the whole vocabulary.
        on_examples: called with the number of examples finished after each batch (progress).

    Returns:
        One ``Generation`` per prompt, in input order.
    """
    config = config or ScoringConfig()
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if adapter_index is not None and len(adapter_index) != len(prompts):
        raise ValueError(
            f"adapter_index has {len(adapter_index)} entries for {len(prompts)} examples"
        )
    stop_ids = stop_token_ids(tokenizer) if stop_ids is None else set(stop_ids)
    keep = max(1, config.max_length - max_new_tokens)
    prompt_ids = [p[-keep:] for p in tokenizer(list(prompts), add_special_tokens=False).input_ids]
    if any(not p for p in prompt_ids):
        raise ValueError("generation needs non-empty prompts")
    params = SamplingParams(max_tokens=max_new_tokens)  # greedy
    device = next(model.parameters()).device
    results: list[Generation | None] = [None] * len(prompts)
    costs = [len(p) + max_new_tokens for p in prompt_ids]
    with torch.inference_mode():
        for group in _batches(costs, config.batch_tokens):
            forward = adapter_forward(
                model, _adapter_rows(adapters, adapter_index, group), config.autocast_dtype
            )
            jobs = [Job(prompt_ids[e], params=params) for e in group]
            done = decode(jobs, forward, new_cache(model), tokenizer, stop_ids, device)
            for e, completion in zip(group, done):
                if completion.error is not None:  # scores must not quietly lose a row
                    raise completion.error
                ended = completion.finish_reason == "stop"
                results[e] = Generation(
                    completion.text.strip(), completion.completion_tokens, ended
                )
            if on_examples is not None:
                on_examples(len(group))
    return results  # type: ignore[return-value]


def greedy_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
    adapters: Adapters | None = None,
    adapter_index: Sequence[int] | None = None,
    config: ScoringConfig | None = None,
    stop_ids: set[int] | None = None,
    on_examples: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy answers, one line each: ``greedy_generations`` cut at the first newline.

    Args: as ``greedy_generations`` (``stop_ids`` defaults to newlines and end-of-sequence).

    Returns:
        The decoded answers, cut at the first newline and stripped, in input order.
    """
    replies = greedy_generations(
        model,
        tokenizer,
        prompts,
        max_new_tokens,
        adapters,
        adapter_index,
        config,
        stop_ids,
        on_examples,
    )
    return [r.text.split("\n")[0].strip() for r in replies]
