"""The load generator of `ecosched bench`: replay a workload against an OpenAI-compatible endpoint, open
loop, and time every request from the client's side.

Each request is a streaming POST /v1/completions whose prompt is a list of token ids (so the server
sees exactly the trace's prompt length, whatever its tokenizer) and whose output length is forced with
`max_tokens` and `ignore_eos`. Requests fire at their arrival times whatever the others are doing
(open loop): one asyncio task each, one HTTP session without a connection limit.

Token timing. A server may pack several tokens into one SSE chunk under load, so a chunk is not a
token. We ask for `stream_options.continuous_usage_stats` (vLLM, SGLang), which puts the running
`usage.completion_tokens` on every chunk: a chunk carries that count minus the previous one. Without
it (`--no-xargs`) a chunk counts as one token unless it is an empty chunk that only says why the
stream ended (vLLM sends a chunk per engine output even when its detokenizer holds the text back).
A chunk's k tokens split the gap since the previous token evenly (k gaps of gap/k), except the first
chunk, whose tokens all arrive at once. The final usage decides the request's token count; tokens it
reports beyond those counted on chunks are added the same way at the end of the stream (over the gap
from the last counted token to [DONE]). A request whose final count differs from `max_tokens` (or
that got no final usage) is a mismatch: counted, kept in the metrics.

The wire format is a codec: this module holds the OpenAI one (`completion_body`, `OpenAIStream`);
`ecosched.serving.bench_tgi` holds TGI's (POST /generate_stream). Both feed the same `TokenStream`
timing, so the two APIs are measured by one code path.

TTFT is the first token minus the send time. In open loop the send time is the scheduled arrival; when
the sender falls behind, the actual send time is used and the lag counted, so client overload is not
billed to the server.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from ecosched.core.request import FinishReason, RequestRecord
from ecosched.errors import EcoschedError
from ecosched.sim.workload import Workload

logger = logging.getLogger(__name__)

LAG_TOLERANCE_S = 0.01  # a send later than this after its arrival time counts as sender lag


class BenchError(EcoschedError):
    """The endpoint cannot be benchmarked (unreachable, not OpenAI-compatible) or an argument is wrong."""


@dataclass(frozen=True, slots=True)
class BenchRequest:
    """One request as sent: lengths after scaling and clamping, its SLO class resolved."""

    request_id: str
    slo_class: str
    num_prompt_tokens: int
    num_output_tokens: int  # forced with max_tokens and ignore_eos
    declared_max_tokens: int  # the limit a real client would declare, told to the scheduler
    arrival_s: float


@dataclass
class Outcome:
    """What the client saw of one request (times in seconds since the run started)."""

    request: BenchRequest
    send_s: float | None = None
    token_times_s: list[float] = field(default_factory=list)
    usage_tokens: int | None = None  # usage.completion_tokens of the final chunk
    status: int | None = None
    error: str | None = None
    finished_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.finished_s is not None and self.error is None

    @property
    def mismatched(self) -> bool:
        return self.ok and self.usage_tokens != self.request.num_output_tokens

    def as_json(self, rate: float) -> dict[str, object]:
        r = self.request
        first = self.token_times_s[0] if self.token_times_s else None
        return {
            "id": r.request_id,
            "rate": rate,
            "slo_class": r.slo_class,
            "num_prompt_tokens": r.num_prompt_tokens,
            "num_output_tokens": r.num_output_tokens,
            "num_output_tokens_received": len(self.token_times_s),
            "usage_output_tokens": self.usage_tokens,
            "declared_max_tokens": r.declared_max_tokens,
            "arrival_s": r.arrival_s,
            "send_s": self.send_s,
            "ttft_s": first - self.send_s if first is not None and self.send_s is not None else None,
            "finish_s": self.finished_s,
            "status": self.status,
            "error": self.error,
        }


# ------------------------------------------------------------------------------------------ workload


def bench_requests(
    workload: Workload,
    *,
    max_model_len: int,
    length_scale: float,
    max_output_tokens: int,
    declared: Literal["context", "exact"],
    default_class: str,
    max_prompt_tokens: int | None = None,
) -> list[BenchRequest]:
    """The workload's requests with prompt and output lengths multiplied by `length_scale`, then clamped:
    prompt in [1, min(max_model_len - 1, max_prompt_tokens)], output in
    [1, min(max_output_tokens, max_model_len - prompt)]. The output is the trace's true length (what
    the served model really produced), not a cap."""
    prompt_cap = max_model_len - 1 if max_prompt_tokens is None else min(max_model_len - 1, max_prompt_tokens)
    out = []
    for r in workload.requests:
        prompt = min(max(1, round(r.num_prompt_tokens * length_scale)), prompt_cap)
        true_output = r.true_output_tokens if r.true_output_tokens is not None else r.max_output_tokens
        room = min(max_output_tokens, max_model_len - prompt)
        output = min(max(1, round(true_output * length_scale)), room)
        limit = max_model_len - prompt if declared == "context" else output
        slo = r.slo_class if r.slo_class is not None else default_class
        out.append(BenchRequest(r.request_id, slo, prompt, output, limit, r.arrival_s))
    return out


def prompt_ids(request: BenchRequest, seed: int, vocab: tuple[int, int]) -> list[int]:
    """`num_prompt_tokens` token ids drawn uniformly from [lo, hi], the same for a request id and seed
    (random ids, so prefix caching cannot share work between requests)."""
    rng = random.Random(f"prompt:{seed}:{request.request_id}")
    lo, hi = vocab
    return rng.choices(range(lo, hi + 1), k=request.num_prompt_tokens)


# `--force-length stop`: ids the model may sample before `min_tokens` is reached; every other id of
# the vocabulary is a stop id, so the first token after it ends the request (greedy sampling)
FREE_IDS = 10


def stop_token_ids(vocab_size: int) -> list[int]:
    """Every token id but a window of FREE_IDS in the middle of the vocabulary."""
    lo = vocab_size // 2
    return [t for t in range(vocab_size) if not lo <= t < lo + FREE_IDS]


def completion_body(
    request: BenchRequest,
    model: str,
    ids: list[int],
    *,
    xargs: bool,
    seed: int = 0,
    xargs_field: str = "vllm_xargs",
    stop_ids: list[int] | None = None,
) -> dict[str, object]:
    """The JSON body of one streaming completion (see the module docstring for the why of each field).

    With `stop_ids` (`--force-length stop`) the length is forced without showing it to the engine:
    `max_tokens` is the declared limit, `min_tokens` is the length - 1 and every id in `stop_ids`
    stops the request, so the token after the minimum (a stop id) ends it at the length."""
    body: dict[str, object] = {
        "model": model,
        "prompt": ids,
        "max_tokens": request.num_output_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if stop_ids is not None:
        body["max_tokens"] = max(request.declared_max_tokens, request.num_output_tokens)
        body["min_tokens"] = request.num_output_tokens - 1
        body["ignore_eos"] = False
        body["stop_token_ids"] = stop_ids
    if xargs:
        body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
        body[xargs_field] = {
            "ecosched_slo_class": request.slo_class,
            "ecosched_true_output_tokens": request.num_output_tokens,
            "ecosched_max_tokens": request.declared_max_tokens,
        }
    return body


# ------------------------------------------------------------------------------------------ endpoint


@dataclass(frozen=True)
class ServerInfo:
    """What the server says it serves (OpenAI: GET /v1/models; TGI: GET /info): the model names and,
    where known, each one's context length and longest prompt."""

    models: tuple[str, ...]
    max_model_len: dict[str, int]
    max_prompt_tokens: dict[str, int] = field(default_factory=dict)


