"""Helpers of the TGI HTTP tests: the `text-generation` client (with the command that installs it),
a scripted fake router (`FakeBackend`), and the app served on 127.0.0.1 from a thread.

`text-generation==0.7.0` pins huggingface-hub<1.0 but uses none of it on the paths tested here, so
it is installed without its dependencies; it needs `requests`, `pydantic` 2 and `aiohttp`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType

import pytest
from aiohttp import web
from ecosched_adapters.tgi.tokenizer import builtin_tokenizer
from ecosched_adapters.tgi.types import End, Event, Failure, FinishReason, GenerateRequest, Token

INSTALL_TEXT_GENERATION = "pip install --no-deps text-generation==0.7.0"
EOS_ID = 2  # the built-in tokenizer's `</s>`


def require_text_generation() -> ModuleType:
    """The `text_generation` package, or a test failure that says how to install it."""
    try:
        import text_generation
    except ImportError as err:
        pytest.fail(
            f"the TGI client conformance tests need text-generation 0.7.0 ({err}); install it with: "
            f"{INSTALL_TEXT_GENERATION}",
            pytrace=False,
        )
    return text_generation


@dataclass
class FakeBackend:
    """A router stand-in: replies `reply` one character per token, up to `max_new_tokens`; a
    reply shorter than that ends with an EOS token. Knobs make it fail, hang or pause.

    Threading: the app may run in another thread's loop; `hanging` and `finished` are
    threading.Events so tests can wait on them from outside."""

    reply: str = "Hello world"
    fail: Failure | None = None  # sent instead of the token at `fail_at`
    fail_at: int = 0
    hang_at: int | None = None  # before this token, wait until cancelled
    token_delay_s: float = 0.0
    await_before_end: bool = False  # yield to the loop between the last Token and End
    healthy: bool = True
    queue_size: int = 0
    requests: list[GenerateRequest] = field(default_factory=list)
    cancelled: list[GenerateRequest] = field(default_factory=list)
    hanging: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    async def health(self) -> bool:
        return self.healthy

    def generate(self, request: GenerateRequest) -> AsyncIterator[Event]:
        self.requests.append(request)
        return self._events(request)

    async def _events(self, request: GenerateRequest) -> AsyncIterator[Event]:
        tokenizer, text, count, last = builtin_tokenizer(), "", 0, False
        seed = request.sampling.seed if request.sampling.do_sample else None
        try:
            for count, ch in enumerate(self.reply[: request.max_new_tokens], start=1):
                if self.hang_at is not None and count - 1 == self.hang_at:
                    self.hanging.set()
                    await asyncio.Event().wait()
                if self.fail is not None and count - 1 == self.fail_at:
                    last = True
                    yield self.fail
                    return
                if self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s)
                text += ch
                yield Token(tokenizer.encode(ch, add_special_tokens=False).ids[0], ch, -0.1 * count, False)
                if any(text.endswith(s) for s in request.stop_sequences):
                    end = await self._end(request, text, FinishReason.STOP_SEQUENCE, count, seed)
                    last = True
                    yield end
                    return
            if count < request.max_new_tokens:
                count += 1
                yield Token(EOS_ID, "</s>", -0.01, True)
                end = await self._end(request, text, FinishReason.EOS_TOKEN, count, seed)
            else:
                end = await self._end(request, text, FinishReason.LENGTH, count, seed)
            last = True
            yield end
        except BaseException:
            if not last:  # closed or cancelled before End or Failure: the client went away
                self.cancelled.append(request)
            raise
        finally:
            self.finished.set()

    async def _end(
        self, request: GenerateRequest, text: str, reason: FinishReason, count: int, seed: int | None
    ) -> End:
        if self.await_before_end:
            await asyncio.sleep(0.01)
        return End(text, reason, count, seed, len(request.input_ids), queue_s=0.001, inference_s=0.002)


@contextmanager
def serve_in_thread(app: web.Application) -> Iterator[str]:
    """Run `app` on 127.0.0.1 (a free port) in a thread's event loop; yields the base URL."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)

    async def start() -> str:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    url = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    try:
        yield url
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
