"""``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models``: the OpenAI wire format.

The model runs on the replica's serving backend (:mod:`service.serving`: the embedded engine or an
OpenAI-compatible upstream pool). Streaming answers are server-sent events. A request is queued in the
backend before the response starts, so queue-full (429 + Retry-After), unknown model (404), bad
parameters (400) and an alias no upstream can serve (503) are ordinary error responses, not broken
streams. If the client goes away mid-stream the backend request is cancelled.
"""

from __future__ import annotations

import functools
import json
import logging
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath
from litestar.response import Stream

from service.auth.dependencies import Principal, provide_principal
from service.core.errors import BadRequest, ServiceError, error_body
from service.core.openapi import PLAIN, SECURITY, errors, operation
from service.core.state import Resources
from service.deployments.serving import fingerprint, get_serving
from service.gateway import limits
from service.gateway import openai_format as fmt
from service.gateway.errors import ModelNotFound, map_engine_error
from service.gateway.names import ADAPTER_PREFIX, Target, can_use_base, resolve
from service.gateway.runtime import BASE_MODEL_NAME, get_backend
from service.gateway.schemas import (
    ChatCompletionBody,
    CompletionBody,
    openapi_schema,
    parse_body,
    sampling_of,
)
from service.observability.gateway import Flight
from service.observability.metrics import metrics_if_any
from service.serving import errors as serving_errors
from service.serving.backend import ServingBackend
from service.serving.types import Prompt

logger = logging.getLogger("obliviate.gateway")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


MAX_JSON_DEPTH = 32  # the deepest OpenAI body (messages -> content parts -> ...) needs far fewer


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def _json_body(request: Request[Any, Any, Any]) -> Any:
    raw = await request.body()
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest(
            f"The request body is nested too deeply (at most {MAX_JSON_DEPTH} levels)", code="invalid_json"
        ) from None
    except ValueError:
        raise BadRequest("The request body is not valid JSON", code="invalid_json") from None
    _check_json(data, check_surrogates=b"\\u" in raw)
    return data


def _check_json(data: Any, *, check_surrogates: bool) -> None:
    """400 for JSON nested deeper than MAX_JSON_DEPTH, or holding a lone UTF-16 surrogate (``"\\ud800"``):
    valid JSON, but no tokenizer can encode it, and it used to surface as a 500."""
    stack: list[tuple[Any, int, str]] = [(data, 1, "")]
    while stack:
        value, depth, where = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise BadRequest(
                    f"The request body is nested too deeply (at most {MAX_JSON_DEPTH} levels)",
                    code="invalid_json",
                )
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(item, dict | list) or (check_surrogates and isinstance(item, str)):
                    path = (
                        f"{where}[{key}]"
                        if isinstance(key, int)
                        else (f"{where}.{key}" if where else str(key))
                    )
                    stack.append((item, depth + 1, path))
                if check_surrogates and isinstance(key, str):
                    _check_text(key, where or None)
        elif check_surrogates and isinstance(value, str):
            _check_text(value, where or None)


def _check_text(text: str, param: str | None) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(
            "The text holds an unpaired UTF-16 surrogate (e.g. \\ud800 without its pair), which is not valid "
            "Unicode; send the character's full surrogate pair or the character itself",
            param=param,
            code="invalid_value",
        ) from None


_COMPLETION_ERRORS = errors(
    400,
    401,
    403,
    404,
    409,
    413,
    429,
    503,
    s400="Invalid JSON or parameter (`param` names it), a prompt over the length limits or the model's context.",
    s403="`base` needs an operator key.",
    s404="Unknown model, or one this key may not use.",
    s409="The model's adapter failed its integrity check.",
    s503="No model on this replica, or the alias cannot serve its deployed version (`alias_unavailable`).",
)


