"""ecosched's TGI HTTP API against clients written for the real TGI router:

- HF's `text-generation` 0.7.0 client (`Client`, `AsyncClient`): POST / (plain and streaming), the
  error mapping, and chat;
- raw HTTP (httpx) checked against the response schemas of TGI's `docs/openapi.json`, written out
  below as required fields and types, for the routes the client never calls.

The app runs on 127.0.0.1 (a free port) in a thread, over a scripted fake router.
"""

from __future__ import annotations

import pytest

pytest.importorskip("aiohttp", reason="the TGI HTTP layer needs aiohttp: pip install -e '.[tgi]'")
pytest.importorskip("httpx", reason="the raw HTTP checks use httpx")

import asyncio
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import httpx
from ecosched_adapters.tgi.http import make_app
from ecosched_adapters.tgi.http_settings import HttpSettings
from ecosched_adapters.tgi.tokenizer import builtin_tokenizer
from ecosched_adapters.tgi.types import Failure

from .tgi_client import FakeBackend, require_text_generation, serve_in_thread

tg = require_text_generation()
from text_generation import errors as tg_errors  # noqa: E402
from text_generation.types import Message  # noqa: E402

SETTINGS = HttpSettings(model_id="test/model", max_input_tokens=64, max_total_tokens=128)
# the 0.7.0 client calls pydantic's deprecated `.dict()`
pytestmark = pytest.mark.filterwarnings("ignore:The `dict` method is deprecated:DeprecationWarning")


@contextmanager
def server(backend: FakeBackend | None = None, **overrides: Any) -> Iterator[str]:
    app = make_app(backend or FakeBackend(), replace(SETTINGS, **overrides), builtin_tokenizer())
    with serve_in_thread(app) as url:
        yield url


# --- the text-generation client ---------------------------------------------------------------------


def test_client_generate_details() -> None:
    with server() as url:
        response = tg.Client(url).generate("Hi", max_new_tokens=4)
        assert response.generated_text == "Hell"  # the client asks for return_full_text=False
        assert response.details.finish_reason == tg.types.FinishReason.Length
        assert response.details.generated_tokens == 4 and [t.text for t in response.details.tokens] == list("Hell")
        response = tg.Client(url).generate("Hi", max_new_tokens=50, return_full_text=True, do_sample=True, seed=5)
        assert response.generated_text == "HiHello world" and response.details.seed == 5
        assert response.details.finish_reason == tg.types.FinishReason.EndOfSequenceToken


def test_client_generate_stream_tokens_and_final_details() -> None:
    with server() as url:
        responses = list(tg.Client(url).generate_stream("Hi", max_new_tokens=5, stop_sequences=["ll"]))
        assert [r.token.text for r in responses] == list("Hell")
        assert all(r.generated_text is None and r.details is None for r in responses[:-1])
        assert responses[-1].generated_text == "Hell"
        assert responses[-1].details.finish_reason == tg.types.FinishReason.StopSequence
        assert responses[-1].details.generated_tokens == 4


def test_async_client_generate_and_stream() -> None:
    async def scenario(url: str) -> None:
        client = tg.AsyncClient(url)
        response = await client.generate("Hi", max_new_tokens=3)
        assert response.generated_text == "Hel" and response.details.generated_tokens == 3
        responses = [r async for r in client.generate_stream("Hi", max_new_tokens=3)]
        assert [r.token.text for r in responses] == list("Hel") and responses[-1].details.generated_tokens == 3

    with server() as url:
        asyncio.run(scenario(url))


def test_client_validation_errors() -> None:
    with server() as url:
        client = tg.Client(url)
        with pytest.raises(
            tg_errors.ValidationError, match=re.escape("`inputs` tokens + `max_new_tokens` must be <= 128")
        ):
            client.generate("Hi", max_new_tokens=500)
        with pytest.raises(tg_errors.ValidationError, match=re.escape("`stop` supports up to 4 stop sequences")):
            list(client.generate_stream("Hi", stop_sequences=list("abcde")))

        async def streamed() -> None:
            async for _ in tg.AsyncClient(url).generate_stream("Hi", top_n_tokens=9):
                pass

        with pytest.raises(
            tg_errors.ValidationError, match=re.escape("`top_n_tokens` must be >= 0 and <= 5. Given: 9")
        ):
            asyncio.run(streamed())


