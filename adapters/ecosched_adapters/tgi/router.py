"""The batching loop of ecosched's TGI router: one core decision per shard forward.

Each turn of the loop:
  1. requests whose clients left are aborted in the core;
  2. the core decides the step (`Scheduler.schedule`);
  3. the block table is brought to the ledger: blocks of requests that left are freed, admissions
     and top-ups get theirs (the ledger is the block table, checked every step);
  4. the shard's cached batch is filtered down to the requests the decision decodes in place; every
     other scheduled request is (re)sent in a `Prefill`: a new request, a recompute, the next chunk of
     a prompt, or a paused request resuming with `cache_len` = the tokens already in its blocks;
  5. one forward: `Prefill(new, cached)` on a chunking shard (cached requests decode in the same
     forward), or `Decode(cached)`; a shard that cannot chunk runs a Prefill alone, so the step's
     decodes are withdrawn from the core's decision;
  6. generations stream to clients; finished requests, used-up segments and part-way prompts are
     filtered out of the shard's batch at once (the shard would otherwise size their next chunk, or
     keep generating, on its own); the outcome goes back to the core.

A request is thus either in the shard's batch (decoding there) or out of it, holding its blocks,
until the core schedules it again. Pausing and resuming needs a shard that accepts `cache_len`
(`use_prefix_caching`); without it, a request that must leave the batch is recomputed instead
(`Scheduler.preempt`), and the core neither chunks prompts nor recomputations.

Requests get the reservation the core decides: their shard segment (`max_new_tokens`) ends where
their blocks end, so a request that outlives its prediction stops at the end of its blocks, is
paused, and resumes with the blocks the core tops it up with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ecosched.config import EcoschedConfig
from ecosched.core.decision import Decision, StepOutcome, Stop
from ecosched.core.request import FinishReason as CoreFinish
from ecosched.core.request import RequestStatus
from ecosched.core.scheduler import Scheduler
from ecosched.errors import EcoschedError, InvalidRequestError, LedgerInvariantError
from ecosched_adapters.request_fields import FIELD_SLO_CLASS, FIELD_TRUE_OUTPUT, core_request
from ecosched_adapters.stats import StepStats
from ecosched_adapters.tgi import tokenizer as tok
from ecosched_adapters.tgi.blocks import HEALTH_BLOCK, BlockTable
from ecosched_adapters.tgi.client import ShardedClient, ShardError, ShardUnavailable, StepResult
from ecosched_adapters.tgi.proto import generate_v3_pb2 as pb
from ecosched_adapters.tgi.types import End, Event, Failure, FinishReason, GenerateRequest, Token

logger = logging.getLogger(__name__)

HEALTH_ID = 2**64 - 1  # TGI's liveness request and batch id
IDLE_POLL_S = 0.05  # when nothing can run, look again after this long even without a wake-up
_FINISH = {
    pb.FINISH_REASON_LENGTH: FinishReason.LENGTH,
    pb.FINISH_REASON_EOS_TOKEN: FinishReason.EOS_TOKEN,
    pb.FINISH_REASON_STOP_SEQUENCE: FinishReason.STOP_SEQUENCE,
}


class RouterStartError(EcoschedError):
    """The shards cannot be driven with these settings (reported at start, before serving)."""


@dataclass(frozen=True)
class RouterLimits:
    """What the router settled on with the shards at warmup."""

    block_size: int
    num_blocks: int  # the KV pool, block 0 included
    max_input_tokens: int
    max_total_tokens: int
    max_batch_prefill_tokens: int
    chunking: bool  # the core chunks prompts (the shard chunks and accepts cache_len)
    pausing: bool  # requests may leave the batch keeping their blocks (cache_len accepted)
    shard_chunking: bool  # the shard can concatenate a Prefill onto its cached batch
    world_size: int


@dataclass
class _Entry:
    """A request the router serves: the core's id, the client's stream, its tokens so far."""

    rid: str
    shard_id: int
    request: GenerateRequest
    max_new_tokens: int  # the client's, within max_total_tokens (TGI validates only min(it, 1024))
    events: asyncio.Queue[Event]
    out_ids: list[int] = field(default_factory=list)
    out_texts: list[str] = field(default_factory=list)
    in_batch: bool = False  # in the shard's cached batch, decoding there
    ended: bool = False
    cancelled: bool = False
    first_scheduled_s: float | None = None

    @property
    def tokens(self) -> list[int]:
        return [*self.request.input_ids, *self.out_ids]


@dataclass
class RouterCounters:
    steps: int = 0
    forwards: int = 0
    pauses: int = 0  # requests taken out of the shard's batch keeping their blocks
    resumes: int = 0  # paused requests sent again with cache_len
    recomputes: int = 0  # requests that had to leave the batch without a way to resume
    segment_ends: int = 0  # shard segments that ended before the request did
    shard_errors: int = 0
    policy_s: float = 0.0  # time in the core's decisions
    router_s: float = 0.0  # time in the loop outside shard calls (the core included)


class Router:
    """Drives TGI shards with the ecosched core. Build with `Router.connect`, then `start()`."""

    def __init__(
        self,
        client: ShardedClient,
        core: Scheduler,
        limits: RouterLimits,
        tokenizer: Any,
        *,
        check_ledger: bool = True,
        stats: StepStats | None = None,
        record_forwards: bool = False,
    ) -> None:
        self.client = client
        self.core = core
        self.limits = limits
        self.tokenizer = tokenizer
        self.eos_id = tok.eos_token_id(tokenizer)
        self.table = BlockTable(limits.num_blocks, limits.block_size)
        self.check_ledger = check_ledger
        self.stats = stats or StepStats(None)
        self.counters = RouterCounters()
        # (method, [(rid, tokens computed)]) per forward, for differential tests
        self.forward_log: list[tuple[str, list[tuple[str, int]]]] | None = [] if record_forwards else None
        self._entries: dict[str, _Entry] = {}
        self._by_shard: dict[int, _Entry] = {}
        self._batch: pb.CachedBatch | None = None  # the shard's cached batch
        self._extra_batches: list[pb.CachedBatch] = []  # prefilled alone (shards that cannot chunk)
        self._next_shard_id = 0
        self._next_batch_id = 0
        self._wake = asyncio.Event()
        self._rpc = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._t0 = time.monotonic()
        self._healthy_generation = True  # TGI: after a failure, health runs a liveness prefill
        self._dead: str | None = None
        self.metrics: Any = None  # a RouterMetrics, set by the server
        self._reported = (0, 0)  # pauses and resumes already in the metrics

    # ---- start-up ----
    @classmethod
    async def connect(
        cls,
        master_uds_path: str,
        config_data: dict[str, Any],
        tokenizer: Any,
        *,
        max_input_tokens: int | None = None,
        max_total_tokens: int | None = None,
        max_batch_prefill_tokens: int = 4096,
        max_batch_total_tokens: int | None = None,
        max_batch_size: int | None = None,
        check_ledger: bool = True,
        stats: StepStats | None = None,
        record_forwards: bool = False,
    ) -> Router:
        """Connect to the shards as TGI's router does (ServiceDiscovery, ClearCache, Info, Warmup) and
        build the core on the KV pool the shards report."""
        from ecosched.factory import build_scheduler

        client = await ShardedClient.connect_uds(master_uds_path)
        try:
            await client.clear_cache(None)
            info = await client.info()
            if info.requires_padding:
                raise RouterStartError("the shard runs a padded (non-flash) model; ecosched drives paged shards only")
            if info.speculate:
                # NOTE: speculative tokens would change slot counts and tokens per step; not modelled
                raise RouterStartError(f"the shard speculates {info.speculate} tokens; ecosched needs speculate 0")
            supported, max_input, max_total = await client.warmup(
                max_input_tokens, max_batch_prefill_tokens, max_total_tokens, max_batch_size
            )
            if supported is not None:
                if max_batch_total_tokens is not None and max_batch_total_tokens != supported:
                    logger.warning("--max-batch-total-tokens is ignored: the shard's KV pool holds %d", supported)
                total = supported
            else:
                total = max_batch_total_tokens or max(16000, max_total, max_batch_prefill_tokens)
            bs = info.block_size or 1
            limits = RouterLimits(
                block_size=bs,
                num_blocks=total // bs,
                max_input_tokens=max_input,
                max_total_tokens=max_total,
                max_batch_prefill_tokens=max_batch_prefill_tokens,
                chunking=info.support_chunking and info.use_prefix_caching,
                pausing=info.use_prefix_caching,
                shard_chunking=info.support_chunking,
                world_size=client.world_size,
            )
            _check_limits(limits, total)
            core = build_scheduler(core_config(config_data, limits, max_batch_size))
        except BaseException:
            await client.close()
            raise
        return cls(
            client, core, limits, tokenizer, check_ledger=check_ledger, stats=stats, record_forwards=record_forwards
        )

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="ecosched-tgi-router")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for e in list(self._entries.values()):
            self._fail(e, "the router is shutting down", status=503, error_type="unhealthy")
        await self.client.close()

    # ---- the HTTP side (types.Backend) ----
    @property
    def queue_size(self) -> int:
        return len(self.core.waiting)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Event]:
        """Queue `request` and stream its events. Closing the iterator early cancels the request."""
        if self._dead is not None:
            yield Failure(self._dead, "generation", 424)
            return
        self._next_shard_id += 1
        rid = f"t{self._next_shard_id}"
        max_new = min(request.max_new_tokens, self.limits.max_total_tokens - len(request.input_ids))
        entry = _Entry(rid, self._next_shard_id, request, max_new, asyncio.Queue())
        fields: dict[str, Any] = {}
        if request.slo_class is not None:
            fields[FIELD_SLO_CLASS] = request.slo_class
        if request.true_output_tokens is not None:
            fields[FIELD_TRUE_OUTPUT] = request.true_output_tokens
        try:
            creq = core_request(
                rid, len(request.input_ids), max_new, fields,
                max_model_len=self.limits.max_total_tokens, slo_classes=self.core.slo_classes,
                prompt=request.inputs,
            )
            self.core.add_request(creq)
        except InvalidRequestError as exc:
            yield Failure(str(exc), "validation", 422)
            return
        self._entries[rid] = entry
        self._by_shard[entry.shard_id] = entry
        self._wake.set()
        try:
            while True:
                event = await entry.events.get()
                yield event
                if not isinstance(event, Token):
                    return
        finally:
            if not entry.ended:  # the client left: the loop drops it before its next step
                entry.cancelled = True
                self._wake.set()

    async def health(self) -> bool:
        """TGI's health check: the Health RPC, or a one-token liveness prefill after a failure."""
        if self._dead is not None:
            return False
        try:
            async with self._rpc:
                if self._healthy_generation:
                    await self.client.health()
                else:
                    await self.client.prefill(_liveness_batch(self.limits.block_size), None)
                    self._healthy_generation = True
            return True
        except ShardError as exc:
            logger.warning("health check failed: %s", exc)
            if isinstance(exc, ShardUnavailable):
                self._dead = str(exc)  # requests in flight fail at the loop's next shard call
            return False

    # ---- the loop ----
    def _now(self) -> float:
        return time.monotonic() - self._t0

    async def _loop(self) -> None:
        while True:
            self._drop_cancelled()
            if not self.core.num_unfinished and any(e.ended for e in self._in_batch()):
                await self._cleanup()
            if not self.core.num_unfinished:
                self._wake.clear()
                await self._wake.wait()
                continue
            ran = await self._step()
            if not ran:  # nothing can run until a request arrives, ends or leaves
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=IDLE_POLL_S)

    async def _step(self) -> bool:
        t_start = time.monotonic()
        shard_s = 0.0
        decision = self.core.schedule(self._now())
        t_policy = time.monotonic() - t_start
        self.counters.policy_s += t_policy
        self.counters.steps += 1
        plan = self._plan(decision)
        self._sync_table()
        try:
            t0 = time.monotonic()
            async with self._rpc:
                await self._filter(plan.leave)
                result = await self._forward(plan)
            shard_s = time.monotonic() - t0
        except ShardError as exc:
            if self.metrics is not None:
                self.metrics.batch("prefill" if plan.send else "decode", size=0, max_tokens=0, forward_s=0.0,
                                   inference_s=0.0, ok=False)
            self._step_failed(decision, exc)
            return True
        if result is None:
            if self.metrics is not None:
                self.metrics.batch_idle()
            self.core.update(StepOutcome(decision.step_id, self._now()))
            self._sync_table()
            self.counters.router_s += time.monotonic() - t_start
            return False
        stops, leave = self._generations(plan, result)
        try:
            async with self._rpc:
                t0 = time.monotonic()
                await self._filter(leave)
                shard_s += time.monotonic() - t0
        except ShardError as exc:
            self._step_failed(decision, exc)
            return True
        for rec in self.core.update(StepOutcome(decision.step_id, self._now(), tuple(stops))):
            entry = self._entries.get(rec.request_id)
            if entry is not None and not entry.ended:
                self._finish(entry, FinishReason.LENGTH)
        for entry in plan.cannot_resume_after:
            if entry.rid in self.core.requests and self.core.requests[entry.rid].status is RequestStatus.RUNNING:
                self._recompute(entry)
        self._sync_table()
        self._healthy_generation = True
        elapsed = time.monotonic() - t_start
        self.counters.router_s += elapsed - shard_s
        if self.stats.enabled:
            self.stats.step(t_start, elapsed - shard_s, decision.num_scheduled_tokens, self.core.num_context_tokens,
                            len(decision.preempted))
            self.stats.policy(t_policy)
        if self.metrics is not None:
            self._report(plan, result, elapsed - shard_s, t_policy, shard_s)
        return True

    def _report(self, plan: _Plan, result: StepResult, router_s: float, policy_s: float, shard_s: float) -> None:
        """The step in TGI's batch metrics and ecosched's own."""
        m = self.metrics
        method = "prefill" if plan.send else "decode"
        batch = self._batch
        m.batch(method, size=len(batch.request_ids) if batch else 0, max_tokens=batch.max_tokens if batch else 0,
                forward_s=result.forward_ns / 1e9, inference_s=shard_s, ok=True)
        if plan.send:
            m.batch_next(len(plan.send))
        m.step(router_s)
        m.policy(policy_s)
        c = self.counters
        last = self._reported
        if plan.decision.preempted:
            m.preempted(len(plan.decision.preempted))
        if c.pauses > last[0]:
            m.paused(c.pauses - last[0])
        if c.resumes > last[1]:
            m.resumed(c.resumes - last[1])
        self._reported = (c.pauses, c.resumes)
        ledger = self.core.ledger
        m.kv_blocks(used=ledger.num_used_blocks, reserved_unused=ledger.num_reserved_unused_blocks,
                    free=ledger.num_free_blocks)
        m.queue_size(len(self.core.waiting))

    async def _cleanup(self) -> None:
        """Nothing to schedule, but requests that left still sit in the shard's batch: filter them out
        and free their blocks now rather than at the next request."""
        leaving = [e for e in self._in_batch() if e.ended]
        for e in leaving:
            e.in_batch = False
        try:
            async with self._rpc:
                await self._filter(leaving)
        except ShardError as exc:
            self.counters.shard_errors += 1
            self._healthy_generation = False
            logger.error("filtering ended requests failed: %s", exc)
            self._batch, self._extra_batches = None, []
            if isinstance(exc, ShardUnavailable):
                self._shard_died(str(exc))
        self._sync_table()

    # ---- step parts ----
    def _drop_cancelled(self) -> None:
        for entry in [e for e in self._entries.values() if e.cancelled]:
            entry.ended = True
            if entry.rid in self.core.requests:
                self.core.abort(entry.rid, self._now())
            if not entry.in_batch:
                self._forget(entry)
            # in the batch: filtered out by the next step (its ledger entry is gone already)

    def _plan(self, decision: Decision) -> _Plan:
        """Who leaves the shard's batch before the forward, and the Requests the forward sends."""
        plan = _Plan(decision)
        decodes = set(decision.decodes)
        withdrawn: list[str] = []
        for entry in self._in_batch():
            if entry.rid in decodes and not entry.ended:
                plan.stay.append(entry)
                continue
            plan.leave.append(entry)  # ended, preempted, or not scheduled this step
            entry.in_batch = False  # the filter below reaches the shard before any forward
            if not entry.ended and entry.rid in self.core.requests:
                state = self.core.requests[entry.rid]
                if state.status is RequestStatus.RUNNING and not self.limits.pausing:
                    plan.cannot_resume_after.append(entry)
                elif state.status is RequestStatus.RUNNING:
                    self.counters.pauses += 1
        for rid in decision.decodes:
            entry = self._entries[rid]
            if entry.in_batch:
                continue
            if not self.limits.pausing:  # a paused request cannot come back without recomputing
                withdrawn.append(rid)
                plan.cannot_resume_now.append(entry)
                continue
            plan.send.append((entry, len(entry.tokens) - 1, 1))
            self.counters.resumes += 1
        for chunk in decision.prefills:
            entry = self._entries[chunk.request_id]
            if chunk.start > 0 and not self.limits.pausing:
                raise LedgerInvariantError(f"{entry.rid}: a chunk from token {chunk.start} needs cache_len support")
            plan.send.append((entry, chunk.start, chunk.num_tokens))
            if chunk.start > 0 and chunk.start == len(entry.tokens) - 1:
                self.counters.resumes += 1
        if plan.send and not self.limits.shard_chunking and plan.stay:
            # the shard cannot run a prefill and decodes in one forward: the prefill goes first
            withdrawn.extend(e.rid for e in plan.stay)
            plan.decodes_withdrawn = True
        if withdrawn:
            self.core.withdraw(withdrawn)
        for entry in plan.cannot_resume_now:
            self._recompute(entry)
        return plan

    def _sync_table(self) -> None:
        """Make the block table the ledger: free what left it, grow what it grew."""
        ledger = self.core.ledger
        for rid in self.table.holders():
            if rid not in ledger:
                entry = self._entries.get(rid)
                if entry is not None and entry.in_batch:
                    raise LedgerInvariantError(f"{rid}: blocks freed while the shard's batch still holds it")
                self.table.free(rid)
        for rid in ledger.request_ids():
            short = ledger.capacity_blocks(rid) - (len(self.table.blocks(rid)) if rid in self.table else 0)
            if short > 0:
                self.table.grow(rid, short)
        if self.check_ledger:
            t0 = time.monotonic()
            self.table.check_against(ledger)
            self.core.check_invariants()
            self.stats.check(time.monotonic() - t0)

    async def _filter(self, leaving: list[_Entry]) -> None:
        """Take `leaving` out of the shard's cached batches (ClearCache when nobody stays)."""
        if not leaving:
            return
        gone = {e.shard_id for e in leaving}
        batches = [b for b in ([self._batch] if self._batch else []) + self._extra_batches]
        kept_batches: list[pb.CachedBatch] = []
        for batch in batches:
            ids = list(batch.request_ids)
            keep = [i for i in ids if i not in gone]
            if len(keep) == len(ids):
                kept_batches.append(batch)
            elif keep:
                kept_batches.append(await self.client.filter_batch(batch.id, keep))
            else:
                await self.client.clear_cache(batch.id)
        self._batch = kept_batches[0] if kept_batches else None
        self._extra_batches = kept_batches[1:]
        for entry in leaving:
            entry.in_batch = False
            if entry.ended:
                self._forget(entry)

    async def _forward(self, plan: _Plan) -> StepResult | None:
        if plan.send:
            requests = [self._shard_request(e, start, n) for e, start, n in plan.send]
            self._next_batch_id += 1
            batch = pb.Batch(
                id=self._next_batch_id,
                requests=requests,
                size=len(requests),
                max_tokens=sum(len(r.slots) for r in requests),
                max_blocks=max(len(r.blocks) for r in requests),
            )
            cached = self._batch if self.limits.shard_chunking else None
            result = await self.client.prefill(batch, cached)
            method = "prefill"
            if self.limits.shard_chunking:
                self._batch = result.batch
            elif result.batch is not None:
                self._extra_batches.append(result.batch)
            for entry, _, _ in plan.send:
                entry.in_batch = True
        else:
            batches = [b for b in ([self._batch] if self._batch else []) + self._extra_batches]
            if not batches:
                return None
            result = await self.client.decode(batches)
            method = "decode"
            self._batch, self._extra_batches = result.batch, []
        self.counters.forwards += 1
        if self.forward_log is not None:
            ran = [(e.rid, 1) for e in plan.stay if not plan.decodes_withdrawn]
            ran += [(e.rid, n) for e, _, n in plan.send]
            self.forward_log.append((method, ran))
        if result.batch is None:  # every request in the forward stopped
            for entry in [e for e, _, _ in plan.send] if method == "prefill" and not self.limits.shard_chunking \
                    else self._in_batch():
                entry.in_batch = False
        return result

    def _shard_request(self, entry: _Entry, start: int, num_tokens: int) -> pb.Request:
        """The shard's Request for `entry` computing `num_tokens` from token `start`."""
        req = entry.request
        now = self._now()
        if entry.first_scheduled_s is None:
            entry.first_scheduled_s = now
        tokens = entry.tokens
        if start == 0 and not entry.out_ids:
            inputs, truncate, special = req.inputs, req.truncate, req.add_special_tokens
        else:  # a resume or a recompute: the text of every token so far, to be re-tokenized
            inputs = tok.decode(self.tokenizer, tokens, skip_special_tokens=False)
            truncate, special = len(tokens), False
            # NOTE: exact for the built-in tokenizer; real tokenizers may not round-trip their output
            if tok.encode(self.tokenizer, inputs, add_special_tokens=False) != tokens:
                raise ShardError(f"{entry.rid}: its text does not re-tokenize to its tokens; it cannot resume")
        slots = self.table.slots(entry.rid)
        segment = min(entry.max_new_tokens - len(entry.out_ids), len(slots) - len(tokens) + 1)
        s = req.sampling
        r = pb.Request(
            id=entry.shard_id,
            inputs=inputs,
            input_chunks=pb.Input(chunks=[pb.InputChunk(text=inputs)]),
            truncate=truncate,
            parameters=pb.NextTokenChooserParameters(
                temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, typical_p=s.typical_p,
                do_sample=s.do_sample, seed=s.seed, repetition_penalty=s.repetition_penalty,
                frequency_penalty=s.frequency_penalty, watermark=s.watermark, grammar=s.grammar,
                grammar_type=s.grammar_type,  # type: ignore[arg-type]
            ),
            stopping_parameters=pb.StoppingCriteriaParameters(
                max_new_tokens=segment, stop_sequences=list(req.stop_sequences)
            ),
            top_n_tokens=req.top_n_tokens,
            blocks=self.table.blocks(entry.rid),
            slots=slots,
            cache_len=start,
            add_special_tokens=special,
        )
        if self.limits.shard_chunking:
            r.chunk_len = num_tokens
        return r

    def _generations(self, plan: _Plan, result: StepResult) -> tuple[list[Stop], list[_Entry]]:
        """Stream the forward's tokens; returns the stops for the core and who leaves the batch."""
        stops: list[Stop] = []
        leave: list[_Entry] = []
        sampled = set()
        for g in result.generations:
            entry = self._by_shard.get(g.request_id)
            if entry is None or entry.ended:
                continue
            sampled.add(entry.rid)
            for i, tid in enumerate(g.tokens.ids):
                text = g.tokens.texts[i] if i < len(g.tokens.texts) else ""
                special = bool(g.tokens.is_special[i]) if i < len(g.tokens.is_special) else False
                logprob = g.tokens.logprobs[i] if i < len(g.tokens.logprobs) else 0.0
                entry.out_ids.append(tid)
                entry.out_texts.append(text)
                entry.events.put_nowait(Token(tid, text, logprob, special))
            if not g.HasField("generated_text"):
                continue
            reason = _FINISH.get(g.generated_text.finish_reason, FinishReason.LENGTH)
            leave.append(entry)
            last_is_eos = bool(entry.out_ids) and entry.out_ids[-1] == self.eos_id
            if reason is FinishReason.LENGTH and last_is_eos and len(entry.out_ids) < entry.max_new_tokens:
                # TGI checks length before EOS: an EOS on a segment's last token still ends the request
                reason = FinishReason.EOS_TOKEN
            if reason is FinishReason.LENGTH and len(entry.out_ids) < entry.max_new_tokens:
                self.counters.segment_ends += 1  # its blocks are full: paused until the core tops it up
                if self.limits.pausing:
                    self.counters.pauses += 1
                else:
                    plan.cannot_resume_after.append(entry)
                continue
            if reason is not FinishReason.LENGTH:
                stops.append(Stop(entry.rid, CoreFinish.STOP, len(entry.out_ids)))
            self._finish(entry, reason, g.generated_text.seed if g.generated_text.HasField("seed") else None)
        # a part-way prompt leaves the batch: the core, not the shard, sizes its next chunk
        for entry, start, n in plan.send:
            if entry.rid not in sampled and not entry.ended and start + n < len(entry.tokens):
                leave.append(entry)
        return stops, leave

    # ---- endings ----
    def _finish(self, entry: _Entry, reason: FinishReason, seed: int | None = None) -> None:
        if entry.ended:
            return
        entry.ended = True
        now = self._now()
        first = entry.first_scheduled_s if entry.first_scheduled_s is not None else now
        entry.events.put_nowait(
            End(
                # as the shard decodes it: every generated token, special ones skipped
                generated_text=tok.decode(self.tokenizer, entry.out_ids, skip_special_tokens=True),
                finish_reason=reason,
                generated_tokens=len(entry.out_ids),
                seed=seed,
                input_length=len(entry.request.input_ids),
                queue_s=max(0.0, first - (entry.request.arrival_s - self._t0)),
                inference_s=now - first,
            )
        )
        if not entry.in_batch:
            self._forget(entry)

    def _fail(self, entry: _Entry, message: str, *, status: int = 424, error_type: str = "generation") -> None:
        if not entry.ended:
            entry.ended = True
            entry.events.put_nowait(Failure(message, error_type, status))
        if entry.rid in self.core.requests:
            self.core.abort(entry.rid, self._now())
        self._forget(entry)

    def _forget(self, entry: _Entry) -> None:
        self._entries.pop(entry.rid, None)
        self._by_shard.pop(entry.shard_id, None)

    def _recompute(self, entry: _Entry) -> None:
        """`entry` left the shard's batch and cannot resume from its KV: the core recomputes it."""
        self.counters.recomputes += 1
        self.core.preempt(entry.rid)

    def _step_failed(self, decision: Decision, exc: ShardError) -> None:
        """TGI's rule: a failed forward fails every request of the batch (424), then ClearCache."""
        self.counters.shard_errors += 1
        self._healthy_generation = False
        logger.error("shard error: %s", exc)
        if isinstance(exc, ShardUnavailable):
            self._shard_died(str(exc))
            self.core.update(StepOutcome(decision.step_id, self._now()))
            self._sync_table()
            return
        hit = {e.rid for e in self._in_batch()} | set(decision.scheduled_tokens())
        for rid in hit:
            entry = self._entries.get(rid)
            if entry is not None:
                entry.in_batch = False
                self._fail(entry, str(exc))
        self._batch, self._extra_batches = None, []
        self.core.update(StepOutcome(decision.step_id, self._now()))
        self._sync_table()
        asyncio.get_running_loop().create_task(self._clear_all())

    async def _clear_all(self) -> None:
        try:
            async with self._rpc:
                await self.client.clear_cache(None)
        except ShardError as exc:
            logger.error("ClearCache after a failure failed too: %s", exc)

    def _shard_died(self, message: str) -> None:
        """A shard is gone: every request fails, the ledger empties, /health answers 503."""
        self._dead = message
        for entry in list(self._entries.values()):
            entry.in_batch = False
            self._fail(entry, message)
        self._batch, self._extra_batches = None, []
        for rid in list(self.core.requests):
            self.core.abort(rid, self._now())

    def _in_batch(self) -> list[_Entry]:
        return [e for e in self._entries.values() if e.in_batch]


