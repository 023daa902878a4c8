"""A small fake of TGI's streaming API (aiohttp.web on 127.0.0.1, a free port) for the bench tests.

POST /generate_stream streams one `data:` event per token, like TGI: K tokens when the prompt text
carries the stand-in's marker `[[len:P,eos:K]]` (at most `max_new_tokens`), else `max_new_tokens`;
the last event carries `generated_text` and `details`. It can end a stream with an empty special
stand-in token after the last real one (`stand_in_last`), fail mid-stream with TGI's error event
(`error_after`), or refuse with an HTTP status (`reject`). GET /info answers TGI's limits and GET
/metrics ecosched's router counters (one pause and one resume per request) and KV gauges. It runs
its own event loop in a thread, so the code under test can call `asyncio.run` as the CLI does.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Body = dict[str, Any]
MARKER = re.compile(r"\[\[len:(\d+),eos:(\d+)\]\]")


@dataclass
class TgiBehaviour:
    """How the fake server answers; tests change it before a run."""

    token_gap_s: float = 0.003
    max_total_tokens: int = 512
    max_input_tokens: int = 400
    stand_in_last: bool = False
    error_after: Callable[[Body], int | None] = lambda body: None  # tokens before an error event
    reject: Callable[[Body], int | None] = lambda body: None  # an HTTP status to answer with instead
    bodies: list[Body] = field(default_factory=list)


class FakeTgi:
    def __init__(self, behaviour: TgiBehaviour) -> None:
        self.behaviour = behaviour
        self.url = ""
        self.num_requests = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/generate_stream", self.generate_stream)
        app.router.add_get("/info", self.info)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def info(self, request: web.Request) -> web.Response:
        b = self.behaviour
        limits = {"max_total_tokens": b.max_total_tokens, "max_input_tokens": b.max_input_tokens}
        return web.json_response({"model_id": "fake-tgi", "router": "fake", **limits})

    async def metrics(self, request: web.Request) -> web.Response:
        n = self.num_requests
        text = (
            f"ecosched_pauses_total {n}\necosched_resumes_total {n}\necosched_preemptions_total 0\n"
            f'tgi_batch_forward_duration_sum{{method="decode"}} {0.01 * n}\n'
            f'tgi_batch_forward_duration_count{{method="decode"}} {n}\n'
            "ecosched_kv_blocks_used 30\necosched_kv_blocks_reserved_unused 10\necosched_kv_blocks_free 60\n"
            "tgi_batch_current_size 2\ntgi_queue_size 1\n"
        )
        return web.Response(text=text)

    async def generate_stream(self, request: web.Request) -> web.StreamResponse:
        b = self.behaviour
        body = await request.json()
        b.bodies.append(body)
        status = b.reject(body)
        if status is not None:
            return web.json_response({"error": "refused", "error_type": "validation"}, status=status)
        limit = body["parameters"]["max_new_tokens"]
        marker = MARKER.search(body["inputs"])
        n = min(int(marker.group(2)), limit) if marker else limit
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        fail_at = b.error_after(body)
        for i in range(1, n + 1):
            if fail_at is not None and i > fail_at:
                await _send(resp, {"error": "shard died", "error_type": "generation"})
                return resp
            last = i == n and not b.stand_in_last
            await _send(
                resp, _event(i, {"id": 97, "text": "a", "logprob": -0.1, "special": False}, n if last else None)
            )
            await asyncio.sleep(b.token_gap_s)
        if b.stand_in_last:
            await _send(resp, _event(n + 1, {"id": 2, "text": "", "logprob": None, "special": True}, n))
        self.num_requests += 1
        return resp


def _event(index: int, token: Body, final_count: int | None) -> Body:
    details = None if final_count is None else {"finish_reason": "eos_token", "generated_tokens": final_count}
    text = None if final_count is None else "a" * final_count
    return {"index": index, "token": token, "generated_text": text, "details": details}


async def _send(resp: web.StreamResponse, event: Body) -> None:
    await resp.write(f"data:{json.dumps(event)}\n\n".encode())


@contextmanager
def serve_tgi(behaviour: TgiBehaviour) -> Iterator[FakeTgi]:
    """Run the fake server on 127.0.0.1 (a free port) in a thread for the duration of the block."""
    server = FakeTgi(behaviour)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(server.app())

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
