"""HTTP input and output shared by the routes: reading a JSON body as axum's `Json` extractor does,
error responses, and server-sent events as TGI sends them (axum's `Sse` with its default
keep-alive: one `data: <json>` event per message, and a `:` comment whenever the stream has been
silent for `keep_alive_s`, so proxies do not cut a request that waits in the queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, TypeVar

from aiohttp import web

from .http_schema import TOO_LARGE_ERROR, BodyError, load_json
from .http_validation import RequestError

T = TypeVar("T")

KEEP_ALIVE_COMMENT = b":\n\n"  # axum's keep-alive event: an empty comment


def dumps(value: Any) -> str:
    """Compact JSON, non-ASCII kept as is (as serde_json writes it)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def json_response(value: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(text=dumps(value), status=status, headers=headers, content_type="application/json")


def error_response(err: RequestError) -> web.Response:
    """TGI's `(StatusCode, Json<ErrorResponse>)`."""
    return json_response(err.body(), err.status)


def body_error_response(err: BodyError) -> web.Response:
    """axum's `JsonRejection` response: the status and a plain-text message."""
    return web.Response(text=err.text, status=err.status, content_type="text/plain")


async def read_body(request: web.Request, decode: Callable[[Any], T]) -> T:
    """The request's JSON decoded by `decode`; raises BodyError as axum's `Json<T>` rejects."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyError(413, TOO_LARGE_ERROR) from None
    return decode(load_json(raw, request.headers.get("Content-Type", "")))


class SseStream:
    """One SSE response. Use as `async with SseStream(...) as sse: await sse.send(text)`; return
    `sse.response` from the handler. Sends after the client left raise ConnectionResetError."""

    def __init__(self, request: web.Request, headers: Mapping[str, str], keep_alive_s: float) -> None:
        self.request = request
        self.response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **headers}
        )
        self._keep_alive_s = keep_alive_s
        self._last_write_s = time.monotonic()
        self._lock = asyncio.Lock()
        self._keep_alive: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SseStream:
        await self.response.prepare(self.request)
        self._keep_alive = asyncio.create_task(self._keep_alive_loop())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._keep_alive is not None:
            self._keep_alive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keep_alive
        if exc_type is None:
            with contextlib.suppress(ConnectionError):
                await self.response.write_eof()

    async def send(self, data: str) -> None:
        """One event; `data` is one line (JSON or `[DONE]`)."""
        await self._write(f"data: {data}\n\n".encode())

    async def _write(self, chunk: bytes) -> None:
        async with self._lock:
            await self.response.write(chunk)
            self._last_write_s = time.monotonic()

    async def _keep_alive_loop(self) -> None:
        while True:
            wait_s = self._last_write_s + self._keep_alive_s - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
                continue
            try:
                await self._write(KEEP_ALIVE_COMMENT)
            except ConnectionError:
                return