@dataclass
class _Plan:
    decision: Decision
    stay: list[_Entry] = field(default_factory=list)  # decode in place
    leave: list[_Entry] = field(default_factory=list)  # filtered out before the forward
    send: list[tuple[_Entry, int, int]] = field(default_factory=list)  # (entry, cache_len, tokens)
    cannot_resume_now: list[_Entry] = field(default_factory=list)
    cannot_resume_after: list[_Entry] = field(default_factory=list)
    decodes_withdrawn: bool = False


def _liveness_batch(block_size: int) -> pb.Batch:
    req = pb.Request(
        id=HEALTH_ID,
        inputs="liveness",
        input_chunks=pb.Input(chunks=[pb.InputChunk(text="liveness")]),
        truncate=10,
        parameters=pb.NextTokenChooserParameters(temperature=1.0, top_p=1.0, typical_p=1.0, repetition_penalty=1.0),
        stopping_parameters=pb.StoppingCriteriaParameters(max_new_tokens=1),
        blocks=[HEALTH_BLOCK],
        slots=[HEALTH_BLOCK * block_size],
    )
    return pb.Batch(id=HEALTH_ID, requests=[req], size=1, max_tokens=2, max_blocks=1)


def _check_limits(limits: RouterLimits, total: int) -> None:
    """TGI's start-up checks on the token limits, plus ecosched's own."""
    if limits.max_input_tokens >= limits.max_total_tokens:
        raise RouterStartError(
            f"max_input_tokens ({limits.max_input_tokens}) must be < max_total_tokens ({limits.max_total_tokens})"
        )
    if limits.max_batch_prefill_tokens > total:
        raise RouterStartError(
            f"max_batch_prefill_tokens ({limits.max_batch_prefill_tokens}) must be <= the KV pool ({total} tokens)"
        )
    if limits.max_total_tokens > total:
        raise RouterStartError(f"max_total_tokens ({limits.max_total_tokens}) must be <= the KV pool ({total} tokens)")
    if not limits.chunking and limits.max_batch_prefill_tokens < limits.max_total_tokens:
        # without cache_len support every prefill, recomputes included, runs whole in one forward
        raise RouterStartError(
            f"the shard does not chunk with cache_len (prefix caching off): max_batch_prefill_tokens "
            f"({limits.max_batch_prefill_tokens}) must be >= max_total_tokens ({limits.max_total_tokens})"
        )


def core_config(config_data: dict[str, Any], limits: RouterLimits, max_batch_size: int | None) -> EcoschedConfig:
    """The core's configuration on the shards' KV pool: block 0 is not the core's, the step budget is
    the warmup's prefill budget, no swap, and no pipelining (a shard's slots are fixed when a request
    is sent, so a host's reserved tail cannot be lent while the host may still write it)."""
    from ecosched_adapters.settings import engine_config

    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config_data.items()}
    policies = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.get("policies", {}).items()}
    policies["ecoserve"] = {**policies.get("ecoserve", {}), "pipelining": False}
    data["policies"] = policies
    # without cache_len a recompute cannot continue part-way: it runs whole in one forward
    data["scheduler"] = {**data.get("scheduler", {}), "chunk_recomputes": limits.pausing}
    return engine_config(
        data,
        block_size=limits.block_size,
        num_blocks=limits.num_blocks - 1,
        max_model_len=limits.max_total_tokens,
        max_num_seqs=max_batch_size or 256,
        max_num_batched_tokens=limits.max_batch_prefill_tokens,
        chunked_prefill=limits.chunking,
        preempt_partial_prefills=limits.pausing,
    )
