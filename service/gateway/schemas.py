"""Request bodies of the OpenAI-compatible routes, validated into one engine-neutral form.

Bodies are parsed here rather than by Litestar so a bad field answers 400 with ``param`` naming it,
as the OpenAI API does (the official client surfaces ``param`` to the caller).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.core.errors import BadRequest

MAX_STOP = 4  # the OpenAI API's limit on stop sequences
MAX_STOP_CHARS = 1000  # per stop sequence (a stop longer than any completion can never match usefully)
MAX_TOP_LOGPROBS = 20  # chat: top_logprobs 0-20
MAX_COMPLETION_LOGPROBS = 5  # legacy completions: logprobs 0-5
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_N = 128  # OpenAI's bound on n (only 1 is served here)


class _Body(BaseModel):
    # Unknown fields are ignored as the OpenAI API does (clients send vendor extras); fields we know
    # but cannot honour are rejected below with a message that names them.
    # Strict: a type the document does not allow is refused (lax parsing took 0 for false, "5" for 5).
    model_config = ConfigDict(extra="ignore", populate_by_name=True, strict=True)

    # OpenAI's ranges; every value that passes here is one the engine can run (a row that fails in the
    # engine fails alone, but bad input is refused before it reaches a shared batch).
    model: Annotated[str, Field(min_length=1, max_length=200)]
    max_tokens: Annotated[int, Field(ge=1, le=INT64_MAX)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    seed: Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0, allow_inf_nan=False)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0, allow_inf_nan=False)] | None = None
    logit_bias: dict[str, float] | None = None
    user: Annotated[str, Field(max_length=256)] | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else (value or [])
        if len(items) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are allowed, got {len(items)}")
        if any(not s for s in items):
            raise ValueError("stop sequences must be non-empty strings")
        if any(len(s) > MAX_STOP_CHARS for s in items):
            raise ValueError(f"each stop sequence may have at most {MAX_STOP_CHARS} characters")
        return value

    @model_validator(mode="after")
    def _unsupported(self) -> _Body:
        if self.n not in (None, 1):
            raise _ParamError("n", "only n=1 is supported; send several requests for several choices")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0, 0.0):
                raise _ParamError(name, f"{name} is not supported by this server; omit it or send 0")
        if self.logit_bias:
            raise _ParamError("logit_bias", "logit_bias is not supported by this server; omit it")
        if self.stream_options is not None and not self.stream:
            raise _ParamError("stream_options", "stream_options is only allowed when stream is true")
        return self

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.get("include_usage"))


class _ParamError(ValueError):
    """A validator's error that names the parameter explicitly (pydantic's loc is empty in model validators)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class _TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionBody(_Body):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1, le=INT64_MAX)] | None = None
    logprobs: bool | None = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _chat_rules(self) -> ChatCompletionBody:
        if self.top_logprobs is not None and not self.logprobs:
            raise _ParamError("top_logprobs", "top_logprobs requires logprobs to be true")
        if self.tools:
            raise _ParamError("tools", "tool calling is not supported by this server")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise _ParamError("response_format", "only response_format type 'text' is supported")
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def chat_messages(self) -> list[dict[str, str]]:
        # "developer" is the newer name of "system"; chat templates only know the older one.
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in self.messages
        ]


class CompletionBody(_Body):
    prompt: str | list[str] | list[int] | list[list[int]]
    # OpenAI's legacy default is 16 tokens; keep it so clients get what they expect.
    max_tokens: Annotated[int, Field(ge=1)] | None = 16
    logprobs: Annotated[int, Field(ge=0, le=MAX_COMPLETION_LOGPROBS)] | None = None
    echo: bool | None = False
    suffix: str | None = None
    best_of: Annotated[int, Field(ge=1, le=20)] | None = None

    @model_validator(mode="after")
    def _completion_rules(self) -> CompletionBody:
        if self.echo:
            raise _ParamError("echo", "echo is not supported by this server")
        if self.suffix:
            raise _ParamError("suffix", "suffix (insertion) is not supported by this server")
        if self.best_of not in (None, 1):
            raise _ParamError("best_of", "only best_of=1 is supported")
        return self

    def single_prompt(self) -> str | list[int]:
        """The one prompt of this request (batches of prompts are not supported: send several requests)."""
        prompt = self._single_prompt()
        # Refused here, as the document says, not only by the engine (a replica without a model took
        # an empty prompt and answered 503).
        if not prompt:
            raise BadRequest("prompt must not be empty", param="prompt", code="invalid_value")
        if isinstance(prompt, list) and min(prompt) < 0:
            raise BadRequest("token ids must not be negative", param="prompt", code="invalid_value")
        return prompt

    def _single_prompt(self) -> str | list[int]:
        p = self.prompt
        if isinstance(p, str):
            return p
        if not p:
            raise BadRequest("prompt must not be empty", param="prompt", code="invalid_value")
        items: list[Any] = list(p)
        if all(isinstance(x, int) for x in items):
            return [int(x) for x in items]
        if len(items) != 1:
            raise BadRequest(
                "only one prompt per request is supported; send one request per prompt",
                param="prompt",
                code="invalid_value",
            )
        first = items[0]
        return first if isinstance(first, str) else [int(x) for x in first]


_B = TypeVar("_B", bound="_Body")