def test_client_overloaded_error() -> None:
    backend = FakeBackend(hang_at=1)
    with server(backend, max_concurrent_requests=1) as url:
        hung = httpx.Client(base_url=url, timeout=10)
        try:
            with hung.stream("POST", "/generate_stream", json={"inputs": "Hi"}) as first:
                lines = first.iter_lines()  # kept: a dropped iterator closes the connection
                assert next(lines).startswith("data:")  # the first token: the only permit is taken
                with pytest.raises(tg_errors.OverloadedError, match="Model is overloaded"):
                    tg.Client(url).generate("Hi")
                with pytest.raises(tg_errors.OverloadedError):
                    list(tg.Client(url).generate_stream("Hi"))
        finally:
            hung.close()
        assert backend.finished.wait(5) and len(backend.cancelled) == 1


def test_client_generation_errors() -> None:
    backend = FakeBackend(fail=Failure("CUDA out of memory"), fail_at=1)
    with server(backend) as url:
        with pytest.raises(tg_errors.GenerationError, match="Request failed during generation: CUDA out of memory"):
            tg.Client(url).generate("Hi", max_new_tokens=5)
        with pytest.raises(tg_errors.GenerationError):
            list(tg.Client(url).generate_stream("Hi", max_new_tokens=5))


def test_client_chat() -> None:
    with server() as url:
        client = tg.Client(url)
        complete = client.chat([Message(role="user", content="hi")], max_tokens=3)
        assert complete.object == "chat.completion" and complete.model == "test/model"
        assert complete.choices[0].message.content == "Hel" and complete.choices[0].finish_reason == "length"
        assert complete.usage["completion_tokens"] == 3
        chunks = []
        # NOTE: the 0.7.0 client predates `data: [DONE]` (which current TGI sends too) and fails to
        # parse it as JSON once every chunk has been read.
        with pytest.raises(json.JSONDecodeError):
            for chunk in client.chat([Message(role="user", content="hi")], max_tokens=30, stream=True):
                chunks.append(chunk)
        assert "".join(c.choices[0].delta.content for c in chunks) == "Hello world"
        assert chunks[-1].choices[0].finish_reason == "stop" and chunks[0].object == "chat.completion.chunk"

        async def async_chat() -> str:
            answer = await tg.AsyncClient(url).chat([Message(role="user", content="hi")], max_tokens=2)
            return str(answer.choices[0].message.content)

        assert asyncio.run(async_chat()) == "He"


# --- raw HTTP against TGI's OpenAPI schemas -----------------------------------------------------------
# A field spec is a primitive (str, int, num, bool), a schema name, `[spec]` for an array, or an enum
# tuple; a trailing `?` allows null. A key starting with `?` is not in the schema's `required` list.

