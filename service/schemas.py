"""The /v1 request and response bodies, defined once as pydantic models.

Requests are validated with them (``validate``, called by ``service.api``) and ``/openapi.json`` is
generated from them (``service.openapi``), so the document cannot drift from what the routes
accept. The rules they follow:

- Types are strict, as JSON has them: ``"8"`` is not an integer, ``true`` is not a number.
- ``null`` means "not sent" for OpenAI's optional fields (OpenAI's clients send it).
- A bound that is a server setting (``MAX_TOKENS``, ...) is a ``Setting``: it is checked against
  the app's config (the validation context) and written into the document with its value.
- Unknown fields: ``POST /v1/adapters`` refuses them (``additionalProperties: false``); the
  completion routes ignore them, as OpenAI's clients send fields such as ``user``
  (``additionalProperties: true``).
- An error is a ``400`` whose message names the field: pydantic's type errors are phrased in
  ``_PHRASES``, a field's own rules by its ``Says``, ``Range`` or ``MaxLength``. In a message,
  ``{field}`` stands for the field's quoted path (``'stop'``, ``'descriptions[1]'``).

Checks that need the models (a description's normal form, a prompt's length in tokens, whether an
adapter exists) stay in ``service.api``. The response models document the answers; the routes
build plain dicts, and the tests check those against the models.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    WrapValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError, core_schema

from hypergen.conditions.demonstrations import MAX_EXAMPLES
from hypergen.conditions.document import MAX_DOCUMENT_CHARS
from hypergen.config import DTYPE_NAMES
from service.errors import APIError
from service.settings import DEFAULTS
from service.store import ADAPTER_ID

CHAT_ROLES = ("system", "user", "assistant")
MAX_STOP = 4
MAX_STOP_CHARS = 200
MAX_LOGPROBS = 20  # alternatives per token
MAX_JSON_DEPTH = 32  # arrays and objects inside each other; no valid request comes close
ERROR = "hypergen_request"  # the pydantic error type of the errors phrased here
_ASCII_DIGITS = re.compile(r"[0-9]{1,18}")  # str.isdigit() accepts "²", which int() refuses


# --- how a field is checked, documented and phrased ----------------------------------------------


@dataclass(frozen=True)
class Setting:
    """A bound that is a server setting, ``app.config[name]``: read from the validation context
    (``{"config": app.config}``; the defaults without one)."""

    name: str

    def value(self, context: Mapping[str, Any] | None) -> Any:
        config = (context or {}).get("config") or DEFAULTS
        return config[self.name]


def _resolve(bound: Any, info: ValidationInfo) -> Any:
    return bound.value(info.context) if isinstance(bound, Setting) else bound


def _document(schema: dict[str, Any], keyword: str, bound: Any) -> None:
    """Write ``keyword: bound`` into a JSON schema; a setting is written with its default value
    and named under ``x-setting`` (``service.openapi`` writes the served value there)."""
    if isinstance(bound, Setting):
        schema[keyword] = DEFAULTS[bound.name]
        schema.setdefault("x-setting", {})[keyword] = bound.name
    else:
        schema[keyword] = bound


def default_setting(name: str) -> Callable[[dict[str, Any]], None]:
    """A field's ``json_schema_extra``: its default is the server setting ``name``."""
    return lambda schema: _document(schema, "default", Setting(name))


def invalid(message: str, param: str | None = None) -> PydanticCustomError:
    """An error phrased here: ``message`` may hold ``{field}``; ``param`` names the field at fault
    where the error's location does not (checks of several fields)."""
    return PydanticCustomError(ERROR, "{message}", {"message": message, "param": param})


@dataclass(frozen=True)
class Range:
    """A number in [lo, hi], or (lo, hi] with ``lo_open``; ``hi`` may be a ``Setting``."""

    lo: float
    hi: Any
    lo_open: bool = False

    def __get_pydantic_core_schema__(self, source: Any, handler) -> core_schema.CoreSchema:
        return core_schema.with_info_wrap_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler) -> dict:
        json_schema = handler(schema)
        _document(json_schema, "exclusiveMinimum" if self.lo_open else "minimum", self.lo)
        _document(json_schema, "maximum", self.hi)
        return json_schema

    def _check(self, raw: Any, handler, info: ValidationInfo) -> Any:
        value, hi = handler(raw), _resolve(self.hi, info)
        if (self.lo < value if self.lo_open else self.lo <= value) and value <= hi:
            return value
        if isinstance(self.lo, int):
            raise invalid(f"{{field}} must be between {self.lo} and {hi}, got {raw}")
        interval = f"{'(' if self.lo_open else '['}{self.lo}, {hi}]"
        raise invalid(f"{{field}} must be in {interval}, got {raw}")


@dataclass(frozen=True)
class MaxLength:
    """At most ``limit`` characters (a string) or items (a list); ``limit`` may be a ``Setting``.
    ``message`` may use ``{n}`` (the length), ``{limit}`` and ``{field}``."""

    limit: Any
    message: str | None = None

    def __get_pydantic_core_schema__(self, source: Any, handler) -> core_schema.CoreSchema:
        return core_schema.with_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler) -> dict:
        json_schema = handler(schema)
        keyword = "maxLength" if json_schema.get("type") == "string" else "maxItems"
        _document(json_schema, keyword, self.limit)
        return json_schema

    def _check(self, value: Any, info: ValidationInfo) -> Any:
        limit = _resolve(self.limit, info)
        if len(value) <= limit:
            return value
        if self.message is not None:
            template = self.message
        elif isinstance(value, str):
            template = "{field} is {n} characters; the limit is {limit}"
        else:
            template = "{field} holds {n} items; the limit is {limit}"
        raise invalid(template.format(n=len(value), limit=limit, field="{field}"))


@dataclass(frozen=True)
class QueryInt:
    """A query parameter holding an integer in [lo, hi], in ASCII digits (``hi`` may be a
    ``Setting``)."""

    lo: int
    hi: Any

    def __get_pydantic_core_schema__(self, source: Any, handler) -> core_schema.CoreSchema:
        return core_schema.with_info_plain_validator_function(self._check)

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler) -> dict:
        json_schema: dict[str, Any] = {"type": "integer"}
        _document(json_schema, "minimum", self.lo)
        _document(json_schema, "maximum", self.hi)
        return json_schema

    def _check(self, raw: Any, info: ValidationInfo) -> int:
        hi = _resolve(self.hi, info)
        if isinstance(raw, str) and _ASCII_DIGITS.fullmatch(raw) and self.lo <= int(raw) <= hi:
            return int(raw)
        raise invalid(f"query parameter {{field}} must be an integer between {self.lo} and {hi}")


def Says(message: str) -> WrapValidator:
    """Any error in the value's own shape is answered with ``message``. An error inside one of
    its items (a list element: it keeps its index) and the errors phrased by ``Range`` or
    ``MaxLength`` pass through."""

    def check(value: Any, handler) -> Any:
        try:
            return handler(value)
        except ValidationError as err:
            errors = err.errors()
            if errors[0]["loc"] and isinstance(errors[0]["loc"][0], int):
                raise
            ours = [e for e in errors if e["type"] == ERROR]
            if ours:
                raise invalid(ours[0]["ctx"]["message"], ours[0]["ctx"]["param"]) from None
            raise invalid(message) from None

    return WrapValidator(check)


_PHRASES = {  # pydantic's error types in the API's words
    "string_type": "{field} must be a string",
    "int_type": "{field} must be an integer",
    "float_type": "{field} must be a number",
    "bool_type": "{field} must be a boolean",
    "missing": "{field} is required",
}


