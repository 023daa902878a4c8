"""Strategies the baseline policies share: arrival or priority order, incremental allocation,
fit-or-wait admission, a fixed budget, newest-first victims."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ecosched.core.request import PreemptMode, RequestState
from ecosched.core.scheduler import Scheduler


@dataclass(frozen=True)
class KeyOrder:
    """Waiting and swapped requests sorted by one static key; running prefills in admission order."""

    key: Callable[[RequestState], tuple[float, ...]]
    bucketed: bool = False
    demotes_late: bool = False

    def waiting_key(self, state: RequestState) -> tuple[float, ...]:
        return self.key(state)

    def swapped_key(self, state: RequestState, num_cpu_blocks: int) -> tuple[float, ...]:
        return self.key(state)

    def prefill_key(self, state: RequestState, num_used_blocks: int) -> tuple[float, ...] | None:
        return None


def by_arrival(state: RequestState) -> tuple[float, ...]:
    """First come, first served."""
    return (state.request.arrival_s,)


def by_queue_entry(state: RequestState) -> tuple[float, ...]:
    """First queued, first served, where a request preempted (or re-queued) joins at the back."""
    return (state.queue_seq,)


def by_rank_then_arrival(state: RequestState) -> tuple[float, ...]:
    """SLO class rank (0 first), then arrival."""
    return (state.slo.rank, state.request.arrival_s)


@dataclass(frozen=True)
class IncrementalReservation:
    """vLLM-style: hold exactly the blocks the scheduled tokens need; grow one block at a time.
    With `whole_prompt`, admission takes the blocks of the whole prompt at once (vLLM v0 / Sarathi)."""

    whole_prompt: bool = False
    lookahead_tokens: int = 0
    topup_from_reserve: bool = True
    reserve_fraction: float = 0.0

    def admission_tokens(self, state: RequestState, num_new_tokens: int) -> int:
        if self.whole_prompt:
            return state.num_tokens
        return state.num_computed_tokens + num_new_tokens

    def topup_tokens(self, state: RequestState) -> int:
        return 1

    @property
    def grows(self) -> bool:
        return True


@dataclass(frozen=True)
class FitAdmission:
    """Admit whoever fits; `skip_blocked` decides whether a request that does not fit blocks the queue."""

    skip_blocked: bool = False
    pipelining: bool = False
    margin_tokens: int = 0
    starvation_factor: float = 0.0

    def allows(self, state: RequestState, scheduler: Scheduler) -> bool:
        return True

    def on_step(self, scheduler: Scheduler) -> None:
        return None

    def on_admit(self, scheduler: Scheduler, state: RequestState) -> None:
        return None

    def on_preempt(self, scheduler: Scheduler, victim: RequestState) -> None:
        return None


@dataclass(frozen=True)
class FixedBudget:
    """The same token budget every step."""

    num_tokens: int

    @property
    def max_tokens(self) -> int:
        return self.num_tokens

    def token_budget(self, scheduler: Scheduler) -> int:
        return self.num_tokens


@dataclass(frozen=True)
class KeyVictims:
    """Preempt the running request with the largest key, always by `mode`."""

    key: Callable[[RequestState], tuple[float, ...]]
    preempt_mode: PreemptMode = PreemptMode.RECOMPUTE

    def choose(self, candidates: Sequence[RequestState], scheduler: Scheduler) -> RequestState:
        return max(candidates, key=self.key)

    def mode(self, victim: RequestState, scheduler: Scheduler) -> PreemptMode:
        return self.preempt_mode


def newest_admitted(state: RequestState) -> tuple[float, ...]:
    """The last request admitted (vLLM FCFS victim)."""
    return (state.admit_seq,)


def lowest_priority(state: RequestState) -> tuple[float, ...]:
    """Loosest SLO class, then latest arrival (vLLM priority-mode victim)."""
    return (state.slo.rank, state.request.arrival_s, state.admit_seq)
