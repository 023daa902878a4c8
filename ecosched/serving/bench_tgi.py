"""TGI's wire format for `ecosched bench --api tgi`: the body of POST /generate_stream, its server-sent
events, GET /info, and what ecosched's TGI router reports on GET /metrics.

Request: `{"inputs": TEXT, "parameters": {"max_new_tokens": N, "details": true, "ecosched_slo_class":
CLASS, "ecosched_true_output_tokens": LENGTH}}` (the two `ecosched_*` fields are left out with
--no-xargs). TGI has no `ignore_eos` and no separate declared limit, so a request's length is forced
one of two ways (`--force-length`):

- `max-tokens`: `max_new_tokens` is the trace's length and the prompt is filler letters; the request
  ends on the length limit, so the router sees every length in advance;
- `marker`: the prompt text starts with the stand-in shard's marker `[[len:P,eos:K]]` and is filled to
  exactly P tokens of the router's built-in tokenizer (one byte each); `max_new_tokens` is the limit a
  client would declare (`--declared-max-tokens`). The "model" (ecosched's stand-in shard) ends the
  request with EOS as its K-th token; the router sees only the declared limit, as with a real model.
  A marker needs 13 characters plus the digits of P and K, so a prompt shorter than its marker is
  lengthened to hold it (`with_marker_room`; counted in the run's `num_prompts_lengthened`).

Filler letters are drawn per request id and seed, so no two prompts share more than the marker's
opening characters and prefix caching cannot share work between requests.

Events: one `data:` JSON per token, `{"index", "token", "generated_text", "details"}`; the last one
carries `generated_text` and, with `details`, `details.generated_tokens`: the final count (as OpenAI's
final usage). When the router ends a stream after its last token already went out, the last event
carries an empty special stand-in token rather than a new one; counting to `generated_tokens` leaves it
out. Errors come as `{"error", "error_type"}` events inside the stream (HTTP 200: validation, overload,
generation failures) or as a JSON body with an HTTP error status.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import string
from typing import Any

import aiohttp

from ecosched.serving.bench import BenchError, BenchRequest, ServerInfo, StreamError, TokenStream
from ecosched.serving.bench_metrics import KVReading

MARKER_FORMAT = "[[len:{p},eos:{k}]]"  # the stand-in shard's output marker (ecosched_adapters.tgi.standin.outputs)
FILLER = string.ascii_lowercase  # one byte, so one token of the built-in tokenizer, each

# /metrics of ecosched's TGI router: cumulative counters and histogram sums, by the key `counters` gives them
COUNTERS = {
    "preemptions": "ecosched_preemptions_total",
    "pauses": "ecosched_pauses_total",
    "resumes": "ecosched_resumes_total",
    "steps": "ecosched_step_duration_seconds_count",
    "step_s": "ecosched_step_duration_seconds_sum",
    "policy_s": "ecosched_policy_duration_seconds_sum",
    "requests_failed": "tgi_request_failure",
}
PER_METHOD = {  # histograms labelled by method (prefill, decode)
    "forwards": "tgi_batch_forward_duration_count",
    "forward_s": "tgi_batch_forward_duration_sum",  # the shard's reported forward time (the model's)
    "inference_s": "tgi_batch_inference_duration_sum",  # the router's wall time of the whole shard call
}
KV_GAUGES = ("ecosched_kv_blocks_used", "ecosched_kv_blocks_reserved_unused", "ecosched_kv_blocks_free")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


# ------------------------------------------------------------------------------------------- prompts


def marker(num_prompt_tokens: int, num_output_tokens: int) -> str:
    """The stand-in's marker: EOS as output token `num_output_tokens` after a `num_prompt_tokens` prompt."""
    return MARKER_FORMAT.format(p=num_prompt_tokens, k=num_output_tokens)


def with_marker_room(request: BenchRequest, max_model_len: int) -> BenchRequest:
    """`request` with its prompt lengthened until it holds its own marker (unchanged when it already
    does); the output and the declared limit stay within `max_model_len`."""
    prompt = request.num_prompt_tokens
    while len(marker(prompt, request.num_output_tokens)) > prompt:
        prompt += 1
    if prompt == request.num_prompt_tokens:
        return request
    room = max_model_len - prompt
    if room < 1:
        raise BenchError(f"{request.request_id}: a {prompt}-token marked prompt leaves no room in {max_model_len}")
    output = min(request.num_output_tokens, room)
    declared = max(output, min(request.declared_max_tokens, room))
    return dataclasses.replace(
        request, num_prompt_tokens=prompt, num_output_tokens=output, declared_max_tokens=declared
    )


