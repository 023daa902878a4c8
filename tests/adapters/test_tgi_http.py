"""TGI's HTTP API (ecosched_adapters.tgi.http) over a fake router: routes, TGI's validation messages
and statuses, streams, permits, client disconnects, OpenAI routes, metrics. No TGI needed; every
test serves the app on 127.0.0.1 (a free port) inside `asyncio.run`."""

from __future__ import annotations

import pytest

pytest.importorskip("aiohttp", reason="the TGI HTTP layer needs aiohttp: pip install -e '.[tgi]'")
pytest.importorskip("prometheus_client", reason="the TGI HTTP layer needs prometheus_client: pip install -e '.[tgi]'")

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from ecosched_adapters.tgi.http import INFER_KEY, METRICS_KEY, make_app
from ecosched_adapters.tgi.http_infer import rust_float
from ecosched_adapters.tgi.http_metrics import RouterMetrics
from ecosched_adapters.tgi.http_settings import HttpSettings, settings_help
from ecosched_adapters.tgi.tokenizer import builtin_tokenizer
from ecosched_adapters.tgi.types import Failure, FinishReason

from ecosched.errors import ConfigError

from .tgi_client import EOS_ID, FakeBackend

SETTINGS = HttpSettings(model_id="test/model", max_input_tokens=64, max_total_tokens=128)
Scenario = Callable[[TestClient], Awaitable[Any]]


def run(backend: FakeBackend, scenario: Scenario, **overrides: Any) -> Any:
    """Serve the app over `backend` (settings: SETTINGS with `overrides`) and run `scenario`."""

    async def go() -> Any:
        app = make_app(backend, replace(SETTINGS, **overrides), builtin_tokenizer(), rng=random.Random(7))
        async with TestClient(TestServer(app)) as client:
            return await scenario(client)

    return asyncio.run(go())


def post(path: str, body: Any) -> Scenario:
    async def scenario(client: TestClient) -> tuple[int, Any, dict[str, str]]:
        resp = await client.post(path, json=body)
        return resp.status, await _body(resp), dict(resp.headers)

    return scenario


async def _body(resp: ClientResponse) -> Any:
    text = await resp.text()
    if resp.content_type == "application/json":
        return json.loads(text)
    if resp.content_type == "text/event-stream":
        return [line[len("data:") :].strip() for line in text.split("\n") if line.startswith("data:")]
    return text


def events(payloads: list[str]) -> list[Any]:
    return [json.loads(p) for p in payloads if p != "[DONE]"]


def generate(params: dict[str, Any], inputs: str = "Hi", **overrides: Any) -> tuple[int, Any, dict[str, str]]:
    result: tuple[int, Any, dict[str, str]] = run(
        FakeBackend(), post("/generate", {"inputs": inputs, "parameters": params}), **overrides
    )
    return result


