"""TGI's own router (the v3 backend), as a policy: the baseline of the TGI backend.

Reproduced from TGI's algorithm (`backends/v3/src/queue.rs` next_batch, `backend.rs` batching_task):
- first come, first served, and a request that does not fit blocks everyone behind it;
- each request holds its whole segment up front: prompt + min(remaining max_new_tokens, 1024) - 1
  KV slots (the last sampled token is never written);
- a generation longer than a segment is re-queued at the back of the queue when the segment ends
  (it recomputes prompt and output so far, like TGI's re-queue of the text);
- nothing is ever preempted to make room;
- a step that admitted while requests were running is followed by a step without admissions (TGI runs
  Prefill(new, cached) and then a Decode before it looks at the queue again);
- a prefill gets what the decodes leave of `max_num_batched_tokens` (TGI's max_batch_prefill_tokens
  minus the cached batch's current tokens); decodes are never held back by the budget;
- without chunked prefill, a prefill joins only when at least waiting_served_ratio x running requests
  would join, unless max_waiting_tokens decode steps passed without one.
NOTE: with blocks larger than one token, capacity is rounded up to whole blocks, so a segment may run
up to block_size - 1 tokens longer than TGI's (TGI fills exactly the slots it needs).
"""

from __future__ import annotations

from dataclasses import dataclass

from ecosched.config import EcoschedConfig, TGIConfig
from ecosched.core.policy import Policy
from ecosched.core.request import PreemptMode, RequestState
from ecosched.core.scheduler import Scheduler
from ecosched.policies.registry import POLICIES
from ecosched.policies.strategies import KeyOrder, KeyVictims, by_queue_entry, newest_admitted

DESCRIPTION = "TGI's router: FCFS, whole 1024-token segments reserved up front, re-queue, never preempts"


@dataclass(frozen=True)
class SegmentReservation:
    """Prompt plus one segment of output, reserved at admission; it never grows."""

    segment_tokens: int
    lookahead_tokens: int = 0
    topup_from_reserve: bool = False
    reserve_fraction: float = 0.0

    def admission_tokens(self, state: RequestState, num_new_tokens: int) -> int:
        segment = min(state.max_output_tokens - state.num_output_tokens, self.segment_tokens)
        return max(state.num_computed_tokens + num_new_tokens, state.num_tokens + segment - 1)

    def topup_tokens(self, state: RequestState) -> int:
        return 0

    @property
    def grows(self) -> bool:
        return False


class TGIAdmission:
    """Head-of-line admission with TGI's pacing: no admission right after a step that admitted into a
    running batch; without chunking, waiting_served_ratio and max_waiting_tokens as TGI's loop."""

    skip_blocked = False
    pipelining = False
    margin_tokens = 0
    starvation_factor = 0.0

    def __init__(self, config: TGIConfig, chunked_prefill: bool) -> None:
        self.config = config
        self.chunked = chunked_prefill
        self._admitted_into_running = False  # in the step being decided
        self._admitted = False
        self._steps_since_admission = 0  # TGI's waiting_tokens
        self._closed = False
        self._running_at_step = 0

    def on_step(self, scheduler: Scheduler) -> None:
        self._closed = self._admitted_into_running
        self._steps_since_admission = 1 if self._admitted else self._steps_since_admission + 1
        self._admitted_into_running = self._admitted = False
        self._running_at_step = len(scheduler.running)
        if self._closed or self.chunked or not scheduler.running:
            return
        if self._steps_since_admission >= self.config.max_waiting_tokens:
            return
        min_size = int(len(scheduler.running) * self.config.waiting_served_ratio)
        self._closed = _fitting_head(scheduler, min_size) < min_size

    def allows(self, state: RequestState, scheduler: Scheduler) -> bool:
        return not self._closed

    def on_admit(self, scheduler: Scheduler, state: RequestState) -> None:
        # requests running when the step began: the admission is a Prefill into a live batch, after
        # which TGI decodes once before it admits again (from idle it tries again at once)
        self._admitted = True
        if self._running_at_step:
            self._admitted_into_running = True

    def on_preempt(self, scheduler: Scheduler, victim: RequestState) -> None:
        return None


def _fitting_head(scheduler: Scheduler, limit: int) -> int:
    """How many requests from the head of the queue would fit (KV and the step's prefill tokens),
    counting up to `limit`: TGI's next_batch with min_size puts the whole batch back when fewer do."""
    blocks_left = scheduler.ledger.num_admittable_blocks
    tokens_left = scheduler.config.scheduler.max_num_batched_tokens
    reservation = scheduler.policy.reservation
    count = 0
    for state in scheduler.waiting:
        if count >= limit:
            break
        todo = state.num_tokens_to_compute
        blocks = scheduler.blocks_for(reservation.admission_tokens(state, todo))
        if blocks > blocks_left or todo > tokens_left:
            break
        blocks_left -= blocks
        tokens_left -= todo
        count += 1
    return count


@dataclass(frozen=True)
class PrefillAfterDecodes:
    """Decodes always run; prefills get what they leave of `num_tokens`."""

    num_tokens: int

    @property
    def max_tokens(self) -> int:
        return self.num_tokens

    def token_budget(self, scheduler: Scheduler) -> int:
        return max(self.num_tokens, len(scheduler.running))


@POLICIES.register("tgi-fifo", DESCRIPTION)
def make(config: EcoschedConfig) -> Policy:
    return Policy(
        name="tgi-fifo",
        description=DESCRIPTION,
        order=KeyOrder(by_queue_entry),
        reservation=SegmentReservation(config.policies.tgi.segment_tokens),
        admission=TGIAdmission(config.policies.tgi, config.scheduler.chunked_prefill),
        budget=PrefillAfterDecodes(config.scheduler.max_num_batched_tokens),
        # never used to make room (the reservation does not grow); a used-up segment re-queues itself
        victims=KeyVictims(newest_admitted, PreemptMode.RECOMPUTE),
        pads_predictions=False,
    )