async def probe(session: aiohttp.ClientSession, base_url: str) -> ServerInfo:
    """GET /v1/models; BenchError when the server is unreachable or does not answer like OpenAI."""
    url = f"{base_url}/v1/models"
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=30)) as resp:
            text = await resp.text()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise BenchError(f"cannot reach {url}: {exc or type(exc).__name__}") from None
    try:
        data = json.loads(text) if status == 200 else None
        entries = data["data"] if isinstance(data, dict) else None
        models = tuple(str(e["id"]) for e in entries) if isinstance(entries, list) else ()
    except (ValueError, KeyError, TypeError):
        models = ()
    if not models:
        raise BenchError(
            f"{base_url} is not an OpenAI-compatible endpoint: GET /v1/models answered HTTP {status} "
            f"({text[:120]!r}); expected 200 with {{'data': [{{'id': MODEL, ...}}, ...]}}"
        )
    lens = {str(e["id"]): int(e["max_model_len"]) for e in entries if isinstance(e.get("max_model_len"), int)}  # type: ignore[union-attr]
    return ServerInfo(models, lens)


async def get_metrics_text(session: aiohttp.ClientSession, base_url: str) -> str | None:
    """GET /metrics (Prometheus text), or None when the server has none."""
    try:
        async with session.get(f"{base_url}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return await resp.text() if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None


# -------------------------------------------------------------------------------------------- stream


class TokenStream:
    """Turns one response's SSE events into token times (see the module docstring); a codec's
    subclass reads its API's events in `on_chunk` and calls `add_tokens`."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome

    def on_chunk(self, chunk: dict[str, Any], now: float) -> None:
        raise NotImplementedError

    def add_tokens(self, k: int, now: float) -> None:
        """`k` tokens arrived at `now`: they split the gap since the previous token evenly (the first
        event's tokens all arrive at once)."""
        times = self.outcome.token_times_s
        if k <= 0:
            return
        if not times:
            times.extend([now] * k)
            return
        last = times[-1]
        times.extend(last + (now - last) * j / k for j in range(1, k + 1))


class OpenAIStream(TokenStream):
    """OpenAI completion chunks: running usage when the server sends it, else one token per chunk."""

    def on_chunk(self, chunk: dict[str, Any], now: float) -> None:
        if "error" in chunk or chunk.get("object") == "error":  # vLLM's two shapes of a mid-stream error
            raise StreamError(f"error mid-stream: {json.dumps(chunk.get('error', chunk))[:200]}")
        choices = chunk.get("choices") or []
        usage = chunk.get("usage")
        count = usage.get("completion_tokens") if isinstance(usage, dict) else None
        if not isinstance(count, int):
            count = None
        if not choices:  # the final usage-only chunk of include_usage
            if count is not None:
                self.outcome.usage_tokens = count
            return
        if count is not None:  # running usage: the chunk carries what the count grew by
            new = count - len(self.outcome.token_times_s)
        else:
            new = 1 if any(c.get("text") or c.get("token_ids") or not c.get("finish_reason") for c in choices) else 0
        self.add_tokens(new, now)


class StreamError(Exception):
    """The server reported an error inside a stream."""


async def stream_one(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, object],
    outcome: Outcome,
    clock: Callable[[], float],
    parser_type: type[TokenStream] = OpenAIStream,
) -> None:
    """POST one streaming request and record what came back in `outcome`; never raises for HTTP or
    stream errors (they land in `outcome.error`), only for cancellation."""
    parser = parser_type(outcome)
    outcome.send_s = clock()
    try:
        async with session.post(url, json=body) as resp:
            outcome.status = resp.status
            if resp.status != 200:
                outcome.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    break
                parser.on_chunk(json.loads(payload), clock())
        outcome.finished_s = clock()
    except (StreamError, aiohttp.ClientError, ValueError, OSError) as exc:
        outcome.error = str(exc) or type(exc).__name__
        return
    missing = (outcome.usage_tokens or 0) - len(outcome.token_times_s)
    parser.add_tokens(missing, outcome.finished_s)


# ----------------------------------------------------------------------------------------------- run


@dataclass
class RunOutcome:
    """One run at one rate: every request's outcome and the run's wall time."""

    rate: float
    outcomes: list[Outcome]
    wall_s: float

    @property
    def num_unfinished(self) -> int:
        return sum(o.finished_s is None and o.error is None for o in self.outcomes)

    @property
    def num_errors(self) -> int:
        return sum(o.error is not None for o in self.outcomes)

    @property
    def num_mismatched(self) -> int:
        return sum(o.mismatched for o in self.outcomes)

    @property
    def lags_s(self) -> list[float]:
        return [o.send_s - o.request.arrival_s for o in self.outcomes if o.send_s is not None]


async def run_open_loop(
    session: aiohttp.ClientSession,
    url: str,
    bodies: Sequence[tuple[BenchRequest, dict[str, object]]],
    *,
    rate: float,
    max_duration_s: float,
    on_done: Callable[[Outcome], None] = lambda o: None,
    sample: Callable[[float], Awaitable[None]] | None = None,
    sample_interval_s: float = 0.5,
    parser_type: type[TokenStream] = OpenAIStream,
) -> RunOutcome:
    """Fire each body at its request's arrival time and wait for all, at most `max_duration_s`; what is
    still running then is cancelled and stays unfinished. `sample(now_s)`, a coroutine function, is
    awaited every `sample_interval_s` during the run (to read the server's gauges). `parser_type`
    reads the API's stream events."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    def clock() -> float:
        return loop.time() - t0

    outcomes = [Outcome(r) for r, _ in bodies]

    async def fire(outcome: Outcome, body: dict[str, object]) -> None:
        await asyncio.sleep(max(0.0, outcome.request.arrival_s - clock()))
        await stream_one(session, url, body, outcome, clock, parser_type)
        on_done(outcome)

    async def sampler() -> None:
        assert sample is not None
        while True:
            await sample(clock())
            await asyncio.sleep(sample_interval_s)

    side = asyncio.create_task(sampler()) if sample is not None else None
    tasks = [asyncio.create_task(fire(o, b)) for o, (_, b) in zip(outcomes, bodies, strict=True)]
    _, pending = await asyncio.wait(tasks, timeout=max_duration_s) if tasks else (set(), set())
    for t in [*pending, *([side] if side else [])]:
        t.cancel()
    await asyncio.gather(*pending, *([side] if side else []), return_exceptions=True)
    for o in outcomes:
        if o.finished_s is None and o.error is None:
            o.token_times_s.clear()  # cut off: unfinished, not a partial measurement
    return RunOutcome(rate, outcomes, clock())


# ------------------------------------------------------------------------------------------- records


def to_record(outcome: Outcome, tbt_s: float) -> RequestRecord:
    """The request as the simulator would have recorded it; an error becomes an ABORT record."""
    r = outcome.request
    times = outcome.token_times_s
    start = outcome.send_s if outcome.send_s is not None else r.arrival_s
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return RequestRecord(
        request_id=r.request_id,
        slo_class=r.slo_class,
        num_prompt_tokens=r.num_prompt_tokens,
        num_output_tokens=len(times),
        predicted_output_tokens=0,  # NOTE: the client cannot see the server's prediction
        padded_output_tokens=0,
        arrival_s=start,
        first_scheduled_s=None,
        first_token_s=times[0] if times else None,
        finished_s=outcome.finished_s if outcome.finished_s is not None else start,
        finish_reason=FinishReason.LENGTH if outcome.ok else FinishReason.ABORT,
        num_recomputes=0,
        num_swaps=0,
        max_tbt_s=max(gaps, default=0.0),
        num_tbt_violations=sum(g > tbt_s for g in gaps),
    )


def tbt_gaps(outcomes: Sequence[Outcome]) -> list[float]:
    """Every inter-token gap of every finished request."""
    gaps: list[float] = []
    for o in outcomes:
        if o.ok:
            t = o.token_times_s
            gaps += [b - a for a, b in itertools.pairwise(t)]
    return gaps


def mean_or_nan(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan
