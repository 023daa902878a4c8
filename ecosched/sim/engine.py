"""The simulated engine: runs the unchanged core against a step-time model in virtual time.

One loop iteration is one engine step: requests that have arrived are added, the core decides
(`schedule`), the engine model says how long the step takes (`step_time_s` of a calibrated profile,
or the core's own `iteration_time_s`), swaps over the host link are added to that time, the clock
advances, requests that reached their true length are reported as stopped, and the core is told
(`update`). When nothing can run the clock jumps to the next arrival.

Besides the core's per-request records the loop keeps what records cannot give: every inter-token
gap (for token-level TBT percentiles), KV occupancy over time split into used, reserved-but-unused
and free blocks, and the wall time the core spent per step.

NOTE: swaps are charged to the step that performs them (the engine waits for the copy), as vLLM's
v0 swapping engine did; an engine that overlaps copies with compute would be faster.
"""

from __future__ import annotations

import heapq
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ecosched.core.decision import Decision, StepOutcome, Stop
from ecosched.core.latency import LatencyModel
from ecosched.core.request import PreemptMode, Request, RequestRecord, RequestState
from ecosched.core.scheduler import Scheduler, SchedulerStats
from ecosched.errors import EcoschedError, InvalidRequestError


class StallError(EcoschedError):
    """The scheduler kept unfinished requests but scheduled nothing, with no arrival to wait for."""


class StepTimeModel(Protocol):
    """A latency model that also knows the exact cost of a step's prefill chunks and sampled tokens."""

    def iteration_time_s(self, num_batched_tokens: int, num_context_tokens: int) -> float: ...

    def step_time_s(
        self,
        num_batched_tokens: int,
        num_context_tokens: int,
        prefill_chunks: Sequence[tuple[int, int]],
        num_sampled: int,
    ) -> float: ...

    def swap_time_s(self, num_tokens: int) -> float: ...


@dataclass(frozen=True, slots=True)
class KVSample:
    """KV occupancy at one moment, in blocks."""

    t_s: float
    used: int
    reserved_unused: int
    free: int
    num_running: int
    num_waiting: int


@dataclass
class SimResult:
    """Everything one run leaves behind."""

    records: list[RequestRecord]
    rejected: list[tuple[str, str]]  # (request id, why the core refused it)
    num_steps: int
    end_s: float
    tbt_gaps_s: array[float]  # every gap between two consecutive output tokens of a request
    kv_timeline: list[KVSample]
    schedule_wall_s: array[float]  # wall time of each schedule() call
    wall_s: float
    stats: SchedulerStats
    num_blocks: int
    stopped_early: bool = False  # the run was cut short by `stop_when`
    num_unfinished: int = 0  # requests left when it was cut short (never finished)