class OpenAIController(Controller):
    path = "/v1"
    tags = ["OpenAI-compatible"]
    dependencies = {"principal": Provide(provide_principal)}
    security = SECURITY

    @post(
        "/chat/completions",
        status_code=200,
        summary="Chat completion (OpenAI-compatible)",
        operation_class=operation(body=openapi_schema(ChatCompletionBody)),
        responses=_COMPLETION_ERRORS,
    )
    async def chat_completions(
        self,
        request: Request[Any, Any, Any],
        resources: NamedDependency[Resources],
        principal: NamedDependency[Principal],
    ) -> Response[Any]:
        body = parse_body(ChatCompletionBody, await _json_body(request))
        messages = body.chat_messages()
        _cap_prompt(resources, sum(len(m["content"]) for m in messages), "messages")
        backend = get_backend(resources)
        target = await resolve(resources, principal, body.model)
        await limits.admit_request(resources, principal.tenant)
        try:
            # Off the event loop: a long prompt must not stall every other request and /health/live.
            prompt = await backend.prepare_chat(messages)
        except Exception as exc:
            raise map_engine_error(exc, model=body.model, prompt_param="messages") from None
        return await _complete(resources, principal, backend, body, target, prompt, chat=True)

    @post(
        "/completions",
        status_code=200,
        summary="Text completion (OpenAI-compatible)",
        operation_class=operation(body=openapi_schema(CompletionBody)),
        responses=_COMPLETION_ERRORS,
    )
    async def completions(
        self,
        request: Request[Any, Any, Any],
        resources: NamedDependency[Resources],
        principal: NamedDependency[Principal],
    ) -> Response[Any]:
        body = parse_body(CompletionBody, await _json_body(request))
        raw_prompt: str | list[int] = body.single_prompt()
        _cap_prompt(resources, len(raw_prompt), "prompt")
        backend = get_backend(resources)
        target = await resolve(resources, principal, body.model)
        await limits.admit_request(resources, principal.tenant)
        try:
            prompt = await backend.prepare_text(raw_prompt)  # off the event loop, as for chat
        except Exception as exc:
            raise map_engine_error(exc, model=body.model, prompt_param="prompt") from None
        return await _complete(resources, principal, backend, body, target, prompt, chat=False)

    @get("/models", summary="Models this key may use, with lineage", responses=errors(401))
    async def list_models(
        self, resources: NamedDependency[Resources], principal: NamedDependency[Principal]
    ) -> dict[str, Any]:
        return {"object": "list", "data": await _models(resources, principal)}

    @get("/models/{model_id:path}", summary="One model", operation_class=PLAIN, responses=errors(401, 404))
    async def get_model(
        self,
        model_id: FromPath[str],
        resources: NamedDependency[Resources],
        principal: NamedDependency[Principal],
    ) -> dict[str, Any]:
        model_id = model_id.lstrip("/")
        for item in await _models(resources, principal):
            if item["id"] == model_id:
                return item
        raise ModelNotFound(model_id)


def _cap_prompt(resources: Resources, size: int, param: str) -> None:
    """Refuse an over-long prompt by its characters (or token ids) before any tokenizer time is spent."""
    cap = int(resources.settings.gateway_max_prompt_chars)
    if size > cap:
        raise BadRequest(
            f"The prompt has {size} characters; this server accepts at most {cap} "
            "(OBLIVIATE_GATEWAY_MAX_PROMPT_CHARS). Shorten it.",
            param=param,
            code="prompt_too_long",
        )


