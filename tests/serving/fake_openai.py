"""A small fake OpenAI completions server (aiohttp.web on 127.0.0.1, a free port) for the bench tests.

It streams exactly `max_tokens` tokens (fewer with `short_by`), `tokens_per_chunk` per SSE chunk after
`ttft_s`, one chunk every `chunk_gap_s`, honouring `stream_options` (final usage, running usage); it
answers GET /v1/models (with vLLM's `max_model_len`) and GET /metrics (vLLM's metric names), and
can append to a --sched-stats file like ecosched's in-engine scheduler. It runs its own event loop in a
thread, so the code under test can call `asyncio.run` as the CLI does.
"""

from __future__ import annotations

import asyncio
import json
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

Body = dict[str, Any]


@dataclass
class Behaviour:
    """How the fake server answers; tests change it before a run."""

    ttft_s: float = 0.02
    chunk_gap_s: float = 0.005
    tokens_per_chunk: int = 1
    max_model_len: int = 256
    models_status: int = 200
    reject: Callable[[Body], int | None] = lambda body: None  # an HTTP status to answer with instead
    short_by: Callable[[Body], int] = lambda body: 0  # stream this many tokens fewer than max_tokens
    error_mid_stream: Callable[[Body], bool] = lambda body: False
    preemptions_per_request: int = 1  # what /metrics counts
    sched_stats: Path | None = None  # append two float64 durations and bump PATH.json per request
    bodies: list[Body] = field(default_factory=list)


class FakeServer:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.num_preemptions = 0
        self.num_active = 0
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/v1/completions", self.completions)
        return app

    async def models(self, request: web.Request) -> web.Response:
        b = self.behaviour
        if b.models_status != 200:
            return web.Response(status=b.models_status, text="<html>not here</html>")
        entry = {"id": "fake-model", "object": "model", "max_model_len": b.max_model_len}
        return web.json_response({"object": "list", "data": [entry]})

    async def metrics(self, request: web.Request) -> web.Response:
        usage = min(1.0, self.num_active / 10)
        text = (
            "# HELP vllm:num_preemptions_total Cumulative number of preemptions.\n"
            "# TYPE vllm:num_preemptions_total counter\n"
            f'vllm:num_preemptions_total{{engine="0",model_name="fake-model"}} {float(self.num_preemptions)}\n'
            "# TYPE vllm:kv_cache_usage_perc gauge\n"
            f'vllm:kv_cache_usage_perc{{engine="0",model_name="fake-model"}} {usage}\n'
            f'vllm:num_requests_running{{engine="0",model_name="fake-model"}} {float(self.num_active)}\n'
            'vllm:num_requests_waiting{engine="0",model_name="fake-model"} 0.0\n'
            'vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="64"} 1.0\n'
        )
        return web.Response(text=text)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        b = self.behaviour
        body = await request.json()
        b.bodies.append(body)
        prompt = body.get("prompt")
        if not (isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)):
            return web.json_response({"error": {"message": "prompt must be token ids"}}, status=400)
        status = b.reject(body)
        if status is not None:
            return web.json_response({"error": {"message": "rejected", "code": status}}, status=status)
        self.num_active += 1
        try:
            return await self._stream(request, body, len(prompt))
        finally:
            self.num_active -= 1
            self.num_preemptions += b.preemptions_per_request
            self._append_sched_stats()

    async def _stream(self, request: web.Request, body: Body, num_prompt: int) -> web.StreamResponse:
        b = self.behaviour
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        options = body.get("stream_options") or {}
        n = body["max_tokens"] - b.short_by(body)
        usage = {"prompt_tokens": num_prompt, "completion_tokens": 0, "total_tokens": num_prompt}
        await asyncio.sleep(b.ttft_s)
        sent = 0
        while sent < n:
            k = min(b.tokens_per_chunk, n - sent)
            sent += k
            usage = {**usage, "completion_tokens": sent, "total_tokens": num_prompt + sent}
            choice = {"index": 0, "text": "ab" * k, "logprobs": None, "finish_reason": "length" if sent == n else None}
            running = usage if options.get("continuous_usage_stats") else None
            await _send(resp, {"id": "cmpl-1", "object": "text_completion", "choices": [choice], "usage": running})
            if b.error_mid_stream(body):
                await _send(resp, {"error": {"message": "engine died", "code": 500}})
                return resp
            if sent < n:
                await asyncio.sleep(b.chunk_gap_s)
        if options.get("include_usage"):
            await _send(resp, {"id": "cmpl-1", "object": "text_completion", "choices": [], "usage": usage})
        await resp.write(b"data: [DONE]\n\n")
        return resp

    def _append_sched_stats(self) -> None:
        path = self.behaviour.sched_stats
        if path is None:
            return
        with path.open("ab") as f:
            f.write(struct.pack("<2d", 100e-6, 200e-6))
        counters = Path(f"{path}.json")
        old = json.loads(counters.read_text()) if counters.exists() else {"preemptions": 0}
        counters.write_text(json.dumps({"preemptions": old["preemptions"] + 2, "num_pipelined": 0}))


async def _send(resp: web.StreamResponse, chunk: Body) -> None:
    await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())


@contextmanager
def serve(behaviour: Behaviour) -> Iterator[FakeServer]:
    """Run the fake server on 127.0.0.1 (a free port) in a thread for the duration of the block."""
    server = FakeServer(behaviour)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner = web.AppRunner(server.app())

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        server.url = f"http://127.0.0.1:{port}"
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    ready.wait(10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