def run(
    scheduler: Scheduler,
    requests: Sequence[Request],
    *,
    engine: StepTimeModel | LatencyModel | None = None,
    kv_sample_interval_s: float = 1.0,
    max_steps: int = 50_000_000,
    on_step: Callable[[Decision], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    stop_when: Callable[[list[RequestRecord], float], bool] | None = None,
) -> SimResult:
    """Run `requests` (each with `true_output_tokens`) through `scheduler` until all have ended.

    `engine` prices each step (default: the scheduler's own latency model); a `StepTimeModel` also
    prices prefill chunks, sampled tokens and swaps exactly. `on_progress(n)` is
    called with the number of newly ended requests; `stop_when(records, now_s)` may cut the run
    short (capacity search stops as soon as a rate has visibly failed).
    """
    model = engine if engine is not None else scheduler.latency_model
    step_time = getattr(model, "step_time_s", None)
    swap_time = getattr(model, "swap_time_s", None)
    iteration_time = model.iteration_time_s
    pending = sorted(requests, key=lambda r: r.arrival_s)
    watch = _StopWatch(scheduler.requests)
    scheduler.gap_log = gaps = array("d")
    records: list[RequestRecord] = []
    rejected: list[tuple[str, str]] = []
    sched_wall: array[float] = array("d")
    timeline: list[KVSample] = []
    next_sample = 0.0
    now, i, steps, n = 0.0, 0, 0, len(pending)
    perf = time.perf_counter
    wall0 = perf()
    stopped_early = False
    while i < n or scheduler.num_unfinished:
        if i < n and pending[i].arrival_s <= now:
            j = i
            while j < n and pending[j].arrival_s <= now:
                j += 1
            _add(scheduler, pending[i:j], rejected)
            i = j
        if now >= next_sample:
            timeline.append(_sample(scheduler, now))
            next_sample = now + kv_sample_interval_s
        t0 = perf()
        decision = scheduler.schedule(now)
        sched_wall.append(perf() - t0)
        steps += 1
        if on_step is not None:
            on_step(decision)
        if decision.is_empty:
            scheduler.update(StepOutcome(decision.step_id, now))
            if i == n:
                raise StallError(f"{scheduler.num_unfinished} requests unfinished, nothing scheduled at t={now:.3f}s")
            now = max(now, pending[i].arrival_s)
            continue
        tokens = num_sampled = len(decision.decodes)
        chunks = []
        for c in decision.prefills:
            tokens += c.num_tokens
            num_sampled += c.samples_token
            chunks.append((c.start, c.num_tokens))
        context = scheduler.num_context_tokens
        if step_time is not None:
            dt = step_time(tokens, context, chunks, num_sampled)
        else:
            dt = iteration_time(tokens, context)
        if swap_time is not None and (decision.swapped_in or decision.preempted):
            dt += swap_time(_swapped_tokens(scheduler, decision))
        now += dt
        stops = watch.stops(steps, decision)
        ended = scheduler.update(StepOutcome(decision.step_id, now, stops))
        if ended:
            records += ended
            if on_progress is not None:
                on_progress(len(ended))
            if stop_when is not None and stop_when(records, now):
                stopped_early = True
                break
        if steps >= max_steps:
            raise StallError(f"no end after {max_steps} steps")
    timeline.append(_sample(scheduler, now))
    return SimResult(
        records=records,
        rejected=rejected,
        num_steps=steps,
        end_s=now,
        tbt_gaps_s=gaps,
        kv_timeline=timeline,
        schedule_wall_s=sched_wall,
        wall_s=perf() - wall0,
        stats=scheduler.stats,
        num_blocks=scheduler.ledger.num_blocks,
        stopped_early=stopped_early,
        num_unfinished=scheduler.num_unfinished + (n - i),
    )


def _add(scheduler: Scheduler, batch: Sequence[Request], rejected: list[tuple[str, str]]) -> None:
    """Add arrivals in one batch; if the core refuses the batch, add one by one and note the refusals."""
    try:
        scheduler.add_requests(batch)
    except InvalidRequestError:
        for r in batch:
            try:
                scheduler.add_request(r)
            except InvalidRequestError as exc:
                rejected.append((r.request_id, str(exc)))


def _sample(scheduler: Scheduler, now: float) -> KVSample:
    ledger = scheduler.ledger
    return KVSample(
        now,
        ledger.num_used_blocks,
        ledger.num_reserved_unused_blocks,
        ledger.num_free_blocks,
        len(scheduler.running),
        len(scheduler.waiting),
    )


def _swapped_tokens(scheduler: Scheduler, decision: Decision) -> int:
    """KV tokens copied over the host link this step: swap-ins, and victims swapped out."""
    states = scheduler.requests
    total = 0
    for rid in decision.swapped_in:
        total += states[rid].num_computed_tokens
    for p in decision.preempted:
        if p.mode is PreemptMode.SWAP:
            total += scheduler.ledger.cpu_blocks(p.request_id) * scheduler.block_size
    return total


class _StopWatch:
    """Finds the requests that reach their true length in a step without looking at every token.

    A request gains at most one output token per step, so with `r` tokens to go after step k it
    cannot finish before step k + r. The watch keeps that earliest step per request in a heap and
    looks at a request again only then: if it has finished it stops, if it was held back (preempted,
    short of budget) it is filed again with a later step. Requests are (re)filed whenever a step
    admits them, gives them a prefill chunk (their first token may come in the next step's decode)
    or swaps them in; superseded entries are skipped."""

    def __init__(self, states: dict[str, RequestState]) -> None:
        self.states = states
        self.heap: list[tuple[int, int, str]] = []
        self.filed: dict[str, int] = {}  # request id -> serial of its live heap entry
        self.serial = 0

    def _file(self, rid: str, step: int) -> None:
        st = self.states[rid]
        true = st.request.true_output_tokens
        if true is None:
            return
        self.serial += 1
        self.filed[rid] = self.serial
        heapq.heappush(self.heap, (step + max(0, true - st.num_output_tokens), self.serial, rid))

    def stops(self, step: int, decision: Decision) -> tuple[Stop, ...]:
        for c in decision.prefills:
            self._file(c.request_id, step)
        for a in decision.admitted:
            self._file(a.request_id, step)
        for rid in decision.swapped_in:
            self._file(rid, step)
        states = self.states
        stopped: list[Stop] = []
        heap = self.heap
        while heap and heap[0][0] <= step:
            _, serial, rid = heapq.heappop(heap)
            if self.filed.get(rid) != serial:
                continue  # superseded
            st = states.get(rid)
            if st is None:  # ended another way (length cap, abort)
                del self.filed[rid]
                continue
            true = st.request.true_output_tokens
            assert true is not None
            if st.num_output_tokens >= true:
                del self.filed[rid]
                if rid not in decision.length_finished:
                    stopped.append(Stop(rid))
            else:
                self._file(rid, step)
        return tuple(stopped)