async def _submit(
    resources: Resources,
    principal: Principal,
    backend: ServingBackend,
    body: Any,
    target: Target,
    prompt: Prompt,
    stream: bool,
) -> tuple[Any, Target]:
    prompt_param = "messages" if isinstance(body, ChatCompletionBody) else "prompt"
    sampling = sampling_of(body)
    for attempt in range(2):
        try:
            if stream:
                return await backend.stream(prompt, target.engine_name, sampling), target
            return await backend.generate(prompt, target.engine_name, sampling), target
        except ServiceError:
            raise
        except Exception as exc:
            unknown = isinstance(exc, serving_errors.UnknownModel)
            lost = isinstance(exc, serving_errors.AliasUnavailable)
            if lost:
                get_serving(resources).wake.set()  # converge now: re-warm, or mark the alias unavailable
            if (unknown or lost) and target.public == target.engine_name:
                # An alias taken out of the backend since it was resolved (its version cannot be loaded
                # here): 503 alias_unavailable, as for requests that arrive after.
                get_serving(resources).check_servable(target.public)
            # A request adapter can be evicted (LRU) between loading and queueing: load it again once.
            if unknown and target.public.startswith(ADAPTER_PREFIX) and attempt == 0:
                get_serving(resources).fingerprints.pop(target.engine_name, None)
                target = await resolve(resources, principal, target.public)
                continue
            raise map_engine_error(exc, model=target.public, prompt_param=prompt_param) from None
    raise AssertionError("unreachable")


async def _complete(
    resources: Resources,
    principal: Principal,
    backend: ServingBackend,
    body: ChatCompletionBody | CompletionBody,
    target: Target,
    prompt: Prompt,
    *,
    chat: bool,
) -> Response[Any]:
    serving = get_serving(resources)
    sampling = sampling_of(body)
    want_logprobs = sampling.logprobs
    completion_cap = sampling.max_tokens or int(resources.settings.engine_max_tokens)
    reservation = await limits.reserve_tokens(resources, principal.tenant, prompt.size + completion_cap)
    flights = limits.in_flight(resources)
    try:
        flights.acquire(principal.tenant, int(resources.settings.gateway_max_in_flight_per_tenant))
    except BaseException:
        await reservation.settle(0)
        raise
    flight = Flight(metrics_if_any(resources), target.public, stream=bool(body.stream))
    if not body.stream:
        try:
            result, target = await _submit(resources, principal, backend, body, target, prompt, stream=False)
        except BaseException:
            flight.finish("error")
            await reservation.settle(0)
            raise
        finally:
            flights.release(principal.tenant)
        flight.finish("ok", int(result.usage.prompt_tokens), int(result.usage.completion_tokens))
        await reservation.settle(int(result.usage.prompt_tokens) + int(result.usage.completion_tokens))
        build = fmt.chat_completion if chat else fmt.text_completion
        return Response(
            build(
                completion_id=fmt.new_id("chatcmpl" if chat else "cmpl"),
                model=target.public,
                fingerprint=serving.fingerprint_of(result.adapter_id),
                result=result,
                want_logprobs=want_logprobs,
            )
        )
    try:
        tokens, target = await _submit(resources, principal, backend, body, target, prompt, stream=True)
    except BaseException:
        flight.finish("error")
        flights.release(principal.tenant)
        await reservation.settle(0)
        raise
    writer = fmt.ChunkWriter(
        chat=chat,
        model=target.public,
        fingerprint=serving.fingerprint_of(tokens.adapter_id),
        include_usage=body.include_usage,
        want_logprobs=want_logprobs,
    )
    release = _Once(functools.partial(flights.release, principal.tenant))
    events = _events(tokens, writer, reservation, prompt.size, release, flight)
    # A stream whose body is never iterated (the client left before it started) runs no ``finally``:
    # when the generator is collected, stop its generation and give the tenant's in-flight slot back.
    weakref.finalize(events, _abandon, tokens, release, flight)
    return Stream(events, media_type="text/event-stream", headers=SSE_HEADERS)


def _abandon(tokens: Any, release: Callable[[], None], flight: Flight) -> None:
    tokens.cancel()
    release()
    flight.finish("cancelled")


