"""Requests: what a caller submits (`Request`), what the scheduler tracks (`RequestState`), what is left
when a request ends (`RequestRecord`).

Token model (the same as vLLM v1): a request's tokens are its prompt followed by its output so far.
`num_computed_tokens` of them have KV in the cache. Each step computes some of the rest; a step that
computes every known token also samples one new output token. A decode is a step with one token to
compute. A request preempted by recompute loses its KV and recomputes prompt and output together.
"""

from __future__ import annotations

import enum
from array import array
from dataclasses import dataclass


class RequestStatus(enum.Enum):
    """Where a request is in its life."""

    WAITING = "waiting"  # in the PT queue: no KV held (new, or preempted by recompute)
    RUNNING = "running"  # admitted: holds KV, gets tokens each step (prefill chunks, then decodes)
    SWAPPED = "swapped"  # in the GT queue: its KV sits in host memory
    FINISHING = "finishing"  # sampled its last token in a step whose outcome is not in yet
    FINISHED = "finished"
    ABORTED = "aborted"


class FinishReason(enum.Enum):
    """Why a request ended."""

    LENGTH = "length"  # reached max_output_tokens
    STOP = "stop"  # the engine saw a stop token or string
    ABORT = "abort"  # the caller aborted it


class PreemptMode(enum.Enum):
    """How a preempted request gives back its KV."""

    SWAP = "swap"  # KV copied to host memory, copied back on resume
    RECOMPUTE = "recompute"  # KV dropped, prompt and output recomputed on resume


@dataclass(frozen=True, slots=True)
class SLOClass:
    """Latency targets of a class of requests; rank 0 is the tightest class."""

    name: str
    ttft_s: float
    tbt_s: float
    rank: int = 0


@dataclass(frozen=True, slots=True)
class Request:
    """What a caller submits. `true_output_tokens` is known only to simulators and oracles."""

    request_id: str
    num_prompt_tokens: int
    max_output_tokens: int
    arrival_s: float
    slo_class: str | None = None
    prompt: str | None = None
    true_output_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """A finished or aborted request, for metrics computed after the fact."""

    request_id: str
    slo_class: str
    num_prompt_tokens: int
    num_output_tokens: int
    predicted_output_tokens: int
    padded_output_tokens: int
    arrival_s: float
    first_scheduled_s: float | None
    first_token_s: float | None
    finished_s: float
    finish_reason: FinishReason
    num_recomputes: int
    num_swaps: int
    max_tbt_s: float
    num_tbt_violations: int


class RequestState:
    """The scheduler's mutable view of one request. Adapters read it; only the scheduler writes it."""

    __slots__ = (
        "request_id",
        "num_prompt_tokens",
        "max_output_tokens",
        "admit_seq",
        "queue_seq",
        "group",
        "bucket",
        "first_scheduled_s",
        "first_token_s",
        "last_token_s",
        "max_tbt_s",
        "num_computed_tokens",
        "num_output_tokens",
        "num_recomputes",
        "num_swaps",
        "num_tbt_violations",
        "order_key",
        "padded_output_tokens",
        "predicted_output_tokens",
        "request",
        "slo",
        "status",
        "watermark",
        "capacity_tokens",
        "admit_hint",
        "late",
    )

    def __init__(self, request: Request, slo: SLOClass, predicted: int, padded: int, bucket: int) -> None:
        self.request = request
        # copies of the request's fields the hot loops read on every step
        self.request_id = request.request_id
        self.num_prompt_tokens = request.num_prompt_tokens
        self.max_output_tokens = request.max_output_tokens
        self.slo = slo
        self.status = RequestStatus.WAITING
        self.num_computed_tokens = 0
        self.num_output_tokens = 0
        self.predicted_output_tokens = predicted
        self.padded_output_tokens = padded
        self.bucket = bucket
        self.order_key: tuple[float, ...] = ()
        self.admit_seq = -1
        self.queue_seq = -1  # order of entry into the PT queue (renewed when preempted back into it)
        # time-synced GT group: (step admitted in, predicted-RL bucket); requests admitted together
        # from one bucket are expected to finish, and free their KV, together
        self.group: tuple[int, int] = (-1, bucket)
        # Computed-token count past which the scheduler must look at this request's KV again.
        self.watermark = 0
        # KV capacity in tokens as of the last time the scheduler sized this request (a lower bound:
        # capacity only grows behind its back, when a guest leaves).
        self.capacity_tokens = 0
        # (fewest blocks it can be admitted with, host room it needs to borrow): fixed while waiting
        self.admit_hint: tuple[int, int] | None = None
        # its TTFT deadline passed before its first token (set only for policies that demote late requests)
        self.late = False
        self.first_scheduled_s: float | None = None
        self.first_token_s: float | None = None
        self.last_token_s = 0.0
        self.max_tbt_s = 0.0
        self.num_tbt_violations = 0
        self.num_recomputes = 0
        self.num_swaps = 0

    @property
    def num_tokens(self) -> int:
        """Prompt plus output tokens known so far."""
        return self.num_prompt_tokens + self.num_output_tokens

    @property
    def num_tokens_to_compute(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def predicted_remaining_tokens(self) -> int:
        """Padded predicted output still to come (0 once the prediction is exceeded)."""
        return max(0, self.padded_output_tokens - self.num_output_tokens)

    def to_record(self, finished_s: float, reason: FinishReason) -> RequestRecord:
        r = self.request
        return RequestRecord(
            request_id=r.request_id,
            slo_class=self.slo.name,
            num_prompt_tokens=r.num_prompt_tokens,
            num_output_tokens=self.num_output_tokens,
            predicted_output_tokens=self.predicted_output_tokens,
            padded_output_tokens=self.padded_output_tokens,
            arrival_s=r.arrival_s,
            first_scheduled_s=self.first_scheduled_s,
            first_token_s=self.first_token_s,
            finished_s=finished_s,
            finish_reason=reason,
            num_recomputes=self.num_recomputes,
            num_swaps=self.num_swaps,
            max_tbt_s=self.max_tbt_s,
            num_tbt_violations=self.num_tbt_violations,
        )

    def __repr__(self) -> str:
        return (
            f"RequestState({self.request_id!r}, {self.status.name}, computed={self.num_computed_tokens}, "
            f"output={self.num_output_tokens}/{self.max_output_tokens}, padded={self.padded_output_tokens})"
        )


def record_tokens(states: list[RequestState], now_s: float, gap_log: array[float] | None = None) -> None:
    """Note that one output token of each of `states` reached the caller at `now_s` (TTFT and TBT
    bookkeeping), appending each inter-token gap to `gap_log` when given. Requests that ended
    meanwhile are skipped. One call per step: this is a hot loop."""
    finished, aborted = RequestStatus.FINISHED, RequestStatus.ABORTED
    append = gap_log.append if gap_log is not None else None
    for st in states:
        status = st.status
        if status is finished or status is aborted:
            continue  # preempted since is fine: the token still reached the caller
        last = st.last_token_s
        st.last_token_s = now_s
        if st.first_token_s is None:
            st.first_token_s = now_s
            continue
        gap = now_s - last
        if gap > st.max_tbt_s:
            st.max_tbt_s = gap
        if gap > st.slo.tbt_s:
            st.num_tbt_violations += 1
        if append is not None:
            append(gap)