def _path(loc: tuple) -> str:
    """A location as the API names it: ``descriptions[1]``, ``messages[0].content``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def validate(model: type[BaseModel], data: Any, config: Mapping[str, Any]) -> Any:
    """``data`` checked against ``model`` under the server's ``config``.

    Raises:
        APIError: 400 naming the field (the first one at fault; all unknown ones at once).
    """
    try:
        return model.model_validate(data, context={"config": config})
    except ValidationError as err:
        raise _api_error(err, model) from None


def _api_error(err: ValidationError, model: type[BaseModel]) -> APIError:
    errors = err.errors(include_url=False)
    unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
    if unknown:
        expected = sorted(model.model_fields)
        return APIError(
            400, f"unknown field(s) {unknown}; expected some of {expected}", param=unknown[0]
        )
    error = errors[0]
    param = _path(error["loc"]) or None
    if error["type"] == ERROR:
        template, param = error["ctx"]["message"], error["ctx"]["param"] or param
    else:
        template = _PHRASES.get(error["type"], "{field}: " + error["msg"])
    return APIError(400, template.replace("{field}", f"'{param or 'body'}'"), param=param)


def _no_default(schema: dict[str, Any]) -> None:
    """For a field that may be left out but not sent as null: no ``default: null``."""
    schema.pop("default", None)


# --- requests ------------------------------------------------------------------------------------

Description = Annotated[StrictStr, MaxLength(Setting("MAX_DESCRIPTION_CHARS"))]
AdapterId = Annotated[str, Field(pattern=ADAPTER_ID.pattern, description="64 lowercase hex digits")]


MAX_LANGUAGE_CHARS = 16  # an ISO 639 code; the checkpoint's conditioner says which it knows


class Demonstration(BaseModel):
    """One input/output example of a task (the ``examples`` condition part)."""

    model_config = ConfigDict(extra="forbid")
    input: Description
    output: Description


class AdapterRequest(BaseModel):
    """A condition: at most one of description or descriptions, with the other parts the loaded
    checkpoint takes (``/healthz`` lists them as ``checkpoint.condition_parts``; a part it does not take, or
    one it needs and did not get, is a 400 naming them). Other parts apply to every description
    of a batch. A description is normalised (whitespace collapsed) before the whole condition is
    hashed into the adapter id: the same condition gives the same id."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"description": "Translate English to French."},
                {"descriptions": ["Answer with a date.", "Classify the sentiment."]},
            ],
        },
    )

    description: Description = Field(
        None, description="A task description.", json_schema_extra=_no_default
    )
    descriptions: Annotated[
        list[Description],
        Field(min_length=1),
        Says("{field} must be a non-empty list of strings"),
        MaxLength(Setting("MAX_DESCRIPTIONS")),
    ] = Field(
        None,
        description="Batch form: the new adapters are generated in one forward pass.",
        json_schema_extra=_no_default,
    )
    language: Annotated[StrictStr, MaxLength(MAX_LANGUAGE_CHARS)] = Field(
        None,
        description="An ISO 639-1 or 639-3 language code (checkpoints with a language part).",
        json_schema_extra=_no_default,
    )
    document: Annotated[StrictStr, MaxLength(MAX_DOCUMENT_CHARS)] = Field(
        None,
        description="A context document (checkpoints with a document part; none ships yet).",
        json_schema_extra=_no_default,
    )
    examples: Annotated[list[Demonstration], Field(min_length=1), MaxLength(MAX_EXAMPLES)] = Field(
        None,
        description="Demonstrations of the task (checkpoints with an examples part; none ships "
        "yet).",
        json_schema_extra=_no_default,
    )
    dtype: Annotated[
        Literal[DTYPE_NAMES], Says(f"{{field}} must be one of {list(DTYPE_NAMES)}")
    ] = Field("float32", description="Dtype of the stored tensors (part of the id).")

    @model_validator(mode="after")
    def _one_condition(self) -> AdapterRequest:
        sent = self.model_fields_set
        if {"description", "descriptions"} <= sent or not sent & {
            "description",
            "descriptions",
            *OTHER_PARTS,
        }:
            raise invalid("send exactly one of 'description' (a string) or 'descriptions' (a list)")
        return self

    def texts(self) -> list[tuple[str, str]]:
        """(param, description) of each description sent (none: a condition without one)."""
        if self.descriptions is not None:
            return [(f"descriptions[{i}]", d) for i, d in enumerate(self.descriptions)]
        return [] if self.description is None else [("description", self.description)]

    def other_parts(self) -> dict[str, Any]:
        """The condition parts other than the description that were sent, as plain JSON."""
        return {
            part: (
                [e.model_dump() for e in self.examples]
                if part == "examples"
                else getattr(self, part)
            )
            for part in OTHER_PARTS
            if getattr(self, part) is not None
        }


