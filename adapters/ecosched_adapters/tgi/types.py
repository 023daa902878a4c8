"""What the HTTP layer hands the router, and what comes back: the seam between `http` and `router`.

The HTTP layer validates and tokenizes (TGI's rules and messages) and submits a `GenerateRequest`;
the router streams `Token` events and ends with exactly one `End` or `Failure`. A client that goes
away cancels its stream (the consumer stops iterating or is cancelled); the router then drops the
request from the core and the shard and frees its blocks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class FinishReason(StrEnum):
    LENGTH = "length"
    EOS_TOKEN = "eos_token"
    STOP_SEQUENCE = "stop_sequence"


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """TGI's NextTokenChooserParameters after validation (TGI's defaults filled in)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    typical_p: float = 1.0
    do_sample: bool = False
    seed: int = 0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    watermark: bool = False
    grammar: str = ""
    grammar_type: int = 0  # 0 none, 1 json, 2 regex


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """A validated request. `input_ids` are the tokens of `inputs` after truncation, exactly as the
    shard will see them; `max_new_tokens` is the client's limit for the whole generation."""

    inputs: str
    input_ids: tuple[int, ...]
    max_new_tokens: int
    truncate: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop_sequences: tuple[str, ...] = ()
    top_n_tokens: int = 0
    add_special_tokens: bool = True
    slo_class: str | None = None  # ecosched: the request's SLO class (None: the default class)
    true_output_tokens: int | None = None  # ecosched: the real length, for oracle predictors in studies
    arrival_s: float = 0.0  # time.monotonic() at arrival


@dataclass(frozen=True, slots=True)
class Token:
    """One generated token."""

    id: int
    text: str
    logprob: float
    special: bool


@dataclass(frozen=True, slots=True)
class End:
    """The generation ended; `generated_text` is the whole output (without the prompt)."""

    generated_text: str
    finish_reason: FinishReason
    generated_tokens: int
    seed: int | None
    input_length: int
    queue_s: float = 0.0  # arrival to first scheduling
    inference_s: float = 0.0  # first scheduling to the end


@dataclass(frozen=True, slots=True)
class Failure:
    """The generation failed. `error_type` is TGI's (`generation`, `overloaded`, ...), `status` the
    HTTP status a non-streaming response carries."""

    message: str
    error_type: str = "generation"
    status: int = 424


Event = Token | End | Failure


class Backend(Protocol):
    """What the HTTP layer needs from the router."""

    def generate(self, request: GenerateRequest) -> AsyncIterator[Event]:
        """Queue `request` and stream its events; exactly one End or Failure comes last."""
        ...

    async def health(self) -> bool:
        """Whether the shards answer (TGI: the Health RPC, or a liveness prefill after a failure)."""
        ...

    @property
    def queue_size(self) -> int: ...