def prompt_text(request: BenchRequest, seed: int, *, marked: bool) -> str:
    """`num_prompt_tokens` bytes of text: the marker (when `marked`) then letters drawn per request id
    and seed."""
    head = marker(request.num_prompt_tokens, request.num_output_tokens) if marked else ""
    if len(head) > request.num_prompt_tokens:
        raise BenchError(f"{request.request_id}: {request.num_prompt_tokens} tokens cannot hold {head!r}")
    rng = random.Random(f"prompt:{seed}:{request.request_id}")
    return head + "".join(rng.choices(FILLER, k=request.num_prompt_tokens - len(head)))


def generate_stream_body(request: BenchRequest, text: str, *, marked: bool, xargs: bool) -> dict[str, object]:
    """The JSON body of POST /generate_stream (see the module docstring for the why of each field)."""
    parameters: dict[str, object] = {
        "max_new_tokens": request.declared_max_tokens if marked else request.num_output_tokens,
        "details": True,
    }
    if xargs:
        parameters["ecosched_slo_class"] = request.slo_class
        parameters["ecosched_true_output_tokens"] = request.num_output_tokens
    return {"inputs": text, "parameters": parameters}


# -------------------------------------------------------------------------------------------- stream


class TgiStream(TokenStream):
    """TGI's stream events: one token each; the last one's `details.generated_tokens` is the count."""

    def on_chunk(self, chunk: dict[str, Any], now: float) -> None:
        if "error" in chunk:
            kind = chunk.get("error_type", "error")
            raise StreamError(f"error mid-stream: {kind}: {str(chunk['error'])[:200]}")
        details = chunk.get("details")
        count = details.get("generated_tokens") if isinstance(details, dict) else None
        if isinstance(count, int) and not isinstance(count, bool):
            self.outcome.usage_tokens = count
            self.add_tokens(count - len(self.outcome.token_times_s), now)  # 0 for a stand-in last token
            return
        self.add_tokens(1, now)


# ------------------------------------------------------------------------------------------ endpoint


async def probe_tgi(session: aiohttp.ClientSession, base_url: str) -> ServerInfo:
    """GET /info: the model id, max_total_tokens (the context) and max_input_tokens (longest prompt);
    BenchError when the server is unreachable or does not answer like TGI."""
    url = f"{base_url}/info"
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=30)) as resp:
            text = await resp.text()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise BenchError(f"cannot reach {url}: {exc or type(exc).__name__}") from None
    try:
        info = json.loads(text) if status == 200 else None
    except ValueError:
        info = None
    if not isinstance(info, dict) or not isinstance(info.get("max_total_tokens"), int):
        raise BenchError(
            f"{base_url} is not a TGI endpoint: GET /info answered HTTP {status} ({text[:120]!r}); expected 200 "
            "with {'model_id': ..., 'max_total_tokens': N, 'max_input_tokens': N, ...}"
        )
    model = str(info.get("model_id") or "tgi")
    prompt = info.get("max_input_tokens")
    prompts = {model: prompt} if isinstance(prompt, int) else {}
    return ServerInfo((model,), {model: info["max_total_tokens"]}, prompts)


# ----------------------------------------------------------------------------------------- /metrics


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a Prometheus exposition: (name, labels, value)."""
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out.append((m.group(1), dict(_LABEL.findall(m.group(2) or "")), value))
    return out


class TgiMetrics:
    """Reads ecosched's TGI router's /metrics for `ecosched bench` (a `bench_runner.MetricsReader`).
    Its counters are live, so they win over the --sched-stats counters file, which the router writes
    at most once a second and only while it steps."""

    counters_win = True

    def counters(self, text: str) -> dict[str, float]:
        """Cumulative values: COUNTERS by key (summed over labels), PER_METHOD as `KEY_METHOD`."""
        out: dict[str, float] = {}
        names = {name: key for key, name in COUNTERS.items()}
        per_method = {name: key for key, name in PER_METHOD.items()}
        for name, labels, value in samples(text):
            if name in names:
                out[names[name]] = out.get(names[name], 0.0) + value
            elif name in per_method and "method" in labels:
                key = f"{per_method[name]}_{labels['method']}"
                out[key] = out.get(key, 0.0) + value
        return out

    def kv(self, text: str, t_s: float) -> KVReading | None:
        """The KV split (used, reserved but unused, free blocks) and the batch and queue sizes."""
        values = {name: value for name, _, value in samples(text)}
        if not all(g in values for g in KV_GAUGES):
            return None
        used, reserved, free = (values[g] for g in KV_GAUGES)
        total = used + reserved + free
        if total <= 0:
            return None
        running, waiting = values.get("tgi_batch_current_size", 0.0), values.get("tgi_queue_size", 0.0)
        return KVReading(t_s, used / total, reserved / total, round(total), round(running), round(waiting))