@dataclass(frozen=True)
class Sampling:
    """The sampling knobs shared by both routes, in engine terms."""

    max_tokens: int | None
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0


def sampling_of(body: ChatCompletionBody | CompletionBody) -> Sampling:
    if isinstance(body, ChatCompletionBody):
        want, top, limit = bool(body.logprobs), body.top_logprobs or 0, body.token_limit
    else:
        want, top, limit = body.logprobs is not None, body.logprobs or 0, body.max_tokens
    return Sampling(
        max_tokens=limit,
        # OpenAI's default temperature is 1.0 (sampling); keep the API's semantics.
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=body.stops,
        logprobs=want,
        top_logprobs=top,
    )


def parse_body(model: type[_B], data: Any) -> _B:
    """Validate a JSON body; the first problem becomes a 400 naming its parameter."""
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object", code="invalid_request")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        ctx_error = (error.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _ParamError):
            raise BadRequest(str(ctx_error), param=ctx_error.param, code="invalid_value") from None
        loc = [str(part) for part in error.get("loc", ())]
        param = _param_name(loc)
        message = error.get("msg", "invalid value").removeprefix("Value error, ")
        kind = error.get("type", "")
        code = "missing_required_parameter" if kind == "missing" else "invalid_value"
        where = f"'{param}'" if param else "body"
        raise BadRequest(f"Invalid value for {where}: {message}", param=param, code=code) from None


def _param_name(loc: list[str]) -> str | None:
    # pydantic locs for unions carry type tags ("str", "list[...]"); keep field names and indices only.
    parts: list[str] = []
    for part in loc:
        if part.isdigit():
            parts.append(f"[{part}]")
        elif part.isidentifier():
            parts.append(("." if parts else "") + part)
    return "".join(parts) or None


# --- The bodies as the OpenAPI document states them -------------------------------------------------
# pydantic's schema of each body, with what the validators above check on top of the field types.
_NULL = {"type": "null"}
_STOP_TEXT = {"type": "string", "minLength": 1, "maxLength": MAX_STOP_CHARS}
_COMMON_RULES: dict[str, Any] = {
    "n": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 1}, _NULL], "description": "Only 1."},
    "presence_penalty": {"anyOf": [{"type": "number", "minimum": 0, "maximum": 0}, _NULL]},
    "frequency_penalty": {"anyOf": [{"type": "number", "minimum": 0, "maximum": 0}, _NULL]},
    "logit_bias": {"anyOf": [{"type": "object", "maxProperties": 0}, _NULL]},
    "stop": {
        "anyOf": [_STOP_TEXT, {"type": "array", "items": _STOP_TEXT, "maxItems": MAX_STOP}, _NULL],
    },
}
_STREAM_OPTIONS_NEED_STREAM = {
    "anyOf": [
        {"not": {"required": ["stream_options"]}},
        {"properties": {"stream_options": _NULL}},
        {"required": ["stream"], "properties": {"stream": {"const": True}}},
    ]
}
_CHAT_RULES: dict[str, Any] = {
    "tools": {"anyOf": [{"type": "array", "maxItems": 0}, _NULL], "description": "Not supported."},
    "response_format": {
        "anyOf": [{"type": "object", "properties": {"type": {"enum": ["text", None]}}}, _NULL],
    },
}
_TOP_LOGPROBS_NEED_LOGPROBS = {
    "anyOf": [
        {"not": {"required": ["top_logprobs"]}},
        {"properties": {"top_logprobs": _NULL}},
        {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}},
    ]
}
_TOKEN_IDS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
_COMPLETION_RULES: dict[str, Any] = {
    "prompt": {
        "anyOf": [
            {"type": "string", "minLength": 1},
            _TOKEN_IDS,
            {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": 1},
            {"type": "array", "items": _TOKEN_IDS, "minItems": 1, "maxItems": 1},
        ],
        "description": "One prompt: text, or token ids (a list of one of either is accepted too).",
    },
    "echo": {"anyOf": [{"type": "boolean", "const": False}, _NULL]},
    "suffix": {"anyOf": [{"type": "string", "maxLength": 0}, _NULL]},
    "best_of": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 1}, _NULL]},
}


def _inline(value: Any, definitions: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str):
            return _inline(definitions[ref.rsplit("/", 1)[-1]], definitions)
        return {key: _inline(item, definitions) for key, item in value.items()}
    if isinstance(value, list):
        return [_inline(item, definitions) for item in value]
    return value


def openapi_schema(model: type[ChatCompletionBody] | type[CompletionBody]) -> dict[str, Any]:
    """The JSON Schema of a body for the OpenAPI document (self-contained: no references)."""
    raw = model.model_json_schema()
    schema: dict[str, Any] = _inline(raw, raw.pop("$defs", {}))
    rules = [_STREAM_OPTIONS_NEED_STREAM]
    extra = dict(_COMMON_RULES)
    if model is ChatCompletionBody:
        extra.update(_CHAT_RULES)
        rules.append(_TOP_LOGPROBS_NEED_LOGPROBS)
    else:
        extra.update(_COMPLETION_RULES)
    for name, rule in extra.items():
        schema["properties"][name] = {**rule, "title": schema["properties"][name].get("title", name)}
    schema["allOf"] = rules
    return schema
