"""The one decode loop: batched generation with a KV cache, one prefill, then one token per row
per step. The service's completions and the evaluation's greedy answers both run it.

Axes: b row (one prompt each), n token, v vocabulary; h head, d head dim (KV cache).

Rows are left-padded so that every row's last prompt token sits in the last column; position ids
count real tokens only, so a row's numbers are the same as when it runs alone. A row leaves the
batch as soon as it finishes (an end token, a stop string or its own ``max_tokens``): its KV
cache rows and its adapter rows are dropped, so short requests do not pay for long ones.
``Decoder`` is the loop as a batch that rows may also join between steps (their prefill merged
into the running cache: continuous batching); ``decode`` runs one fixed batch through it.

The model call is a parameter (``Forward``): ``adapter_forward`` builds the usual one (a causal LM
with per-row adapters applied through hooks); the service passes its batched adapters
(``service.batched``), the evaluation the generator's ``LoraWeights`` or ``BottleneckWeights``, the
serving benchmark PEFT's ``adapter_names``.
"""

from __future__ import annotations

import inspect
import logging
import math
import random
import threading
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor

from hypergen.adapters.bottleneck import BottleneckWeights
from hypergen.adapters.lora import LoraWeights

logger = logging.getLogger(__name__)

# Below this temperature a row decodes greedily: sampling there is the argmax up to float rounding
# (a token 1e-3 logits behind the top one gets probability exp(-100) or less), and dividing
# logits by values such as 1e-300 or 5e-324 overflows to inf and nan.
GREEDY_BELOW = 1e-5

# forward(rows, input_ids, attention_mask, position_ids, cache) -> (b, v) next-token logits, where
# ``rows`` are the ids of the call's rows (for ``decode``: their indices into its jobs).
Forward = Callable[[Tensor, Tensor, Tensor, Tensor, object], Tensor]


@dataclass(frozen=True)
class SamplingParams:
    """How one prompt is continued.

    Args:
        max_tokens: the most tokens to generate.
        temperature: 0 for greedy decoding, else the softmax temperature (values below
            ``GREEDY_BELOW`` decode greedily too).
        top_p: nucleus sampling mass (1 keeps the whole distribution).
        stop: strings that end the completion (not included in the text).
        seed: seeds this row's sampler; None draws a fresh seed.
        ignore_eos: keep going past end-of-sequence (benchmarks).
        logprobs: None, or report each chosen token's log-probability and those of this many
            most likely tokens (0: the chosen one only), under the model's own distribution
            (temperature 1, no top_p).
    """

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False
    logprobs: int | None = None

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError(f"SamplingParams.max_tokens must be >= 1, got {self.max_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(
                f"SamplingParams.temperature must be a finite number >= 0, got {self.temperature}"
            )
        if not 0 < self.top_p <= 1:  # false for nan too
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if any(not s for s in self.stop):
            raise ValueError("SamplingParams.stop must not contain empty strings")
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError(f"SamplingParams.logprobs must be >= 0, got {self.logprobs}")

    @property
    def greedy(self) -> bool:
        """True when this row takes the most likely token at every step."""
        return self.temperature < GREEDY_BELOW


@dataclass
class Job:
    """One prompt to continue, with its own adapter (None: the bare model) and sampling.

    ``on_token`` (streaming) is called with each generated token id as soon as it is chosen; when
    it returns False (the client went away) the row ends at once, finish reason ``"cancelled"``.
    """

    prompt_ids: list[int]
    adapter: LoraWeights | BottleneckWeights | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    on_token: Callable[[int], bool] | None = None

    def __post_init__(self):
        if not self.prompt_ids:
            raise ValueError("Job.prompt_ids must hold at least one token")


@dataclass
class TokenLogprob:
    """A chosen token's log-probability and the ``SamplingParams.logprobs`` most likely tokens
    with theirs, most likely first."""

    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Completion:
    """What one job produced. ``token_ids`` excludes the end-of-sequence token.

    A row that failed on its own (its sampling or its text) carries the exception in ``error``
    and finish reason ``"error"``; the other rows of its batch are unaffected. ``logprobs`` has
    one entry per token id when the job asked for them.
    """

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (eos or a stop string), "length", "cancelled" or "error"
    prompt_tokens: int
    error: Exception | None = None
    logprobs: list[TokenLogprob] | None = None

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


