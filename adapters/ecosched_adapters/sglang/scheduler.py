"""The ecosched core in charge of SGLang's scheduler process: `EcoschedSGLangScheduler`.

SGLang keeps its own event loop (receive, `get_next_batch_to_run`, run, `process_batch_result`; in
overlap mode step N's result is processed after step N+1 is launched). The subclass puts the core in
charge of each step at the points where SGLang decides:

    core                          SGLang
    request in (predicted)    <-  _add_request_to_queue (every path; retracted requests too)
    schedule() -> Decision        get_new_batch_prefill, after SGLang merged and filtered the batch
    preempted                 ->  retracted from the running batch (release_req), back to the queue
    prefills (order, chunks)  ->  waiting queue sorted into the decision's order (after SGLang's own
                                  prefix matching, so the radix cache keeps working); the prefill
                                  adder admits exactly the decision's requests, each with the core's
                                  chunk, against SGLang's own KV check fed with the core's numbers
                                  (the reservation = prompt + padded prediction, not max_new_tokens)
    no prefills               ->  batch marked full: SGLang goes straight to its decode step
    decodes                   ->  SGLang's decode step (or, with --enable-mixed-chunk, the same
                                  extend batch)
    withdraw / preempt        <-  what SGLang did not run of the decision (no mixing, its own memory
                                  check), and requests SGLang retracted itself (decode memory, the
                                  SGLANG_TEST_RETRACT knob; their order is the policy's victim order)
    update(outcome)           <-  process_batch_result: requests that finished, and why
    abort                     <-  requests gone from SGLang (aborts, disconnects), found every step

KV: SGLang's allocator stays the only owner of physical KV. Physical slots are allocated as tokens
are computed, so each request's KV in SGLang (`kv_allocated_len`, its cached prefix included) equals
the core's `used` blocks of it; reservations are the core's promise over SGLang's pool, which the
core never over-commits (pipelining lends reserved-but-unused room without moving any slot). With
`ECOSCHED_CHECK_LEDGER=1` every step checks both SGLang's own equation (total - available -
evictable == protected + sum of per-request owned, in-flight batches included) and, request by
request, SGLang's KV against the ledger.
NOTE: the papers reserve physical blocks up front; here reservation is an accounting promise, as in
the vLLM adapter. A cached prefix shared by several requests counts once in SGLang and once per
request in the ledger: the ledger is conservative there, never optimistic.

Refused at start-up with a clear message: speculative decoding, disaggregated prefill/decode,
diffusion LMs, hybrid SWA/Mamba models, pipeline parallelism, priority preemption, HiCache, and
--prefill-decode-interval (they schedule outside the points above).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from sglang.srt.disaggregation.utils import DisaggregationMode
from sglang.srt.managers.schedule_batch import FINISH_ABORT, FINISH_LENGTH, FINISH_MATCHED_STR, ScheduleBatch
from sglang.srt.managers.schedule_policy import AddReqResult, PrefillAdder
from sglang.srt.managers.scheduler import Scheduler, _make_abort_req
from sglang.srt.runtime_context import get_parallel

from ecosched.core.decision import Decision, EngineView, PrefillChunk, StepOutcome, Stop
from ecosched.core.request import FinishReason, Request, RequestStatus
from ecosched.core.scheduler import Scheduler as CoreScheduler
from ecosched.errors import ConfigError, EcoschedError, InvalidRequestError
from ecosched.factory import build_scheduler
from ecosched_adapters.request_fields import core_request
from ecosched_adapters.settings import AdapterSettings, engine_config
from ecosched_adapters.sglang.timed import batch_totals
from ecosched_adapters.sglang.version import check_sglang_version
from ecosched_adapters.stats import StepStats

logger = logging.getLogger("sglang.ecosched")

# Per-request fields a client may pass in `custom_params` (SGLang hands them to the scheduler as
# `sampling_params.custom_params`): see `ecosched_adapters.request_fields`.

_BIG = 1 << 40  # an adder budget that never binds: the core's decision does
_ACTIVE: EcoschedSGLangScheduler | None = None  # the process's scheduler, for the retraction-order hook


class AdapterStateError(EcoschedError):
    """SGLang and the core disagree about a request; a bug in the adapter, never a user error."""


def retraction_order(original: Callable[..., list[int]], reqs: list[Any], *args: Any, **kwargs: Any) -> list[int]:
    """AROUND hook on `ScheduleBatch._get_decode_retraction_order`: indices from the most to the least
    preferred to keep, by the policy's victim choice (SGLang retracts from the end)."""
    if _ACTIVE is None:
        return original(reqs, *args, **kwargs)
    return _ACTIVE.keep_order(reqs)


