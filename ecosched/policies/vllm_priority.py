"""vLLM v1 priority mode: like `vllm`, but waiting requests are ordered by SLO class rank (vLLM's
`priority`, smaller first) then arrival, and the victim is the lowest-priority, latest request."""

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
    by_rank_then_arrival,
    lowest_priority,
)

DESCRIPTION = "vLLM v1 priority mode: SLO-class rank then arrival; preempt lowest priority by recompute"


@POLICIES.register("vllm-priority", DESCRIPTION)
def make(config: EcoschedConfig) -> Policy:
    return Policy(
        name="vllm-priority",
        description=DESCRIPTION,
        order=KeyOrder(by_rank_then_arrival),
        reservation=IncrementalReservation(),
        admission=FitAdmission(skip_blocked=False),
        budget=FixedBudget(config.scheduler.max_num_batched_tokens),
        victims=KeyVictims(lowest_priority),
        pads_predictions=False,
    )
