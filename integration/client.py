"""A small asyncio client for an OpenAI-compatible completions server, and its Prometheus metrics.

Prompts are token ids (the tiny model's text is noise anyway) and lengths are forced with
`ignore_eos`, as vLLM's serving benchmark does. `aiohttp` is imported lazily: it comes with the
engine, and the tests must be able to report a missing engine before anything imports it.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import aiohttp

REQUEST_TIMEOUT_S = 300.0


class CompletionResult(NamedTuple):
    """What one completion came back with.

    `num_output_tokens` is the server's `usage.completion_tokens` (None when the answer had none, as
    for errors); `body` is the list of parsed stream events for a 200 stream, else the parsed JSON
    answer (or its text when it is not JSON).
    """

    num_output_tokens: int | None
    finish_reason: str | None
    http_status: int
    body: Any


def completion_payload(prompt_token_ids: Sequence[int], max_tokens: int, *, stream: bool,
                       **extra: Any) -> dict[str, Any]:
    """The request body: greedy, `ignore_eos`, token-id prompt; `extra` fields override or add."""
    payload: dict[str, Any] = {"prompt": list(prompt_token_ids), "max_tokens": max_tokens, "temperature": 0,
                               "ignore_eos": True, "stream": stream}
    if stream:
        payload["stream_options"] = {"include_usage": True}
    payload.update(extra)
    return payload


def new_session(limit: int = 64) -> aiohttp.ClientSession:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    return aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=limit))


async def complete(url: str, prompt_token_ids: Sequence[int], max_tokens: int, *,
                   session: aiohttp.ClientSession | None = None, **extra: Any) -> CompletionResult:
    """One streamed POST /v1/completions; the token count comes from the final usage chunk."""
    payload = completion_payload(prompt_token_ids, max_tokens, stream=True, **extra)
    async with _session_or(session) as client, client.post(url + "/v1/completions", json=payload) as response:
        if response.status != 200:
            return CompletionResult(None, None, response.status, _parse(await response.text()))
        events = [event async for event in _sse_events(response)]
    return CompletionResult(_usage_tokens(events), _finish_reason(events), 200, events)


async def complete_unstreamed(url: str, prompt_token_ids: Sequence[int], max_tokens: int, *,
                              session: aiohttp.ClientSession | None = None, **extra: Any) -> CompletionResult:
    """One POST /v1/completions without streaming."""
    payload = completion_payload(prompt_token_ids, max_tokens, stream=False, **extra)
    async with _session_or(session) as client, client.post(url + "/v1/completions", json=payload) as response:
        body = _parse(await response.text())
    if response.status != 200:
        return CompletionResult(None, None, response.status, body)
    choices = body.get("choices") or [{}]
    return CompletionResult(body["usage"]["completion_tokens"], choices[0].get("finish_reason"), 200, body)


async def stream_then_disconnect(url: str, prompt_token_ids: Sequence[int], max_tokens: int, num_chunks: int,
                                 **extra: Any) -> int:
    """Start a streamed completion, read `num_chunks` events, then drop the connection.

    Returns the number of events read (fewer when the stream ended first).
    """
    payload = completion_payload(prompt_token_ids, max_tokens, stream=True, **extra)
    async with new_session() as client:
        response = await client.post(url + "/v1/completions", json=payload)
        response.raise_for_status()
        num_read = 0
        async for _ in _sse_events(response):
            num_read += 1
            if num_read >= num_chunks:
                break
        response.close()  # NOTE: close, not release: the connection is torn down, as a client crash would
    return num_read


def _session_or(session: aiohttp.ClientSession | None) -> Any:
    """The given session, left open on exit, or a new one closed on exit."""
    if session is None:
        return new_session()
    return _Borrowed(session)


class _Borrowed:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def __aenter__(self) -> aiohttp.ClientSession:
        return self.session

    async def __aexit__(self, *exc_info: object) -> None:
        return None


async def _sse_events(response: aiohttp.ClientResponse) -> Any:
    """The JSON events of a server-sent event stream, up to `data: [DONE]`."""
    async for raw in response.content:
        line = raw.decode().strip()
        if not line.startswith("data:"):
            continue
        data = line.removeprefix("data:").strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


def _usage_tokens(events: list[dict[str, Any]]) -> int | None:
    usages = [event["usage"] for event in events if event.get("usage")]
    return int(usages[-1]["completion_tokens"]) if usages else None


def _finish_reason(events: list[dict[str, Any]]) -> str | None:
    reasons = [choice["finish_reason"] for event in events for choice in event.get("choices", [])
               if choice.get("finish_reason")]
    return reasons[-1] if reasons else None


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def metric_samples(url: str) -> list[tuple[str, str, float]]:
    """GET /metrics: every `vllm:` sample as (name, labels text, value)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    samples = []
    for line in lines:
        if line.startswith("vllm:"):
            head, _, value = line.rpartition(" ")
            name, _, labels = head.partition("{")
            samples.append((name, labels, float(value)))
    return samples


def fetch_metrics(url: str) -> dict[str, float]:
    """Every `vllm:` metric summed over its labels, keyed by name."""
    totals: dict[str, float] = {}
    for name, _, value in metric_samples(url):
        totals[name] = totals.get(name, 0.0) + value
    return totals


def fetch_metric(url: str, name: str, **labels: str) -> float:
    """One `vllm:` metric summed over the samples whose labels include `labels`."""
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    return sum(value for found, text, value in metric_samples(url)
               if found == name and all(label in text for label in wanted))


IDLE_METRICS = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")


def wait_until_idle(url: str, timeout_s: float = 30.0) -> dict[str, float]:
    """Poll /metrics until nothing runs, waits or holds KV cache; raise AssertionError on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        metrics = fetch_metrics(url)
        held = {name: metrics.get(name) for name in IDLE_METRICS if metrics.get(name) != 0.0}
        if not held:
            return metrics
        if time.monotonic() > deadline:
            raise AssertionError(f"the engine still holds work {timeout_s:.0f} s after the last request: {held}")
        time.sleep(0.25)


async def watch_peak(url: str, name: str, stop: asyncio.Event, interval_s: float = 0.05) -> float:
    """The largest value `name` reached while polled until `stop` is set."""
    peak = 0.0
    while not stop.is_set():
        value = await asyncio.to_thread(fetch_metric, url, name)
        peak = max(peak, value)
        await asyncio.sleep(interval_s)
    return peak
