"""TGI's request validation (`router/src/validation.rs`): parameter checks, tokenization and the
length rules, with TGI's messages, in TGI's order. The result is the router's `GenerateRequest`.

Tokenization runs on `validation_workers` threads, as TGI's tokenizer workers do, so a long prompt
does not stall the event loop.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from importlib import import_module
from typing import Any, TypeVar

from .http_metrics import RouterMetrics
from .http_schema import Grammar, Parameters, TextRequest
from .http_settings import HttpSettings
from .types import Failure, GenerateRequest, SamplingParams

R = TypeVar("R")
GRAMMAR_TYPE_REGEX = 2  # the proto's GrammarType: 0 none, 1 json (not enforced by shards), 2 regex
_MESSAGE_PREFIX = {  # TGI's `InferError` display, by error type
    "validation": "Input validation error: ",
    "generation": "Request failed during generation: ",
}


class RequestError(Exception):
    """A request refused or failed, as TGI reports it (`InferError`): HTTP status, message, type.
    `metric_err` is the `err` label of `tgi_request_failure`."""

    def __init__(self, status: int, message: str, error_type: str, metric_err: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.metric_err = metric_err or error_type

    def body(self) -> dict[str, str]:
        """TGI's `ErrorResponse`."""
        return {"error": self.message, "error_type": self.error_type}


def validation_error(message: str) -> RequestError:
    return RequestError(422, _MESSAGE_PREFIX["validation"] + message, "validation")


def overloaded_error() -> RequestError:
    return RequestError(429, "Model is overloaded", "overloaded")


def incomplete_error(stream: bool) -> RequestError:
    if stream:
        return RequestError(500, "Incomplete generation stream", "incomplete_generation_stream", "incomplete")
    return RequestError(500, "Incomplete generation", "incomplete_generation", "incomplete")


def failure_error(failure: Failure) -> RequestError:
    """The client-facing error of a router `Failure`: the router gives the cause, this adds TGI's
    prefix for the error types TGI prefixes (`Request failed during generation: ...`)."""
    prefix = _MESSAGE_PREFIX.get(failure.error_type, "")
    return RequestError(failure.status, prefix + failure.message, failure.error_type)


@dataclass(frozen=True, slots=True)
class ValidRequest:
    """A validated request: what the router gets, and the prompt length TGI reports."""

    request: GenerateRequest
    input_length: int


@dataclass(frozen=True, slots=True)
class _Checked:
    """The parameters after the checks that need no tokens."""

    sampling: SamplingParams
    top_n_tokens: int
    truncate: int | None


