"""Running generations for the HTTP routes: TGI's `Infer` and its `generate_internal` /
`generate_stream_internal` (`router/src/infer/mod.rs`, `router/src/server.rs`), minus the HTTP.

- Concurrency: `max_concurrent_requests` permits; without a free one a request fails at once with
  429 `overloaded` (TGI's `try_acquire`, no waiting). A permit is taken before validation and held
  until the generation's response ends.
- The backend's event iterator is always closed (`aclose`) when the HTTP side is done with it: after
  `End`/`Failure` that is a no-op for the router; before it (the client went away, which cancels the
  handler, or a sibling `best_of` generation failed) it is the router's signal to drop the request.
- Streams: TGI's last event carries the last token together with `generated_text` and `details`.
  A pump task reads the router's events into a queue, so a token is held back only while the
  router's next event is already there: the router yields `End` right after the final `Token`
  without awaiting in between, and no other token waits for a following one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from .http_metrics import RouterMetrics
from .http_schema import TextRequest
from .http_settings import HttpSettings
from .http_validation import (
    RequestError,
    Validator,
    ValidRequest,
    failure_error,
    incomplete_error,
    overloaded_error,
    validation_error,
)
from .types import Backend, End, Event, Failure, Token

logger = logging.getLogger(__name__)
X = TypeVar("X")


@dataclass(frozen=True, slots=True)
class Generation:
    """A finished generation (TGI's `InferResponse`); times are time.monotonic() seconds."""

    valid: ValidRequest
    tokens: tuple[Token, ...]
    end: End
    finished_s: float

    @property
    def queued_s(self) -> float:
        return self.valid.request.arrival_s

    @property
    def mean_logprob(self) -> float:
        """TGI's `best_of` score: the mean log-probability of the generated tokens."""
        values = [t.logprob for t in self.tokens]
        mean = sum(values) / len(values) if values else -math.inf
        return mean if not math.isnan(mean) else -math.inf


@dataclass(frozen=True, slots=True)
class StreamToken:
    """One event of a stream (TGI's `StreamResponse`); `end` is set on the last one."""

    index: int
    token: Token
    end: End | None
    input_length: int


@dataclass(frozen=True, slots=True)
class Timings:
    """TGI's per-request timings, in seconds."""

    total_s: float
    validation_s: float
    queue_s: float
    inference_s: float
    time_per_token_s: float

    @classmethod
    def of(cls, start_s: float, queued_s: float, end: End, finished_s: float) -> Timings:
        batch_start_s = queued_s + end.queue_s
        inference_s = max(0.0, finished_s - batch_start_s)
        per_token = inference_s / end.generated_tokens if end.generated_tokens else 0.0
        return cls(finished_s - start_s, max(0.0, queued_s - start_s), end.queue_s, inference_s, per_token)


def token_json(token: Token) -> dict[str, Any]:
    """TGI's `Token`; a non-finite logprob is `null`, as serde_json writes NaN."""
    logprob = token.logprob if math.isfinite(token.logprob) else None
    return {"id": token.id, "text": token.text, "logprob": logprob, "special": token.special}


def rust_float(value: float) -> str:
    """A finite float as Rust's `f64::to_string` writes it: the shortest digits that read back,
    never an exponent, no `.0` on whole numbers (`x-compute-time` is written so)."""
    text = format(Decimal(repr(value)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


class Permits:
    """`max_concurrent_requests` permits taken without waiting (TGI's semaphore `try_acquire`)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0

    def try_acquire(self) -> bool:
        if self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        self.in_use -= 1


async def all_or_none(calls: Sequence[Awaitable[X]]) -> list[X]:
    """Every result of `calls` run at once, or the first error with the others cancelled (TGI's
    `try_join_all`)."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _close(events: AsyncIterator[Event]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


async def _pump(events: AsyncIterator[Event], queue: asyncio.Queue[Event | None]) -> None:
    """Move the router's events into `queue` until End or Failure; None marks the end."""
    try:
        async for event in events:
            queue.put_nowait(event)
            if isinstance(event, End | Failure):
                return
    finally:
        queue.put_nowait(None)


class Infer:
    """Runs validated generations on the backend for the HTTP routes, holding permits and
    recording TGI's request metrics."""

    def __init__(self, backend: Backend, validator: Validator, settings: HttpSettings, metrics: RouterMetrics) -> None:
        self.backend = backend
        self.validator = validator
        self.settings = settings
        self.metrics = metrics
        self.permits = Permits(settings.max_concurrent_requests)

    # --- one generation -----------------------------------------------------------------------

    async def generate(self, req: TextRequest) -> Generation:
        """TGI's `Infer::generate`: permit, validation, then the events up to End."""
        if not self.permits.try_acquire():
            raise overloaded_error()
        try:
            valid = await self.validator.validate(req, time.monotonic())
            events = self.backend.generate(valid.request)
            try:
                tokens: list[Token] = []
                async for event in events:
                    if isinstance(event, Token):
                        tokens.append(event)
                    elif isinstance(event, End):
                        return Generation(valid, tuple(tokens), event, time.monotonic())
                    else:
                        raise failure_error(event)
                raise incomplete_error(stream=False)
            finally:
                await _close(events)
        finally:
            self.permits.release()

    async def generate_best_of(self, req: TextRequest, best_of: int) -> tuple[Generation, list[Generation]]:
        """TGI's `generate_best_of`: `best_of` generations at once (a permit each); the one with the
        highest mean token logprob wins. One failure cancels the others."""
        self.validator.check_best_of(best_of)
        results = await all_or_none([self.generate(req) for _ in range(best_of)])
        best = max(range(len(results)), key=lambda i: results[i].mean_logprob)
        return results.pop(best), results

    async def generate_response(self, req: TextRequest, start_s: float) -> tuple[dict[str, Any], dict[str, str], int]:
        """TGI's `generate_internal`: the GenerateResponse JSON, the `x-*` headers and the prompt
        length. Raises RequestError."""
        self.metrics.request_received()
        p = req.parameters
        try:
            if p.best_of is not None and p.best_of > 1:
                gen, others = await self.generate_best_of(req, p.best_of)
            else:
                gen, others = await self.generate(req), None
        except RequestError as err:
            self.metrics.request_failed(err.metric_err)
            raise
        except asyncio.CancelledError:
            self.metrics.request_failed("dropped")
            raise
        timings = Timings.of(start_s, gen.queued_s, gen.end, gen.finished_s)
        self._record_success(timings, gen.end)
        prompt = req.inputs if p.return_full_text else ""
        body: dict[str, Any] = {"generated_text": prompt + gen.end.generated_text}
        if p.details or p.decoder_input_details:
            body["details"] = self._details(gen, p.decoder_input_details, prompt, others)
        return body, self._headers(req, gen, timings), gen.valid.input_length

    def _details(
        self, gen: Generation, with_prefill: bool, prompt: str, others: Sequence[Generation] | None
    ) -> dict[str, Any]:
        details = self._sequence(gen, with_prefill)
        if others is not None:
            details["best_of_sequences"] = [
                {"generated_text": prompt + o.end.generated_text, **self._sequence(o, with_prefill)} for o in others
            ]
        return details

    def _sequence(self, gen: Generation, with_prefill: bool) -> dict[str, Any]:
        """TGI's `Details` fields of one sequence. NOTE: the router reports no prompt logprobs, so
        `prefill` tokens (with `decoder_input_details`) carry `logprob: null`."""
        prefill = []
        if with_prefill:
            decode = self.validator.tokenizer.decode
            prefill = [
                {"id": i, "text": decode([i], skip_special_tokens=False), "logprob": None}
                for i in gen.valid.request.input_ids
            ]
        return {
            "finish_reason": gen.end.finish_reason.value,
            "generated_tokens": gen.end.generated_tokens,
            "seed": gen.end.seed,
            "prefill": prefill,
            "tokens": [token_json(t) for t in gen.tokens],
        }

    def _headers(self, req: TextRequest, gen: Generation, t: Timings) -> dict[str, str]:
        def ms(seconds: float) -> str:
            return str(int(max(0.0, seconds) * 1000))

        return {
            "x-compute-type": self.settings.compute_type,
            "x-compute-time": rust_float(t.total_s),
            "x-compute-characters": str(len(req.inputs)),
            "x-total-time": ms(t.total_s),
            "x-validation-time": ms(t.validation_s),
            "x-queue-time": ms(t.queue_s),
            "x-inference-time": ms(t.inference_s),
            "x-time-per-token": ms(t.time_per_token_s),
            "x-prompt-tokens": str(gen.valid.input_length),
            "x-generated-tokens": str(gen.end.generated_tokens),
        }

    def _record_success(self, t: Timings, end: End) -> None:
        self.metrics.request_succeeded(
            total_s=t.total_s,
            validation_s=t.validation_s,
            queue_s=t.queue_s,
            inference_s=t.inference_s,
            generated_tokens=end.generated_tokens,
        )

    # --- streams ------------------------------------------------------------------------------

    def stream_headers(self, req: TextRequest) -> dict[str, str]:
        """The headers TGI sends before a stream's first event."""
        return {
            "x-compute-type": self.settings.compute_type,
            "x-compute-characters": str(len(req.inputs)),
            "X-Accel-Buffering": "no",
        }

    async def stream(self, req: TextRequest, start_s: float) -> AsyncGenerator[StreamToken | RequestError, None]:
        """TGI's `generate_stream_internal`: the stream's events; an error (refusal included) is
        the last item, to be sent inside the stream with HTTP 200, as TGI does."""
        self.metrics.request_received()
        p = req.parameters
        refusal = None
        if (1 if p.best_of is None else p.best_of) != 1:
            refusal = validation_error("`best_of` != 1 is not supported when streaming tokens")
        elif p.decoder_input_details:
            refusal = validation_error("`decoder_input_details` == true is not supported when streaming tokens")
        elif not self.permits.try_acquire():
            refusal = overloaded_error()
        if refusal is not None:
            self.metrics.request_failed(refusal.metric_err)
            yield refusal
            return
        try:
            try:
                valid = await self.validator.validate(req, time.monotonic())
            except RequestError as err:
                self.metrics.request_failed(err.metric_err)
                yield err
                return
            async with contextlib.aclosing(self._events(valid, start_s)) as items:
                async for item in items:
                    yield item
        finally:
            self.permits.release()

    async def _events(self, valid: ValidRequest, start_s: float) -> AsyncGenerator[StreamToken | RequestError, None]:
        events = self.backend.generate(valid.request)
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        pump = asyncio.create_task(_pump(events, queue))
        index, held, last, outcome = 0, None, None, "dropped"
        try:
            while (event := await queue.get()) is not None:
                if isinstance(event, Token):
                    if held is not None:
                        index += 1
                        yield StreamToken(index, held, None, valid.input_length)
                    held = last = event
                    if queue.empty():  # the router's next event is not there yet: send this one now
                        index += 1
                        held = None
                        yield StreamToken(index, event, None, valid.input_length)
                    continue
                if isinstance(event, End):
                    outcome = "success"
                    timings = Timings.of(start_s, valid.request.arrival_s, event, time.monotonic())
                    self._record_success(timings, event)
                    final = held if held is not None else _stand_in(last)
                    yield StreamToken(index + 1, final, event, valid.input_length)
                    return
                break
            if held is not None:  # no End: the held token goes out before the error
                yield StreamToken(index + 1, held, None, valid.input_length)
            error = failure_error(event) if isinstance(event, Failure) else incomplete_error(stream=True)
            outcome = error.metric_err
            yield error
        finally:
            if outcome != "success":
                self.metrics.request_failed(outcome)
            pump.cancel()
            await asyncio.wait({pump})
            if not pump.cancelled() and pump.exception() is not None:
                logger.error("the backend's event stream raised", exc_info=pump.exception())
            await _close(events)


def _stand_in(last: Token | None) -> Token:
    """The token of a final event when the router ended the stream after its last token had
    already gone out (it awaited between that Token and End): empty and special, so clients that
    join the texts of non-special tokens get the text exactly once."""
    logger.debug("End arrived after the last token was sent; the final event carries an empty special token")
    return Token(last.id if last is not None else 0, "", math.nan, True)
