"""The step contract: what the engine tells the core (`EngineView`, `StepOutcome`) and what the core
tells the engine (`Decision`). All frozen; adapters apply decisions and never reach into scheduler state.

One step:  decision = scheduler.schedule(now_s, view)  ->  engine runs it  ->  scheduler.update(outcome)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ecosched.core.request import FinishReason, PreemptMode


@dataclass(frozen=True, slots=True)
class EngineView:
    """What the engine reports before a step. Every field is optional.

    `num_free_blocks`: blocks the engine itself has free. When given, admissions never take more than
    this, so blocks the engine holds outside ecosched's knowledge (a prefix cache) are respected.
    """

    num_free_blocks: int | None = None


@dataclass(frozen=True, slots=True)
class PrefillChunk:
    """`num_tokens` prompt (or recomputed) tokens of a request, starting at token `start`.
    `samples_token` is true when the chunk completes every known token, so the step yields an output token."""

    request_id: str
    start: int
    num_tokens: int
    samples_token: bool


@dataclass(frozen=True, slots=True)
class Admission:
    """A waiting request joins the running set holding `num_blocks` blocks: its own, or, when
    `host_id` is set, reserved-but-unused blocks borrowed from that running host (pipelining)."""

    request_id: str
    num_blocks: int
    host_id: str | None = None


@dataclass(frozen=True, slots=True)
class TopUp:
    """A running request's reservation grows by `num_blocks` blocks."""

    request_id: str
    num_blocks: int


@dataclass(frozen=True, slots=True)
class Preemption:
    """A running request leaves the batch and gives its KV back, by swap or recompute."""

    request_id: str
    mode: PreemptMode


@dataclass(frozen=True, slots=True)
class Decision:
    """What to run in one step. Every decode computes one token and samples one."""

    step_id: int
    token_budget: int
    decodes: tuple[str, ...] = ()
    prefills: tuple[PrefillChunk, ...] = ()
    admitted: tuple[Admission, ...] = ()
    swapped_in: tuple[str, ...] = ()
    topups: tuple[TopUp, ...] = ()
    preempted: tuple[Preemption, ...] = ()
    length_finished: tuple[str, ...] = ()  # reach max_output_tokens with this step's token

    @property
    def num_scheduled_tokens(self) -> int:
        return len(self.decodes) + sum(c.num_tokens for c in self.prefills)

    def scheduled_tokens(self) -> dict[str, int]:
        """Tokens per scheduled request, prefill chunks and decodes together."""
        out = dict.fromkeys(self.decodes, 1)
        out.update((c.request_id, c.num_tokens) for c in self.prefills)
        return out

    @property
    def is_empty(self) -> bool:
        return not (self.decodes or self.prefills)


@dataclass(frozen=True, slots=True)
class Stop:
    """The engine ended a request early (stop token or string) after this step."""

    request_id: str
    reason: FinishReason = FinishReason.STOP
    num_output_tokens: int | None = None  # the engine's count, when it differs from the scheduler's


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """What happened in step `step_id`, finished at `now_s`. Requests that reach their
    `max_output_tokens` finish without being listed; `stops` lists the ones the engine ended."""

    step_id: int
    now_s: float
    stops: tuple[Stop, ...] = field(default=())
