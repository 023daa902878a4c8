"""SGLang-style scheduling: admission against an estimate of future tokens, with retraction.

A request is admitted when its uncached prompt plus min(max_new_tokens, clip) fits in the free KV
left after discounting every running request's remaining min(max_new - output, clip) by
`new_token_ratio`. The ratio decays linearly each step to a floor and is reset after a retraction
to (tokens decoded + retract_decode_steps per request) / sum of max_new_tokens. KV is allocated
as tokens are computed. The retraction victim is the request with the fewest output tokens, then
the longest prompt (SGLang's `length` retraction order). Prefills go before decodes in a step.
NOTE: SGLang runs prefill and decode batches apart unless mixed chunking is on; one mixed step
with prefills first is our approximation.
"""

from __future__ import annotations

from ecosched.config import EcoschedConfig, SGLangConfig
from ecosched.core.policy import Policy
from ecosched.core.request import RequestState
from ecosched.core.scheduler import Scheduler
from ecosched.policies.registry import POLICIES
from ecosched.policies.strategies import FixedBudget, IncrementalReservation, KeyOrder, KeyVictims, by_arrival

DESCRIPTION = "SGLang: admit by new_token_ratio x max_new_tokens estimate (decaying), retract on OOM"


class NewTokenRatioAdmission:
    """SGLang's PrefillAdder admission test, with the new_token_ratio tracker."""

    skip_blocked = False
    pipelining = False
    margin_tokens = 0
    starvation_factor = 0.0  # it blocks the queue on the first request that does not fit: no starvation

    def __init__(self, config: SGLangConfig) -> None:
        self.config = config
        self.ratio = config.init_new_token_ratio
        self.min_ratio = config.init_new_token_ratio * config.min_ratio_factor
        self._decay = (self.ratio - self.min_ratio) / config.decay_steps
        self._room_tokens = 0

    def _future_tokens(self, state: RequestState) -> int:
        return min(state.max_output_tokens - state.num_output_tokens, self.config.clip_max_new_tokens)

    def on_step(self, scheduler: Scheduler) -> None:
        """Decay the ratio and compute the room left for admissions in this step."""
        self.ratio = max(self.min_ratio, self.ratio - self._decay)
        promised = sum(self._future_tokens(s) for s in scheduler.running) * self.ratio
        free_tokens = scheduler.ledger.num_admittable_blocks * scheduler.block_size
        self._room_tokens = int(free_tokens - promised)

    def _need(self, state: RequestState) -> int:
        return state.num_tokens_to_compute + self._future_tokens(state)

    def allows(self, state: RequestState, scheduler: Scheduler) -> bool:
        """Whether the request's tokens fit the room left in this step."""
        return self._need(state) <= self._room_tokens

    def on_admit(self, scheduler: Scheduler, state: RequestState) -> None:
        """The room shrinks by what the step admitted (asked before the request's first chunk runs)."""
        self._room_tokens -= self._need(state)

    def on_preempt(self, scheduler: Scheduler, victim: RequestState) -> None:
        running = [s for s in scheduler.running if s is not victim]
        total_max = sum(s.max_output_tokens for s in running)
        if total_max == 0:
            return
        decoded = sum(s.num_output_tokens for s in running)
        estimate = (decoded + self.config.retract_decode_steps * len(running)) / total_max
        self.ratio = min(1.0, max(self.min_ratio, estimate))


def fewest_output_then_longest_prompt(state: RequestState) -> tuple[float, ...]:
    return (-state.num_output_tokens, state.num_prompt_tokens, state.admit_seq)


@POLICIES.register("sglang", DESCRIPTION)
def make(config: EcoschedConfig) -> Policy:
    return Policy(
        name="sglang",
        description=DESCRIPTION,
        order=KeyOrder(by_arrival),
        reservation=IncrementalReservation(),
        admission=NewTokenRatioAdmission(config.policies.sglang),
        budget=FixedBudget(config.scheduler.max_num_batched_tokens),
        victims=KeyVictims(fewest_output_then_longest_prompt),
        decode_first=False,
        pads_predictions=False,
    )