SCHEMAS: dict[str, Any] = {
    "ErrorResponse": {"error": "str", "error_type": "str"},
    "FinishReason": ("length", "eos_token", "stop_sequence"),
    "Token": {"id": "int", "text": "str", "logprob": "num?", "special": "bool"},
    "PrefillToken": {"id": "int", "text": "str", "logprob": "num?"},
    "Details": {"finish_reason": "FinishReason", "generated_tokens": "int", "?seed": "int?",
                "prefill": "[PrefillToken]", "tokens": "[Token]", "?top_tokens": "[[Token]]",
                "?best_of_sequences": "[BestOfSequence]?"},
    "BestOfSequence": {"generated_text": "str", "finish_reason": "FinishReason", "generated_tokens": "int",
                       "?seed": "int?", "prefill": "[PrefillToken]", "tokens": "[Token]", "?top_tokens": "[[Token]]"},
    "GenerateResponse": {"generated_text": "str", "?details": "Details?"},
    "StreamDetails": {"finish_reason": "FinishReason", "generated_tokens": "int", "input_length": "int",
                      "?seed": "int?"},
    "StreamResponse": {"index": "int", "token": "Token", "?top_tokens": "[Token]", "?generated_text": "str?",
                       "?details": "StreamDetails?"},
    "Info": {"model_id": "str", "?model_sha": "str?", "?model_pipeline_tag": "str?", "max_concurrent_requests": "int",
             "max_best_of": "int", "max_stop_sequences": "int", "max_input_tokens": "int", "max_total_tokens": "int",
             "validation_workers": "int", "max_client_batch_size": "int", "router": "str", "version": "str",
             "?sha": "str?", "?docker_label": "str?"},
    "SimpleToken": {"id": "int", "text": "str", "start": "int", "stop": "int"},
    "Usage": {"prompt_tokens": "int", "completion_tokens": "int", "total_tokens": "int"},
    "CompletionComplete": {"index": "int", "text": "str", "?logprobs": "[num]?", "finish_reason": "str"},
    "Chunk": {"object": ("text_completion",), "id": "str", "created": "int", "choices": "[CompletionComplete]",
              "model": "str", "system_fingerprint": "str"},
    "CompletionFinal": {"object": ("text_completion",), "id": "str", "created": "int", "model": "str",
                        "system_fingerprint": "str", "choices": "[CompletionComplete]", "usage": "Usage"},
    "TextMessage": {"role": "str", "content": "str", "?tool_call_id": "str?"},
    "ChatCompletionTopLogprob": {"token": "str", "logprob": "num"},
    "ChatCompletionLogprob": {"token": "str", "logprob": "num", "top_logprobs": "[ChatCompletionTopLogprob]"},
    "ChatCompletionLogprobs": {"content": "[ChatCompletionLogprob]"},
    "ChatCompletionComplete": {"index": "int", "message": "TextMessage", "?logprobs": "ChatCompletionLogprobs?",
                               "finish_reason": "str"},
    "ChatCompletion": {"object": ("chat.completion",), "id": "str", "created": "int", "model": "str",
                       "system_fingerprint": "str", "choices": "[ChatCompletionComplete]", "usage": "Usage"},
    "ChatCompletionChoice": {"index": "int", "delta": "TextMessage", "?logprobs": "ChatCompletionLogprobs?",
                             "?finish_reason": "str?"},
    "ChatCompletionChunk": {"object": ("chat.completion.chunk",), "id": "str", "created": "int", "model": "str",
                            "system_fingerprint": "str", "choices": "[ChatCompletionChoice]", "?usage": "Usage?"},
    "ModelInfo": {"id": "str", "object": "str", "created": "int", "owned_by": "str"},
}  # fmt: skip
PRIMITIVES = {"str": (str,), "int": (int,), "num": (int, float), "bool": (bool,)}


def conforms(value: Any, spec: Any, path: str = "$") -> None:
    """Assert that `value` fits `spec` (see SCHEMAS)."""
    if isinstance(spec, tuple):
        assert value in spec, f"{path}: {value!r} is not one of {spec}"
        return
    if isinstance(spec, dict):
        assert isinstance(value, dict), f"{path}: expected an object, got {value!r}"
        for key, field_spec in spec.items():
            name = key.lstrip("?")
            if name in value:
                conforms(value[name], field_spec, f"{path}.{name}")
            else:
                assert key.startswith("?"), f"{path}: required field {name!r} missing"
        return
    if spec.endswith("?"):
        if value is None:
            return
        spec = spec[:-1]
    if spec.startswith("["):
        assert isinstance(value, list), f"{path}: expected an array, got {value!r}"
        for i, item in enumerate(value):
            conforms(item, spec[1:-1], f"{path}[{i}]")
    elif spec in PRIMITIVES:
        ok = isinstance(value, PRIMITIVES[spec]) and (spec == "bool" or not isinstance(value, bool))
        assert ok, f"{path}: expected {spec}, got {value!r}"
    else:
        conforms(value, SCHEMAS[spec], path)


