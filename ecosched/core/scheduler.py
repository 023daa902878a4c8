"""The scheduler: requests in, one `Decision` per step out, outcomes back in.

Model of one step (`schedule`), with the policy answering every question:
  1. budget   = policy.budget                      (tokens this step may carry)
  2. running  : decodes (1 token each), then running prefills in policy order (chunks within budget);
               a request that outgrows its capacity is topped up, or victims are preempted
               (swap or recompute) until it fits; a request near the end of its reservation is
               topped up ahead of time from the global reserve
  3. swapped  : the GT queue resumes (swap-in) while KV fits
  4. waiting  : the PT queue, best bucket first, admits requests with their reservation from the free
               pool or, failing that, borrowed from a running host (pipelining); a request that does
               not fit is skipped or blocks the queue, as the policy says
With `decode_first` off, prefills (2b, 4) take the budget before decodes.
The scheduler is deterministic and synchronous: time comes in as arguments, no clock is read.
"""

from __future__ import annotations

import heapq
import logging
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ecosched.config import EcoschedConfig
from ecosched.core.decision import Decision, EngineView, StepOutcome
from ecosched.core.latency import LatencyModel
from ecosched.core.ledger import BlockLedger
from ecosched.core.policy import Policy
from ecosched.core.predictor import LengthPredictor, Padder, Prediction
from ecosched.core.queues import BucketedQueue
from ecosched.core.request import (
    FinishReason,
    Request,
    RequestRecord,
    RequestState,
    RequestStatus,
    SLOClass,
    record_tokens,
)
from ecosched.core.step import StepBuilder, StepRunner
from ecosched.errors import (
    CapacityError,
    ContextLengthError,
    DuplicateRequestError,
    InvalidRequestError,
    OutcomeError,
    UnknownRequestError,
)

logger = logging.getLogger(__name__)

_ENDED = (RequestStatus.FINISHED, RequestStatus.ABORTED)


@dataclass
class SchedulerStats:
    """Counters since the scheduler started."""

    num_steps: int = 0
    num_admitted: int = 0
    num_pipelined: int = 0
    num_topups: int = 0  # capacity grown while running (for incremental policies: every new block)
    num_swaps: int = 0
    num_recomputes: int = 0
    num_finished: int = 0
    num_aborted: int = 0
    num_predictor_failures: int = 0
    num_withdrawn: int = 0  # requests whose share of a decided step the engine did not run
    num_engine_preemptions: int = 0  # running requests the engine preempted on its own


@dataclass
class _InFlight:
    generating: list[RequestState]
    finishing: list[RequestState]


