"""TGI's HTTP API as an aiohttp application, in front of ecosched's router (the `Backend`).

Routes, with TGI's semantics (`router/src/server.rs`; schemas in TGI's `docs/openapi.json`):

    POST /                      compat: `stream` false -> JSON list [GenerateResponse]; true -> SSE
    POST /generate              GenerateResponse, with TGI's `x-*` timing headers
    POST /generate_stream       SSE of StreamResponse; errors are events, with HTTP 200
    POST /v1/completions        OpenAI completions      (http_openai)
    POST /v1/chat/completions   OpenAI chat completions (http_openai)
    POST /tokenize              [{id, text, start, stop}]
    GET  /info                  TGI's Info, plus `HttpSettings.info_extra`
    GET  /health, /ping, /      200 empty, or 503 {"error": "unhealthy", "error_type": "healthcheck"}
    GET  /metrics               Prometheus text (RouterMetrics)
    GET  /v1/models             the one model

The request path of a generation: body decoding (`http_schema`, axum's rejections) -> a permit
(429 when none is free) -> validation and tokenization (`http_validation`, 422 with TGI's
messages) -> the router (`Backend.generate`) -> the response (`http_infer`). A client that goes away
cancels its handler (the app turns on aiohttp's `handler_cancellation`, as axum drops the future of
a closed connection), which closes the router's event stream.
"""

from __future__ import annotations

import contextlib
import hmac
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from aiohttp import web

from .http_infer import Infer, StreamToken, token_json
from .http_io import SseStream, body_error_response, dumps, error_response, json_response, read_body
from .http_metrics import RouterMetrics
from .http_openai import OpenAiRoutes, jinja_chat_prompt, plain_chat_prompt
from .http_schema import BodyError, TextRequest, decode_compat, decode_generate
from .http_settings import HttpSettings
from .http_validation import RequestError, Validator
from .types import Backend

__all__ = ["HttpSettings", "RouterMetrics", "make_app"]

INFER_KEY = web.AppKey("ecosched_tgi_infer", Infer)
METRICS_KEY = web.AppKey("ecosched_tgi_metrics", RouterMetrics)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_app(
    backend: Backend,
    settings: HttpSettings,
    tokenizer: Any,
    metrics: RouterMetrics | None = None,
    *,
    rng: random.Random | None = None,
) -> web.Application:
    """TGI's HTTP API over `backend`. `tokenizer` is a `tokenizers.Tokenizer` (the one the shards
    use); `metrics` defaults to a fresh RouterMetrics, reachable as `app[METRICS_KEY]`; `rng`
    draws the seeds of requests that give none."""
    metrics = metrics or RouterMetrics(settings.max_input_tokens, settings.max_total_tokens)
    validator = Validator(settings, tokenizer, metrics, rng)
    infer = Infer(backend, validator, settings, metrics)
    middlewares = [_errors] if settings.api_key is None else [_bearer(settings.api_key), _errors]
    app = web.Application(
        client_max_size=settings.payload_limit,
        middlewares=middlewares,
        handler_args={"handler_cancellation": True},
    )
    app[INFER_KEY] = infer
    app[METRICS_KEY] = metrics
    routes = _TgiRoutes(infer, settings)
    chat_prompt = (
        jinja_chat_prompt(settings.chat_template, settings.bos_token, settings.eos_token)
        if settings.chat_template
        else plain_chat_prompt
    )
    openai = OpenAiRoutes(infer, settings, chat_prompt)
    app.router.add_post("/", routes.compat_generate)
    app.router.add_post("/generate", routes.generate)
    app.router.add_post("/generate_stream", routes.generate_stream)
    app.router.add_post("/v1/completions", openai.completions)
    app.router.add_post("/v1/chat/completions", openai.chat)
    app.router.add_post("/tokenize", routes.tokenize)
    for path in ("/", "/health", "/ping"):
        app.router.add_get(path, routes.health, allow_head=False)
    app.router.add_get("/info", routes.info)
    app.router.add_get("/metrics", routes.metrics)
    app.router.add_get("/v1/models", routes.models)

    async def close_validator(_: web.Application) -> None:
        validator.close()

    app.on_cleanup.append(close_validator)
    return app