class _Once:
    """Call ``fn`` the first time only."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn: Callable[[], None] | None = fn

    def __call__(self) -> None:
        fn, self.fn = self.fn, None
        if fn is not None:
            fn()


async def _events(
    tokens: Any,
    writer: fmt.ChunkWriter,
    reservation: limits.TokenReservation,
    prompt_tokens: int,
    release: Callable[[], None],
    flight: Flight,
) -> AsyncIterator[bytes]:
    generated = 0
    outcome, usage = "cancelled", None
    try:
        first = writer.first()
        if first is not None:
            yield first
        finish, usage = "stop", None
        async for event in tokens:
            generated += 1
            flight.token()
            chunk = writer.token(event.text, event.logprob)
            if chunk is not None:
                yield chunk
            if event.finish_reason is not None:
                finish, usage = event.finish_reason, event.usage
        if usage is None and tokens.result is not None:
            finish, usage = tokens.result.finish_reason, tokens.result.usage
        outcome = "ok"
        for chunk in writer.finish(finish, usage):
            yield chunk
    except Exception as exc:
        outcome = "error"
        # Headers are gone; the error travels as an SSE event, which the openai client raises.
        logger.warning("stream failed: %s", type(exc).__name__)
        yield fmt.sse(
            error_body("The model failed while streaming this response", "server_error", "engine_error")
        )
    finally:
        release()
        if usage is not None:
            flight.finish(outcome, int(usage.prompt_tokens), int(usage.completion_tokens))
        else:
            flight.finish(outcome, prompt_tokens, generated)
        await tokens.aclose()
        await reservation.settle(prompt_tokens + generated)


async def _models(resources: Resources, principal: Principal) -> list[dict[str, Any]]:
    """The names this key may use: aliases (with their version), base (privileged keys), own adapters."""
    from sqlalchemy import select

    from service.deployments.models import AdapterVersion
    from service.forget.models import ForgetRequest
    from service.gateway.names import _SERVABLE

    serving = get_serving(resources)
    created = int(resources.extras.get("started_at", 0)) or fmt.now()
    out: list[dict[str, Any]] = []
    base_visible = can_use_base(principal)
    if base_visible:
        out.append(
            fmt.model_object(
                BASE_MODEL_NAME,
                created=created,
                owned_by="obliviate",
                root=BASE_MODEL_NAME,
                parent=None,
                version=0,
            )
        )
    own_versions: dict[str, AdapterVersion] = {}
    async with resources.sessionmaker() as session:
        own_rows = (
            await session.execute(
                select(
                    ForgetRequest.id,
                    ForgetRequest.status,
                    ForgetRequest.created_at,
                    ForgetRequest.deployed_version,
                )
                .where(
                    ForgetRequest.tenant == principal.tenant,
                    ForgetRequest.status.in_(_SERVABLE),
                    ForgetRequest.adapter_path.is_not(None),
                )
                .order_by(ForgetRequest.id)
            )
        ).all()
        for version in (
            await session.scalars(select(AdapterVersion).where(AdapterVersion.tenant == principal.tenant))
        ).all():
            if version.request_id:
                own_versions[version.request_id] = version
    for alias in serving.aliases():
        view = serving.view(alias)
        assert view is not None
        out.append(
            fmt.model_object(
                alias,
                created=int(view.updated_at.timestamp()) if view.updated_at else created,
                owned_by="obliviate",
                root=BASE_MODEL_NAME,
                # Lineage: which version the alias serves and what it was composed on. Version ids are
                # opaque; whose request a version came from is not shown to other tenants.
                version=view.version,
                version_id=view.version_id,
                parent=view.parent_id,
                fingerprint=fingerprint(view.sha256),
                # False while this replica cannot load that version (requests answer 503 alias_unavailable).
                available=serving.fault(alias) is None,
            )
        )
    for row in own_rows:
        own = own_versions.get(row.id)
        out.append(
            fmt.model_object(
                ADAPTER_PREFIX + row.id,
                created=int(row.created_at.timestamp()),
                owned_by=principal.tenant,
                root=BASE_MODEL_NAME,
                request_id=row.id,
                status=row.status,
                alias=own.alias if own else None,
                version=own.version if own else None,
                version_id=own.id if own else None,
                parent=own.parent_id if own else None,
            )
        )
    return out