# condition parts besides the description (``hypergen.conditions``)
OTHER_PARTS = ("language", "document", "examples")


class AdapterPage(BaseModel):
    """The query of ``GET /v1/adapters`` (other parameters are ignored)."""

    limit: Annotated[int, QueryInt(1, Setting("MAX_PAGE_SIZE"))] = Field(
        None,
        description="Adapters per page (default PAGE_SIZE).",
        json_schema_extra=default_setting("PAGE_SIZE"),
    )
    offset: Annotated[int, QueryInt(0, 2**31)] = Field(0, description="Adapters to skip.")


MaxTokens = Annotated[StrictInt, Range(1, Setting("MAX_TOKENS"))]
TopLogprobs = Annotated[StrictInt, Range(0, MAX_LOGPROBS)]
StopString = Annotated[
    StrictStr,
    Field(min_length=1),
    MaxLength(MAX_STOP_CHARS, "each {field} string must be at most {limit} characters"),
]
_NULL_IS_AN_ERROR = ("prompt", "messages", "ignore_eos")  # elsewhere null is "not sent"


@dataclass(frozen=True, eq=False)  # hashed by identity: the value may be a list
class Only:
    """Only this JSON value passes: a number equal to it (not a boolean) where it is a number,
    the boolean itself where it is a boolean, as JSON schema's ``const`` reads."""

    value: Any

    def __get_pydantic_core_schema__(self, source: Any, handler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(self._check)

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler) -> dict:
        return {"const": self.value}

    def _check(self, value: Any) -> Any:
        same_kind = isinstance(value, bool) == isinstance(self.value, bool)
        if same_kind and type(value) in (int, float, bool, list) and value == self.value:
            return value
        raise PydanticCustomError("only", "only {value} passes", {"value": self.value})


def _unsupported(neutral: Any, why: str) -> Any:
    """A field of OpenAI's that is not supported: only null or its ``neutral`` value passes."""
    described = Field(description=f"{why}: only null or {neutral!r} passes")
    return Annotated[Annotated[Any, Only(neutral)] | None, Says(f"{{field}}: {why}"), described]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: StrictBool = Field(
        False, description="Add a last chunk with empty choices and the usage."
    )


