"""The per-request fields a client may send to an in-engine adapter, and the core request built from
them. vLLM hands them over as `sampling_params.extra_args` (completions `vllm_xargs`), SGLang as
`sampling_params.custom_params`; the names and their checks are the same for both engines."""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from typing import Any

from ecosched.core.request import Request
from ecosched.errors import InvalidRequestError

FIELD_SLO_CLASS = "ecosched_slo_class"  # SLO class name (default: the config's default class)
FIELD_TRUE_OUTPUT = "ecosched_true_output_tokens"  # for the oracle and noisy-oracle study predictors
FIELD_MAX_TOKENS = "ecosched_max_tokens"  # the limit the client declares, when it differs from max_tokens


def core_request(
    request_id: str,
    num_prompt_tokens: int,
    max_tokens: int,
    fields: Mapping[str, Any],
    *,
    max_model_len: int,
    slo_classes: Collection[str],
    prompt: str | None = None,
) -> Request:
    """The core's request for an engine request with `max_tokens` and the client's `fields`; raises
    InvalidRequestError for a bad field. With a declared limit the core plans with it, never below
    `max_tokens` (the core must not end a request the engine continues)."""
    declared = fields.get(FIELD_MAX_TOKENS)
    if declared is not None:
        if not isinstance(declared, int) or isinstance(declared, bool) or declared < 1:
            raise InvalidRequestError(f"{FIELD_MAX_TOKENS} must be a positive integer, got {declared!r}")
        max_tokens = max(max_tokens, min(declared, max_model_len - num_prompt_tokens))
    true_output = fields.get(FIELD_TRUE_OUTPUT)
    if true_output is not None and (not isinstance(true_output, int) or isinstance(true_output, bool)):
        raise InvalidRequestError(f"{FIELD_TRUE_OUTPUT} must be an integer, got {true_output!r}")
    slo = fields.get(FIELD_SLO_CLASS)
    if slo is not None and slo not in slo_classes:
        raise InvalidRequestError(f"unknown SLO class {slo!r}; known: {sorted(slo_classes)}")
    return Request(
        request_id=request_id,
        num_prompt_tokens=num_prompt_tokens,
        max_output_tokens=max_tokens,
        arrival_s=time.monotonic(),
        slo_class=slo,
        prompt=prompt,
        true_output_tokens=true_output,
    )
