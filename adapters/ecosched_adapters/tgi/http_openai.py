"""TGI's OpenAI-compatible routes: POST /v1/completions and POST /v1/chat/completions
(`router/src/server.rs` `completions`, `chat_completions`; `router/src/chat.rs`).

Both map the OpenAI request onto TGI's parameters as TGI does (temperature 0 means greedy, else
sampling; chat's `presence_penalty` becomes `repetition_penalty = presence_penalty + 2`), run it
through the same `Infer` as /generate, and stream chunks that end with `data: [DONE]`. Errors in a
stream are OpenAI-style events (`{"error": {"message", "http_status_code": 422}}`, TGI's fixed code).

Chat prompts come from the model's Jinja chat template (`HttpSettings.chat_template`) or, without
one, from `plain_chat_prompt`. Tool calling is not supported: requests with `tools` are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any, TypeVar

from aiohttp import web

from .http_infer import Infer, StreamToken, all_or_none, token_json
from .http_io import SseStream, dumps, json_response, read_body
from .http_schema import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    Parameters,
    TextRequest,
    decode_chat,
    decode_completion,
)
from .http_settings import HttpSettings
from .http_validation import RequestError
from .types import End, FinishReason

X = TypeVar("X")
ChatPrompt = Callable[[Sequence[ChatMessage]], str]
# The headers TGI adds up over a multi-prompt /v1/completions answer (x-compute-time is not one).
_SUMMED_HEADERS = (
    "x-compute-characters", "x-total-time", "x-validation-time", "x-queue-time", "x-inference-time",
    "x-time-per-token", "x-prompt-tokens", "x-generated-tokens",
)  # fmt: skip


def plain_chat_prompt(messages: Sequence[ChatMessage]) -> str:
    """The chat template used when the model has none: one `role: content` line per message, then
    `assistant:` for the reply to follow."""
    return "".join(f"{m.role}: {m.content}\n" for m in messages) + "assistant:"


def jinja_chat_prompt(template: str, bos_token: str | None, eos_token: str | None) -> ChatPrompt:
    """A model's Jinja chat template, rendered as TGI renders it (sandboxed, `trim_blocks` and
    `lstrip_blocks`, `raise_exception`, `add_generation_prompt=True`)."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    compiled = env.from_string(template)

    def render(messages: Sequence[ChatMessage]) -> str:
        try:
            return compiled.render(
                messages=[{"role": m.role, "content": m.content} for m in messages],
                bos_token=bos_token,
                eos_token=eos_token,
                add_generation_prompt=True,
            )
        except TemplateError as err:
            raise RequestError(422, f"Template error: {err}", "template_error", "template") from None

    return render


def _sampling(temperature: float | None) -> tuple[bool, float | None]:
    """TGI: `temperature == 0` means greedy (and no temperature), anything else samples."""
    return (False, None) if temperature == 0.0 else (True, temperature)


def _finish_reason(reason: FinishReason) -> str:
    """TGI's `FinishReason::format(true)`: OpenAI's `stop` for an end-of-sequence token."""
    return "stop" if reason is FinishReason.EOS_TOKEN else reason.value


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    total = prompt_tokens + completion_tokens
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}


