"""Sarathi-Serve: stall-free batching (ongoing decodes first, then prefill chunks) under a fixed,
small token budget; a prompt's blocks are allocated whole at admission (as on vLLM v0)."""

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

DESCRIPTION = "Sarathi-Serve: stall-free batching, fixed token budget, whole-prompt allocation"


@POLICIES.register("sarathi", DESCRIPTION)
def make(config: EcoschedConfig) -> Policy:
    return Policy(
        name="sarathi",
        description=DESCRIPTION,
        order=KeyOrder(by_arrival),
        reservation=IncrementalReservation(whole_prompt=True),
        admission=FitAdmission(skip_blocked=False),
        budget=FixedBudget(config.policies.sarathi.token_budget),
        victims=KeyVictims(newest_admitted),
        pads_predictions=False,
    )
