"""vLLM v1 (FCFS): chunked prefill under a token budget, blocks allocated as tokens are scheduled,
the queue head blocks when it does not fit, the newest running request is preempted by recompute."""

from __future__ import annotations

from ecosched.config import EcoschedConfig
from ecosched.core.policy import Policy
from ecosched.policies.registry import POLICIES
from ecosched.policies.strategies import (
    FitAdmission,
    FixedBudget,
    IncrementalReservation,
    KeyOrder,
    KeyVictims,
    by_arrival,
    newest_admitted,
)

DESCRIPTION = "vLLM v1: FCFS, chunked prefill under a token budget, incremental KV, preempt newest by recompute"


@POLICIES.register("vllm", DESCRIPTION)
def make(config: EcoschedConfig) -> Policy:
    return Policy(
        name="vllm",
        description=DESCRIPTION,
        order=KeyOrder(by_arrival),
        reservation=IncrementalReservation(),
        admission=FitAdmission(skip_blocked=False),
        budget=FixedBudget(config.scheduler.max_num_batched_tokens),
        victims=KeyVictims(newest_admitted),
        pads_predictions=False,
    )