async def _merged(streams: Sequence[AsyncGenerator[X, None]]) -> AsyncGenerator[tuple[int, X], None]:
    """The items of several streams as they come, each with its stream's index."""
    queue: asyncio.Queue[tuple[int, X] | int] = asyncio.Queue()

    async def drain(index: int, stream: AsyncGenerator[X, None]) -> None:
        try:
            async with contextlib.aclosing(stream) as items:
                async for item in items:
                    queue.put_nowait((index, item))
        finally:
            queue.put_nowait(index)

    tasks = [asyncio.create_task(drain(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            got = await queue.get()
            if isinstance(got, int):
                running -= 1
            else:
                yield got
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)


def openai_error_event(err: RequestError) -> str:
    """TGI's `InferError::into_openai_event` (always `http_status_code: 422`)."""
    return dumps({"error": {"message": err.message, "http_status_code": 422}})


class OpenAiRoutes:
    """The handlers of /v1/completions and /v1/chat/completions."""

    def __init__(self, infer: Infer, settings: HttpSettings, chat_prompt: ChatPrompt) -> None:
        self.infer = infer
        self.settings = settings
        self.chat_prompt = chat_prompt

    def _base(self, obj: str, model: str) -> dict[str, Any]:
        return {
            "object": obj,
            "id": "",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": self.settings.system_fingerprint,
        }

    # --- /v1/completions ------------------------------------------------------------------------

    async def completions(self, request: web.Request) -> web.StreamResponse:
        start_s = time.monotonic()
        body = await read_body(request, decode_completion)
        if body.suffix is not None:
            self.infer.metrics.request_failed("validation")
            message = "Suffix is not supported and can be achieved by preprocessing the prompt."
            raise RequestError(422, message, "suffix not supported", "validation")
        if len(body.prompts) > self.settings.max_client_batch_size:
            self.infer.metrics.request_failed("validation")
            message = (
                f"Number of prompts exceeds the maximum allowed batch size of {self.settings.max_client_batch_size}"
            )
            raise RequestError(422, message, "batch size exceeded", "validation")
        requests = [TextRequest(prompt, self._completion_parameters(body)) for prompt in body.prompts]
        if body.stream:
            return await self._stream_completions(request, requests, start_s)
        results = await all_or_none([self.infer.generate_response(r, start_s) for r in requests])
        choices, headers, prompt_tokens, completion_tokens = [], {"x-compute-type": self.settings.compute_type}, 0, 0
        for index, (generation, gen_headers, input_length) in enumerate(results):
            details = generation["details"]
            prompt_tokens += input_length
            completion_tokens += details["generated_tokens"]
            reason = _finish_reason(FinishReason(details["finish_reason"]))
            choices.append(
                {"index": index, "text": generation["generated_text"], "logprobs": None, "finish_reason": reason}
            )
            for name in _SUMMED_HEADERS:
                headers[name] = str(int(headers.get(name, "0")) + int(gen_headers[name]))
        answer = self._base("text_completion", self.settings.model_id)
        answer.update(choices=choices, usage=_usage(prompt_tokens, completion_tokens))
        return json_response(answer, headers=headers)

    def _completion_parameters(self, body: CompletionRequest) -> Parameters:
        do_sample, temperature = _sampling(body.temperature)
        # NOTE: TGI also asks for decoder_input_details here; no completion output shows them.
        return Parameters(
            temperature=temperature, repetition_penalty=body.repetition_penalty,
            frequency_penalty=body.frequency_penalty, top_p=body.top_p, do_sample=do_sample,
            max_new_tokens=body.max_tokens, stop=body.stop, details=True, seed=body.seed,
        )  # fmt: skip

    async def _stream_completions(
        self, request: web.Request, requests: list[TextRequest], start_s: float
    ) -> web.StreamResponse:
        headers = self.infer.stream_headers(requests[0])
        headers["x-compute-characters"] = str(sum(len(r.inputs) for r in requests))
        streams = [self.infer.stream(r, start_s) for r in requests]
        async with SseStream(request, headers, self.settings.sse_keep_alive_s) as sse:
            async with contextlib.aclosing(_merged(streams)) as items:
                async for index, item in items:
                    if isinstance(item, RequestError):
                        await sse.send(openai_error_event(item))
                    else:
                        await sse.send(dumps(self._completion_chunk(index, item)))
            await sse.send("[DONE]")
        return sse.response

    def _completion_chunk(self, index: int, item: StreamToken) -> dict[str, Any]:
        """TGI's `Chunk`, or `CompletionFinal` with usage on the last event (its finish_reason is
        TGI's own name, e.g. `eos_token`, unlike the non-streaming answer)."""
        chunk = self._base("text_completion", self.settings.model_id)
        reason = item.end.finish_reason.value if item.end is not None else ""
        chunk["choices"] = [{"index": index, "text": item.token.text, "logprobs": None, "finish_reason": reason}]
        if item.end is not None:
            chunk["usage"] = _usage(item.input_length, item.end.generated_tokens)
        return chunk

    # --- /v1/chat/completions -------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        start_s = time.monotonic()
        body = await read_body(request, decode_chat)
        try:
            if body.has_tools and body.response_format is not None:
                raise RequestError(422, "Tool error: Grammar and tools are mutually exclusive", "tool_error")
            if body.has_tools:
                raise RequestError(422, "Tool error: tools are not supported by the ecosched router", "tool_error")
            inputs = self.chat_prompt(body.messages)
        except RequestError as err:
            self.infer.metrics.request_failed(err.metric_err)
            raise
        req = TextRequest(inputs, self._chat_parameters(body), add_special_tokens=False)
        model = self.settings.model_id if body.model in (None, "tgi") else str(body.model)
        if body.stream:
            return await self._stream_chat(request, req, body, model, start_s)
        generation, headers, input_length = await self.infer.generate_response(req, start_s)
        details = generation["details"]
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": generation["generated_text"]},
            "logprobs": _logprobs(details["tokens"]) if body.logprobs else None,
            "finish_reason": _finish_reason(FinishReason(details["finish_reason"])),
        }
        answer = self._base("chat.completion", model)
        answer.update(choices=[choice], usage=_usage(input_length, details["generated_tokens"]))
        return json_response(answer, headers=headers)

    def _chat_parameters(self, body: ChatRequest) -> Parameters:
        do_sample, temperature = _sampling(body.temperature)
        repetition_penalty = None if body.presence_penalty is None else body.presence_penalty + 2.0
        return Parameters(
            temperature=temperature, repetition_penalty=repetition_penalty,
            frequency_penalty=body.frequency_penalty, top_p=body.top_p, do_sample=do_sample,
            max_new_tokens=body.max_tokens, stop=body.stop, details=True, seed=body.seed,
            top_n_tokens=body.top_logprobs, grammar=body.response_format,
        )  # fmt: skip

    async def _stream_chat(
        self, request: web.Request, req: TextRequest, body: ChatRequest, model: str, start_s: float
    ) -> web.StreamResponse:
        async with SseStream(request, self.infer.stream_headers(req), self.settings.sse_keep_alive_s) as sse:
            async with contextlib.aclosing(self.infer.stream(req, start_s)) as items:
                async for item in items:
                    if isinstance(item, RequestError):
                        await sse.send(openai_error_event(item))
                        continue
                    await sse.send(dumps(self._chat_chunk(item, body.logprobs, model)))
                    if item.end is not None and body.include_usage:
                        await sse.send(dumps(self._usage_chunk(item.input_length, item.end, model)))
            await sse.send("[DONE]")
        return sse.response

    def _chat_chunk(self, item: StreamToken, logprobs: bool, model: str) -> dict[str, Any]:
        """TGI's `ChatCompletionChunk` for one token. NOTE: the delta also carries
        `"tool_calls": null`, which TGI's newer chunks leave out but the text-generation 0.7.0
        client requires."""
        content = "" if item.token.special else item.token.text
        choice = {
            "index": 0,
            "delta": {"role": "assistant", "content": content, "tool_calls": None},
            "logprobs": _logprobs([token_json(item.token)]) if logprobs else None,
            "finish_reason": _finish_reason(item.end.finish_reason) if item.end is not None else None,
        }
        chunk = self._base("chat.completion.chunk", model)
        chunk.update(choices=[choice], usage=None)
        return chunk

    def _usage_chunk(self, input_length: int, end: End, model: str) -> dict[str, Any]:
        chunk = self._base("chat.completion.chunk", model)
        chunk.update(choices=[], usage=_usage(input_length, end.generated_tokens))
        return chunk


def _logprobs(tokens: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """TGI's `ChatCompletionLogprobs` (no top logprobs: the router reports none)."""
    return {"content": [{"token": t["text"], "logprob": t["logprob"], "top_logprobs": []} for t in tokens]}