class Validator:
    """TGI's `Validation`: checks a `TextRequest` and tokenizes it."""

    def __init__(
        self, settings: HttpSettings, tokenizer: Any, metrics: RouterMetrics, rng: random.Random | None = None
    ) -> None:
        self.settings = settings
        self.tokenizer = tokenizer
        self.metrics = metrics
        self._rng = rng or random.Random()
        self._pool: ThreadPoolExecutor | None = None

    async def _in_worker(self, fn: Callable[..., R], *args: Any) -> R:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.settings.validation_workers, thread_name_prefix="tgi-validation")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def check_best_of(self, best_of: int) -> None:
        """TGI's `validate_best_of`, run before the `best_of` generations start."""
        if self.settings.max_best_of == 1 and best_of != 1:
            raise validation_error("`best_of` != 1 is not allowed for this endpoint")
        if best_of > self.settings.max_best_of:
            raise validation_error(f"`best_of` must be > 0 and <= {self.settings.max_best_of}. Given: {best_of}")

    async def validate(self, req: TextRequest, now_s: float) -> ValidRequest:
        """TGI's `Validation::validate`; `now_s` (time.monotonic()) becomes the request's arrival."""
        checked = self._check_parameters(req.parameters, req.inputs)
        ids = await self._in_worker(self._encode, req.inputs, req.add_special_tokens)
        p, s = req.parameters, self.settings
        input_length = min(len(ids), checked.truncate) if checked.truncate is not None else len(ids)
        max_new_tokens = p.max_new_tokens if p.max_new_tokens is not None else max(0, s.max_total_tokens - input_length)
        counted = min(max_new_tokens, s.generation_chunk_tokens)
        if input_length + counted > s.max_total_tokens:
            raise validation_error(
                f"`inputs` tokens + `max_new_tokens` must be <= {s.max_total_tokens}. "
                f"Given: {input_length} `inputs` tokens and {counted} `max_new_tokens`"
            )
        if input_length > s.max_input_tokens:
            raise validation_error(f"`inputs` must have less than {s.max_input_tokens} tokens. Given: {input_length}")
        sampling = checked.sampling
        if p.grammar is not None:
            sampling = self._with_grammar(sampling, p.grammar)
        self.metrics.request_validated(input_length, max_new_tokens)
        request = GenerateRequest(
            inputs=req.inputs,
            input_ids=tuple(ids[len(ids) - input_length :]),
            max_new_tokens=max_new_tokens,
            truncate=checked.truncate if checked.truncate is not None else s.max_input_tokens,
            sampling=sampling,
            stop_sequences=p.stop,
            top_n_tokens=checked.top_n_tokens,
            add_special_tokens=req.add_special_tokens,
            slo_class=p.slo_class,
            true_output_tokens=p.true_output_tokens,
            arrival_s=now_s,
        )
        return ValidRequest(request, input_length)

    def _encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def _check_parameters(self, p: Parameters, inputs: str) -> _Checked:
        """The checks of `Validation::validate` before tokenization, in TGI's order."""
        s = self.settings
        best_of = 1 if p.best_of is None else p.best_of
        sampling = p.do_sample or any(v is not None for v in (p.temperature, p.top_k, p.top_p, p.typical_p))
        if best_of > 1 and not sampling:
            raise validation_error("you must use sampling when `best_of` is > 1")
        temperature = 1.0 if p.temperature is None else p.temperature
        if temperature <= 0.0:
            raise validation_error("`temperature` must be strictly positive")
        repetition_penalty = 1.0 if p.repetition_penalty is None else p.repetition_penalty
        if repetition_penalty <= 0.0:
            raise validation_error("`repetition_penalty` must be strictly positive")
        frequency_penalty = 0.0 if p.frequency_penalty is None else p.frequency_penalty
        if not -2.0 <= frequency_penalty <= 2.0:
            raise validation_error("`frequency_penalty` must be >= -2.0 and <= 2.0")
        for name, value in (("top_p", p.top_p), ("typical_p", p.typical_p)):
            if value is not None and (value <= 0.0 or value >= 1.0):
                raise validation_error(f"`{name}` must be > 0.0 and < 1.0")
        if p.top_k is not None and p.top_k <= 0:
            raise validation_error("`top_k` must be strictly positive")
        if p.max_new_tokens == 0:
            raise validation_error("`max_new_tokens` must be strictly positive")
        if len(p.stop) > s.max_stop_sequences:
            raise validation_error(f"`stop` supports up to {s.max_stop_sequences} stop sequences. Given: {len(p.stop)}")
        if p.seed is not None and best_of > 1:
            raise validation_error("`seed` must not be set when `best_of` > 1")
        seed = self._rng.getrandbits(64) if p.seed is None else p.seed
        if p.top_n_tokens is not None and p.top_n_tokens > s.max_top_n_tokens:
            raise validation_error(f"`top_n_tokens` must be >= 0 and <= {s.max_top_n_tokens}. Given: {p.top_n_tokens}")
        if not inputs:
            raise validation_error("`inputs` cannot be empty")
        if p.truncate is not None and (p.truncate == 0 or p.truncate > s.max_input_tokens):
            raise validation_error(
                f"`truncate` must be strictly positive and less than {s.max_input_tokens}. Given: {p.truncate}"
            )
        params = SamplingParams(
            temperature=temperature,
            top_k=0 if p.top_k is None else p.top_k,
            top_p=1.0 if p.top_p is None else p.top_p,
            typical_p=1.0 if p.typical_p is None else p.typical_p,
            do_sample=p.do_sample,
            seed=seed,
            repetition_penalty=repetition_penalty,
            frequency_penalty=frequency_penalty,
            watermark=p.watermark,
        )
        return _Checked(params, p.top_n_tokens or 0, p.truncate)

    def _with_grammar(self, sampling: SamplingParams, grammar: Grammar) -> SamplingParams:
        """TGI's grammar rules: a regex goes as is; a JSON schema must be an object with
        `properties` and is compiled to a regex here, as TGI's router does (shards do not enforce
        uncompiled JSON grammars)."""
        if self.settings.disable_grammar_support:
            raise validation_error("grammar is not supported")
        if grammar.kind == "regex":
            regex = str(grammar.value)
        else:
            schema = grammar.value
            if grammar.kind == "json" and isinstance(schema, str):
                try:
                    schema = json.loads(schema)
                except ValueError as err:
                    raise validation_error(f"grammar is not valid: {err}") from None
            elif grammar.kind == "json" and not isinstance(schema, dict):
                raise validation_error("grammar is not supported")
            if not isinstance(schema, dict) or "properties" not in schema:
                raise validation_error("grammar is not valid: Grammar must have a 'properties' field")
            regex = _schema_regex(schema)
        return replace(sampling, grammar=regex, grammar_type=GRAMMAR_TYPE_REGEX)

    async def tokenize(self, req: TextRequest) -> list[dict[str, Any]]:
        """POST /tokenize: every token of `inputs` (no truncation, as TGI) with its byte span."""
        return await self._in_worker(self._simple_tokens, req.inputs, req.add_special_tokens)

    def _simple_tokens(self, text: str, add_special_tokens: bool) -> list[dict[str, Any]]:
        encoding = self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        ids, offsets = list(encoding.ids), list(encoding.offsets)
        if len(ids) != len(offsets):
            return [{"id": i, "text": "", "start": 0, "stop": 0} for i in ids]
        # NOTE: Python's tokenizers reports character offsets; TGI (Rust) reports byte offsets.
        byte_at = [0]
        for ch in text:
            byte_at.append(byte_at[-1] + len(ch.encode("utf-8")))
        raw = text.encode("utf-8")
        tokens = []
        for tid, (start, stop) in zip(ids, offsets, strict=True):
            b0, b1 = byte_at[start], byte_at[stop]
            tokens.append({"id": tid, "text": raw[b0:b1].decode("utf-8", "replace"), "start": b0, "stop": b1})
        return tokens


def _schema_regex(schema: dict[str, Any]) -> str:
    """The regex of a JSON schema, by outlines-core as in TGI; without it grammars are refused."""
    try:
        module = import_module("outlines_core.json_schema")
    except ImportError:
        raise validation_error("grammar is not supported") from None
    try:
        return str(module.build_regex_from_schema(json.dumps(schema)))
    except Exception as err:
        raise validation_error(f"cannot compile regex from schema: {err}") from None
