"""The JSON API under ``/v1``: adapters, and OpenAI-compatible completions that apply them.

    POST   /v1/adapters                  {"description": ...} or {"descriptions": [...]}, + "language"
    GET    /v1/adapters                  ?limit=&offset=   newest first
    GET    /v1/adapters/<id>             metadata
    GET    /v1/adapters/<id>/download    zip of the adapter folder (PEFT LoRA or AdapterHub bottleneck)
    DELETE /v1/adapters/<id>
    GET    /v1/models                    the base model and stored adapters (OpenAI shape)
    POST   /v1/completions               OpenAI completions; ``model`` = an adapter id
    POST   /v1/chat/completions          OpenAI chat completions; same adapter choice

An adapter is chosen by ``model`` = its id (the LoRAX convention), or by the extra field
``adapter_description`` (generated on the fly and stored); ``model`` = ``base`` or the base
model's name runs the bare model. Adapters are applied as tensors, never through files, whatever
their kind (LoRA or bottleneck, as the checkpoint that made them).
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import math
import queue
import re
import time
import uuid
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    request,
    send_file,
    stream_with_context,
    url_for,
)

from hypergen.adapters.bottleneck import BottleneckWeights
from hypergen.adapters.lora import LoraWeights
from hypergen.decoding import Job, SamplingParams
from service import schemas
from service.batcher import Overloaded
from service.errors import APIError, error_body
from service.logprobs import chat_logprobs, completion_logprobs
from service.openapi import Reply, operation
from service.runtime import get_runtime
from service.schemas import (
    MAX_JSON_DEPTH,
    AdapterPage,
    AdapterRequest,
    ChatCompletionRequest,
    CompletionRequest,
    validate,
)
from service.store import valid_id
from service.streaming import DONE, Deltas, TokenStream, sse

logger = logging.getLogger(__name__)
bp = Blueprint("api", __name__, url_prefix="/v1")

_SURROGATE = re.compile("[\ud800-\udfff]")  # only lone ones survive JSON decoding


# --- request helpers -----------------------------------------------------------------------------


@bp.before_request
def require_api_key():
    """With ``API_KEYS`` set, every /v1 route needs ``Authorization: Bearer <key>`` (or ``X-API-Key``)."""
    keys = current_app.config["API_KEYS"]
    if not keys:
        return
    auth = request.headers.get("Authorization", "")
    given = (
        auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("X-API-Key", "")
    )
    if not given or not any(hmac.compare_digest(given.encode(), key.encode()) for key in keys):
        raise APIError(
            401,
            "missing or invalid API key: send 'Authorization: Bearer <key>'",
            code="invalid_api_key",
            headers={"WWW-Authenticate": 'Bearer realm="hypergen"'},
        )


@bp.before_request
def options():
    """``OPTIONS`` on a /v1 route answers JSON: the methods it allows (also in ``Allow``)."""
    if request.method != "OPTIONS" or request.url_rule is None:
        return None
    methods = sorted(current_app.make_default_options_response().allow)  # every rule's methods
    return {"object": "options", "allow": methods}, 200, {"Allow": ", ".join(methods)}


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _body() -> dict[str, Any]:
    """The request's JSON object (any content type, so plain ``curl -d`` works).

    Strict JSON (no NaN or Infinity), at most ``MAX_JSON_DEPTH`` levels deep, and valid Unicode
    (no lone surrogates such as ``"\\ud800"``): anything else is a 400, never a 500 later.
    """
    data = request.get_data(cache=True)  # over MAX_CONTENT_LENGTH: 413
    try:
        body = json.loads(data, parse_constant=_reject_constant)
    except RecursionError as err:
        raise APIError(
            400, f"the request body is nested deeper than {MAX_JSON_DEPTH} levels"
        ) from err
    except ValueError as err:  # includes UnicodeDecodeError and too-long integers
        raise APIError(400, f"the request body must be valid JSON ({err})") from err
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    _check_json(body)
    return body


def _check_json(body: dict[str, Any]) -> None:
    """Reject nesting deeper than ``MAX_JSON_DEPTH`` and strings (or keys) holding a lone UTF-16
    surrogate, which no tokenizer, hash or database accepts; iterative, so depth costs no stack."""
    stack: list[tuple[Any, str, int]] = [(body, "", 1)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            _check_unicode(value, path)
        elif isinstance(value, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise APIError(
                    400, f"the request body is nested deeper than {MAX_JSON_DEPTH} levels"
                )
            if isinstance(value, list):
                stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))
                continue
            for key, item in value.items():
                _check_unicode(key, path)  # a bad key is reported at its parent
                stack.append((item, f"{path}.{key}" if path else key, depth + 1))


def _check_unicode(text: str, path: str) -> None:
    if _SURROGATE.search(text):
        raise APIError(
            400,
            f"'{path or 'body'}' holds a lone UTF-16 surrogate (e.g. \\ud800 without its pair): "
            "send valid Unicode",
            param=path or None,
            code="invalid_unicode",
        )


def _condition(parts: dict[str, Any], params: dict[str, str]) -> Any:
    """The one place request parts (``description``, ``language``, ...) become a normalised
    condition for the loaded checkpoint: 400 naming what it takes when a part is extra or
    missing, or naming the part whose value is invalid. ``params``: part -> request field."""
    engine = get_runtime().engine
    try:
        return engine.condition(parts)
    except (TypeError, ValueError) as err:
        takes = engine.condition_parts
        if len(takes) == 1 and set(parts) == set(takes):  # the one part's value is invalid
            param = params[takes[0]]
            raise APIError(400, f"'{param}': {err}", param=param) from err
        raise APIError(400, str(err)) from err


def _adapter_id_arg(adapter_id: str) -> str:
    if not valid_id(adapter_id):
        raise APIError(
            400,
            "an adapter id is 64 lowercase hexadecimal characters",
            param="id",
            code="invalid_id",
        )
    return adapter_id


def _metadata(record: dict[str, Any]) -> dict[str, Any]:
    """A stored record as the API shows it (with its download URL and the untrained warning)."""
    out = dict(record)
    out.setdefault(
        "adapter_kind", "lora"
    )  # records stored before the key: the service was LoRA-only
    out["download_url"] = url_for("api.download_adapter", adapter_id=record["id"], _external=True)
    if record.get("untrained"):
        out["warning"] = "made by an UNTRAINED hypernetwork: this adapter is a no-op"
    return out


# --- adapters ------------------------------------------------------------------------------------


ADAPTERS = (*schemas.ADAPTER_KINDS, schemas.AdapterList)  # the single form (a kind), the batch form
ADAPTER_ID = {"adapter_id": schemas.AdapterId}


@bp.post("/adapters")
@operation(
    "Make adapters from descriptions (or return the stored ones)",
    {
        201: Reply(
            "Created (a batch: at least one created). The single form returns an Adapter with a "
            "Location header; the batch form an AdapterList without paging fields.",
            ADAPTERS,
            headers={
                "Location": {
                    "description": "The adapter (single form)",
                    "schema": {"type": "string"},
                }
            },
        ),
        200: Reply("Already stored: same input, same id", ADAPTERS),
    },
    body=AdapterRequest,
    errors=(400, 413),
)
def create_adapters():
    wanted = validate(AdapterRequest, _body(), current_app.config)
    # the other parts (a language...) apply to every description of a batch
    others = wanted.other_parts()
    rows = [({"description": text}, param) for param, text in wanted.texts()] or [
        ({}, "description")
    ]
    normalized = [
        _condition({**parts, **others}, {"description": param, **{p: p for p in others}})
        for parts, param in rows
    ]
    adapters = get_runtime().adapters.get_or_create(normalized, wanted.dtype)
    status = 201 if any(a.created for a in adapters) else 200
    if wanted.descriptions is None:
        record = adapters[0].record
        location = url_for("api.get_adapter", adapter_id=record["id"])
        return _metadata(record), status, {"Location": location}
    return {"object": "list", "data": [_metadata(a.record) for a in adapters]}, status


@bp.get("/adapters")
@operation(
    "List stored adapters, newest first",
    {200: Reply("A page", schemas.AdapterList)},
    query=AdapterPage,
    errors=(400,),
)
def list_adapters():
    config = current_app.config
    page = validate(AdapterPage, request.args.to_dict(), config)
    limit = config["PAGE_SIZE"] if page.limit is None else page.limit
    records, total = get_runtime().store.list(limit, page.offset)
    return {
        "object": "list",
        "data": [_metadata(r) for r in records],
        "total": total,
        "limit": limit,
        "offset": page.offset,
        "has_more": page.offset + len(records) < total,
    }


def _record_or_404(adapter_id: str) -> dict[str, Any]:
    record = get_runtime().store.get(_adapter_id_arg(adapter_id))
    if record is None:
        raise APIError(404, f"adapter {adapter_id} not found", param="id", code="adapter_not_found")
    return record


@bp.get("/adapters/<adapter_id>")
@operation(
    "Adapter metadata",
    {200: Reply("Metadata", schemas.ADAPTER_KINDS)},
    path=ADAPTER_ID,
    errors=(400, 404),
)
def get_adapter(adapter_id: str):
    return _metadata(_record_or_404(adapter_id))


@bp.get("/adapters/<adapter_id>/download")
@operation(
    "The adapter folder as a zip, in its format (the metadata's format): peft-lora, "
    "adapter_config.json + adapter_model.safetensors (PeftModel.from_pretrained); adapterhub, "
    "adapter_config.json + adapter.safetensors (the adapters library's model.load_adapter)",
    {
        200: Reply(
            "Zip archive", media="application/zip", schema={"type": "string", "format": "binary"}
        )
    },
    path=ADAPTER_ID,
    errors=(400, 404),
)
def download_adapter(adapter_id: str):
    _record_or_404(adapter_id)
    try:
        data = get_runtime().store.zip_bytes(adapter_id)
    except FileNotFoundError as err:  # deleted meanwhile
        raise APIError(404, f"adapter {adapter_id} not found", code="adapter_not_found") from err
    return send_file(
        io.BytesIO(data),
        mimetype="application/zip",
        as_attachment=True,
        download_name=f"hypergen-{adapter_id[:16]}.zip",
    )


@bp.delete("/adapters/<adapter_id>")
@operation(
    "Delete an adapter",
    {200: Reply("Deleted", schemas.DeletedAdapter)},
    path=ADAPTER_ID,
    errors=(400, 404),
)
def delete_adapter(adapter_id: str):
    if not get_runtime().store.delete(_adapter_id_arg(adapter_id)):
        raise APIError(404, f"adapter {adapter_id} not found", param="id", code="adapter_not_found")
    return {"id": adapter_id, "object": "adapter", "deleted": True}


@bp.get("/models")
@operation(
    "The base model and the newest adapters (OpenAI shape)",
    {200: Reply("Models", schemas.ModelList)},
)
def list_models():
    engine = get_runtime().engine
    records, _ = get_runtime().store.list(limit=current_app.config["MAX_PAGE_SIZE"])
    base = {"id": engine.base_model, "object": "model", "created": 0, "owned_by": "hypergen"}
    adapters = [
        {
            "id": r["id"],
            "object": "model",
            "created": r["created"],
            "owned_by": "hypergen",
            "parent": r["base_model"],
        }
        for r in records
    ]
    return {"object": "list", "data": [base, *adapters]}


# --- completions ---------------------------------------------------------------------------------


def _resolve_adapter(
    wanted: schemas.CompletionRequest | schemas.ChatCompletionRequest,
) -> tuple[str, LoraWeights | BottleneckWeights | None, Callable | None]:
    """(the model name to echo, the adapter to apply or None for the bare model, and for a new
    adapter the call that stores it: ``_submit`` runs it beside the forward pass where a CPU is
    free for it, else just before)."""
    runtime = get_runtime()
    engine = runtime.engine
    base_names = {"base", engine.base_model, engine.base_model_id}
    model = wanted.model
    if wanted.adapter_description is not None:
        description = _condition(
            {"description": wanted.adapter_description}, {"description": "adapter_description"}
        )
        adapter_id = engine.adapter_id(description)
        if model not in (None, adapter_id, *base_names):
            raise APIError(
                400,
                "'model' names another adapter than 'adapter_description'; send one of them",
                param="model",
            )
        [adapter] = runtime.adapters.get_or_create(
            [description], with_weights=True, defer_save=True
        )
        return adapter.id, adapter.weights, adapter.save
    if not model:
        raise APIError(
            400, "'model' is required: an adapter id, or 'base' for the bare model", param="model"
        )
    if model in base_names:
        return model, None, None
    try:
        lora = runtime.adapters.find(model) if valid_id(model) else None
    except ValueError as err:  # stored for another base model or checkpoint layout
        raise APIError(422, str(err), param="model", code="adapter_incompatible") from err
    if lora is None:
        raise APIError(
            404,
            f"model '{model}' not found: use an adapter id from POST /v1/adapters, 'base', "
            "or send 'adapter_description'",
            param="model",
            code="model_not_found",
        )
    return model, lora, None


def _jobs(
    prompts: list[list[int]],
    lora: LoraWeights | BottleneckWeights | None,
    params: SamplingParams,
    n: int,
):
    """n jobs per prompt, prompt by prompt (choice index = prompt index * n + copy); with a
    seed, copy j samples with seed + j so the copies differ."""
    return [
        Job(
            ids,
            lora,
            params if j == 0 or params.seed is None else replace(params, seed=params.seed + j),
        )
        for ids in prompts
        for j in range(n)
    ]


def _sampling(
    wanted: schemas.CompletionRequest | schemas.ChatCompletionRequest, max_tokens: int | None
) -> SamplingParams:
    stop = [wanted.stop] if isinstance(wanted.stop, str) else wanted.stop or []
    return SamplingParams(
        max_tokens=max_tokens or current_app.config["DEFAULT_MAX_TOKENS"],
        temperature=float(wanted.temperature),
        top_p=float(wanted.top_p),
        stop=tuple(stop),
        seed=wanted.seed,
        ignore_eos=wanted.ignore_eos,
        logprobs=wanted.logprobs_wanted(),
    )


def _check_prompt(ids: list[int], params: SamplingParams, param: str) -> list[int]:
    engine, config = get_runtime().engine, current_app.config
    if not ids:
        raise APIError(400, f"'{param}' must not be empty", param=param)
    if len(ids) > config["MAX_PROMPT_TOKENS"]:
        raise APIError(
            400,
            f"'{param}' is {len(ids)} tokens; the limit is {config['MAX_PROMPT_TOKENS']}",
            param=param,
        )
    if engine.max_positions and len(ids) + params.max_tokens > engine.max_positions:
        raise APIError(
            400,
            f"{len(ids)} prompt tokens + max_tokens {params.max_tokens} exceed the model's context "
            f"of {engine.max_positions}",
            param="max_tokens",
        )
    return ids


@contextmanager
def _announced():
    """Tell the batcher, from the start of a completion request, that its jobs are coming (see
    ``service.batcher``); withdrawn if the request fails before they are queued."""
    batcher = get_runtime().batcher
    # waiting counts from when the server queued the request for a thread (service.server)
    g.arrived = request.environ.get("hypergen.queued_at") or time.monotonic()
    batcher.announce()
    g.announced = True
    try:
        yield
    finally:
        if g.pop("announced", False):
            batcher.withdraw()


def _overloaded(message: str, retry_after: float | None) -> APIError:
    seconds = max(1, math.ceil(retry_after or 1))
    return APIError(
        503,
        f"the server is busy: {message}",
        code="overloaded",
        headers={"Retry-After": str(seconds)},
    )


def _submit(jobs: list[Job], while_waiting: Callable | None) -> tuple[list, float, float]:
    """Queue the jobs and run ``while_waiting`` (if any): after queueing them, so that it runs
    beside their forward pass, where a CPU is free for it (``Runtime.core_to_spare``), else
    before. Returns (futures, the time by which every job must have started:
    ``MAX_QUEUE_WAIT_S`` after the request arrived, the time by which they must be done:
    ``REQUEST_TIMEOUT_S`` from now)."""
    runtime, config = get_runtime(), current_app.config
    batcher = runtime.batcher
    if while_waiting is not None and not runtime.core_to_spare:
        while_waiting()
        while_waiting = None
    arrived = g.get("arrived") or time.monotonic()
    try:
        futures = batcher.submit(
            jobs, announced=g.pop("announced", False), waited_s=time.monotonic() - arrived
        )
    except Overloaded as err:
        raise _overloaded(str(err), err.retry_after) from err
    if while_waiting is not None:
        while_waiting()
    now = time.monotonic()
    return futures, arrived + config["MAX_QUEUE_WAIT_S"], now + config["REQUEST_TIMEOUT_S"]


def _too_long() -> APIError:
    timeout = current_app.config["REQUEST_TIMEOUT_S"]
    return APIError(504, f"generation took longer than {timeout:g} s", code="timeout")


def _give_up_unless_started(futures: list, deadline: float) -> None:
    """At the queue deadline: jobs not started yet give up their places (cancelled) and the
    request is answered 503 with Retry-After (504 if ``deadline`` has passed too)."""
    timed_out = time.monotonic() >= deadline
    cancelled = [f.cancel() for f in futures]  # a list: every job, not just the first
    if timed_out:
        raise _too_long()
    if any(cancelled):
        batcher = get_runtime().batcher
        raise _overloaded(
            f"the request waited {current_app.config['MAX_QUEUE_WAIT_S']:g} s "
            "(MAX_QUEUE_WAIT_S) without its turn",
            batcher.estimated_wait(batcher.waiting),
        )


def _usage(results: list, n: int) -> dict[str, int]:
    """Token counts (a prompt once, not once per each of its ``n`` copies), also as metrics."""
    metrics = get_runtime().metrics
    prompt = sum(r.prompt_tokens for r in results[::n])
    completion = sum(r.completion_tokens for r in results)
    metrics.inc("hypergen_tokens_total", prompt, kind="prompt")
    metrics.inc("hypergen_tokens_total", completion, kind="completion")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _run(jobs: list[Job], while_waiting: Callable | None = None, n: int = 1):
    """Queue the jobs, run ``while_waiting`` (if any), wait for the results; (results, usage).

    A job not started ``MAX_QUEUE_WAIT_S`` after the request arrived gives up its place: the
    request's pending jobs are cancelled and it is answered 503 with Retry-After.
    """
    futures, queue_deadline, deadline = _submit(jobs, while_waiting)
    results = []
    for future in futures:
        try:
            wait = min(queue_deadline, deadline) - time.monotonic()
            results.append(future.result(timeout=max(0.0, wait)))
            continue
        except FutureTimeout:
            pass
        _give_up_unless_started(futures, deadline)
        try:  # every job has started: wait for the rest of REQUEST_TIMEOUT_S
            results.append(future.result(timeout=max(0.0, deadline - time.monotonic())))
        except FutureTimeout as err:
            for f in futures:
                f.cancel()
            raise _too_long() from err
    return results, _usage(results, n)


def _stream(
    jobs: list[Job],
    while_waiting: Callable | None,
    n: int,
    chunk: Callable[..., dict],
    include_usage: bool,
) -> Response:
    """Run the jobs with their tokens streamed as server-sent events (``service.streaming``).

    The answer starts once the first token is there, so queueing and timeout errors before it
    are ordinary JSON errors (503, 504). ``chunk(index, text, finish_reason)`` builds one event
    (``chunk(index, None, None)``: a choice's opening event, or None; ``chunk(None, usage)``:
    the usage event).
    """
    engine, config = get_runtime().engine, current_app.config
    stream = TokenStream()
    jobs = [replace(job, on_token=stream.hook(i)) for i, job in enumerate(jobs)]
    futures, queue_deadline, deadline = _submit(jobs, while_waiting)
    stream.watch(futures)
    try:
        try:
            first = stream.get(min(queue_deadline, deadline) - time.monotonic())
        except queue.Empty:
            _give_up_unless_started(futures, deadline)
            try:
                first = stream.get(deadline - time.monotonic())
            except queue.Empty as err:
                raise _too_long() from err
    except APIError:
        stream.close()
        raise
    deltas = [Deltas(engine.detokenize, job.params.stop) for job in jobs]

    def events():
        try:
            for index in range(len(jobs)):
                opening = chunk(index, None, None)
                if opening is not None:
                    yield sse(opening)
            results: list = [None] * len(jobs)
            event = first
            while True:
                index, token = event
                if token is not None:
                    delta = deltas[index].add(token)
                    if delta:
                        yield sse(chunk(index, delta, None))
                else:
                    try:
                        result = stream.futures[index].result(timeout=0)
                    except Exception as err:  # noqa: BLE001 - told to the client, then the end
                        logger.warning("a streamed completion failed: %r", err)
                        message = f"internal error ({type(err).__name__}); see the server log"
                        yield sse(error_body(500, message, code="internal_error"))
                        break
                    results[index] = result
                    yield sse(chunk(index, deltas[index].finish(result.text), result.finish_reason))
                    if all(r is not None for r in results):
                        usage = _usage(results, n)
                        if include_usage:
                            yield sse(chunk(None, usage))
                        break
                try:
                    event = stream.get(deadline - time.monotonic())
                except queue.Empty:
                    timeout = config["REQUEST_TIMEOUT_S"]
                    message = f"generation took longer than {timeout:g} s"
                    yield sse(error_body(504, message, code="timeout"))
                    break
            yield DONE
        finally:  # also when the client went away (waitress closes the generator)
            stream.close()

    return Response(
        stream_with_context(events()),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


COMPLETION_ERRORS = (400, 404, 413, 422, 503, 504)


@bp.post("/completions")
@operation(
    "OpenAI-compatible completion with an adapter applied",
    {200: Reply("Completion", schemas.Completion, events=True)},
    body=CompletionRequest,
    errors=COMPLETION_ERRORS,
)
def completions():
    with _announced():
        return _completions(validate(CompletionRequest, _body(), current_app.config))


def _completions(wanted: CompletionRequest):
    params = _sampling(wanted, wanted.max_tokens)
    prompts, n, stream = wanted.prompts(), wanted.n, wanted.stream
    model, lora, store_later = _resolve_adapter(wanted)
    engine = get_runtime().engine
    ids = [_check_prompt(engine.tokenize(p), params, "prompt") for p in prompts]
    jobs = _jobs(ids, lora, params, n)
    head = {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
    }
    if stream:

        def chunk(index, text, finish_reason=None):
            if index is None:  # the usage event
                return {**head, "choices": [], "usage": text}
            if text is None:  # no opening event
                return None
            choice = {"index": index, "text": text, "logprobs": None}
            return {**head, "choices": [{**choice, "finish_reason": finish_reason}]}

        return _stream(jobs, store_later, n, chunk, wanted.include_usage())
    results, usage = _run(jobs, store_later, n)
    return {
        **head,
        "choices": [
            {
                "index": i,
                "text": r.text,
                "logprobs": completion_logprobs(r, engine.detokenize),
                "finish_reason": r.finish_reason,
            }
            for i, r in enumerate(results)
        ],
        "usage": usage,
    }


@bp.post("/chat/completions")
@operation(
    "OpenAI-compatible chat completion with an adapter applied (the model's chat template)",
    {200: Reply("Chat completion", schemas.ChatCompletion, events=True)},
    body=ChatCompletionRequest,
    errors=COMPLETION_ERRORS,
)
def chat_completions():
    with _announced():
        return _chat_completions(validate(ChatCompletionRequest, _body(), current_app.config))


def _chat_completions(wanted: ChatCompletionRequest):
    params = _sampling(wanted, wanted.max_completion_tokens or wanted.max_tokens)
    messages = [{"role": m.role, "content": m.text()} for m in wanted.messages]
    n, stream = wanted.n, wanted.stream
    model, lora, store_later = _resolve_adapter(wanted)
    engine = get_runtime().engine
    try:
        ids = engine.tokenize_chat(messages)
    except ValueError as err:
        raise APIError(400, str(err), param="messages") from err
    jobs = _jobs([_check_prompt(ids, params, "messages")], lora, params, n)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}
    if stream:
        head["object"] = "chat.completion.chunk"

        def chunk(index, text, finish_reason=None):
            if index is None:  # the usage event
                return {**head, "choices": [], "usage": text}
            if text is None:  # each choice opens with the role
                delta = {"role": "assistant", "content": ""}
            else:
                delta = {"content": text} if text else {}
            choice = {"index": index, "delta": delta, "logprobs": None}
            return {**head, "choices": [{**choice, "finish_reason": finish_reason}]}

        return _stream(jobs, store_later, n, chunk, wanted.include_usage())
    results, usage = _run(jobs, store_later, n)
    return {
        **head,
        "object": "chat.completion",
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": r.text},
                "logprobs": chat_logprobs(r, engine.detokenize),
                "finish_reason": r.finish_reason,
            }
            for i, r in enumerate(results)
        ],
        "usage": usage,
    }