def _completion_schema(example: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema's extras of a completion request: unknown fields are ignored, and the
    adapter is named by model or adapter_description."""
    return {
        "additionalProperties": True,
        "anyOf": [{"required": ["model"]}, {"required": ["adapter_description"]}],
        "examples": [example],
    }


class _CompletionBase(BaseModel):
    """What both completion routes take."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = Field(
        None,
        description="An adapter id (the LoRAX convention), or 'base' / the base model's name "
        "for the bare model. Required unless adapter_description is sent.",
    )
    adapter_description: Description | None = Field(
        None,
        description="Extra field: generate (or reuse) the adapter for this description and "
        "apply it; the response's model is its id.",
    )
    max_tokens: MaxTokens | None = Field(
        None,
        description="Tokens to generate at most (default DEFAULT_MAX_TOKENS).",
        json_schema_extra=default_setting("DEFAULT_MAX_TOKENS"),
    )
    temperature: Annotated[StrictFloat, Range(0.0, 2.0)] | None = Field(
        0.0,
        description="0 (the default) decodes greedily, and so does any value below 1e-5 "
        "(e.g. 1e-300 or 5e-324).",
    )
    top_p: Annotated[StrictFloat, Range(0.0, 1.0, lo_open=True)] | None = 1.0
    stop: (
        Annotated[
            StopString | Annotated[list[StopString], Field(max_length=MAX_STOP)],
            Says(f"{{field}} must be a non-empty string or a list of up to {MAX_STOP} of them"),
        ]
        | None
    ) = Field(None, description="Generation stops before any of these strings.")
    seed: Annotated[StrictInt, Range(-(2**63), 2**63 - 1)] | None = Field(
        None, description="Seeds sampling (temperature > 0); copy j of n samples with seed + j."
    )
    ignore_eos: StrictBool = Field(
        False, description="Extra field: keep generating past end-of-sequence (benchmarks)."
    )
    stream: StrictBool | None = Field(
        False,
        description="Server-sent events in OpenAI's chunk format, one per text delta, then "
        "'data: [DONE]'. Not with logprobs. A client that disconnects frees its batch slot.",
    )
    stream_options: (
        Annotated[StreamOptions, Says('{field} must be {"include_usage": true or false}')] | None
    ) = Field(None, description="With stream: true.")
    best_of: _unsupported(1, "best_of is not supported (send n for several completions)") = None
    echo: _unsupported(False, "echo is not supported") = None
    suffix: Annotated[None, Says("{field}: suffix is not supported")] = None
    tools: _unsupported([], "tools are not supported") = None
    functions: _unsupported([], "functions are not supported") = None
    frequency_penalty: _unsupported(0, "frequency_penalty is not supported") = None
    presence_penalty: _unsupported(0, "presence_penalty is not supported") = None

    @model_validator(mode="before")
    @classmethod
    def _null_is_not_sent(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {k: v for k, v in data.items() if v is not None or k in _NULL_IS_AN_ERROR}

    @model_validator(mode="after")
    def _together(self) -> _CompletionBase:
        if self.model is None and self.adapter_description is None:
            raise invalid(
                "'model' is required: an adapter id, or 'base' for the bare model", "model"
            )
        if self.stream and self.logprobs_wanted() is not None:
            raise invalid("logprobs are not supported with 'stream': true", "logprobs")
        if self.stream_options is not None and not self.stream:
            raise invalid("'stream_options' needs 'stream': true", "stream_options")
        return self

    def logprobs_wanted(self) -> int | None:
        """Alternatives to report per token; None: no logprobs."""
        raise NotImplementedError

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(_CompletionBase):
    """OpenAI's completion request; the adapter is chosen by model or adapter_description."""

    model_config = ConfigDict(
        json_schema_extra=_completion_schema(
            {"model": "base", "prompt": "The capital of France is", "max_tokens": 8}
        )
    )

    prompt: Annotated[
        StrictStr
        | Annotated[
            list[StrictStr],
            Field(min_length=1),
            MaxLength(Setting("MAX_PROMPTS"), "{field} holds {n} prompts; the limit is {limit}"),
        ],
        Says("{field} must be a string or a non-empty list of strings"),
    ]
    n: Annotated[StrictInt, Range(1, Setting("MAX_PROMPTS"))] | None = Field(
        1,
        description="Completions per prompt (choice index = prompt index * n + copy); prompts "
        "x n is at most MAX_PROMPTS.",
    )
    logprobs: TopLogprobs | None = Field(
        None,
        description="Return each generated token's log-probability and those of this many most "
        "likely tokens (0: the chosen one only), under the model's own distribution "
        "(temperature 1, no top_p).",
    )
    top_logprobs: Annotated[
        None,
        Says(
            "{field} belongs to /v1/chat/completions; here send 'logprobs': an integer "
            f"0-{MAX_LOGPROBS} (alternatives per token)"
        ),
    ] = None

    @model_validator(mode="after")
    def _copies(self, info: ValidationInfo) -> CompletionRequest:
        prompts, limit = len(self.prompts()), Setting("MAX_PROMPTS").value(info.context)
        if prompts * self.n > limit:
            raise invalid(
                f"{prompts} prompt(s) x n={self.n} is {prompts * self.n} completions; "
                f"the limit is {limit}",
                "n",
            )
        return self

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt

    def logprobs_wanted(self) -> int | None:
        return self.logprobs


class TextPart(BaseModel):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    role: Literal[CHAT_ROLES]
    content: StrictStr | list[TextPart] = Field(description="Text, or a list of text parts.")

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


def _message_errors(value: Any, handler) -> Any:
    """Errors in ``messages`` name the message at fault (``messages[i]``)."""
    try:
        return handler(value)
    except ValidationError as err:
        loc = err.errors()[0]["loc"]
        if not loc or not isinstance(loc[0], int):
            raise invalid("{field} must be a non-empty list of {role, content} objects") from None
        index, param = loc[0], f"messages[{loc[0]}]"
        if loc[1:2] != ("content",):
            raise invalid(
                f"'{param}' must be an object whose 'role' is one of {list(CHAT_ROLES)}", param
            ) from None
        parts = isinstance(value[index].get("content"), list)
        what = "parts must be text parts" if parts else "must be a string"
        raise invalid(f"'{param}.content' {what}", param) from None


class ChatCompletionRequest(_CompletionBase):
    """OpenAI's chat completion request, run through the model's chat template."""

    model_config = ConfigDict(
        json_schema_extra=_completion_schema(
            {
                "model": "base",
                "messages": [{"role": "user", "content": "What day comes after Monday?"}],
                "max_tokens": 8,
            }
        )
    )

    messages: Annotated[list[ChatMessage], Field(min_length=1), WrapValidator(_message_errors)]
    max_completion_tokens: MaxTokens | None = Field(
        None, description="OpenAI's newer name for max_tokens; wins when both are sent."
    )
    n: Annotated[StrictInt, Range(1, Setting("MAX_PROMPTS"))] | None = Field(
        1, description="Completions of the conversation (at most MAX_PROMPTS)."
    )
    logprobs: (
        Annotated[
            StrictBool,
            Says(
                "{field} must be a boolean here (true: each token's log-probability); "
                f"'top_logprobs' (0-{MAX_LOGPROBS}) adds the most likely alternatives"
            ),
        ]
        | None
    ) = Field(
        False,
        description="Return each generated token's log-probability (the model's own "
        "distribution: temperature 1, no top_p).",
    )
    top_logprobs: TopLogprobs | None = Field(
        None, description="With logprobs: true, also this many most likely tokens per position."
    )

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise invalid("'top_logprobs' needs 'logprobs': true", "top_logprobs")
        return self

    def logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


# --- responses -----------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong and, where possible, how to fix it.")
    type: str = Field(description="invalid_request_error, not_found_error, overloaded_error, ...")
    param: str | None = Field(description="The request field at fault.")
    code: str | None = Field(description="A stable machine-readable code (model_not_found, ...).")


class Error(BaseModel):
    """Every error, OpenAI style."""

    error: ErrorDetail


class Condition(BaseModel):
    """The normalised condition the adapter was made from (the parts the checkpoint takes)."""

    kind: str
    description: str | None = None
    language: str | None = None


class CheckpointRef(BaseModel):
    name: str
    hash: str
    trained_steps: int


class LoraSettings(BaseModel):
    """The LoRA a checkpoint of the lora kind emits."""

    rank: int
    alpha: float
    target_modules: list[str] = Field(description="The adapted linear modules, e.g. q_proj.")
    dtype: str


class BottleneckSettings(BaseModel):
    """The bottleneck adapters a checkpoint of the bottleneck kind emits."""

    size: int = Field(description="Bottleneck width m (down is m x hidden).")
    placement: Literal["houlsby", "pfeiffer"] = Field(
        description="houlsby: after the attention and the MLP block of every layer; pfeiffer: "
        "after the MLP block only."
    )
    non_linearity: str
    target_modules: list[str] = Field(description="The blocks an adapter follows, e.g. mlp.")
    dtype: str


class _AdapterBase(BaseModel):
    """What every stored adapter's metadata holds."""

    id: AdapterId = Field(
        description="sha256 of (checkpoint hash, normalised condition, adapter settings)."
    )
    object: Literal["adapter"]
    created: int
    condition: Condition
    base_model: str
    base_model_id: str
    checkpoint: CheckpointRef
    untrained: bool = Field(
        description="True when made by an untrained hypernetwork (a no-op adapter)."
    )
    warning: str | None = Field(None, description="Sent when untrained.")
    size_bytes: int
    download_url: str


class LoraAdapter(_AdapterBase):
    """A stored LoRA adapter's metadata; its download is a PEFT folder (loads with
    ``PeftModel.from_pretrained``)."""

    adapter_kind: Literal["lora"] = Field(description="What the adapter is.")
    lora: LoraSettings
    format: Literal["peft-lora"]


class BottleneckAdapter(_AdapterBase):
    """A stored bottleneck adapter's metadata; its download is an AdapterHub folder (loads with
    the ``adapters`` library's ``model.load_adapter(folder, use_safetensors=True)``, or
    ``hypergen.load_adapterhub``)."""

    adapter_kind: Literal["bottleneck"] = Field(description="What the adapter is.")
    bottleneck: BottleneckSettings
    format: Literal["adapterhub"]


# one adapter's metadata: its kind says which
Adapter = Annotated[LoraAdapter | BottleneckAdapter, Field(discriminator="adapter_kind")]
ADAPTER_KINDS = (LoraAdapter, BottleneckAdapter)  # for documented answers (service.openapi)


class AdapterList(BaseModel):
    """Adapters; a page of them (``GET``) or a batch just made (``POST``: no paging fields)."""

    object: Literal["list"]
    data: list[Adapter]
    total: int | None = None
    limit: int | None = None
    offset: int | None = None
    has_more: bool | None = None


class DeletedAdapter(BaseModel):
    id: AdapterId
    object: Literal["adapter"]
    deleted: Literal[True]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    parent: str | None = Field(None, description="An adapter's base model.")


class ModelList(BaseModel):
    """The base model, then the newest adapters (at most MAX_PAGE_SIZE)."""

    object: Literal["list"]
    data: list[ModelCard]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["stop", "length"]


class CompletionLogprobs(BaseModel):
    """Tokens as each decodes alone; text_offset: where each starts in text; log-probabilities
    that are not finite are null."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float | None]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = Field(description="null unless logprobs was sent.")
    finish_reason: FinishReason


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str = Field(description="The adapter id (or the base model) that answered.")
    choices: list[CompletionChoice]
    usage: Usage


class TokenLogprob(BaseModel):
    token: str
    logprob: float | None
    bytes: list[int]


class ChatTokenLogprob(TokenLogprob):
    top_logprobs: list[TokenLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = Field(description="null unless logprobs: true was sent.")
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str = Field(description="The adapter id (or the base model) that answered.")
    choices: list[ChatChoice]
    usage: Usage


class Health(BaseModel):
    """Ready: the served models, and whether the checkpoint is UNTRAINED."""

    status: Literal["ok"]
    untrained: bool
    warning: str | None = None
    base_model: str
    base_model_id: str
    base_model_dtype: str = Field(
        description="What the base model computes in (DTYPE; auto: bfloat16 on a CPU with AMX)."
    )
    checkpoint: dict[str, Any]
    lora: LoraSettings | None = Field(None, description="Sent when adapter_kind is lora.")
    bottleneck: BottleneckSettings | None = Field(
        None, description="Sent when adapter_kind is bottleneck."
    )
    adapters_stored: int
    auth_required: bool
    limits: dict[str, int]
    adapter_kind: Literal["lora", "bottleneck"] = Field(
        description="What the loaded checkpoint makes; ``checkpoint.condition_parts`` says what "
        "its condition is made of (POST /v1/adapters)."
    )