async def until(flag: Callable[[], bool], timeout_s: float = 3.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if flag():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


# --- /generate, / and /generate_stream -------------------------------------------------------------


def test_generate_returns_text_details_and_tgi_headers() -> None:
    status, body, headers = generate({"max_new_tokens": 5, "details": True})
    assert status == 200 and body["generated_text"] == "Hello"
    details = body["details"]
    assert details["finish_reason"] == "length" and details["generated_tokens"] == 5 and details["seed"] is None
    assert [t["text"] for t in details["tokens"]] == list("Hello") and details["prefill"] == []
    assert "best_of_sequences" not in details and "top_tokens" not in details
    for name in ("x-compute-type", "x-compute-time", "x-compute-characters", "x-total-time", "x-validation-time",
                 "x-queue-time", "x-inference-time", "x-time-per-token"):  # fmt: skip
        assert name in headers
    assert headers["x-prompt-tokens"] == "2" and headers["x-generated-tokens"] == "5"
    assert headers["x-compute-characters"] == "2" and headers["x-compute-type"] == "gpu+optimized"


def test_generate_without_details_and_with_full_text_and_prefill() -> None:
    _, body, _ = generate({"max_new_tokens": 3})
    assert body == {"generated_text": "Hel"}
    _, body, _ = generate({"max_new_tokens": 3, "return_full_text": True})
    assert body["generated_text"] == "HiHel"
    _, body, _ = generate({"max_new_tokens": 3, "decoder_input_details": True})
    assert [(p["text"], p["logprob"]) for p in body["details"]["prefill"]] == [("H", None), ("i", None)]


def test_end_of_sequence_and_stop_sequence_finish_reasons() -> None:
    _, body, _ = generate({"max_new_tokens": 50, "details": True})
    assert body["generated_text"] == "Hello world" and body["details"]["finish_reason"] == "eos_token"
    assert body["details"]["tokens"][-1] == {"id": EOS_ID, "text": "</s>", "logprob": -0.01, "special": True}
    _, body, _ = generate({"max_new_tokens": 50, "details": True, "stop": ["lo"]})
    assert body["generated_text"] == "Hello" and body["details"]["finish_reason"] == "stop_sequence"


def test_compat_route_lists_one_response_and_defaults_full_text_by_pipeline_tag() -> None:
    request = {"inputs": "Hi", "parameters": {"max_new_tokens": 2}}
    status, body, _ = run(FakeBackend(), post("/", request))
    assert status == 200 and body == [{"generated_text": "HiHe"}]  # text-generation model: prompt included
    _, body, _ = run(FakeBackend(), post("/", request), model_pipeline_tag="text2text-generation")
    assert body == [{"generated_text": "He"}]


def test_stream_sends_one_event_per_token_and_details_on_the_last() -> None:
    backend = FakeBackend()
    body = {"inputs": "Hi", "parameters": {"max_new_tokens": 4, "details": True, "return_full_text": True}}
    status, payloads, headers = run(backend, post("/generate_stream", body))
    assert status == 200 and headers["X-Accel-Buffering"] == "no"
    assert headers["Content-Type"].startswith("text/event-stream")
    got = events(payloads)
    assert [e["index"] for e in got] == [1, 2, 3, 4] and [e["token"]["text"] for e in got] == list("Hell")
    assert all(e["generated_text"] is None and e["details"] is None for e in got[:-1])
    assert got[-1]["generated_text"] == "HiHell"
    assert got[-1]["details"] == {"finish_reason": "length", "generated_tokens": 4, "seed": None, "input_length": 2}
    _, payloads, _ = run(backend, post("/", {**body, "stream": True, "parameters": {"max_new_tokens": 2}}))
    assert events(payloads)[-1]["details"] is None and events(payloads)[-1]["generated_text"] == "HiHe"


def test_stream_end_after_an_await_still_ends_with_a_final_event() -> None:
    """A router that awaits between its last Token and End: the last token has gone out already, the
    final event carries an empty special token, so the text is still seen exactly once."""
    _, payloads, _ = run(
        FakeBackend(await_before_end=True),
        post("/generate_stream", {"inputs": "Hi", "parameters": {"max_new_tokens": 3}}),
    )
    got = events(payloads)
    assert "".join(e["token"]["text"] for e in got if not e["token"]["special"]) == "Hel"
    assert got[-1]["generated_text"] == "Hel" and got[-1]["token"]["special"] and got[-1]["token"]["text"] == ""


def test_generate_request_given_to_the_router() -> None:
    backend = FakeBackend()
    params = {"max_new_tokens": 3, "temperature": 0.5, "top_k": 7, "top_p": 0.9, "typical_p": 0.8,
              "repetition_penalty": 1.2, "frequency_penalty": 0.5, "seed": 11, "do_sample": True,
              "stop": ["x"], "watermark": True, "top_n_tokens": 2, "ecosched_slo_class": "batch"}  # fmt: skip
    run(backend, post("/generate", {"inputs": "Hello", "parameters": params}))
    req = backend.requests[0]
    assert req.inputs == "Hello" and len(req.input_ids) == 5 and req.max_new_tokens == 3
    assert req.truncate == SETTINGS.max_input_tokens and req.stop_sequences == ("x",) and req.top_n_tokens == 2
    assert req.slo_class == "batch" and req.add_special_tokens and req.arrival_s > 0
    s = req.sampling
    assert (s.temperature, s.top_k, s.top_p, s.typical_p, s.seed) == (0.5, 7, 0.9, 0.8, 11)
    assert (s.repetition_penalty, s.frequency_penalty, s.do_sample, s.watermark) == (1.2, 0.5, True, True)


def test_defaults_truncation_and_the_max_new_tokens_rule() -> None:
    backend = FakeBackend()
    run(backend, post("/generate", {"inputs": "abcdef"}))  # no parameters: TGI's default_parameters()
    req = backend.requests[0]
    assert req.max_new_tokens == SETTINGS.max_total_tokens - 6 and req.sampling.do_sample
    assert 0 <= req.sampling.seed < 2**64
    run(backend, post("/generate", {"inputs": "abcdef", "parameters": {"truncate": 2, "max_new_tokens": 1}}))
    assert backend.requests[1].input_ids == tuple(builtin_tokenizer().encode("ef").ids)
    assert backend.requests[1].truncate == 2
    # only min(max_new_tokens, 1024) counts against max_total_tokens; the router gets the whole value
    run(backend, post("/generate", {"inputs": "ab", "parameters": {"max_new_tokens": 2000}}), max_total_tokens=1100)
    assert backend.requests[2].max_new_tokens == 2000


VALIDATION_CASES = [
    ({"temperature": 0}, "`temperature` must be strictly positive"),
    ({"repetition_penalty": 0}, "`repetition_penalty` must be strictly positive"),
    ({"frequency_penalty": 2.5}, "`frequency_penalty` must be >= -2.0 and <= 2.0"),
    ({"top_p": 1.0}, "`top_p` must be > 0.0 and < 1.0"),
    ({"typical_p": 0}, "`typical_p` must be > 0.0 and < 1.0"),
    ({"top_k": 0}, "`top_k` must be strictly positive"),
    ({"max_new_tokens": 0}, "`max_new_tokens` must be strictly positive"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "`stop` supports up to 4 stop sequences. Given: 5"),
    ({"best_of": 2}, "you must use sampling when `best_of` is > 1"),
    ({"best_of": 3, "do_sample": True}, "`best_of` must be > 0 and <= 2. Given: 3"),
    ({"best_of": 2, "do_sample": True, "seed": 1}, "`seed` must not be set when `best_of` > 1"),
    ({"top_n_tokens": 6}, "`top_n_tokens` must be >= 0 and <= 5. Given: 6"),
    ({"truncate": 0}, "`truncate` must be strictly positive and less than 64. Given: 0"),
    ({"truncate": 65}, "`truncate` must be strictly positive and less than 64. Given: 65"),
    ({"max_new_tokens": 127},
     "`inputs` tokens + `max_new_tokens` must be <= 128. Given: 2 `inputs` tokens and 127 `max_new_tokens`"),
    ({"grammar": {"type": "json", "value": {"type": "object"}}},
     "grammar is not valid: Grammar must have a 'properties' field"),
]  # fmt: skip


@pytest.mark.parametrize(("params", "message"), VALIDATION_CASES)
def test_tgi_validation_messages(params: dict[str, Any], message: str) -> None:
    status, body, _ = generate(params)
    assert status == 422 and body == {"error": f"Input validation error: {message}", "error_type": "validation"}


def test_input_length_rules() -> None:
    status, body, _ = generate({"max_new_tokens": 1}, inputs="")
    assert status == 422 and body["error"] == "Input validation error: `inputs` cannot be empty"
    status, body, _ = generate({"max_new_tokens": 1}, inputs="x" * 65)
    assert body["error"] == "Input validation error: `inputs` must have less than 64 tokens. Given: 65"
    # TGI checks the total first: a long prompt with a large max_new_tokens reports the total
    _, body, _ = generate({"max_new_tokens": 100}, inputs="x" * 65)
    assert "Given: 65 `inputs` tokens and 100 `max_new_tokens`" in body["error"]
    status, _, _ = generate({"max_new_tokens": 1, "truncate": 10}, inputs="x" * 65)
    assert status == 200  # truncation keeps the last 10 tokens


def test_stream_only_refusals_are_events_with_status_200() -> None:
    for params, message in (
        ({"best_of": 2, "do_sample": True}, "`best_of` != 1 is not supported when streaming tokens"),
        ({"decoder_input_details": True}, "`decoder_input_details` == true is not supported when streaming tokens"),
        ({"temperature": -1}, "`temperature` must be strictly positive"),
    ):
        status, payloads, _ = run(FakeBackend(), post("/generate_stream", {"inputs": "Hi", "parameters": params}))
        assert status == 200
        assert events(payloads) == [{"error": f"Input validation error: {message}", "error_type": "validation"}]


BODY_CASES = [
    ({"inputs": "Hi", "parameters": {"max_new_tokens": -1}}, 422,
     "parameters.max_new_tokens: invalid value: integer `-1`, expected u32"),
    ({"inputs": "Hi", "parameters": {"max_new_tokens": "5"}}, 422,
     'parameters.max_new_tokens: invalid type: string "5", expected u32'),
    ({"inputs": "Hi", "parameters": {"stop": None}}, 422, "parameters.stop: invalid type: null, expected a sequence"),
    ({"inputs": "Hi", "parameters": {"stop": ["a", 1]}}, 422,
     "parameters.stop[1]: invalid type: integer `1`, expected a string"),
    ({"inputs": "Hi", "parameters": {"ecosched_slo_class": 3}}, 422,
     "parameters.ecosched_slo_class: invalid type: integer `3`, expected a string"),
    ({"parameters": {}}, 422, "missing field `inputs`"),
    ([1], 422, "invalid type: sequence, expected struct GenerateRequest"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "message"), BODY_CASES)
def test_bodies_refused_as_axum_refuses_them(body: Any, status: int, message: str) -> None:
    got_status, text, _ = run(FakeBackend(), post("/generate", body))
    assert got_status == status and text == f"Failed to deserialize the JSON body into the target type: {message}"


def test_body_syntax_content_type_and_size() -> None:
    async def scenario(client: TestClient) -> list[tuple[int, str]]:
        out = []
        for data, ctype in (
            ("{", "application/json"),
            ('{"inputs": "Hi"}', "text/plain"),
            ("{" * 3000, "application/json"),
        ):
            resp = await client.post("/generate", data=data, headers={"Content-Type": ctype})
            out.append((resp.status, await resp.text()))
        return out

    (syntax, ctype, large) = run(FakeBackend(), scenario, payload_limit=2048)
    assert syntax[0] == 400 and syntax[1].startswith("Failed to parse the request body as JSON: ")
    assert ctype == (415, "Expected request with `Content-Type: application/json`")
    assert large == (413, "Failed to buffer the request body: length limit exceeded")


def test_router_failures_map_to_status_or_stream_events() -> None:
    backend = FakeBackend(fail=Failure("shard exploded"), fail_at=2)
    status, body, _ = run(backend, post("/generate", {"inputs": "Hi", "parameters": {"max_new_tokens": 5}}))
    assert status == 424 and body == {
        "error": "Request failed during generation: shard exploded",
        "error_type": "generation",
    }
    status, payloads, _ = run(backend, post("/generate_stream", {"inputs": "Hi", "parameters": {"max_new_tokens": 5}}))
    got = events(payloads)
    assert status == 200 and [e["token"]["text"] for e in got[:-1]] == ["H", "e"]
    assert got[-1] == {"error": "Request failed during generation: shard exploded", "error_type": "generation"}
    backend = FakeBackend(fail=Failure("unknown SLO class 'gold'", "validation", 422))
    status, body, _ = run(backend, post("/generate", {"inputs": "Hi", "parameters": {"ecosched_slo_class": "gold"}}))
    assert status == 422 and body == {
        "error": "Input validation error: unknown SLO class 'gold'",
        "error_type": "validation",
    }


def test_best_of_returns_the_best_sequence_and_the_others() -> None:
    params = {"max_new_tokens": 3, "best_of": 2, "do_sample": True, "details": True}
    backend = FakeBackend()
    status, body, _ = run(backend, post("/generate", {"inputs": "Hi", "parameters": params}))
    assert status == 200 and len(backend.requests) == 2
    assert body["generated_text"] == "Hel" and len(body["details"]["best_of_sequences"]) == 1
    other = body["details"]["best_of_sequences"][0]
    assert other["generated_text"] == "Hel" and other["finish_reason"] == "length"
    assert other["seed"] is not None and other["seed"] != body["details"]["seed"]  # a random seed each
    status, body, _ = run(FakeBackend(), post("/generate", {"inputs": "Hi", "parameters": params}), max_best_of=1)
    assert body["error"] == "Input validation error: `best_of` != 1 is not allowed for this endpoint"


# --- permits and disconnects -------------------------------------------------------------------------


async def _open(client: TestClient, path: str, body: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw HTTP/1.1 request, so the test can drop the connection whenever it likes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    writer.write(head.encode() + data)
    await writer.drain()
    return reader, writer


def test_overload_refuses_at_once_and_the_permit_comes_back() -> None:
    backend = FakeBackend(hang_at=1)
    request = {"inputs": "Hi", "parameters": {"max_new_tokens": 3}}

    async def scenario(client: TestClient) -> None:
        _, writer = await _open(client, "/generate", request)
        await until(backend.hanging.is_set)
        resp = await client.post("/generate", json=request)
        assert resp.status == 429 and await resp.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
        resp = await client.post("/generate_stream", json=request)
        assert resp.status == 200 and events(await _body(resp)) == [
            {"error": "Model is overloaded", "error_type": "overloaded"}
        ]
        writer.close()
        await until(lambda: len(backend.cancelled) == 1)
        await until(lambda: client.app[INFER_KEY].permits.in_use == 0)  # type: ignore[index]
        backend.hang_at = None
        assert (await client.post("/generate", json=request)).status == 200
        metrics = client.app[METRICS_KEY]  # type: ignore[index]
        assert metrics.counter_value("tgi_request_failure", "overloaded") == 2
        assert metrics.counter_value("tgi_request_failure", "dropped") == 1

    run(backend, scenario, max_concurrent_requests=1)


@pytest.mark.parametrize("path", ["/generate", "/generate_stream", "/v1/chat/completions"])
def test_client_disconnect_cancels_the_router_request(path: str) -> None:
    backend = FakeBackend(hang_at=2)
    if path == "/v1/chat/completions":
        body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 5}
    else:
        body = {"inputs": "Hi", "parameters": {"max_new_tokens": 5}}

    async def scenario(client: TestClient) -> None:
        reader, writer = await _open(client, path, body)
        await until(backend.hanging.is_set)
        if path != "/generate":  # a stream: the first tokens have arrived
            assert b"data:" in await reader.readuntil(b"\n\n")
        writer.close()
        await until(lambda: len(backend.cancelled) == 1)
        await until(lambda: client.app[INFER_KEY].permits.in_use == 0)  # type: ignore[index]

    run(backend, scenario)


def test_silent_streams_send_keep_alive_comments() -> None:
    backend = FakeBackend(hang_at=0)

    async def scenario(client: TestClient) -> None:
        reader, writer = await _open(client, "/generate_stream", {"inputs": "Hi"})
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"200 OK" in head
        assert (await asyncio.wait_for(reader.readuntil(b":\n\n"), 2)).endswith(b":\n\n")
        writer.close()
        await until(lambda: len(backend.cancelled) == 1)

    run(backend, scenario, sse_keep_alive_s=0.05)


# --- /info, /health, /metrics, /tokenize, /v1/models ---------------------------------------------------


def test_info_health_models_and_tokenize() -> None:
    backend = FakeBackend()

    async def scenario(client: TestClient) -> None:
        info = await (await client.get("/info")).json()
        assert info["model_id"] == "test/model" and info["router"] == "ecosched" and info["max_total_tokens"] == 128
        assert info["policy"] == "ecoserve" and info["docker_label"] is None
        for path in ("/health", "/ping", "/"):
            resp = await client.get(path)
            assert resp.status == 200 and await resp.text() == ""
        backend.healthy = False
        resp = await client.get("/health")
        assert resp.status == 503 and await resp.json() == {"error": "unhealthy", "error_type": "healthcheck"}
        models = await (await client.get("/v1/models")).json()
        assert models == {
            "object": "list",
            "data": [{"id": "test/model", "object": "model", "created": 0, "owned_by": "test/model"}],
        }
        tokens = await (await client.post("/tokenize", json={"inputs": "hé!", "parameters": {"truncate": 1}})).json()
        assert [(t["text"], t["start"], t["stop"]) for t in tokens] == [
            ("h", 0, 1),
            ("é", 1, 3),
            ("é", 1, 3),
            ("!", 3, 4),
        ]

    run(backend, scenario, info_extra={"policy": "ecoserve"})


def test_metrics_expose_tgi_names_and_request_counts() -> None:
    backend = FakeBackend(queue_size=3)

    async def scenario(client: TestClient) -> str:
        await client.post("/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 2}})
        await client.post("/generate", json={"inputs": "Hi", "parameters": {"top_k": -1}})
        resp = await client.get("/metrics")
        assert resp.content_type == "text/plain"
        return await resp.text()

    text = run(backend, scenario)
    lines = set(text.splitlines())
    assert {"tgi_request_count 2.0", "tgi_request_success 1.0", 'tgi_request_failure{err="validation"} 1.0',
            "tgi_queue_size 3.0", "tgi_request_generated_tokens_count 1.0",
            "tgi_request_input_length_count 1.0"} <= lines  # fmt: skip
    for name in ("tgi_request_duration_bucket", "tgi_request_validation_duration_count",
                 "tgi_request_queue_duration_sum", "tgi_request_inference_duration_count",
                 "tgi_request_mean_time_per_token_duration_count", "tgi_request_max_new_tokens_count",
                 "tgi_batch_current_size", "tgi_batch_max_total_tokens"):  # fmt: skip
        assert name in text


def test_router_metrics_api() -> None:
    metrics = RouterMetrics(max_input_tokens=100, max_total_tokens=200)
    metrics.batch("prefill", size=3, max_tokens=90, forward_s=0.01, inference_s=0.02, ok=True)
    metrics.batch("decode", size=3, max_tokens=93, forward_s=0.005, inference_s=0.006, ok=False)
    metrics.batch_next(3)
    metrics.batch_max_total_tokens(4096)
    metrics.step(0.01)
    metrics.policy(0.001)
    metrics.preempted()
    metrics.paused(2)
    metrics.resumed()
    metrics.kv_blocks(used=10, reserved_unused=5, free=85)
    text = metrics.render().decode()
    expected = [
        'tgi_batch_inference_count{method="prefill"} 1.0',
        'tgi_batch_inference_failure{method="decode"} 1.0',
        'tgi_batch_inference_success{method="prefill"} 1.0',
        'tgi_batch_forward_duration_count{method="prefill"} 1.0',
        'tgi_batch_inference_duration_count{method="prefill"} 1.0',
        "tgi_batch_current_size 3.0",
        "tgi_batch_current_max_tokens 93.0",
        "tgi_batch_max_total_tokens 4096.0",
        "tgi_batch_next_size_count 1.0",
        "ecosched_step_duration_seconds_count 1.0",
        "ecosched_policy_duration_seconds_count 1.0",
        "ecosched_preemptions_total 1.0",
        "ecosched_pauses_total 2.0",
        "ecosched_resumes_total 1.0",
        "ecosched_kv_blocks_used 10.0",
        "ecosched_kv_blocks_reserved_unused 5.0",
        "ecosched_kv_blocks_free 85.0",
    ]
    for line in expected:
        assert line in text.splitlines()
    assert "tgi_request_count_total" not in text  # TGI's bare counter names
    assert 'tgi_batch_forward_duration_count{method="decode"}' not in text  # failures record no timing
    # a registry of its own: two apps in one process do not collide
    assert RouterMetrics(10, 20).render() != metrics.render()


def test_settings_are_validated_and_documented() -> None:
    with pytest.raises(ConfigError, match="max_input_tokens must be < max_total_tokens"):
        HttpSettings(model_id="m", max_input_tokens=10, max_total_tokens=10)
    with pytest.raises(ConfigError, match="max_concurrent_requests must be >= 1"):
        HttpSettings(model_id="m", max_input_tokens=1, max_total_tokens=2, max_concurrent_requests=0)
    assert all(settings_help().values())


# --- OpenAI routes -------------------------------------------------------------------------------------


def test_completions_one_or_several_prompts() -> None:
    backend = FakeBackend()
    status, body, headers = run(
        backend, post("/v1/completions", {"prompt": ["ab", "c"], "max_tokens": 3, "temperature": 0})
    )
    assert status == 200 and body["object"] == "text_completion" and body["model"] == "test/model"
    assert [(c["index"], c["text"], c["finish_reason"]) for c in body["choices"]] == [
        (0, "Hel", "length"),
        (1, "Hel", "length"),
    ]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}
    assert body["system_fingerprint"] == f"{SETTINGS.version}-native" and headers["x-generated-tokens"] == "6"
    assert not backend.requests[0].sampling.do_sample  # temperature 0: greedy
    _, body, _ = run(FakeBackend(), post("/v1/completions", {"prompt": "ab", "max_tokens": 30}))
    assert body["choices"][0]["finish_reason"] == "stop"  # eos_token, in OpenAI's words


def test_completions_stream_and_refusals() -> None:
    status, payloads, _ = run(
        FakeBackend(), post("/v1/completions", {"prompt": "ab", "max_tokens": 30, "stream": True})
    )
    got = events(payloads)
    assert status == 200 and payloads[-1] == "[DONE]"
    assert "".join(c["choices"][0]["text"] for c in got[:-1]) == "Hello world"
    assert all(c["choices"][0]["finish_reason"] == "" and "usage" not in c for c in got[:-1])
    assert got[-1]["choices"][0]["finish_reason"] == "eos_token" and got[-1]["usage"]["completion_tokens"] == 12
    status, body, _ = run(FakeBackend(), post("/v1/completions", {"prompt": "ab", "suffix": "z"}))
    assert status == 422 and body["error_type"] == "suffix not supported"
    status, body, _ = run(FakeBackend(), post("/v1/completions", {"prompt": ["a"] * 5}))
    assert status == 422 and body == {"error": "Number of prompts exceeds the maximum allowed batch size of 4",
                                      "error_type": "batch size exceeded"}  # fmt: skip
    _, payloads, _ = run(FakeBackend(), post("/v1/completions", {"prompt": "ab", "max_tokens": 500, "stream": True}))
    assert json.loads(payloads[0])["error"]["http_status_code"] == 422 and payloads[-1] == "[DONE]"


def test_chat_uses_the_plain_template_and_answers_openai_style() -> None:
    backend = FakeBackend()
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
    ]
    status, body, _ = run(
        backend, post("/v1/chat/completions", {"messages": messages, "max_tokens": 3, "logprobs": True})
    )
    req = backend.requests[0]
    assert req.inputs == "system: be brief\nuser: hi\nassistant:" and not req.add_special_tokens
    assert status == 200 and body["object"] == "chat.completion" and body["model"] == "test/model"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hel"} and choice["finish_reason"] == "length"
    assert [c["token"] for c in choice["logprobs"]["content"]] == list("Hel")
    assert body["usage"]["completion_tokens"] == 3 and body["usage"]["prompt_tokens"] == len(req.input_ids)