class EcoschedPrefillAdder(PrefillAdder):
    """SGLang's prefill adder admitting exactly the core's plan for the step.

    `owner` is set on a per-scheduler subclass. Each planned request gets the core's chunk as its
    chunk budget, and SGLang's KV check (kept as the physical safety net) sees the core's numbers:
    running requests' headroom is their reserved-but-unused KV, a new request's output share is its
    reservation. Requests outside the plan stop the scan (the plan's come first in the queue).
    """

    owner: EcoschedSGLangScheduler

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._eco_req: Any = None
        super().__init__(*args, **kwargs)
        self._chunking: bool = getattr(self, "rem_chunk_tokens", None) is not None
        self.rem_input_tokens = _BIG
        if self._chunking:
            self.rem_chunk_tokens = _BIG

    def _get_running_request_total_token_offset(self, req: Any) -> int:
        return self.owner.headroom_tokens(req)

    def _check_prefill_budget(self, req: Any, *, extend_input_len: int, total_tokens: int, **kwargs: Any) -> Any:
        reserved = self.owner.capacity_tokens(req.rid)
        if reserved is not None:  # the core's reservation instead of prompt + max_new_tokens
            total_tokens = max(reserved - req.prefix_len, extend_input_len) + self.per_req_token_overhead
        return super()._check_prefill_budget(
            req, extend_input_len=extend_input_len, total_tokens=total_tokens, **kwargs
        )

    def _update_prefill_budget(
        self, prefix_len: int, extend_input_len: int, max_new_tokens: int, *args: Any, **kwargs: Any
    ) -> None:
        req = self._eco_req
        if req is not None and req.extend_end is not None:
            reserved = self.owner.capacity_tokens(req.rid)
            if reserved is not None:  # what the ledger keeps for the request beyond this chunk
                max_new_tokens = max(0, reserved - req.extend_end)
        super()._update_prefill_budget(prefix_len, extend_input_len, max_new_tokens, *args, **kwargs)

    def _planned(self, req: Any) -> PrefillChunk | None:
        return self.owner.plan.get(req.rid)

    def _run_planned(self, chunk: PrefillChunk, req: Any, call: Callable[[], Any]) -> Any:
        self._eco_req = req
        if self._chunking:
            self.rem_chunk_tokens = chunk.num_tokens
        # ignore_eos requests (with the radix cache off) take SGLang's own reservation path; the
        # core's reservation replaces it, so they go through the common path for this call
        ignore_eos = req.sampling_params.ignore_eos
        req.sampling_params.ignore_eos = False
        try:
            return call()
        finally:
            req.sampling_params.ignore_eos = ignore_eos
            self._eco_req = None
            self.rem_input_tokens = _BIG
            if self._chunking:
                self.rem_chunk_tokens = _BIG

    def add_chunked_req(self, req: Any) -> Any:
        chunk = self._planned(req)
        if chunk is None:
            return req  # not this step: it stays SGLang's chunked request, no progress
        return self._run_planned(chunk, req, lambda: super(EcoschedPrefillAdder, self).add_chunked_req(req))

    def add_one_req(self, req: Any, has_chunked_req: bool, truncation_align_size: Any) -> Any:
        chunk = self._planned(req)
        if chunk is None:
            return AddReqResult.OTHER
        self._run_planned(
            chunk,
            req,
            lambda: super(EcoschedPrefillAdder, self).add_one_req(req, has_chunked_req, truncation_align_size),
        )
        # a request SGLang's own check refused is withdrawn from the core's step afterwards; the
        # rest of the plan still goes on
        return AddReqResult.CONTINUE