def model_call_names(model: torch.nn.Module) -> tuple[str, str | None]:
    """Names of the KV-cache and logits-to-keep arguments of ``model.forward`` (they changed
    across transformers versions: ``past_key_values`` -> ``cache``, ``num_logits_to_keep`` ->
    ``logits_to_keep``)."""
    params = inspect.signature(model.forward).parameters
    cache = "cache" if "cache" in params else "past_key_values"
    keep = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
    return cache, keep


def left_pad(prompts: Sequence[list[int]], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Prompts -> input_ids, attention_mask, position_ids, all (b, n), padded on the left."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        mask[row, width - len(ids) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids, mask, positions


def pad_token_id(tokenizer) -> int:
    """The id that fills padding (masked out, so only its range matters): the tokenizer's pad
    token, else its end-of-sequence token, else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def eos_token_ids(tokenizer, model: torch.nn.Module | None = None) -> set[int]:
    """End-of-sequence ids: the tokenizer's and the model's generation config's (chat models end
    a turn with a token of their own, e.g. ``<|im_end|>``).

    Raises:
        ValueError: neither names one.
    """
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if extra is not None:
        ids.update(int(i) for i in (extra if isinstance(extra, (list, tuple, set)) else [extra]))
    if not ids:
        raise ValueError("the tokenizer and the model's generation config name no eos token")
    return ids


def new_cache(model: torch.nn.Module):
    """An empty dynamic KV cache for ``model``."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # transformers < 4.56
        return DynamicCache()


def last_logits_to_keep(keep_kw: str, tokens: int, device: torch.device) -> int | Tensor:
    """The logits-to-keep argument for the last position only. For a prompt, the position as a
    tensor: HF then gathers the last hidden states into a fresh tensor instead of slicing a
    strided view of them, which the LM head multiplies far slower (SmolLM2's head, 16 rows of
    11 tokens: 65 against 12 ms in fp32, 1.5 s against 6 ms in bf16, on the project's CPUs)."""
    if tokens == 1 or keep_kw != "logits_to_keep":  # older versions take an int only
        return 1
    return torch.tensor([tokens - 1], device=device)


def model_forward(
    model: torch.nn.Module,
    adapters_for: Callable[[Tensor], object] | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> Forward:
    """``model`` as a ``Forward``, with ``adapters_for(rows)`` applied to the rows of each call.

    Args:
        model: a causal LM (not edited: adapters go on through ``hypergen.adapters.apply`` hooks).
        adapters_for: the rows' ids -> their adapters, one per row or one for every row
            (anything ``apply_adapters`` takes), or None for the bare model; None: no adapters.
        autocast_dtype: run the model under ``torch.autocast`` with this dtype (None: off).
    """
    from hypergen.adapters.apply import apply_adapters

    cache_kw, keep_kw = model_call_names(model)
    device = next(model.parameters()).device

    def forward(rows, input_ids, attention_mask, position_ids, cache):
        lora = adapters_for(rows) if adapters_for is not None else None
        kwargs = {cache_kw: cache, "use_cache": True}
        if keep_kw:
            kwargs[keep_kw] = last_logits_to_keep(keep_kw, input_ids.shape[1], input_ids.device)
        with (
            apply_adapters(model, lora) if lora is not None else nullcontext(),
            torch.autocast(device.type, dtype=autocast_dtype)
            if autocast_dtype is not None
            else nullcontext(),
        ):
            out = model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                **kwargs,
            )
        # fp32 rows: a bf16 model's argmax over the vocabulary is slower than the cast and an
        # fp32 argmax (16 x 49152: 2.1 against 1.4 ms), and sampling computes in fp32 anyway
        return out.logits[:, -1].float()

    return forward


def adapter_forward(
    model: torch.nn.Module, adapters=None, autocast_dtype: torch.dtype | None = None
) -> Forward:
    """The usual ``Forward`` for ``decode``: ``model`` with row k's adapter applied to row k.

    Args:
        model: a causal LM (not edited: adapters go on through ``hypergen.adapters.apply`` hooks).
        adapters: one adapter per row of the batch, or a single one for every row, or None for
            the bare model; anything ``apply_adapters`` takes that has ``select(rows)``
            (``LoraWeights``, ``BottleneckWeights``, the service's ``service.batched`` stacks).
        autocast_dtype: run the model under ``torch.autocast`` with this dtype (None: off).
    """
    if adapters is None:
        return model_forward(model, None, autocast_dtype)
    device = next(model.parameters()).device
    shared = len(adapters) == 1
    current = [adapters]

    def adapters_for(rows):
        if not shared and len(current[0]) != len(rows):
            current[0] = adapters.select(rows.to(device))  # finished rows left
        return current[0]

    return model_forward(model, adapters_for, autocast_dtype)


