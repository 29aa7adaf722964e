"""The one decode loop: batched generation with a KV cache, one prefill, then one token per row
per step. The service's completions and the evaluation's greedy answers both run it.

Axes: b row (one prompt each), n token, v vocabulary.

Rows are left-padded so that every row's last prompt token sits in the last column; position ids
count real tokens only, so a row's numbers are the same as when it runs alone. A row leaves the
batch as soon as it finishes (an end token, a stop string or its own ``max_tokens``): its KV
cache rows and its adapter rows are dropped, so short requests do not pay for long ones.

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
# ``rows`` are the indices (into the original jobs) of the rows still in the batch.
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


def adapter_forward(
    model: torch.nn.Module, adapters=None, autocast_dtype: torch.dtype | None = None
) -> Forward:
    """The usual ``Forward``: ``model`` with row k's adapter applied to row k.

    Args:
        model: a causal LM (not edited: adapters go on through ``hypergen.adapters.apply`` hooks).
        adapters: one adapter per row of the batch, or a single one for every row, or None for
            the bare model; anything ``apply_adapters`` takes that has ``select(rows)``
            (``LoraWeights``, ``BottleneckWeights``, the service's ``service.batched`` stacks).
        autocast_dtype: run the model under ``torch.autocast`` with this dtype (None: off).
    """
    from hypergen.adapters.apply import apply_adapters

    cache_kw, keep_kw = model_call_names(model)
    device = next(model.parameters()).device
    shared = adapters is not None and len(adapters) == 1
    current = [adapters]

    def forward(rows, input_ids, attention_mask, position_ids, cache):
        lora = current[0]
        if lora is not None and not shared and len(lora) != len(rows):
            lora = current[0] = adapters.select(rows.to(device))  # finished rows left
        kwargs = {cache_kw: cache, "use_cache": True}
        if keep_kw:
            kwargs[keep_kw] = 1
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
        return out.logits[:, -1]

    return forward


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
    """Continue every job's prompt in one batch; each row stops on its own.

    Args:
        jobs: the prompts, with their sampling parameters (``Job.adapter`` is the caller's:
            ``forward`` applies whatever adapters the rows need).
        forward: one model call (see ``Forward``).
        cache: an empty KV cache (e.g. ``transformers.DynamicCache``), filled in place.
        tokenizer: decodes tokens for stop strings and the returned text.
        eos_ids: tokens that end a row (unless ``ignore_eos``); not part of the completion.
        device: where inputs are built.
        tokenizer_lock: held while decoding text (fast tokenizers are not thread-safe).
        on_first_token: called once, after the prefill has chosen every row's first token.

    Returns:
        One completion per job, in order. A row that fails on its own (sampling, seeding, text)
        ends with ``finish_reason="error"`` and the exception in ``Completion.error``; the others
        finish normally. A failing ``forward`` fails the whole call (see ``service.batcher``).
        ``Job.on_token`` (streaming) and ``SamplingParams.logprobs`` only observe a row: the
        tokens chosen are the same with or without them (a row whose ``on_token`` answers False
        ends early, finish reason ``"cancelled"``).
    """
    lock = tokenizer_lock or nullcontext()
    b = len(jobs)
    input_ids, mask, positions = (
        t.to(device) for t in left_pad([j.prompt_ids for j in jobs], pad_token_id(tokenizer))
    )
    generated: list[list[int]] = [[] for _ in jobs]
    logprobs = [[] if j.params.logprobs is not None else None for j in jobs]
    texts: list[str | None] = [None] * b
    finish: list[str | None] = [None] * b
    errors: list[Exception | None] = [None] * b

    def fail(row: int, err: Exception) -> None:
        """One row's own failure ends that row only; the batch goes on without it."""
        logger.exception("row %d of a batch of %d failed", row, b, exc_info=err)
        errors[row], finish[row] = err, "error"

    generators: list[torch.Generator | None] = [None] * b
    for row, job in enumerate(jobs):
        if not job.params.greedy:
            seed = job.params.seed if job.params.seed is not None else random.randrange(2**63)
            try:
                generators[row] = torch.Generator().manual_seed(seed)
            except (RuntimeError, ValueError, OverflowError) as err:
                fail(row, err)

    rows = torch.arange(b)  # original indices of the rows still decoding
    logits = forward(rows, input_ids, mask, positions, cache)  # (b v)
    next_position = positions[:, -1] + 1  # (b,)
    if on_first_token is not None:
        on_first_token()
    while True:
        chosen = []
        greedy = logits.argmax(-1).tolist()  # one op for all rows; sampling rows redo theirs
        want = [
            jobs[row].params.logprobs or 0 for row in rows.tolist() if logprobs[row] is not None
        ]
        if want:  # (b v) log-probabilities and each row's top tokens, once for the whole step
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            top_lp, top_ids = log_probs.topk(min(max(want), log_probs.shape[-1]), dim=-1)
        for k, row in enumerate(rows.tolist()):
            if finish[row] is not None:  # failed before its first step
                chosen.append(greedy[k])
                continue
            job = jobs[row]
            try:
                token = (
                    greedy[k]
                    if job.params.greedy
                    else _sample(logits[k], job.params, generators[row])
                )
                chosen.append(token)
                if token in eos_ids and not job.params.ignore_eos:
                    finish[row] = "stop"
                    continue
                generated[row].append(token)
                wanted = job.on_token is None or job.on_token(token) is not False
                if logprobs[row] is not None:
                    n_top = job.params.logprobs
                    logprobs[row].append(
                        TokenLogprob(
                            float(log_probs[k, token]),
                            list(zip(top_ids[k, :n_top].tolist(), top_lp[k, :n_top].tolist())),
                        )
                    )
                if job.params.stop:
                    with lock:
                        text = tokenizer.decode(generated[row], skip_special_tokens=True)
                    cut = _first_stop(text, job.params.stop)
                    if cut is not None:
                        texts[row], finish[row] = text[:cut], "stop"
                        continue
                if len(generated[row]) >= job.params.max_tokens:
                    finish[row] = "length"
                elif not wanted:  # nobody reads this row any more: free its place in the batch
                    finish[row] = "cancelled"
            except Exception as err:  # noqa: BLE001 - isolate the row, keep the batch
                if len(chosen) == k:
                    chosen.append(greedy[k])
                fail(row, err)
        keep = torch.tensor([finish[row] is None for row in rows.tolist()])
        if not keep.any():
            break
        step_ids = torch.tensor(chosen, device=device)[keep][:, None]  # (b 1)
        if not keep.all():  # finished rows leave the batch
            kept = keep.nonzero().squeeze(1).to(device)
            cache.batch_select_indices(kept)
            mask, next_position, rows = mask[kept], next_position[kept], rows[keep]
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        logits = forward(rows, step_ids, mask, next_position[:, None], cache)
        next_position = next_position + 1

    with lock:
        for row in range(b):
            if texts[row] is None and errors[row] is None:
                try:
                    texts[row] = tokenizer.decode(generated[row], skip_special_tokens=True)
                except Exception as err:  # noqa: BLE001 - this row only
                    fail(row, err)
    return [
        Completion(
            texts[row] or "",
            generated[row],
            finish[row],
            len(jobs[row].prompt_ids),
            errors[row],
            logprobs[row],
        )
        for row in range(b)
    ]
