"""The ecosched core in charge of vLLM's scheduling: a scheduler class for `--scheduler-cls`.

`EcoschedScheduler` subclasses vLLM's `AsyncScheduler` and replaces `schedule()` only. Each step it
asks the core for a `Decision` and carries it out with vLLM's own machinery:

    core decision          vLLM
    preempted          ->  running.remove + _preempt_request (recompute: v1 has no swap)
    admitted           ->  waiting -> running, status RUNNING
    decodes, prefills  ->  allocate_slots(req, n) and num_scheduled_tokens[req] = n
    (everything)       ->  SchedulerOutput, then _update_after_schedule

Outcomes flow back in `update_from_output` (requests vLLM stopped: stop tokens, stop strings, its
own length limit) and `finish_requests` (aborts, client disconnects). vLLM keeps adding requests,
detokenising, stopping and freeing exactly as it does with its own scheduler.

KV: vLLM's block manager is the only owner of physical blocks; the core's ledger holds reservations.
A request's physical blocks are allocated as its tokens are computed (`allocate_slots` without
lookahead), so vLLM's blocks of a request always equal the core's `used` blocks for it (checked with
`ECOSCHED_CHECK_LEDGER=1`). A reservation (prompt + padded predicted output) is the core's promise
that those blocks stay free for the request: the core never admits beyond the pool, so an admitted
request's growth into its reservation always finds free physical blocks. The same holds for
pipelining: a guest's borrowed blocks are, physically, free blocks the host has not grown into yet.
NOTE: the papers reserve physical blocks up front; here reservation is an accounting promise over
vLLM's pool, which gives the same guarantee and lets a guest use a host's reserved-but-unused share
without vLLM blocks changing hands (vLLM cannot move a block from one request to another).

Not supported (refused at start-up or per request, with a clear message): speculative decoding,
KV connectors (disaggregated prefill), pipeline parallelism, encoder-decoder and multimodal models,
hybrid KV layouts (more than one KV cache group), structured output. Prefix-cache hits are not used:
a request's prompt is always computed (pass `--no-enable-prefix-caching`, as `ecosched serve` does).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.output import NewRequestData, SchedulerOutput
from vllm.v1.engine import EngineCoreEventType, EngineCoreOutputs
from vllm.v1.request import Request as VllmRequest
from vllm.v1.request import RequestStatus as VllmStatus

from ecosched.core.decision import Decision, EngineView, StepOutcome, Stop
from ecosched.core.predictor import Prediction
from ecosched.core.request import FinishReason, Request, RequestStatus
from ecosched.core.scheduler import Scheduler
from ecosched.errors import ConfigError, EcoschedError, InvalidRequestError
from ecosched.factory import build_scheduler
from ecosched_adapters.request_fields import core_request
from ecosched_adapters.settings import AdapterSettings, engine_config
from ecosched_adapters.stats import StepStats
from ecosched_adapters.vllm.timed import record_step
from ecosched_adapters.vllm.version import check_vllm_version

# A child of vLLM's logger: it runs in vLLM's engine-core process, where vLLM configures the "vllm"
# logger's handlers and format; ours then prints beside vLLM's own lines.
logger = logging.getLogger("vllm.ecosched")

# Per-request fields a client may pass in `vllm_xargs` (vLLM hands them to the scheduler unchanged as
# `sampling_params.extra_args`): `ecosched_adapters.request_fields` names and checks them.


class AdapterStateError(EcoschedError):
    """vLLM and the core disagree about a request; a bug in the adapter, never a user error."""


class _Pending:
    """A request vLLM has accepted whose length prediction is still running."""

    __slots__ = ("future", "request")

    def __init__(self, request: Request, future: Future[Prediction]) -> None:
        self.request = request
        self.future = future


class EcoschedScheduler(AsyncScheduler):
    """vLLM's scheduler with every decision taken by the ecosched core (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        check_vllm_version()
        super().__init__(*args, **kwargs)
        self._refuse_unsupported()
        settings = AdapterSettings.from_env()
        if self.cache_config.enable_prefix_caching:
            logger.warning(
                "ecosched: prefix caching is on, but the ecosched scheduler does not use cache hits "
                "(every prompt is computed); start vLLM with --no-enable-prefix-caching"
            )
        # block 0 is vLLM's null block: never handed to a request
        self.num_usable_blocks = self.kv_cache_config.num_blocks - 1
        config = engine_config(
            settings.config_data,
            block_size=self.block_size,
            num_blocks=self.num_usable_blocks,
            max_model_len=self.max_model_len,
            max_num_seqs=self.max_num_running_reqs,
            max_num_batched_tokens=self.max_num_scheduled_tokens,
            chunked_prefill=bool(self.scheduler_config.enable_chunked_prefill),
        )
        self.core: Scheduler = build_scheduler(config)
        self.check_ledger = settings.check_ledger
        self.ledger_checks = 0
        self.ledger_mismatches = 0
        self.stats_out = StepStats(settings.stats_path)
        self._pending: dict[str, _Pending] = {}
        self._predict_pool = ThreadPoolExecutor(1, thread_name_prefix="ecosched-predict")
        self._tokenizer: Any = None
        self._tokenizer_failed = False
        self._rejected: dict[str, str] = {}  # request id -> reason, finished with an error next update
        # core step ids of the steps vLLM has not reported yet, oldest first (None: a paused step);
        # vLLM reports steps in the order they were scheduled, two at a time with async scheduling
        self._steps_in_flight: deque[int | None] = deque()
        logger.info(
            "ecosched: policy %s, predictor %s, %d KV blocks of %d tokens, budget %d tokens, %d seqs",
            config.policy,
            self.core.predictor.name,
            self.num_usable_blocks,
            self.block_size,
            self.max_num_scheduled_tokens,
            self.max_num_running_reqs,
        )

    def _refuse_unsupported(self) -> None:
        problems = []
        if self.num_spec_tokens > 0 or self.vllm_config.speculative_config is not None:
            problems.append("speculative decoding")
        if self.connector is not None:
            problems.append("a KV connector (disaggregated prefill / KV transfer)")
        if self.parallel_config.pipeline_parallel_size > 1:
            problems.append("pipeline parallelism")
        if self.vllm_config.model_config.is_encoder_decoder:
            problems.append("encoder-decoder models")
        if len(self.kv_cache_config.kv_cache_groups) != 1:
            problems.append(f"{len(self.kv_cache_config.kv_cache_groups)} KV cache groups (hybrid attention)")
        if problems:
            raise ConfigError("the ecosched vLLM scheduler does not support " + ", ".join(problems))

    # ---- requests in ----
    def add_request(self, request: VllmRequest) -> None:
        """vLLM queues the request as usual; the core gets it once its length is predicted (in a
        background thread, so a step never waits for the predictor)."""
        known = request.request_id in self.requests
        super().add_request(request)
        if known:
            return  # a streaming-input continuation of a request the core already has
        try:
            req = self._to_core_request(request)
        except InvalidRequestError as exc:
            self._reject(request.request_id, str(exc))
            return
        self._pending[req.request_id] = _Pending(req, self._predict_pool.submit(self._predict, req, request))

    def _to_core_request(self, request: VllmRequest) -> Request:
        params = request.sampling_params
        if params is None:
            raise InvalidRequestError(f"request {request.request_id!r}: pooling requests are not scheduled by ecosched")
        if request.use_structured_output:
            raise InvalidRequestError(
                f"request {request.request_id!r}: structured output is not supported by the ecosched scheduler"
            )
        return core_request(
            request.request_id,
            request.num_prompt_tokens,
            request.max_tokens,
            params.extra_args or {},
            max_model_len=self.max_model_len,
            slo_classes=self.core.slo_classes,
        )

    def _predict(self, req: Request, request: VllmRequest) -> Prediction:
        """Runs in the prediction thread: the prompt's text (for predictors that read it) and the
        core's prediction, which falls back to a default length when the predictor fails."""
        text = self._prompt_text(request)
        if text is not None:
            req = dataclasses.replace(req, prompt=text)
        return self.core.predict([req])[0]

    def _prompt_text(self, request: VllmRequest) -> str | None:
        """The prompt as text, for predictors that read it (`reads_prompt = True`, as the ONNX one)."""
        if not getattr(self.core.predictor, "reads_prompt", False):
            return None
        if self._tokenizer is None and not self._tokenizer_failed:
            try:
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(self.vllm_config.model_config.tokenizer)
            except Exception as exc:  # no tokenizer: predictors that read text fall back
                self._tokenizer_failed = True
                logger.warning("ecosched: cannot load the tokenizer for the length predictor: %s", exc)
        if self._tokenizer is None or request.prompt_token_ids is None:
            return None
        text: str = self._tokenizer.decode(request.prompt_token_ids, skip_special_tokens=True)
        return text

    def _take_predictions(self) -> None:
        """Hand requests whose prediction is done to the core. With nothing running, wait for the
        rest: the engine would otherwise sit idle anyway."""
        if not self._pending:
            return
        wait = not self.core.running
        ready = [p for p in self._pending.values() if wait or p.future.done()]
        if not ready:
            return
        for p in ready:
            del self._pending[p.request.request_id]
            try:
                self.core.add_request(p.request, p.future.result())
            except InvalidRequestError as exc:
                self._reject(p.request.request_id, str(exc))

    def _reject(self, request_id: str, reason: str) -> None:
        logger.warning("ecosched: rejecting request %s: %s", request_id, reason)
        self._rejected[request_id] = reason

    # ---- one step ----
    def schedule(self, throttle_prefills: bool = False) -> SchedulerOutput:
        start = time.monotonic()
        t0 = time.perf_counter()
        self.current_step += 1
        self.kv_cache_manager.new_step_starts()
        self._take_predictions()
        paused = self._pause_state.name == "PAUSED_ALL"
        decision = None if paused else self.core.schedule(start, EngineView(self._engine_free_blocks()))
        self._steps_in_flight.append(None if decision is None else decision.step_id)
        out = self._apply(decision, start)
        record_step(self.stats_out, start, time.perf_counter() - t0, out, self.requests)
        return out

    def _engine_free_blocks(self) -> int:
        """vLLM's free blocks less the reservations the core holds on them: equal to the ledger's free
        count when both agree, smaller if vLLM holds blocks the core does not know of."""
        free: int = self.kv_cache_manager.block_pool.get_num_free_blocks()
        return free - self.core.ledger.num_reserved_unused_blocks

    def _apply(self, d: Decision | None, now: float) -> SchedulerOutput:
        kv = self.kv_cache_manager
        new_reqs: list[VllmRequest] = []
        resumed: list[VllmRequest] = []
        running: list[VllmRequest] = []
        blocks: dict[str, Any] = {}
        num_scheduled: dict[str, int] = {}
        if d is not None:
            for p in d.preempted:
                req = self.requests[p.request_id]
                self.running.remove(req)
                self._preempt_request(req, now)
            joining = {a.request_id for a in d.admitted}
            for rid, n in d.scheduled_tokens().items():
                req = self.requests[rid]
                if rid in joining:
                    (new_reqs if req.status == VllmStatus.WAITING else resumed).append(req)
                    self._join(req, now)
                else:
                    running.append(req)
                self._check_start(req, d, n)
                new_blocks = kv.allocate_slots(req, n)
                if new_blocks is None:
                    raise AdapterStateError(
                        f"vLLM has no free block for {rid} ({n} tokens at {req.num_computed_tokens}) although "
                        f"the core's ledger has room: free {kv.block_pool.get_num_free_blocks()}, "
                        f"ledger free {self.core.ledger.num_free_blocks}"
                    )
                blocks[rid] = kv.get_blocks(rid) if rid in joining else new_blocks
                num_scheduled[rid] = n
        return self._output(new_reqs, resumed, running, num_scheduled, blocks)

    def _join(self, req: VllmRequest, now: float) -> None:
        if req.status not in (VllmStatus.WAITING, VllmStatus.PREEMPTED):
            raise AdapterStateError(f"the core admitted {req.request_id}, which vLLM holds as {req.status.name}")
        self.waiting.remove_request(req)
        self.running.append(req)
        if self.log_stats:
            req.record_event(EngineCoreEventType.SCHEDULED, now)
        req.status = VllmStatus.RUNNING
        req.num_computed_tokens = 0

    def _check_start(self, req: VllmRequest, d: Decision, n: int) -> None:
        """The core's token counts must be vLLM's: the step starts where vLLM's computed tokens end and
        never runs past the tokens vLLM has."""
        todo = req.num_tokens_with_spec + req.num_output_placeholders - req.num_computed_tokens
        if not 0 < n <= todo:
            raise AdapterStateError(
                f"step {d.step_id}: the core scheduled {n} tokens of {req.request_id}, vLLM has {todo} to compute "
                f"(computed {req.num_computed_tokens}, tokens {req.num_tokens})"
            )

    def _output(
        self,
        new_reqs: list[VllmRequest],
        resumed: list[VllmRequest],
        running: list[VllmRequest],
        num_scheduled: dict[str, int],
        blocks: dict[str, Any],
    ) -> SchedulerOutput:
        """The SchedulerOutput vLLM's model runner expects, built the way vLLM's own schedule() does."""
        if self.use_v2_model_runner:
            new_reqs, resumed = new_reqs + resumed, []
        new_data = [
            NewRequestData.from_request(
                r,
                blocks[r.request_id].get_block_ids(),
                r._all_token_ids if self.use_v2_model_runner else None,
                uses_mrope=self.model_uses_mrope,
            )
            for r in new_reqs
        ]
        cached = self._make_cached_request_data(running, resumed, num_scheduled, {}, blocks)
        if not self.use_v2_model_runner:
            self.prev_step_scheduled_req_ids.clear()
            self.prev_step_scheduled_req_ids.update(num_scheduled)
        self.kv_cache_manager.take_boundary_state_offloads()
        copies, cow_retained = self.kv_cache_manager.take_kv_cache_block_copies()
        if copies:
            self._free_cow_retained_blocks(cow_retained, self.sched_step_seq + 1)
        total = sum(num_scheduled.values())
        out = SchedulerOutput(
            scheduled_new_reqs=new_data,
            scheduled_cached_reqs=cached,
            num_scheduled_tokens=num_scheduled,
            total_num_scheduled_tokens=total,
            scheduled_spec_decode_tokens={},
            scheduled_encoder_inputs={},
            preempted_req_ids=self.reset_preempted_req_ids,
            finished_req_ids=self.finished_req_ids,
            free_encoder_mm_hashes=self.encoder_cache_manager.get_freed_mm_hashes(),
            new_block_ids_to_zero=self._get_new_block_ids_to_zero(),
            kv_cache_block_copies=copies or None,
            num_spec_tokens_to_schedule=self.num_spec_tokens,
            ec_manager_metadata=self.encoder_cache_manager.get_manager_metadata(),
        )
        if self.defer_block_free and total > 0:
            self.sched_step_seq += 1
        self._update_after_schedule(out)
        if self.check_ledger:
            self._check_ledger()
        return out

    # ---- outcomes back ----
    def update_from_output(
        self, scheduler_output: SchedulerOutput, model_runner_output: Any
    ) -> dict[int, EngineCoreOutputs]:
        scheduled = {rid: self.requests.get(rid) for rid in scheduler_output.num_scheduled_tokens}
        if self._rejected:
            # vLLM finishes these with FINISHED_ERROR and tells their clients, as for its own errors
            self.encoder_cache_mismatch_reqs.update(self._rejected)
            for rid in self._rejected:
                self._pending.pop(rid, None)
            self._rejected.clear()
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        now = time.monotonic()
        step_id = self._steps_in_flight.popleft()
        stops = []
        for rid, req in scheduled.items():
            st = self.core.requests.get(rid)
            if st is None or req is None or not req.is_finished():
                continue
            if st.status is RequestStatus.FINISHING and req.num_output_tokens == st.num_output_tokens:
                continue  # reached the length the core expected: the core ends it itself
            reason = FinishReason.ABORT if req.status == VllmStatus.FINISHED_ABORTED else FinishReason.STOP
            stops.append(Stop(rid, reason, req.num_output_tokens))
        if step_id is not None:
            self.core.update(StepOutcome(step_id, now, tuple(stops)))
        if not self.requests:
            self.stats_out.flush(extra=self._counters())
        return outputs

    def finish_requests(self, request_ids: Any, finished_status: VllmStatus) -> list[VllmRequest]:
        """Aborts (client disconnects, stop strings seen by the frontend) end the request in the core too."""
        finished = super().finish_requests(request_ids, finished_status)
        now = time.monotonic()
        for req in finished:
            rid = req.request_id
            if rid in self.core.requests:
                self.core.abort(rid, now)
            pending = self._pending.pop(rid, None)
            if pending is not None:
                pending.future.cancel()
        return finished

    # ---- checks and stats ----
    def ledger_disagreements(self) -> list[str]:
        """Where vLLM's block manager and the core's ledger disagree (empty when they agree): each
        running request's blocks in vLLM must equal the ledger's `used` for it, and no ledger entry
        may belong to a request vLLM is not running."""
        ledger = self.core.ledger
        bad = []
        for req in self.running:
            rid = req.request_id
            vllm_blocks = len(self.kv_cache_manager.get_block_ids(rid)[0])
            core_blocks = ledger.view(rid).used if rid in ledger else 0
            if vllm_blocks != core_blocks:
                bad.append(f"{rid}: vLLM {vllm_blocks}, core {core_blocks}")
        holders = set(ledger.request_ids())
        ids = {r.request_id for r in self.running}
        if not holders <= ids:
            bad.append(f"ledger entries without a running vLLM request: {sorted(holders - ids)}")
        return bad

    def _check_ledger(self) -> None:
        self.ledger_checks += 1
        bad = self.ledger_disagreements()
        if bad:
            self.ledger_mismatches += 1
            logger.error("ecosched: ledger disagrees with vLLM's block manager: %s", "; ".join(bad))

    def _counters(self) -> dict[str, Any]:
        s = self.core.stats
        return {
            "policy": self.core.config.policy,
            "ledger_checks": self.ledger_checks,
            "ledger_mismatches": self.ledger_mismatches,
            "core_requests": len(self.core.requests),
            "core_free_blocks": self.core.ledger.num_free_blocks,
            "vllm_free_blocks": self.kv_cache_manager.block_pool.get_num_free_blocks(),
            "num_blocks": self.num_usable_blocks,
            "num_admitted": s.num_admitted,
            "num_pipelined": s.num_pipelined,
            "num_topups": s.num_topups,
            "num_recomputes": s.num_recomputes,
            "num_finished": s.num_finished,
            "num_aborted": s.num_aborted,
            "num_predictor_failures": s.num_predictor_failures,
        }

    def shutdown(self) -> None:
        self.stats_out.flush(extra=self._counters())
        self._predict_pool.shutdown(wait=False, cancel_futures=True)
        super().shutdown()
