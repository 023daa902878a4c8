"""The plug points of a scheduling policy: five small strategies, composed into a `Policy`.

The scheduler owns the mechanism (queues, ledger, the step loop); a policy only answers questions:
in what order requests wait (`Order`), how much KV a request holds (`Reservation`), who may join the
batch (`Admission`), how many tokens a step may carry (`Budget`), and who leaves when KV runs out
(`Victims`). Every policy in `ecosched.policies` is one such composition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ecosched.core.request import PreemptMode, RequestState

if TYPE_CHECKING:
    from ecosched.core.scheduler import Scheduler


class Order(Protocol):
    """Static sort keys (smaller runs first). Keys must not depend on the current time."""

    @property
    def bucketed(self) -> bool:
        """Admit predicted-RL buckets together (time-synced batching)."""
        ...

    def waiting_key(self, state: RequestState) -> tuple[float, ...]: ...

    def swapped_key(self, state: RequestState, num_cpu_blocks: int) -> tuple[float, ...]: ...

    def prefill_key(self, state: RequestState, num_used_blocks: int) -> tuple[float, ...] | None:
        """Order of running requests still in prefill; None keeps admission order."""
        ...

    @property
    def demotes_late(self) -> bool:
        """Mark requests whose TTFT deadline passes before their first token `late` and re-key them
        (`waiting_key` sees `state.late`), so a policy can serve those that can still make it first."""
        ...


class Reservation(Protocol):
    """How many tokens of KV capacity a request holds."""

    @property
    def lookahead_tokens(self) -> int:
        """Top up when fewer than this many reserved tokens remain (0: only when exhausted)."""
        ...

    @property
    def topup_from_reserve(self) -> bool:
        """Whether proactive top-ups may take the global reserve."""
        ...

    @property
    def reserve_fraction(self) -> float:
        """Fraction of KV blocks kept as the global reserve."""
        ...

    def admission_tokens(self, state: RequestState, num_new_tokens: int) -> int:
        """Capacity to hold when admitted with `num_new_tokens` scheduled (at least computed + new)."""
        ...

    def topup_tokens(self, state: RequestState) -> int:
        """Extra capacity to add when the request runs low."""
        ...

    @property
    def grows(self) -> bool:
        """Whether a request's capacity may grow while it runs. When not (TGI's fixed segments), a
        request that outgrows its capacity is preempted itself (recompute, back of the queue) and
        never preempts others."""
        ...


class Admission(Protocol):
    """Who may join the running batch."""

    @property
    def skip_blocked(self) -> bool:
        """A request that does not fit is skipped (True) or blocks the queue (False)."""
        ...

    @property
    def pipelining(self) -> bool:
        """A request that does not fit may borrow a running host's reserved-but-unused blocks."""
        ...

    @property
    def margin_tokens(self) -> int:
        """Safety margin b of the pipelining test."""
        ...

    @property
    def starvation_factor(self) -> float:
        """A waiting request older than this many times its TTFT target goes first and blocks the queue
        until it fits (0: never). Guards skipping admission against starving large requests."""
        ...

    def allows(self, state: RequestState, scheduler: Scheduler) -> bool:
        """Whether `state` may join now (a query: it changes nothing)."""
        ...

    def on_step(self, scheduler: Scheduler) -> None: ...

    def on_admit(self, scheduler: Scheduler, state: RequestState) -> None:
        """`state` joined the batch (before its first chunk is scheduled)."""
        ...

    def on_preempt(self, scheduler: Scheduler, victim: RequestState) -> None: ...


class Budget(Protocol):
    """Tokens one step may carry."""

    @property
    def max_tokens(self) -> int:
        """The largest budget it ever gives (a prompt over it cannot run unchunked)."""
        ...

    def token_budget(self, scheduler: Scheduler) -> int: ...


class Victims(Protocol):
    """Who is preempted when a running request needs KV and none is free, and how."""

    def choose(self, candidates: Sequence[RequestState], scheduler: Scheduler) -> RequestState: ...

    def mode(self, victim: RequestState, scheduler: Scheduler) -> PreemptMode: ...


@dataclass(frozen=True)
class Policy:
    """A named composition of strategies."""

    name: str
    description: str
    order: Order
    reservation: Reservation
    admission: Admission
    budget: Budget
    victims: Victims
    decode_first: bool = True  # carry running decodes before prefills
    pads_predictions: bool = True  # reserve for the padded (True) or the point prediction
    predictor_override: str | None = None  # e.g. "oracle" for the oracle policy