class EcoschedSGLangScheduler(Scheduler):
    """SGLang's scheduler with every scheduling decision taken by the ecosched core."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        global _ACTIVE
        check_sglang_version()
        super().__init__(*args, **kwargs)
        self._refuse_unsupported()
        settings = AdapterSettings.from_env()
        page = self.page_size
        chunked = self.chunked_prefill_size is not None and self.chunked_prefill_size > 0
        config = engine_config(
            settings.config_data,
            block_size=page,
            num_blocks=self.max_total_num_tokens // page,
            max_model_len=self.model_config.context_len,
            max_num_seqs=self.max_running_requests,
            max_num_batched_tokens=self.chunked_prefill_size if chunked else self.max_prefill_tokens,
            chunked_prefill=chunked,
            max_partial_prefills=1,  # SGLang carries one chunked request at a time
            preempt_partial_prefills=False,  # and retracts only requests past their prompt
        )
        self.core: CoreScheduler = build_scheduler(config)
        self.check_ledger = settings.check_ledger
        self.stats_out = StepStats(settings.stats_path)
        self._flushed_steps = 0
        self._flushed_summary: dict[str, Any] = {}
        self.plan: dict[str, PrefillChunk] = {}
        self._plan_rank: dict[str, int] = {}
        self._decision: Decision | None = None
        self._launched: deque[int] = deque()  # core step ids of launched batches, in launch order
        self._sglang_retracted: list[Any] = []  # retracted by SGLang itself during this step
        self._core_retracting = False
        self._radix = not getattr(self.tree_cache, "disable", True)
        self._reads_prompt = bool(getattr(self.core.predictor, "reads_prompt", False))
        self.counters: dict[str, int] = {
            "withdrawn": 0,
            "sglang_refused": 0,
            "sglang_retractions": 0,
            "core_preemptions": 0,
            "unplanned": 0,
            "ledger_checks": 0,
            "ledger_mismatch_steps": 0,
            "reconciled_aborts": 0,
            "rejected": 0,
            "retractions_off_policy": 0,  # SGLang retracted other requests than the policy's victims
            "retractions_unlike_sglang": 0,  # the policy's first victim differed from SGLang's own choice
        }
        self._victim_order: list[str] = []
        self._stock_first_victim: str | None = None
        self.prefill_adder_cls = type("EcoschedPrefillAdderBound", (EcoschedPrefillAdder,), {"owner": self})
        original_calc = self.policy.calc_priority

        def calc_priority(waiting_queue: list[Any], *a: Any, **kw: Any) -> Any:
            result = original_calc(waiting_queue, *a, **kw)  # SGLang's prefix matching stays
            self._sort_waiting(waiting_queue)
            return result

        self.policy.calc_priority = calc_priority
        _ACTIVE = self
        logger.info(
            "ecosched: policy %s, predictor %s, %d KV tokens (page %d), radix cache %s, overlap %s, mixed chunk %s",
            self.core.policy.name,
            self.core.predictor.name,
            self.max_total_num_tokens,
            page,
            "on" if self._radix else "off",
            "on" if self.enable_overlap else "off",
            "on" if self.is_mixed_chunk else "off",
        )

    def _refuse_unsupported(self) -> None:
        problems = []
        if not self.spec_algorithm.is_none():
            problems.append("speculative decoding")
        if self.disaggregation_mode is not DisaggregationMode.NULL:
            problems.append("disaggregated prefill/decode")
        if self.dllm_config is not None:
            problems.append("diffusion language models")
        if self.is_hybrid_swa or self.tree_cache.supports_mamba():
            problems.append("hybrid SWA/Mamba models")
        if get_parallel().pp_size > 1:
            problems.append("pipeline parallelism")
        if self.enable_priority_preemption:
            problems.append("priority preemption")
        if self.enable_hierarchical_cache:
            problems.append("the hierarchical cache")
        if self.prefill_decode_interval:
            problems.append("--prefill-decode-interval")
        if problems:
            raise ConfigError("the ecosched SGLang scheduler does not support " + ", ".join(problems))

    def get_prefill_adder_class(self) -> type[PrefillAdder]:
        return self.prefill_adder_cls

    # ---- requests in ----
    def _add_request_to_queue(self, req: Any, is_retracted: bool = False) -> None:
        if is_retracted:
            if not self._core_retracting:
                self._sglang_retracted.append(req)
            super()._add_request_to_queue(req, is_retracted)
            return
        if req.rid in self.core.requests:  # back from elsewhere (grammar wait): already known
            super()._add_request_to_queue(req, is_retracted)
            return
        try:
            request = self._core_request(req)
            self.core.add_request(request)  # predicts; raises (changing nothing) for a request it cannot run
        except InvalidRequestError as exc:
            self._reject(req, str(exc))
            return
        super()._add_request_to_queue(req, is_retracted)
        if req not in self.waiting_queue:  # SGLang refused it (queue limit, priority): it never runs
            self.core.abort(req.rid, time.monotonic())

    def _core_request(self, req: Any) -> Request:
        sp = req.sampling_params
        text = None
        if self._reads_prompt and self.tokenizer is not None:  # SGLang's scheduler gets token ids only
            text = self.tokenizer.decode(list(req.origin_input_ids))
        return core_request(
            req.rid,
            len(req.origin_input_ids),
            sp.max_new_tokens if sp.max_new_tokens is not None else 0,
            sp.custom_params if isinstance(sp.custom_params, dict) else {},
            max_model_len=self.model_config.context_len,
            slo_classes=self.core.slo_classes,
            prompt=text,
        )

    def _reject(self, req: Any, message: str) -> None:
        """End a request the core cannot serve with a 400 and this message; SGLang goes on."""
        self.counters["rejected"] += 1
        logger.warning("ecosched: rejected request %s: %s", req.rid, message)
        reason = {"type": "abort", "status_code": HTTPStatus.BAD_REQUEST, "message": message}
        self.send_abort_output(_make_abort_req(req, finished_reason=reason), req)
        self._release_aborted_request(req)

    # ---- one step ----
    def get_next_batch_to_run(self, running_batch: Any, last_batch: Any) -> Any:
        start = time.monotonic()
        t0 = time.perf_counter()
        self._decision = None
        self._sglang_retracted = []
        self._reconcile(running_batch, last_batch)
        plan = super().get_next_batch_to_run(running_batch, last_batch)
        batch = plan.batch_to_run
        decision = self._decision
        if decision is None:
            if batch is not None and not batch.is_empty():
                self._unplanned(f"SGLang ran a {batch.forward_mode.name} batch without a decision")
        else:
            self._settle(decision, batch, start)
        if self.stats_out.enabled and batch is not None:
            tokens, context = batch_totals(batch)
            preempted = (len(decision.preempted) if decision else 0) + len(self._sglang_retracted)
            self.stats_out.step(start, time.perf_counter() - t0, tokens, context, preempted)
        if self.check_ledger and (batch is not None or decision is not None):
            t1 = time.perf_counter()
            self.check_kv(plan.running_batch, batch, last_batch)
            self.stats_out.check(time.perf_counter() - t1)
        return plan

    def get_new_batch_prefill(self, running_batch: Any) -> Any:
        """Called by SGLang once per step after it merged and filtered the running batch: the core
        decides the step here, then SGLang builds the prefill batch the decision asks for."""
        if not self.core.num_unfinished:  # idle (SGLang's loop polls): nothing to decide
            return super().get_new_batch_prefill(running_batch)
        if self._radix:
            self._note_prefix_hits()
        t0 = time.perf_counter()
        decision = self.core.schedule(time.monotonic(), EngineView(self._engine_free_blocks()))
        self.stats_out.policy(time.perf_counter() - t0)
        self._decision = decision
        if decision.preempted:
            self._retract(decision, running_batch)
        self.plan = {c.request_id: c for c in decision.prefills}
        self._plan_rank = {c.request_id: i for i, c in enumerate(decision.prefills)}
        # nothing to admit or continue: SGLang skips its prefill pass (no rescans of the queue)
        running_batch.batch_is_full = not self.plan
        return super().get_new_batch_prefill(running_batch)

    def _sort_waiting(self, waiting_queue: list[Any]) -> None:
        if self._plan_rank:
            rank, last = self._plan_rank, len(self._plan_rank)
            waiting_queue.sort(key=lambda r: rank.get(r.rid, last))

    def _note_prefix_hits(self) -> None:
        """Tell the core how much of each waiting prompt SGLang's radix cache already holds."""
        core = self.core.requests
        for req in self.waiting_queue[: self.core.config.scheduler.max_admission_scan]:
            state = core.get(req.rid)
            if state is None or state.status is not RequestStatus.WAITING:
                continue
            req.init_next_round_input(self.tree_cache)
            self.core.set_prefix_hit(req.rid, req.prefix_len)

    def _engine_free_blocks(self) -> int:
        """SGLang's free and evictable KV less the reservations the core holds on it."""
        free = int(self.token_to_kv_pool_allocator.available_size() + self.tree_cache.evictable_size())
        return free // int(self.page_size) - self.core.ledger.num_reserved_unused_blocks

    def _retract(self, decision: Decision, running_batch: Any) -> None:
        """Carry out the core's preemptions: each victim leaves the running batch, its KV is
        released, and it waits in SGLang's queue to be prefilled again (prompt + output so far)."""
        victims = {p.request_id for p in decision.preempted}
        keep: list[int] = []
        gone: list[int] = []
        for i, req in enumerate(running_batch.reqs):
            (gone if req.rid in victims else keep).append(i)
        if len(gone) != len(victims):
            found = {running_batch.reqs[i].rid for i in gone}
            raise AdapterStateError(f"core preempted {sorted(victims - found)}, which SGLang is not running")
        retracted = []
        for n, i in enumerate(gone):
            req = running_batch.reqs[i]
            running_batch.release_req(i, len(keep) + len(gone) - n - 1)
            retracted.append(req)
        running_batch.filter_batch(keep_indices=keep)
        running_batch.batch_is_full = False
        self._core_retracting = True
        try:
            for req in retracted:
                self._add_request_to_queue(req, is_retracted=True)
                # the token of a step still in flight for it is discarded by SGLang (overlap loop)
                self.core.drop_in_flight_tokens(req.rid, len(req.output_ids))
        finally:
            self._core_retracting = False
        self.counters["core_preemptions"] += len(retracted)

    def _settle(self, decision: Decision, batch: Any, now: float) -> None:
        """Square the decision with the batch SGLang built: what it did not run is withdrawn, what
        it retracted on its own is preempted in the core."""
        ran = self._batch_tokens(batch)
        scheduled = decision.scheduled_tokens()
        dropped = [rid for rid in scheduled if rid not in ran]
        for rid, n in ran.items():
            want = scheduled.get(rid)
            if want is None:
                self._unplanned(f"SGLang ran {n} tokens of {rid}, which the step did not schedule")
            elif want != n:
                self._unplanned(f"SGLang ran {n} tokens of {rid}, the step scheduled {want}")
        if dropped:
            admitted = {a.request_id for a in decision.admitted}
            self.counters["sglang_refused"] += sum(1 for rid in dropped if rid in admitted)
            self.counters["withdrawn"] += len(dropped)
            self.core.withdraw(dropped)
        if self._sglang_retracted:
            order = [r.rid for r in self._sglang_retracted]
            if order != self._victim_order[: len(order)]:
                self.counters["retractions_off_policy"] += 1
                logger.error("ecosched: SGLang retracted %s, the policy's victims were %s", order, self._victim_order)
            if order[0] != self._stock_first_victim:
                self.counters["retractions_unlike_sglang"] += 1
        for req in self._sglang_retracted:
            state = self.core.requests.get(req.rid)
            if state is not None and state.status is RequestStatus.RUNNING:
                self.core.preempt(req.rid, num_output_tokens=len(req.output_ids))
                self.counters["sglang_retractions"] += 1
        if batch is None or batch.is_empty():
            self.core.update(StepOutcome(decision.step_id, now))
        else:
            self._launched.append(decision.step_id)

    def _batch_tokens(self, batch: Any) -> dict[str, int]:
        """Tokens each request computes in `batch`."""
        if batch is None or batch.is_empty():
            return {}
        if batch.forward_mode.is_decode():
            return dict.fromkeys((r.rid for r in batch.reqs), 1)
        return {r.rid: int(n) for r, n in zip(batch.reqs, batch.extend_lens, strict=True)}

    def _unplanned(self, what: str) -> None:
        self.counters["unplanned"] += 1
        if self.counters["unplanned"] <= 10:
            logger.error("ecosched: %s", what)

    # ---- outcomes ----
    def process_batch_result(self, batch: Any, result: Any) -> None:
        super().process_batch_result(batch, result)
        if not self._launched:
            self._unplanned("a batch result came for no launched step")
            return
        step_id = self._launched.popleft()
        stops = []
        for req in batch.reqs:
            if req.finished() and req.rid in self.core.requests:
                stops.append(Stop(req.rid, _finish_reason(req.finished_reason), len(req.output_ids)))
        self.core.update(StepOutcome(step_id, time.monotonic(), tuple(stops)))

    def _reconcile(self, running_batch: Any, last_batch: Any) -> None:
        """Abort in the core every request SGLang no longer has anywhere (client aborts, disconnects,
        requests SGLang ended outside the output path)."""
        if not self.core.num_unfinished:
            return
        present = {r.rid for r in self.waiting_queue}
        present.update(r.rid for r in self._live_reqs(running_batch, None, last_batch))
        now = time.monotonic()
        for rid in [rid for rid in self.core.requests if rid not in present]:
            self.core.abort(rid, now)
            self.counters["reconciled_aborts"] += 1

    def _live_reqs(self, running_batch: Any, batch: Any, last_batch: Any) -> list[Any]:
        """Requests that may hold KV: running, this step's batch, the chunked request, the last batch
        and (overlap mode) batches whose results are still queued; each once."""
        seen: dict[int, Any] = {}
        groups: list[Iterable[Any]] = [running_batch.reqs if running_batch is not None else ()]
        for b in (batch, last_batch):
            if b is not None:
                groups.append(b.reqs)
        if self.chunked_req is not None:
            groups.append((self.chunked_req,))
        for queued, _ in getattr(self, "result_queue", ()):
            groups.append(queued.reqs)
        for group in groups:
            for r in group:
                seen.setdefault(id(r), r)
        return list(seen.values())

    # ---- victims ----
    def keep_order(self, reqs: list[Any]) -> list[int]:
        """Indices of `reqs` from the most to the least preferred to keep: requests the core does not
        run first, then the reverse of the order in which the policy would pick victims."""
        states = {}
        for i, r in enumerate(reqs):
            st = self.core.requests.get(r.rid)
            if st is not None and st.status is RequestStatus.RUNNING:
                states[i] = st
        others = [i for i in range(len(reqs)) if i not in states]
        index = {id(st): i for i, st in states.items()}
        candidates = list(states.values())
        picked = []
        while candidates:
            victim = self.core.policy.victims.choose(candidates, self.core)
            candidates.remove(victim)
            picked.append(index[id(victim)])
        self._victim_order = [reqs[i].rid for i in picked]
        # SGLang's own order (retraction policy "length"): fewest output tokens, then longest prompt, go first
        stock = sorted(range(len(reqs)), key=lambda i: (len(reqs[i].output_ids), -len(reqs[i].origin_input_ids)))
        self._stock_first_victim = reqs[stock[0]].rid if stock else None
        return others + picked[::-1]

    # ---- KV bookkeeping ----
    def capacity_tokens(self, rid: str) -> int | None:
        """Tokens the ledger holds for a request (its reservation), None if it holds none."""
        if rid not in self.core.ledger:
            return None
        return self.core.ledger.capacity_blocks(rid) * int(self.page_size)

    def headroom_tokens(self, req: Any) -> int:
        """Reserved-but-unused tokens of a running request: what SGLang's adder keeps free for it."""
        cap = self.capacity_tokens(req.rid)
        if cap is None:
            return 0
        return max(0, cap - int(req.kv.kv_allocated_len))

    def check_kv(self, running_batch: Any, batch: Any, last_batch: Any) -> list[str]:
        """Compare SGLang's KV with itself and with the ledger; count and log disagreements."""
        self.counters["ledger_checks"] += 1
        problems = []
        page = self.page_size
        live = [r for r in self._live_reqs(running_batch, batch, last_batch) if r.kv.req_pool_idx is not None]
        owned = sum(r.kv.kv_allocated_len - r.kv.cache_protected_len for r in live)
        alloc = self.token_to_kv_pool_allocator
        used = self.max_total_num_tokens - alloc.available_size() - self.tree_cache.evictable_size()
        protected = self.tree_cache.protected_size()
        if used != protected + owned:
            problems.append(f"SGLang: total-available-evictable={used} != protected {protected} + owned {owned}")
        ledger = self.core.ledger
        sglang_blocks = 0
        for r in live:
            blocks = -(-r.kv.kv_allocated_len // page)
            if r.rid not in ledger:
                if r.rid in self.core.requests:
                    problems.append(f"{r.rid}: SGLang holds {blocks} blocks, the ledger none")
                continue
            sglang_blocks += blocks
            mine = ledger.view(r.rid).used
            if mine != blocks:
                problems.append(f"{r.rid}: SGLang holds {blocks} blocks, the ledger {mine}")
        if sglang_blocks != ledger.num_used_blocks:
            problems.append(
                f"total: SGLang's requests hold {sglang_blocks} blocks, the ledger {ledger.num_used_blocks}"
            )
        if problems:
            self.counters["ledger_mismatch_steps"] += 1
            if self.counters["ledger_mismatch_steps"] <= 10:
                logger.error("ecosched: KV check failed: %s", "; ".join(problems[:5]))
        return problems

    def summary(self) -> dict[str, Any]:
        s = self.core.stats
        alloc = self.token_to_kv_pool_allocator
        return {
            "kv_total_tokens": self.max_total_num_tokens,
            "kv_available_tokens": alloc.available_size(),
            "kv_evictable_tokens": self.tree_cache.evictable_size(),
            "kv_protected_tokens": self.tree_cache.protected_size(),
            "sglang_waiting": len(self.waiting_queue),
            "sglang_running": self.running_batch.batch_size(),
            "core_unfinished": self.core.num_unfinished,
            "ledger_used_blocks": self.core.ledger.num_used_blocks,
            "ledger_free_blocks": self.core.ledger.num_free_blocks,
            "ledger_blocks": self.core.ledger.num_blocks,
            "policy": self.core.policy.name,
            "predictor": self.core.predictor.name,
            **self.counters,
            "core_admitted": s.num_admitted,
            "core_recomputes": s.num_recomputes,
            "core_topups": s.num_topups,
            "core_pipelined": s.num_pipelined,
            "core_finished": s.num_finished,
            "core_aborted": s.num_aborted,
            "predictor_failures": s.num_predictor_failures,
        }

    def on_idle(self) -> None:
        super().on_idle()
        self._flush_stats()

    def _flush_stats(self) -> None:
        """Write the stats files when idle and something changed (SGLang calls on_idle in a loop)."""
        if not self.stats_out.enabled:
            return
        summary = self.summary()
        if summary != self._flushed_summary or self.stats_out.counters["steps"] != self._flushed_steps:
            self._flushed_summary = summary
            self._flushed_steps = self.stats_out.counters["steps"]
            self.stats_out.flush(extra=summary)


def _finish_reason(reason: Any) -> FinishReason:
    if isinstance(reason, FINISH_LENGTH):
        return FinishReason.LENGTH
    if isinstance(reason, FINISH_ABORT):
        return FinishReason.ABORT
    if isinstance(reason, FINISH_MATCHED_STR):
        return FinishReason.STOP
    return FinishReason.STOP


__all__ = ["EcoschedPrefillAdder", "EcoschedSGLangScheduler", "ScheduleBatch", "retraction_order"]
