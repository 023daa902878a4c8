"""Request bodies of TGI's HTTP API, decoded as TGI's serde types decode them.

TGI's handlers take `axum::Json<T>`: a body that is not JSON is refused with 400, one whose JSON
does not fit `T` with 422, one without `Content-Type: application/json` with 415, each with a
plain-text message (`Failed to deserialize the JSON body into the target type: <path>: <serde
error>`). This module gives the same statuses and messages, field paths included, and the same
leniency: unknown fields are ignored, `Option` fields accept `null`, other fields with a default
accept absence but not `null`. NOTE: serde's ` at line L column C` suffix is left out.

The decoded records are frozen dataclasses named after TGI's types (`router/src/lib.rs`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

T = TypeVar("T")
_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1
_I32_MIN, _I32_MAX = -(2**31), 2**31 - 1
_MISSING: Any = object()
DATA_ERROR_PREFIX = "Failed to deserialize the JSON body into the target type: "
SYNTAX_ERROR_PREFIX = "Failed to parse the request body as JSON: "
CONTENT_TYPE_ERROR = "Expected request with `Content-Type: application/json`"
TOO_LARGE_ERROR = "Failed to buffer the request body: length limit exceeded"


class BodyError(Exception):
    """axum's `JsonRejection`: the body was refused before any handler ran."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class _DataError(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)


@dataclass(frozen=True, slots=True)
class Grammar:
    """TGI's `GrammarType`: `{"type": "json" | "json_object" | "regex" | "json_schema", "value": ...}`."""

    kind: Literal["json", "regex", "json_schema"]
    value: Any  # json: a schema object or its text; regex: str; json_schema: the `schema` object


@dataclass(frozen=True, slots=True)
class Parameters:
    """TGI's `GenerateParameters`, plus ecosched's `ecosched_slo_class` and, for simulations and
    oracle predictors, `ecosched_true_output_tokens`."""

    best_of: int | None = None
    temperature: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    typical_p: float | None = None
    do_sample: bool = False
    max_new_tokens: int | None = None
    return_full_text: bool | None = None
    stop: tuple[str, ...] = ()
    truncate: int | None = None
    watermark: bool = False
    details: bool = False
    decoder_input_details: bool = False
    seed: int | None = None
    top_n_tokens: int | None = None
    grammar: Grammar | None = None
    adapter_id: str | None = None
    slo_class: str | None = None
    true_output_tokens: int | None = None


# TGI's `default_parameters()`: what a request without `parameters` gets (note do_sample=true).
DEFAULT_PARAMETERS = Parameters(do_sample=True)


@dataclass(frozen=True, slots=True)
class TextRequest:
    """TGI's `GenerateRequest`: a prompt and its parameters. `add_special_tokens` is false for chat
    prompts, which the template has already framed."""

    inputs: str
    parameters: Parameters = DEFAULT_PARAMETERS
    add_special_tokens: bool = True


@dataclass(frozen=True, slots=True)
class CompatRequest:
    """TGI's `CompatGenerateRequest` (POST /)."""

    request: TextRequest
    stream: bool


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """TGI's `CompletionRequest` (POST /v1/completions); `prompts` holds one or more prompts."""

    prompts: tuple[str, ...]
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    seed: int | None = None
    suffix: str | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """A chat message as the template sees it (TGI's `TextMessage`): chunks joined, images as
    `![](url)`, tool calls as their JSON."""

    role: str
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """TGI's `ChatRequest` (POST /v1/chat/completions), the fields ecosched acts on."""

    messages: tuple[ChatMessage, ...]
    model: str | None = None
    frequency_penalty: float | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    max_tokens: int | None = None
    presence_penalty: float | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    seed: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    has_tools: bool = False
    response_format: Grammar | None = None
    include_usage: bool = False