def sse_data(response: Any) -> list[str]:
    return [line[len("data:") :].strip() for line in response.text.split("\n") if line.startswith("data:")]


@pytest.fixture(scope="module")
def http() -> Iterator[Any]:
    with server(info_extra={"ecosched_policy": "ecoserve"}) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield client


def test_generate_routes_fit_the_openapi_schemas(http: Any) -> None:
    resp = http.post("/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 3, "details": True,
                                                                         "decoder_input_details": True}})  # fmt: skip
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
    conforms(resp.json(), "GenerateResponse")
    params = {"max_new_tokens": 3, "best_of": 2, "do_sample": True, "details": True}
    conforms(http.post("/generate", json={"inputs": "Hi", "parameters": params}).json(), "GenerateResponse")
    conforms(http.post("/", json={"inputs": "Hi", "parameters": {"max_new_tokens": 3}}).json(), "[GenerateResponse]")
    resp = http.post("/generate_stream", json={"inputs": "Hi", "parameters": {"max_new_tokens": 3, "details": True}})
    assert resp.headers["content-type"].startswith("text/event-stream")
    for data in sse_data(resp):
        conforms(json.loads(data), "StreamResponse")
    resp = http.post("/", json={"inputs": "Hi", "stream": True})
    assert all(json.loads(d)["index"] > 0 for d in sse_data(resp))


def test_errors_fit_the_openapi_schema(http: Any) -> None:
    resp = http.post("/generate", json={"inputs": "", "parameters": {"max_new_tokens": 3}})
    assert resp.status_code == 422
    conforms(resp.json(), "ErrorResponse")
    resp = http.post("/generate_stream", json={"inputs": "", "parameters": {"max_new_tokens": 3}})
    assert resp.status_code == 200
    conforms(json.loads(sse_data(resp)[0]), "ErrorResponse")


def test_openai_routes_fit_the_openapi_schemas(http: Any) -> None:
    resp = http.post("/v1/completions", json={"prompt": ["Hi", "Yo"], "max_tokens": 3})
    conforms(resp.json(), "CompletionFinal")
    data = sse_data(http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 3, "stream": True}))
    assert data[-1] == "[DONE]"
    for chunk in data[:-2]:
        conforms(json.loads(chunk), "Chunk")
    conforms(json.loads(data[-2]), "CompletionFinal")
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "logprobs": True}
    conforms(http.post("/v1/chat/completions", json=chat).json(), "ChatCompletion")
    data = sse_data(http.post("/v1/chat/completions", json={**chat, "stream": True,
                                                            "stream_options": {"include_usage": True}}))  # fmt: skip
    assert data[-1] == "[DONE]"
    for chunk in data[:-1]:
        conforms(json.loads(chunk), "ChatCompletionChunk")


def test_info_health_metrics_tokenize_and_models(http: Any) -> None:
    info = http.get("/info").json()
    conforms(info, "Info")
    assert info["ecosched_policy"] == "ecoserve" and info["router"] == "ecosched"
    resp = http.get("/health")
    assert resp.status_code == 200 and resp.content == b""
    resp = http.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    assert "tgi_request_count" in resp.text and "tgi_queue_size" in resp.text
    conforms(http.post("/tokenize", json={"inputs": "Hi there"}).json(), "[SimpleToken]")
    models = http.get("/v1/models").json()
    assert models["object"] == "list"
    conforms(models["data"], "[ModelInfo]")


def test_unhealthy_backend_answers_503() -> None:
    with server(FakeBackend(healthy=False)) as url:
        resp = httpx.get(f"{url}/health")
        assert resp.status_code == 503
        conforms(resp.json(), "ErrorResponse")