def test_chat_stream_with_usage_and_parameter_mapping() -> None:
    backend = FakeBackend()
    request = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 30, "model": "other",
               "presence_penalty": 0.5, "stream_options": {"include_usage": True}}  # fmt: skip
    status, payloads, _ = run(backend, post("/v1/chat/completions", request))
    got = events(payloads)
    assert status == 200 and payloads[-1] == "[DONE]" and all(c["model"] == "other" for c in got)
    texts = [c["choices"][0]["delta"]["content"] for c in got[:-1]]
    assert "".join(texts) == "Hello world" and texts[-1] == ""  # the special EOS token has no content
    assert [c["choices"][0]["finish_reason"] for c in got[:-1]][-2:] == [None, "stop"]
    assert got[-1]["choices"] == [] and got[-1]["usage"]["completion_tokens"] == 12
    assert backend.requests[0].sampling.repetition_penalty == 2.5 and backend.requests[0].sampling.do_sample


def test_chat_refusals_and_jinja_template() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    status, body, _ = run(
        FakeBackend(), post("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "tools": tools})
    )
    assert status == 422 and body["error_type"] == "tool_error"
    status, body, _ = run(FakeBackend(), post("/v1/chat/completions", {"messages": [{"role": "user"}]}))
    assert status == 422 and body.endswith("messages[0]: data did not match any variant of untagged enum MessageBody")
    template = (
        "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    backend = FakeBackend()
    run(backend, post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
        chat_template=template, bos_token="<s>")  # fmt: skip
    assert backend.requests[0].inputs == "<s><user>hi<assistant>"
    failing = "{{ raise_exception('no system role') }}"
    status, body, _ = run(FakeBackend(), post("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
                          chat_template=failing)  # fmt: skip
    assert status == 422 and body == {"error": "Template error: no system role", "error_type": "template_error"}


def test_response_format_becomes_a_regex_grammar() -> None:
    pytest.importorskip("outlines_core", reason="JSON grammars are compiled by outlines-core")
    backend = FakeBackend()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    request = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2,
               "response_format": {"type": "json_object", "value": schema}}  # fmt: skip
    assert run(backend, post("/v1/chat/completions", request))[0] == 200
    sampling = backend.requests[0].sampling
    assert sampling.grammar_type == 2 and '"a"' in sampling.grammar
    params = {"max_new_tokens": 2, "grammar": {"type": "regex", "value": "[ab]+"}}
    run(backend, post("/generate", {"inputs": "x", "parameters": params}))
    assert backend.requests[1].sampling.grammar == "[ab]+"
    status, body, _ = run(
        FakeBackend(), post("/generate", {"inputs": "x", "parameters": params}), disable_grammar_support=True
    )
    assert status == 422 and body["error"] == "Input validation error: grammar is not supported"


def test_finish_reason_enum_matches_tgi() -> None:
    assert [r.value for r in FinishReason] == ["length", "eos_token", "stop_sequence"]


def test_compute_time_header_is_written_as_rust_writes_floats() -> None:
    assert [rust_float(x) for x in (1.0, 0.5, 1e-05, 0.25e-3)] == ["1", "0.5", "0.00001", "0.00025"]
    _, _, headers = generate({"max_new_tokens": 1})
    assert float(headers["x-compute-time"]) >= 0 and "e" not in headers["x-compute-time"]


def test_api_key_guards_the_post_routes_only() -> None:
    backend = FakeBackend()

    async def scenario(client: TestClient) -> None:
        body = {"inputs": "hello", "parameters": {"max_new_tokens": 2}}
        assert (await client.post("/generate", json=body)).status == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (await client.post("/generate", json=body, headers=wrong)).status == 401
        right = {"Authorization": "bearer s3cret"}  # the scheme is case-insensitive, as in TGI
        assert (await client.post("/generate", json=body, headers=right)).status == 200
        assert (await client.get("/health")).status == 200 and (await client.get("/info")).status == 200

    run(backend, scenario, api_key="s3cret")