# --- the body as JSON ---------------------------------------------------------------------------


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def load_json(body: bytes, content_type: str) -> Any:
    """The JSON of a request body, refused as axum refuses it (415, then 400)."""
    ctype = content_type.split(";")[0].strip().lower()
    if not (ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json"))):
        raise BodyError(415, CONTENT_TYPE_ERROR)
    try:
        return json.loads(body, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as err:
        raise BodyError(400, SYNTAX_ERROR_PREFIX + str(err)) from None


def _decode(value: Any, decoder: Callable[[Any], T]) -> T:
    try:
        return decoder(value)
    except _DataError as err:
        raise BodyError(422, DATA_ERROR_PREFIX + str(err)) from None


def decode_generate(value: Any) -> TextRequest:
    """POST /generate, /generate_stream and /tokenize bodies."""
    return _decode(value, lambda v: _text_request(_Obj(v, "", "struct GenerateRequest")))


def decode_compat(value: Any) -> CompatRequest:
    """POST / bodies."""

    def build(v: Any) -> CompatRequest:
        obj = _Obj(v, "", "struct CompatGenerateRequest")
        return CompatRequest(_text_request(obj), obj.field("stream", _bool, False))

    return _decode(value, build)


def decode_completion(value: Any) -> CompletionRequest:
    return _decode(value, _completion)


def decode_chat(value: Any) -> ChatRequest:
    return _decode(value, _chat)


# --- serde's scalar rules -----------------------------------------------------------------------


def _unexpected(value: Any) -> str:
    """How serde names the JSON value it did not expect."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{'true' if value else 'false'}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value!r}`"
    if isinstance(value, str):
        return f"string {json.dumps(value, ensure_ascii=False)}"
    return "sequence" if isinstance(value, list) else "map"


def _integer(rust_type: str, low: int, high: int) -> Callable[[Any, str], int]:
    def convert(value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _DataError(path, f"invalid type: {_unexpected(value)}, expected {rust_type}")
        if not low <= value <= high:
            raise _DataError(path, f"invalid value: integer `{value}`, expected {rust_type}")
        return value

    return convert


_u32 = _integer("u32", 0, _U32_MAX)
_u64 = _integer("u64", 0, _U64_MAX)
_usize = _integer("usize", 0, _U64_MAX)
_i32 = _integer("i32", _I32_MIN, _I32_MAX)


def _f32(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _DataError(path, f"invalid type: {_unexpected(value)}, expected f32")
    return float(value)


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _DataError(path, f"invalid type: {_unexpected(value)}, expected a boolean")
    return value


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _DataError(path, f"invalid type: {_unexpected(value)}, expected a string")
    return value


def _str_list(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _DataError(path, f"invalid type: {_unexpected(value)}, expected a sequence")
    return tuple(_str(item, f"{path}[{i}]") for i, item in enumerate(value))


def _any(value: Any, path: str) -> Any:
    return value


class _Obj:
    """A JSON object being decoded as a serde struct at `path`."""

    def __init__(self, value: Any, path: str, expected: str) -> None:
        if not isinstance(value, dict):
            raise _DataError(path, f"invalid type: {_unexpected(value)}, expected {expected}")
        self.value: dict[str, Any] = value
        self.path = path

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def field(self, key: str, convert: Callable[[Any, str], T], default: T = _MISSING) -> T:
        """A field that must be there (no `default`) or may be absent but not null."""
        if key not in self.value:
            if default is _MISSING:
                raise _DataError(self.path, f"missing field `{key}`")
            return default
        return convert(self.value[key], self.sub(key))

    def option(self, key: str, convert: Callable[[Any, str], T]) -> T | None:
        """An `Option` field: absent or null is None."""
        value = self.value.get(key)
        return None if value is None else convert(value, self.sub(key))


# --- TGI's request types ------------------------------------------------------------------------


def _grammar(value: Any, path: str) -> Grammar:
    obj = _Obj(value, path, "adjacently tagged enum GrammarType")
    kind = obj.field("type", _str)
    if kind not in ("json", "json_object", "regex", "json_schema"):
        raise _DataError(
            obj.sub("type"), f"unknown variant `{kind}`, expected one of `json`, `json_object`, `regex`, `json_schema`"
        )
    if kind == "regex":
        return Grammar("regex", obj.field("value", _str))
    if kind == "json_schema":
        config = _Obj(obj.field("value", _any), obj.sub("value"), "struct JsonSchemaConfig")
        config.option("name", _str)
        return Grammar("json_schema", config.field("schema", _any))
    return Grammar("json", obj.field("value", _any))


def _parameters(value: Any, path: str) -> Parameters:
    obj = _Obj(value, path, "struct GenerateParameters")
    return Parameters(
        best_of=obj.option("best_of", _usize),
        temperature=obj.option("temperature", _f32),
        repetition_penalty=obj.option("repetition_penalty", _f32),
        frequency_penalty=obj.option("frequency_penalty", _f32),
        top_k=obj.option("top_k", _i32),
        top_p=obj.option("top_p", _f32),
        typical_p=obj.option("typical_p", _f32),
        do_sample=obj.field("do_sample", _bool, False),
        max_new_tokens=obj.option("max_new_tokens", _u32),
        return_full_text=obj.option("return_full_text", _bool),
        stop=obj.field("stop", _str_list, ()),
        truncate=obj.option("truncate", _usize),
        watermark=obj.field("watermark", _bool, False),
        details=obj.field("details", _bool, False),
        decoder_input_details=obj.field("decoder_input_details", _bool, False),
        seed=obj.option("seed", _u64),
        top_n_tokens=obj.option("top_n_tokens", _u32),
        grammar=obj.option("grammar", _grammar),
        adapter_id=obj.option("adapter_id", _str),
        slo_class=obj.option("ecosched_slo_class", _str),
        true_output_tokens=obj.option("ecosched_true_output_tokens", _u32),
    )


def _text_request(obj: _Obj) -> TextRequest:
    return TextRequest(obj.field("inputs", _str), obj.field("parameters", _parameters, DEFAULT_PARAMETERS))


def _prompt(value: Any, path: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        if not value:
            raise _DataError(path, "Empty array detected. Do not use an empty array for the prompt.")
        return tuple(value)
    raise _DataError(path, "data did not match any variant of untagged enum PromptDeserializer")


def _completion(value: Any) -> CompletionRequest:
    obj = _Obj(value, "", "struct CompletionRequest")
    return CompletionRequest(
        model=obj.option("model", _str),
        prompts=obj.field("prompt", _prompt),
        max_tokens=obj.option("max_tokens", _u32),
        temperature=obj.option("temperature", _f32),
        top_p=obj.option("top_p", _f32),
        stream=obj.field("stream", _bool, False),
        seed=obj.option("seed", _u64),
        suffix=obj.option("suffix", _str),
        repetition_penalty=obj.option("repetition_penalty", _f32),
        frequency_penalty=obj.option("frequency_penalty", _f32),
        stop=obj.option("stop", _str_list) or (),
    )


def _chunk_text(value: Any, path: str) -> str:
    chunk = _Obj(value, path, "internally tagged enum MessageChunk")
    kind = chunk.field("type", _str)
    if kind == "text":
        return chunk.field("text", _str)
    if kind == "image_url":
        image = _Obj(chunk.field("image_url", _any), chunk.sub("image_url"), "struct Url")
        return f"![]({image.field('url', _str)})"
    raise _DataError(chunk.sub("type"), f"unknown variant `{kind}`, expected `text` or `image_url`")


def _message(value: Any, path: str) -> ChatMessage:
    obj = _Obj(value, path, "struct Message")
    role = obj.field("role", _str)
    content, tool_calls = obj.value.get("content"), obj.value.get("tool_calls")
    if isinstance(content, str):
        return ChatMessage(role, content)
    if isinstance(content, list):
        return ChatMessage(role, "".join(_chunk_text(c, f"{obj.sub('content')}[{i}]") for i, c in enumerate(content)))
    if content is None and isinstance(tool_calls, list):
        return ChatMessage(role, json.dumps(tool_calls, separators=(",", ":")))
    raise _DataError(path, "data did not match any variant of untagged enum MessageBody")


def _messages(value: Any, path: str) -> tuple[ChatMessage, ...]:
    if not isinstance(value, list):
        raise _DataError(path, f"invalid type: {_unexpected(value)}, expected a sequence")
    return tuple(_message(item, f"{path}[{i}]") for i, item in enumerate(value))


def _include_usage(value: Any, path: str) -> bool:
    return _Obj(value, path, "struct StreamOptions").field("include_usage", _bool, False)


def _chat(value: Any) -> ChatRequest:
    obj = _Obj(value, "", "struct ChatRequest")
    max_tokens = obj.option("max_tokens", _u32)
    if max_tokens is None:
        max_tokens = obj.option("max_completion_tokens", _u32)  # TGI: a serde alias of max_tokens
    return ChatRequest(
        messages=obj.field("messages", _messages),
        model=obj.option("model", _str),
        frequency_penalty=obj.option("frequency_penalty", _f32),
        logprobs=bool(obj.option("logprobs", _bool)),
        top_logprobs=obj.option("top_logprobs", _u32),
        max_tokens=max_tokens,
        presence_penalty=obj.option("presence_penalty", _f32),
        stop=obj.option("stop", _str_list) or (),
        stream=obj.field("stream", _bool, False),
        seed=obj.option("seed", _u64),
        temperature=obj.option("temperature", _f32),
        top_p=obj.option("top_p", _f32),
        has_tools=obj.option("tools", _any) is not None,
        response_format=obj.option("response_format", _grammar),
        include_usage=obj.field("stream_options", _include_usage, False),
    )