def _sample(logits: Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """One token from a (v,) logits row: argmax, or temperature + nucleus sampling.

    Numerically safe for any temperature > 0 and any logits: the row is shifted so its maximum is
    0 before it is divided (in float64), so nothing overflows; nan logits count as impossible, and
    a row with no finite logit at all falls back to the argmax.
    """
    if params.greedy:
        return int(logits.argmax())
    scores = logits.double().nan_to_num(nan=-math.inf)  # (v,)
    top = scores.max()
    if not torch.isfinite(top):  # all -inf (or +inf somewhere): nothing sensible to sample
        return int(logits.argmax())
    probs = torch.softmax((scores - top) / params.temperature, dim=-1)
    if params.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass strictly above each token
        sorted_probs[before >= params.top_p] = 0  # the top token always survives
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index where the earliest stop string starts in ``text``, or None."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


# --- the KV cache of a batch whose rows change -------------------------------------------------


def cache_tensors(cache) -> list[tuple[Tensor, Tensor]]:
    """Each layer's (keys, values), both (b, h, n, d), of a filled dynamic KV cache.

    Raises:
        ValueError: the cache's rows cannot move between batches (sliding-window layers, ...).
    """
    layers = getattr(cache, "layers", None)
    if layers is None:  # transformers < 4.56
        return list(zip(cache.key_cache, cache.value_cache))
    for layer in layers:
        if getattr(layer, "is_sliding", False) or getattr(layer, "keys", None) is None:
            raise ValueError(
                "rows can join a running batch only with full-attention dynamic KV caches, "
                f"not {type(layer).__name__}"
            )
    return [(layer.keys, layer.values) for layer in layers]


def fill_cache(cache, tensors: Sequence[tuple[Tensor, Tensor]]):
    """``cache`` (empty) holding each layer's (keys, values); returns it."""
    for layer, (keys, values) in enumerate(tensors):
        cache.update(keys, values, layer)
    return cache


def right_aligned(parts: Sequence[Tensor], width: int, dim: int) -> Tensor:
    """``parts`` concatenated along dim 0 (rows), each padded with zeros on the left of ``dim``
    to ``width`` (a cache's or a mask's token axis)."""
    shape = list(parts[0].shape)
    shape[0], shape[dim] = sum(p.shape[0] for p in parts), width
    out = parts[0].new_zeros(shape)
    start = 0
    for p in parts:
        out[start : start + p.shape[0]].narrow(dim, width - p.shape[dim], p.shape[dim]).copy_(p)
        start += p.shape[0]
    return out


# --- the decode loop ---------------------------------------------------------------------------


@dataclass
class _Row:
    """One job's progress in a ``Decoder``."""

    id: int
    job: Job
    generator: torch.Generator | None = None
    generated: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    text: str | None = None
    finish: str | None = None
    error: Exception | None = None

    def completion(self) -> Completion:
        return Completion(
            self.text or "",
            self.generated,
            self.finish,
            len(self.job.prompt_ids),
            self.error,
            self.logprobs,
        )


class Decoder:
    """A batch decoded one token per row per step, which rows may join and leave between steps.

    ``add(jobs)`` prefills new rows (left-padded, in one forward pass of their own) and joins them
    to the batch; ``step()`` chooses one token for every row, lets the rows that finished leave at
    once (their KV-cache rows dropped) and runs one forward pass for the others. ``decode`` is one
    ``add`` and then steps until the batch is empty; the service's continuous batching adds jobs
    between steps (``service.continuous``).

    Joining a running batch: the newcomers' cache and the running one are right-aligned to a
    common width (zeros on the left, masked out) and concatenated; leading columns that no running
    row needs any more are dropped then, so the width stays that of the longest row. Position ids
    count each row's own tokens, so every row computes what it computes alone (up to float
    rounding).

    Args:
        forward: one model call (``Forward``); its ``rows`` are the ids ``add`` returned.
        tokenizer: decodes tokens for stop strings and the returned text.
        eos_ids: tokens that end a row (unless ``ignore_eos``); not part of the completion.
        device: where inputs are built.
        tokenizer_lock: held while decoding text (fast tokenizers are not thread-safe).
        new_cache: makes an empty KV cache (prefills; the merged cache when rows join).
        on_join: called with (ids, jobs) just before new rows are prefilled.
        on_leave: called with the ids of rows that left the batch (finished or failed).
        isolate_failures: a step whose forward pass raises is retried in halves, down to single
            rows, so only a row that fails on its own ends (finish reason ``"error"``); False:
            the exception propagates (and the batch is lost).
    """

    def __init__(
        self,
        forward: Forward,
        tokenizer,
        eos_ids: set[int],
        device: torch.device | str = "cpu",
        tokenizer_lock: threading.Lock | None = None,
        new_cache: Callable[[], object] | None = None,
        on_join: Callable[[list[int], list[Job]], None] | None = None,
        on_leave: Callable[[list[int]], None] | None = None,
        isolate_failures: bool = False,
    ):
        self.forward, self.tokenizer, self.eos_ids = forward, tokenizer, eos_ids
        self.device, self.lock = device, tokenizer_lock or nullcontext()
        self.new_cache, self.on_join, self.on_leave = new_cache, on_join, on_leave
        self.isolate_failures = isolate_failures
        self.pad_id = pad_token_id(tokenizer)
        self.rows: list[_Row] = []  # the running rows, in batch order
        self._next_id = 0
        self._reset()

    def __len__(self) -> int:
        return len(self.rows)

    def _reset(self) -> None:
        self.rows = []
        self.cache = self.mask = self.next_position = self.logits = None  # (b n) mask, (b v) logits

    def _fail(self, row: _Row, err: Exception) -> None:
        """One row's own failure ends that row only; the batch goes on without it."""
        logger.exception("row %d of a batch of %d failed", row.id, len(self.rows), exc_info=err)
        row.error, row.finish = err, "error"

    @torch.inference_mode()
    def add(self, jobs: Sequence[Job], cache: object | None = None) -> list[int]:
        """Prefill ``jobs`` in one forward pass and join them to the batch; the next ``step``
        chooses their first tokens.

        Args:
            jobs: the new rows.
            cache: an empty KV cache to prefill into (default: ``new_cache()``).

        Returns:
            The rows' ids (``forward``'s ``rows``; ``step`` reports completions by id).

        Raises:
            Whatever the prefill's forward pass raises; then no row has joined.
        """
        rows = [_Row(self._next_id + k, job) for k, job in enumerate(jobs)]
        self._next_id += len(rows)
        for row in rows:
            if row.job.params.logprobs is not None:
                row.logprobs = []
            if not row.job.params.greedy:
                seed = row.job.params.seed
                try:
                    row.generator = torch.Generator().manual_seed(
                        seed if seed is not None else random.randrange(2**63)
                    )
                except (RuntimeError, ValueError, OverflowError) as err:
                    self._fail(row, err)
        ids = [row.id for row in rows]
        input_ids, mask, positions = (
            t.to(self.device) for t in left_pad([j.prompt_ids for j in jobs], self.pad_id)
        )
        if cache is None:
            if self.new_cache is None:
                raise ValueError("Decoder.add needs a cache, or new_cache")
            cache = self.new_cache()
        if self.on_join is not None:
            self.on_join(ids, list(jobs))
        try:
            logits = self.forward(torch.tensor(ids), input_ids, mask, positions, cache)  # (b v)
            next_position = positions[:, -1] + 1  # (b,)
            if self.rows:
                self._join(cache, mask, next_position, logits)
            else:
                self.cache, self.mask, self.next_position, self.logits = (
                    cache,
                    mask,
                    next_position,
                    logits,
                )
        except Exception:
            if self.on_leave is not None:
                self.on_leave(ids)
            raise
        self.rows += rows
        return ids

    def _join(self, cache, mask: Tensor, next_position: Tensor, logits: Tensor) -> None:
        """Merge newly prefilled rows into the running batch (see the class docstring)."""
        if self.new_cache is None:
            raise ValueError("rows can join a running batch only with new_cache")
        first = int(self.mask.any(0).nonzero()[0])  # columns before it: padding in every row
        width = max(self.mask.shape[1] - first, mask.shape[1])
        merged = [
            (
                right_aligned([k1[:, :, first:], k2], width, dim=2),
                right_aligned([v1[:, :, first:], v2], width, dim=2),
            )
            for (k1, v1), (k2, v2) in zip(cache_tensors(self.cache), cache_tensors(cache))
        ]
        self.cache = fill_cache(self.new_cache(), merged)
        self.mask = right_aligned([self.mask[:, first:], mask], width, dim=1)
        self.next_position = torch.cat([self.next_position, next_position])
        self.logits = torch.cat([self.logits, logits])

    @torch.inference_mode()
    def step(self) -> list[tuple[int, Completion]]:
        """Choose every row's next token; rows that finished leave; one forward pass for the
        others. Returns the finished rows' (id, completion), in batch order."""
        if not self.rows:
            return []
        chosen = []
        greedy = self.logits.argmax(-1).tolist()  # one op for all rows; sampling rows redo theirs
        want = [row.job.params.logprobs or 0 for row in self.rows if row.logprobs is not None]
        if want:  # (b v) log-probabilities and each row's top tokens, once for the whole step
            log_probs = torch.log_softmax(self.logits.float(), dim=-1)
            top_lp, top_ids = log_probs.topk(min(max(want), log_probs.shape[-1]), dim=-1)
        for k, row in enumerate(self.rows):
            if row.finish is not None:  # failed before its first step
                chosen.append(greedy[k])
                continue
            job = row.job
            try:
                token = (
                    greedy[k]
                    if job.params.greedy
                    else _sample(self.logits[k], job.params, row.generator)
                )
                chosen.append(token)
                if token in self.eos_ids and not job.params.ignore_eos:
                    row.finish = "stop"
                    continue
                row.generated.append(token)
                wanted = job.on_token is None or job.on_token(token) is not False
                if row.logprobs is not None:
                    n_top = job.params.logprobs
                    row.logprobs.append(
                        TokenLogprob(
                            float(log_probs[k, token]),
                            list(zip(top_ids[k, :n_top].tolist(), top_lp[k, :n_top].tolist())),
                        )
                    )
                if job.params.stop:
                    with self.lock:
                        text = self.tokenizer.decode(row.generated, skip_special_tokens=True)
                    cut = _first_stop(text, job.params.stop)
                    if cut is not None:
                        row.text, row.finish = text[:cut], "stop"
                        continue
                if len(row.generated) >= job.params.max_tokens:
                    row.finish = "length"
                elif not wanted:  # nobody reads this row any more: free its place in the batch
                    row.finish = "cancelled"
            except Exception as err:  # noqa: BLE001 - isolate the row, keep the batch
                if len(chosen) == k:
                    chosen.append(greedy[k])
                self._fail(row, err)
        keep = torch.tensor([row.finish is None for row in self.rows])
        finished = [row for row in self.rows if row.finish is not None]
        if finished:
            self._leave(finished)
        if not keep.any():
            self._reset()
            return [(row.id, row.completion()) for row in finished]
        step_ids = torch.tensor(chosen, device=self.device)[keep][:, None]  # (b 1)
        if not keep.all():  # finished rows leave the batch
            kept = keep.nonzero().squeeze(1).to(self.device)
            self.cache.batch_select_indices(kept)
            self.mask, self.next_position = self.mask[kept], self.next_position[kept]
            self.rows = [row for row in self.rows if row.finish is None]
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        finished += self._advance(step_ids)
        return [(row.id, row.completion()) for row in finished]

    def _leave(self, rows: Sequence[_Row]) -> None:
        """Rows that finished: their text, and ``on_leave``."""
        with self.lock:
            for row in rows:
                if row.text is None and row.error is None:
                    try:
                        row.text = self.tokenizer.decode(row.generated, skip_special_tokens=True)
                    except Exception as err:  # noqa: BLE001 - this row only
                        self._fail(row, err)
        if self.on_leave is not None:
            self.on_leave([row.id for row in rows])

    def _advance(self, step_ids: Tensor) -> list[_Row]:
        """The step's forward pass (``mask`` already has the new column); returns the rows that
        failed in it (``isolate_failures``), which have left the batch."""
        ids = torch.tensor([row.id for row in self.rows])
        positions = self.next_position[:, None]
        if not self.isolate_failures:
            self.logits = self.forward(ids, step_ids, self.mask, positions, self.cache)
            self.next_position = self.next_position + 1
            return []
        before = cache_tensors(self.cache)  # a forward pass appends into new tensors: a snapshot
        try:
            self.logits = self.forward(ids, step_ids, self.mask, positions, self.cache)
            self.next_position = self.next_position + 1
            return []
        except Exception as err:  # noqa: BLE001 - find the rows that fail on their own
            if len(self.rows) == 1:
                parts, failures = [], [(0, err)]
            else:
                logger.warning(
                    "a decode step of %d rows failed (%s: %s); retrying it in halves",
                    len(self.rows),
                    type(err).__name__,
                    err,
                )
                parts, failures = self._split(list(range(len(self.rows))), step_ids, before)
        failed = [self.rows[k] for k, _ in failures]
        for k, err in failures:
            self._fail(self.rows[k], err)
        self._leave(failed)
        if not parts:
            self._reset()
            return failed
        index = torch.tensor([k for idx, _, _ in parts for k in idx], device=self.device)
        self.cache = fill_cache(
            self.new_cache(),
            [
                (
                    torch.cat([c[layer][0] for _, c, _ in parts]),
                    torch.cat([c[layer][1] for _, c, _ in parts]),
                )
                for layer in range(len(before))
            ],
        )
        self.logits = torch.cat([logits for _, _, logits in parts])
        self.mask, self.next_position = self.mask[index], self.next_position[index] + 1
        self.rows = [self.rows[k] for k in index.tolist()]
        return failed

    def _split(self, idx: list[int], step_ids: Tensor, before) -> tuple[list, list]:
        """Run the step for each half of the rows at positions ``idx`` on its own, halving again
        where it fails. Returns ([(positions, their cache tensors, logits)], [(position,
        error)] of the rows that failed alone)."""
        if len(idx) == 1:
            raise AssertionError("_split needs two rows or more")
        parts, failures = [], []
        half = len(idx) // 2
        for part in (idx[:half], idx[half:]):
            index = torch.tensor(part, device=self.device)
            cache = fill_cache(self.new_cache(), [(k[index], v[index]) for k, v in before])
            ids = torch.tensor([self.rows[k].id for k in part])
            try:
                logits = self.forward(
                    ids, step_ids[index], self.mask[index], self.next_position[index, None], cache
                )
            except Exception as err:  # noqa: BLE001
                if len(part) == 1:
                    failures.append((part[0], err))
                else:
                    more = self._split(part, step_ids, before)
                    parts += more[0]
                    failures += more[1]
                continue
            parts.append((part, cache_tensors(cache), logits))
        return parts, failures

    def run(
        self,
        jobs: Sequence[Job],
        on_first_token: Callable[[], None] | None = None,
        cache: object | None = None,
        between_steps: Callable[[], None] | None = None,
    ) -> list[Completion]:
        """``jobs`` from prefill to their last tokens, as one batch (on an empty decoder);
        ``between_steps`` is called after the prefill and after every step but the last."""
        assert not self.rows, "Decoder.run starts from an empty batch"
        ids = self.add(jobs, cache)
        if on_first_token is not None:
            on_first_token()
        done: dict[int, Completion] = {}
        while self.rows:
            if between_steps is not None:
                between_steps()
            done.update(self.step())
        return [done[i] for i in ids]


def decode(
    jobs: Sequence[Job],
    forward: Forward,
    cache: object,
    tokenizer,
    eos_ids: set[int],
    device: torch.device | str = "cpu",
    tokenizer_lock: threading.Lock | None = None,
    on_first_token: Callable[[], None] | None = None,
) -> list[Completion]:
    """Continue every job's prompt in one batch; each row stops on its own (``Decoder.run``).

    Args:
        jobs: the prompts, with their sampling parameters (``Job.adapter`` is the caller's:
            ``forward`` applies whatever adapters the rows need).
        forward: one model call (see ``Forward``); its ``rows`` index ``jobs``.
        cache: an empty KV cache (e.g. ``transformers.DynamicCache``), filled in place.
        tokenizer: decodes tokens for stop strings and the returned text.
        eos_ids: tokens that end a row (unless ``ignore_eos``); not part of the completion.
        device: where inputs are built.
        tokenizer_lock: held while decoding text (fast tokenizers are not thread-safe).
        on_first_token: called once, after the prefill, before the first tokens are chosen.

    Returns:
        One completion per job, in order. A row that fails on its own (sampling, seeding, text)
        ends with ``finish_reason="error"`` and the exception in ``Completion.error``; the others
        finish normally. A failing ``forward`` fails the whole call (see ``service.batcher``).
        ``Job.on_token`` (streaming) and ``SamplingParams.logprobs`` only observe a row: the
        tokens chosen are the same with or without them (a row whose ``on_token`` answers False
        ends early, finish reason ``"cancelled"``).
    """
    decoder = Decoder(forward, tokenizer, eos_ids, device, tokenizer_lock)
    return decoder.run(jobs, on_first_token, cache)
