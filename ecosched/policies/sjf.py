"""Shortest predicted job first with aging (the learning-to-rank line of work): the waiting order
is predicted output minus `aging_tokens_per_s` per second waited, written as the time-free key
predicted + aging * arrival; the victim is the request with the longest predicted remaining output."""

from __future__ import annotations

from ecosched.config import EcoschedConfig
from ecosched.core.policy import Policy
from ecosched.core.request import RequestState
from ecosched.policies.registry import POLICIES
from ecosched.policies.strategies import FitAdmission, FixedBudget, IncrementalReservation, KeyOrder, KeyVictims

DESCRIPTION = "shortest predicted job first with aging; incremental KV; preempt longest remaining"


@POLICIES.register("sjf", DESCRIPTION)
def make(config: EcoschedConfig) -> Policy:
    aging = config.policies.sjf.aging_tokens_per_s

    def shortest_first(state: RequestState) -> tuple[float, ...]:
        return (state.predicted_output_tokens + aging * state.request.arrival_s,)

    def longest_remaining(state: RequestState) -> tuple[float, ...]:
        return (state.predicted_output_tokens - state.num_output_tokens, state.admit_seq)

    return Policy(
        name="sjf",
        description=DESCRIPTION,
        order=KeyOrder(shortest_first),
        reservation=IncrementalReservation(),
        admission=FitAdmission(skip_blocked=False),
        budget=FixedBudget(config.scheduler.max_num_batched_tokens),
        victims=KeyVictims(longest_remaining),
        pads_predictions=False,
    )