class Scheduler:
    """The ecosched core. Build one with `ecosched.build_scheduler(config)`."""

    def __init__(
        self,
        config: EcoschedConfig,
        policy: Policy,
        predictor: LengthPredictor,
        latency_model: LatencyModel,
    ) -> None:
        self.config = config
        self.policy = policy
        self.predictor = predictor
        self.latency_model = latency_model
        cache = config.cache
        self.block_size = cache.block_size
        reserve = int(policy.reservation.reserve_fraction * cache.num_gpu_blocks)
        self.ledger = BlockLedger(cache.num_gpu_blocks, reserve, cache.num_cpu_blocks)
        self.slo_classes = {
            name: SLOClass(name, c.ttft_ms / 1e3, c.tbt_ms / 1e3, c.rank) for name, c in config.slo.classes.items()
        }
        self.padder = Padder(config.predictor.padding)
        self.waiting = BucketedQueue(policy.order.bucketed)
        self.swapped = BucketedQueue(False)
        self.running: list[RequestState] = []
        self.requests: dict[str, RequestState] = {}
        self.step_id = 0
        self.num_context_tokens = 0  # KV tokens of running requests (what a decode step reads)
        self.stats = SchedulerStats()
        self._running_tbt: Counter[float] = Counter()
        self._in_flight: dict[int, _InFlight] = {}
        self._open_step: StepBuilder | None = None  # the latest decision, until its outcome comes
        self._last_predictor_warning_s = float("-inf")
        self._runner = StepRunner(self)
        # Every inter-token gap, in seconds, when an engine wants token-level TBT percentiles (the
        # simulator sets it to an `array("d")`); per-request TBT figures are kept either way.
        self.gap_log: array[float] | None = None
        # (TTFT deadline, seq, request) of queued requests, for policies that demote late requests
        self._deadlines: list[tuple[float, int, RequestState]] = []
        self._deadline_seq = 0
        self._queue_seq = 0
        # (arrival, seq, request) of requests that entered the PT queue, for the starvation guard;
        # entries of requests that left it are dropped lazily
        self._arrivals: list[tuple[float, int, RequestState]] = []
        edges = config.policies.ecoserve.rl_bucket_edges
        self._bucket_edges = sorted(edges)

    # ---- requests in ----
    def add_request(self, request: Request, prediction: Prediction | None = None) -> RequestState:
        """Queue a request. Raises an InvalidRequestError subclass (and changes nothing) if it can
        never run. Without `prediction`, the scheduler's predictor is asked."""
        return self.add_requests([request], None if prediction is None else [prediction])[0]

    def add_requests(
        self, requests: Sequence[Request], predictions: Sequence[Prediction] | None = None
    ) -> list[RequestState]:
        """Queue several requests, predicting their lengths in one batch. All or nothing."""
        ids = [r.request_id for r in requests]
        if len(set(ids)) != len(ids):
            raise DuplicateRequestError(f"duplicate request ids in one batch: {sorted(ids)}")
        slos = [self._validate(r) for r in requests]
        if predictions is None:
            predictions = self.predict(requests)
        elif len(predictions) != len(requests):
            raise InvalidRequestError(f"{len(predictions)} predictions for {len(requests)} requests")
        return [self._enqueue(r, slo, p) for r, slo, p in zip(requests, slos, predictions, strict=True)]

    def _validate(self, r: Request) -> SLOClass:
        cache = self.config.cache
        if r.request_id in self.requests:
            raise DuplicateRequestError(f"request id {r.request_id!r} is already queued or running")
        if r.num_prompt_tokens < 1:
            raise InvalidRequestError(
                f"request {r.request_id!r}: num_prompt_tokens must be >= 1, got {r.num_prompt_tokens}"
            )
        if r.max_output_tokens < 1:
            raise InvalidRequestError(
                f"request {r.request_id!r}: max_output_tokens must be >= 1, got {r.max_output_tokens}"
            )
        total = r.num_prompt_tokens + r.max_output_tokens
        if total > cache.max_model_len:
            raise ContextLengthError(
                f"request {r.request_id!r}: prompt ({r.num_prompt_tokens}) + max_output_tokens "
                f"({r.max_output_tokens}) = {total} tokens exceeds the context length {cache.max_model_len}"
            )
        if self.blocks_for(total) > self.ledger.num_blocks or self.blocks_for(r.num_prompt_tokens + 1) > (
            self.ledger.num_blocks - self.ledger.num_reserve_blocks
        ):
            raise CapacityError(
                f"request {r.request_id!r}: {total} tokens need {self.blocks_for(total)} KV blocks, the cache has "
                f"{self.ledger.num_blocks} ({self.ledger.num_reserve_blocks} kept as reserve)"
            )
        budget = self.policy.budget.max_tokens
        if not self.config.scheduler.chunked_prefill and r.num_prompt_tokens > budget:
            raise InvalidRequestError(
                f"request {r.request_id!r}: prompt ({r.num_prompt_tokens}) exceeds the per-step token budget "
                f"({budget}) and chunked prefill is off"
            )
        name = r.slo_class or self.config.slo.default_class
        if name not in self.slo_classes:
            raise InvalidRequestError(
                f"request {r.request_id!r}: unknown SLO class {name!r}; known: {sorted(self.slo_classes)}"
            )
        return self.slo_classes[name]

    def predict(self, requests: Sequence[Request]) -> list[Prediction]:
        """The predictor's lengths for `requests`; never raises: when the predictor fails, every
        request gets `predictor.fallback_tokens` (capped at its max) and the failure is counted.
        Adapters that predict away from the step (in a thread) call this, then `add_requests`."""
        try:
            predictions = self.predictor.predict(requests)
            if len(predictions) != len(requests):
                raise ValueError(f"{len(predictions)} predictions for {len(requests)} requests")
            return predictions
        except Exception as exc:  # a predictor failure must never fail a request
            self.stats.num_predictor_failures += len(requests)
            now = requests[0].arrival_s if requests else 0.0
            if now - self._last_predictor_warning_s >= self.config.predictor.warning_interval_s:
                self._last_predictor_warning_s = now
                logger.warning(
                    "predictor %s failed (%s); using %d tokens",
                    self.predictor.name,
                    exc,
                    self.config.predictor.fallback_tokens,
                )
            fallback = self.config.predictor.fallback_tokens
            return [Prediction(min(fallback, r.max_output_tokens)) for r in requests]

    def _enqueue(self, r: Request, slo: SLOClass, p: Prediction) -> RequestState:
        predicted = max(1, min(p.num_tokens, r.max_output_tokens))
        self.padder.rate.observe(r.arrival_s)
        padded = self.padder.pad(p, r.max_output_tokens) if self.policy.pads_predictions else predicted
        state = RequestState(r, slo, predicted, padded, self._bucket(padded))
        state.queue_seq = self._next_queue_seq()
        self.requests[r.request_id] = state
        self.waiting.push(state, self.policy.order.waiting_key(state))
        self._note_waiting(state)
        if self.policy.order.demotes_late:
            self._deadline_seq += 1
            heapq.heappush(self._deadlines, (r.arrival_s + slo.ttft_s, self._deadline_seq, state))
        return state

    def _next_queue_seq(self) -> int:
        self._queue_seq += 1
        return self._queue_seq

    def _demote_late(self, now_s: float) -> None:
        """Requests past their TTFT deadline without a first token become `late`; waiting ones are
        re-keyed (the policy's order puts them behind requests that can still meet their target)."""
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] < now_s:
            state = heapq.heappop(deadlines)[2]
            if state.first_token_s is not None or state.status in _ENDED:
                continue
            state.late = True
            if state.status is RequestStatus.WAITING:
                self.waiting.remove(state)
                self.waiting.push(state, self.policy.order.waiting_key(state))

    def _note_waiting(self, state: RequestState) -> None:
        if self.policy.admission.starvation_factor > 0:
            self._deadline_seq += 1
            heapq.heappush(self._arrivals, (state.request.arrival_s, self._deadline_seq, state))

    def starving(self, now_s: float) -> RequestState | None:
        """The longest-waiting request of the PT queue if it has waited more than the policy's
        starvation factor times its TTFT target, else None."""
        factor = self.policy.admission.starvation_factor
        arrivals = self._arrivals
        while arrivals and arrivals[0][2].status is not RequestStatus.WAITING:
            heapq.heappop(arrivals)
        if not arrivals or factor <= 0:
            return None
        arrival, _, state = arrivals[0]
        return state if now_s - arrival > factor * state.slo.ttft_s else None

    def _bucket(self, tokens: int) -> int:
        for i, edge in enumerate(self._bucket_edges):
            if tokens <= edge:
                return i
        return len(self._bucket_edges)

    def abort(self, request_id: str, now_s: float) -> RequestRecord:
        """End a request at the caller's wish, releasing its KV at once."""
        state = self.requests.get(request_id)
        if state is None:
            raise UnknownRequestError(f"abort: request {request_id!r} is not known (never added, or already ended)")
        return self._end(state, now_s, FinishReason.ABORT)

    # ---- one step ----
    def schedule(self, now_s: float, view: EngineView | None = None) -> Decision:
        """Decide the next step. The engine must run it and report back with `update`."""
        self.step_id += 1
        self.stats.num_steps += 1
        if self._deadlines and self._deadlines[0][0] < now_s:
            self._demote_late(now_s)
        self.policy.admission.on_step(self)
        builder = StepBuilder(self.step_id, self.policy.budget.token_budget(self))
        self._runner.run(builder, now_s, view)
        for state in builder.finishing:
            self._leave_running(state)
            state.status = RequestStatus.FINISHING
        self._in_flight[self.step_id] = _InFlight(builder.generating, builder.finishing)
        self._open_step = builder
        return builder.build()

    # ---- the engine runs less than decided ----
    def withdraw(self, request_ids: Iterable[str]) -> None:
        """The engine runs the latest decision without these requests' share of it (an engine that
        cannot mix a prefill with decodes, or refuses an admission on its own check). Each request
        goes back to where it was before the step: a decode or chunk is taken back, and a request
        admitted in the step returns to the waiting queue with its reservation released. Call it
        after `schedule` and before `update` of that step; ids the step did not schedule are ignored."""
        b = self._open_step
        if b is None or b.step_id != self.step_id:
            raise OutcomeError(f"withdraw: step {self.step_id} is not open (its outcome came, or none was decided)")
        for rid in request_ids:
            state = self.requests.get(rid)
            if state is None:
                continue
            if state.status is RequestStatus.FINISHING and state in b.finishing:
                self._rejoin_running(state)
            if state.status is not RequestStatus.RUNNING:
                continue
            scheduled = rid in b.decodes or any(c.request_id == rid for c in b.prefills)
            joined = self._runner.unschedule(state, b)
            if joined:
                self.ledger.release(rid)
                self.requeue(state, to_swapped=False, counted=False)
                self.policy.admission.on_preempt(self, state)
            elif scheduled:
                state.watermark = self._runner.watermark(state, self.blocks_for(state.num_computed_tokens))
            self.stats.num_withdrawn += scheduled or joined

    def preempt(self, request_id: str, num_output_tokens: int | None = None) -> None:
        """The engine preempted a running request on its own (recompute): its KV is gone, it goes
        back to the PT queue, and tokens of steps still in flight will not come for it.
        `num_output_tokens`: the engine's count of the request's output, when it differs."""
        state = self.get(request_id)
        if state.status is RequestStatus.FINISHING:
            self._rejoin_running(state)
        if state.status is not RequestStatus.RUNNING:
            raise OutcomeError(f"preempt: request {request_id!r} is not running ({state.status.name})")
        self._drop_from_flights(state)
        if num_output_tokens is not None:
            state.num_output_tokens = num_output_tokens
        self.ledger.release(request_id)
        self.requeue(state, to_swapped=False)
        self.stats.num_recomputes += 1
        self.stats.num_engine_preemptions += 1
        self.policy.admission.on_preempt(self, state)

    def drop_in_flight_tokens(self, request_id: str, num_output_tokens: int) -> None:
        """A request this scheduler preempted (it waits again) will not get the tokens of steps still
        in flight: the engine discards them (an engine that retracts a request while its last step
        runs, as SGLang's overlap loop does). Its output count becomes the engine's."""
        state = self.get(request_id)
        if state.status is not RequestStatus.WAITING:
            raise OutcomeError(f"drop_in_flight_tokens: request {request_id!r} is not waiting ({state.status.name})")
        self._drop_from_flights(state)
        state.num_output_tokens = num_output_tokens

    def _drop_from_flights(self, state: RequestState) -> None:
        for flight in self._in_flight.values():
            if state in flight.generating:
                flight.generating.remove(state)
            if state in flight.finishing:
                flight.finishing.remove(state)

    def set_prefix_hit(self, request_id: str, num_tokens: int) -> None:
        """The engine holds the first `num_tokens` tokens of a waiting request in its prefix cache:
        they count as computed (no step computes them; its KV still counts them as the request's).
        At least one token is always left to compute. Ignored for requests that are not waiting."""
        state = self.get(request_id)
        if state.status is not RequestStatus.WAITING:
            return
        num_tokens = max(0, min(num_tokens, state.num_tokens - 1))
        if num_tokens == state.num_computed_tokens:
            return
        self.waiting.remove(state)
        state.num_computed_tokens = num_tokens
        state.admit_hint = None
        self.waiting.push(state, self.policy.order.waiting_key(state))

    def _rejoin_running(self, state: RequestState) -> None:
        """A FINISHING request (left the running set when its last token was scheduled) runs again."""
        state.status = RequestStatus.RUNNING
        self.running.append(state)
        self.num_context_tokens += state.num_computed_tokens
        self._running_tbt[state.slo.tbt_s] += 1

    def update(self, outcome: StepOutcome) -> list[RequestRecord]:
        """Apply what the engine reports for a step; returns the requests that ended with it."""
        flight = self._in_flight.pop(outcome.step_id, None)
        if self._open_step is not None and self._open_step.step_id == outcome.step_id:
            self._open_step = None
        if flight is None:
            raise OutcomeError(
                f"outcome for step {outcome.step_id}, which is not in flight (in flight: {sorted(self._in_flight)})"
            )
        now = outcome.now_s
        record_tokens(flight.generating, now, self.gap_log)
        ended = []
        for stop in outcome.stops:
            stopped = self.requests.get(stop.request_id)
            if stopped is None or (stopped not in flight.generating and stop.reason is not FinishReason.ABORT):
                continue  # ended while the step ran, or the id now names a newer request
            if stop.num_output_tokens is not None:
                stopped.num_output_tokens = stop.num_output_tokens
            else:  # tokens counted for later steps already scheduled (async engines) never came
                stopped.num_output_tokens -= self._later_tokens(stopped, outcome.step_id)
            ended.append(self._end(stopped, now, stop.reason))
        for state in flight.finishing:
            if state.status is RequestStatus.FINISHING:
                ended.append(self._end(state, now, FinishReason.LENGTH))
        return ended

    def _later_tokens(self, state: RequestState, step_id: int) -> int:
        """Output tokens `state` was given in steps scheduled after `step_id` and still in flight."""
        return sum(1 for sid, flight in self._in_flight.items() if sid > step_id and state in flight.generating)

    # ---- bookkeeping the step runner shares ----
    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def enter_running(self, state: RequestState) -> None:
        state.status = RequestStatus.RUNNING
        state.watermark = 0  # its ledger entry is new: the first step must size it
        self.running.append(state)
        self.num_context_tokens += state.num_computed_tokens
        self._running_tbt[state.slo.tbt_s] += 1

    def _leave_running(self, state: RequestState) -> None:
        self.running.remove(state)
        self.num_context_tokens -= state.num_computed_tokens
        self._running_tbt[state.slo.tbt_s] -= 1
        if not self._running_tbt[state.slo.tbt_s]:
            del self._running_tbt[state.slo.tbt_s]

    def requeue(self, state: RequestState, to_swapped: bool, counted: bool = True) -> None:
        """Move a running request back to the PT queue (recompute) or the GT queue (swapped).
        `counted=False`: a request taken back in the step that admitted it, which is no preemption."""
        self._leave_running(state)
        state.admit_hint = None
        if to_swapped:
            state.status = RequestStatus.SWAPPED
            state.num_swaps += counted
            self.swapped.push(state, self.policy.order.swapped_key(state, self.ledger.cpu_blocks(state.request_id)))
        else:
            state.status = RequestStatus.WAITING
            state.num_recomputes += counted
            state.num_computed_tokens = 0
            if counted:
                state.queue_seq = self._next_queue_seq()
            self.waiting.push(state, self.policy.order.waiting_key(state))
            self._note_waiting(state)

    def tightest_tbt_s(self) -> float | None:
        """The tightest TBT target among running requests, or None when none runs."""
        return min(self._running_tbt) if self._running_tbt else None

    def _end(self, state: RequestState, now_s: float, reason: FinishReason) -> RequestRecord:
        if state.status is RequestStatus.RUNNING:
            self._leave_running(state)
        elif state.status is RequestStatus.WAITING:
            self.waiting.remove(state)
        elif state.status is RequestStatus.SWAPPED:
            self.swapped.remove(state)
        self.ledger.release(state.request_id)
        self.ledger.drop_swapped(state.request_id)
        del self.requests[state.request_id]
        if reason is FinishReason.ABORT:
            state.status = RequestStatus.ABORTED
            self.stats.num_aborted += 1
        else:
            state.status = RequestStatus.FINISHED
            self.stats.num_finished += 1
            self.padder.observe_error(state.predicted_output_tokens, state.num_output_tokens)
        return state.to_record(now_s, reason)

    # ---- queries ----
    def get(self, request_id: str) -> RequestState:
        state = self.requests.get(request_id)
        if state is None:
            raise UnknownRequestError(f"request {request_id!r} is not known (never added, or already ended)")
        return state

    @property
    def num_unfinished(self) -> int:
        return len(self.requests)

    def check_invariants(self) -> None:
        """The ledger's equation, and agreement between the queues, the ledger and request states."""
        self.ledger.check_invariants()
        for state in self.running:
            assert state.status is RequestStatus.RUNNING, state
            used = self.ledger.view(state.request_id).used
            assert used == self.blocks_for(state.num_computed_tokens), (state, used)
        assert self.num_context_tokens == sum(s.num_computed_tokens for s in self.running)
        holders = set(self.ledger.request_ids())
        assert holders <= set(self.requests), holders - set(self.requests)
        for state in self.waiting:
            assert state.request_id not in holders and state.status is RequestStatus.WAITING, state
        for state in self.swapped:
            assert state.request_id not in holders and state.status is RequestStatus.SWAPPED, state
            assert self.ledger.cpu_blocks(state.request_id) == self.blocks_for(state.num_computed_tokens), state