def _bearer(api_key: str) -> Any:
    """TGI's --api-key: every POST must carry `Authorization: Bearer <key>`; GETs (health, info,
    metrics) stay open, as in TGI's router."""
    expected = api_key.encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "POST":
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
                return web.Response(status=401)
        return await handler(request)

    return check


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refusals raised anywhere in a handler become TGI's responses."""
    try:
        return await handler(request)
    except BodyError as err:
        return body_error_response(err)
    except RequestError as err:
        return error_response(err)


def stream_response_json(item: StreamToken, req: TextRequest) -> dict[str, Any]:
    """TGI's `StreamResponse`; the last one carries the whole text (after the prompt when
    `return_full_text`) and, when `details`, TGI's `StreamDetails`."""
    p = req.parameters
    generated_text = details = None
    if item.end is not None:
        generated_text = (req.inputs if p.return_full_text else "") + item.end.generated_text
        if p.details:
            details = {
                "finish_reason": item.end.finish_reason.value,
                "generated_tokens": item.end.generated_tokens,
                "seed": item.end.seed,
                "input_length": item.input_length,
            }
    return {"index": item.index, "token": token_json(item.token), "generated_text": generated_text, "details": details}


class _TgiRoutes:
    """The handlers of TGI's own routes."""

    def __init__(self, infer: Infer, settings: HttpSettings) -> None:
        self.infer = infer
        self.settings = settings

    async def generate(self, request: web.Request) -> web.StreamResponse:
        start_s = time.monotonic()
        req = await read_body(request, decode_generate)
        body, headers, _ = await self.infer.generate_response(req, start_s)
        return json_response(body, headers=headers)

    async def generate_stream(self, request: web.Request) -> web.StreamResponse:
        start_s = time.monotonic()
        return await self._stream(request, await read_body(request, decode_generate), start_s)

    async def compat_generate(self, request: web.Request) -> web.StreamResponse:
        """POST /: `return_full_text` defaults by pipeline tag, as in TGI; a JSON list when not
        streaming (the api-inference shape the `text-generation` client reads)."""
        start_s = time.monotonic()
        compat = await read_body(request, decode_compat)
        req = compat.request
        if req.parameters.return_full_text is None:
            parameters = replace(req.parameters, return_full_text=self.settings.compat_return_full_text)
            req = replace(req, parameters=parameters)
        if compat.stream:
            return await self._stream(request, req, start_s)
        body, headers, _ = await self.infer.generate_response(req, start_s)
        return json_response([body], headers=headers)

    async def _stream(self, request: web.Request, req: TextRequest, start_s: float) -> web.StreamResponse:
        sse = SseStream(request, self.infer.stream_headers(req), self.settings.sse_keep_alive_s)
        async with sse, contextlib.aclosing(self.infer.stream(req, start_s)) as items:
            async for item in items:
                payload = item.body() if isinstance(item, RequestError) else stream_response_json(item, req)
                await sse.send(dumps(payload))
        return sse.response

    async def tokenize(self, request: web.Request) -> web.StreamResponse:
        req = await read_body(request, decode_generate)
        return json_response(await self.infer.validator.tokenize(req))

    async def health(self, request: web.Request) -> web.StreamResponse:
        if await self.infer.backend.health():
            return web.Response(status=200)
        return json_response({"error": "unhealthy", "error_type": "healthcheck"}, status=503)

    async def info(self, request: web.Request) -> web.StreamResponse:
        return json_response(self.settings.info())

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        metrics = self.infer.metrics
        metrics.queue_size(self.infer.backend.queue_size)
        return web.Response(body=metrics.render(), headers={"Content-Type": metrics.content_type})

    async def models(self, request: web.Request) -> web.StreamResponse:
        """TGI's `ModelsInfo` (its OpenAPI document names `ModelInfo`, but the route answers a list)."""
        model = {"id": self.settings.model_id, "object": "model", "created": 0, "owned_by": self.settings.model_id}
        return json_response({"object": "list", "data": [model]})
