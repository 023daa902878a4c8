"""The stand-in shard's state machine: the batch cache and one forward per Prefill or Decode.

It runs once per call for all ranks (ranks differ only in which generations they return), is
synchronous, and raises `ShardViolation` before it changes anything when a call breaks the protocol.

Batch cache, as TGI's `server.py` and `flash_causal_lm.py`:
- Prefill builds a batch from the message. With chunking and `cached_batch` it pops that batch and
  concatenates [cached, new]; the result keeps the *first* batch's id, i.e. the cached one
  (`FlashCausalLMBatch.concatenate`). Without chunking, `cached_batch` is ignored.
- Decode pops every listed batch and concatenates them under the first id.
- A forward's result is cached unless every request stopped in it (then the batch is None).
- Stopped requests stay in the batch until FilterBatch drops them.

Chunked prefill: a forward computes `input_len` tokens of each request (its chunk while
prefilling, 1 after). Requests still prefilling afterwards emit no Generation. After a forward that
prefilled anything, the shard sizes every unfinished prefill's next chunk itself: with
`budget = max_prefill_tokens - (len(batch) - 1)`, walking the batch in reverse, each gets
`max(min(remaining, budget), 1)` and the budget drops by that.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ecosched_adapters.tgi.proto import generate_v3_pb2 as pb
from ecosched_adapters.tgi.standin.checks import (
    ShardViolation,
    block_table_error,
    lengths_error,
    prefill_budget_error,
    request_text,
)
from ecosched_adapters.tgi.standin.config import StandinConfig
from ecosched_adapters.tgi.standin.kv import ShadowKV, SlotRegistry
from ecosched_adapters.tgi.standin.outputs import TokenSource, finish_reason, make_script
from ecosched_adapters.tgi.standin.request import HEALTH_ID, ReqState, context_hashes
from ecosched_adapters.tgi.tokenizer import encode

logger = logging.getLogger(__name__)

TOKEN_LOGPROB = -0.125  # every generated token's reported logprob (exact in float32)


@dataclass(frozen=True, slots=True)
class StepOutput:
    """One forward's result for all ranks, and its size for the latency model."""

    generations: tuple[pb.Generation, ...]
    batch: pb.CachedBatch | None
    num_tokens: int  # tokens computed in the forward
    num_context_tokens: int  # KV tokens the forward attends to


@dataclass(frozen=True, slots=True)
class TimedStep:
    """A forward's result with the timings the shard reports (all ranks share them)."""

    out: StepOutput
    forward_ns: int
    decode_ns: int
    total_ns: int


@dataclass(frozen=True, slots=True)
class WarmupLimits:
    """What Warmup settled: the router's prefill budget and the validation limits."""

    max_prefill_tokens: int
    max_input_tokens: int
    max_total_tokens: int


class ShardEngine:
    """Batch cache, shadow KV and live write-sets of one stand-in shard group."""

    def __init__(self, config: StandinConfig, source: TokenSource) -> None:
        self.config = config
        self.source = source
        self.shadow = ShadowKV()
        self.registry = SlotRegistry()
        self.batches: dict[int, list[ReqState]] = {}
        self.limits: WarmupLimits | None = None

    # -- Info / Warmup -------------------------------------------------------------------------
    def info(self) -> pb.InfoResponse:
        c = self.config
        return pb.InfoResponse(
            requires_padding=False,
            dtype=c.dtype,
            device_type="cpu",
            speculate=c.speculate,
            support_chunking=c.chunking,
            use_prefix_caching=c.prefix_caching,
            attention_impl=c.attention_impl,
            block_size=c.block_size,
        )

    def warmup(self, request: Any) -> pb.WarmupResponse:
        """Record the prefill budget; echo the limits or derive them as a flash shard does."""
        c = self.config
        prompt_lens = [len(self._tokenize(r)) for r in request.batch.requests]
        if request.HasField("max_total_tokens"):
            max_total = request.max_total_tokens
        elif c.chunking:
            max_total = min(c.pool_tokens, c.max_model_len or c.pool_tokens)
        else:
            max_total = sum(prompt_lens)  # TGI: sum(batch.cache_lengths) after the warmup forward
        max_input = request.max_input_tokens if request.HasField("max_input_tokens") else max_total - 1
        self.limits = WarmupLimits(request.max_prefill_tokens, max_input, max_total)
        return pb.WarmupResponse(
            max_supported_total_tokens=c.pool_tokens, max_input_tokens=max_input, max_total_tokens=max_total
        )

    # -- Prefill -------------------------------------------------------------------------------
    def prefill(self, request: Any) -> StepOutput:
        limits = self._require_warmup()
        batch = request.batch
        new = [self._build(r, batch.id) for r in batch.requests]
        cached_id: int | None = None
        if request.HasField("cached_batch"):
            if self.config.chunking:
                cached_id = request.cached_batch.id
                self._check_runnable([cached_id], "Prefill cached_batch")
            else:
                logger.warning(
                    "Prefill of batch %s: cached_batch %s ignored (no chunking)", batch.id, request.cached_batch.id
                )
        self._check_new_batch(batch, new)
        cached = self.batches.get(cached_id, []) if cached_id is not None else []
        new_tokens = sum(r.input_len for r in new)
        error = prefill_budget_error(
            new_tokens,
            sum(r.input_len for r in cached),
            self.config,
            limits.max_prefill_tokens,
            limits.max_input_tokens,
        )
        if error:
            raise ShardViolation(error)
        self._admit(new)
        if cached_id is not None:
            del self.batches[cached_id]
        return self._run(cached_id if cached_id is not None else batch.id, cached + new)

    def _build(self, r: Any, batch_id: int) -> ReqState:
        """A request's state from its message, after the per-request checks."""
        health = r.id == HEALTH_ID and batch_id == HEALTH_ID
        text = request_text(r)
        ids = self._tokenize(r)
        error = block_table_error(r, self.config, health) or lengths_error(r, self.config, len(ids))
        if error:
            raise ShardViolation(error)
        chunk = r.chunk_len if r.HasField("chunk_len") else len(ids) - r.cache_len
        stops = r.stopping_parameters
        return ReqState(
            id=r.id,
            blocks=tuple(r.blocks),
            slots=tuple(r.slots),
            cache_len=r.cache_len,
            prompt_len=len(ids),
            max_new_tokens=stops.max_new_tokens,
            reserved_len=len(ids) + stops.max_new_tokens + self.config.speculate - 1,
            script=make_script(text, ids, self.config.output_len, self.config.eos_at),
            stop_sequences=tuple(stops.stop_sequences),
            ignore_eos=stops.ignore_eos_token,
            seed=r.parameters.seed if r.parameters.do_sample else None,
            top_n_tokens=r.top_n_tokens,
            health=health,
            ids=list(ids),
            ctx=context_hashes(ids),
            computed=r.cache_len,
            input_len=chunk,
        )

    def _tokenize(self, r: Any) -> list[int]:
        truncate = r.truncate or None
        return encode(self.source.tokenizer, request_text(r), r.add_special_tokens, truncate)

    def _check_new_batch(self, batch: Any, new: list[ReqState]) -> None:
        if not new:
            raise ShardViolation(f"Prefill of batch {batch.id} with no requests")
        if batch.size != len(new):
            raise ShardViolation(f"batch {batch.id}: size {batch.size} but {len(new)} requests")
        if batch.id in self.batches:
            raise ShardViolation(f"Prefill batch id {batch.id} is already cached (the cached batch would be lost)")
        cached_ids = {r.id for reqs in self.batches.values() for r in reqs}
        seen: set[int] = set()
        for r in new:
            if r.id in seen or r.id in cached_ids:
                where = "twice in the batch" if r.id in seen else "already in a cached batch"
                raise ShardViolation(f"batch {batch.id}: request id {r.id} {where}")
            seen.add(r.id)

    def _admit(self, new: list[ReqState]) -> None:
        """Shadow-KV prefix checks, then write-set checks; admits all or nothing."""
        for r in new:
            if not r.health and r.cache_len:
                error = self.shadow.stale_prefix(r)
                if error:
                    raise ShardViolation(error)
        admitted: list[ReqState] = []
        for r in new:
            if r.health:
                continue
            error = self.registry.conflict(r)
            if error:
                for a in admitted:
                    self.registry.release(a)
                raise ShardViolation(error)
            self.registry.admit(r)
            admitted.append(r)

    # -- Decode / FilterBatch / ClearCache -----------------------------------------------------
    def decode(self, request: Any) -> StepOutput:
        ids = [b.id for b in request.batches]
        if not ids:
            raise ShardViolation("Decode: Must provide at least one batch")
        self._require_warmup()
        self._check_runnable(ids, "Decode")
        reqs = [r for bid in ids for r in self.batches.pop(bid)]
        return self._run(ids[0], reqs)

    def _check_runnable(self, batch_ids: list[int], what: str) -> None:
        if len(set(batch_ids)) != len(batch_ids):
            raise ShardViolation(f"{what}: batch ids {batch_ids} repeat (each is popped once)")
        for bid in batch_ids:
            reqs = self.batches.get(bid)
            if reqs is None:
                raise ShardViolation(f"{what}: Batch ID {bid} not found in cache. (cached: {sorted(self.batches)})")
            done = [r.id for r in reqs if r.finished is not None]
            if done:
                raise ShardViolation(
                    f"{what}: batch {bid} still holds finished requests {done[:8]}; FilterBatch them out first"
                )

    def filter_batch(self, request: Any) -> pb.CachedBatch:
        reqs = self.batches.get(request.batch_id)
        if reqs is None:
            raise ShardViolation(f"FilterBatch: Batch ID {request.batch_id} not found in cache.")
        keep = list(request.request_ids)
        if not keep:
            raise ShardViolation(f"FilterBatch {request.batch_id}: Batch must have at least one request")
        by_id = {r.id: r for r in reqs}
        unknown = [i for i in keep if i not in by_id]
        if unknown or len(set(keep)) != len(keep):
            why = f"ids {unknown[:8]} not in the batch" if unknown else "repeated ids"
            raise ShardViolation(f"FilterBatch {request.batch_id}: {why} (batch holds {sorted(by_id)[:16]})")
        if len(keep) != len(reqs):  # TGI returns the batch untouched when the count is the same
            kept = set(keep)
            for r in reqs:
                if r.id not in kept:
                    self.registry.release(r)
            self.batches[request.batch_id] = [by_id[i] for i in keep]
        return self._to_pb(request.batch_id, self.batches[request.batch_id])

    def clear_cache(self, batch_id: int | None) -> None:
        for bid in list(self.batches) if batch_id is None else [batch_id]:
            self.drop_batch(bid)

    def drop_batch(self, batch_id: int) -> None:
        """Remove a cached batch (unknown ids are ignored, as TGI's ClearCache does)."""
        for r in self.batches.pop(batch_id, []):
            self.registry.release(r)

    # -- the forward ---------------------------------------------------------------------------
    def _require_warmup(self) -> WarmupLimits:
        if self.limits is None:
            raise ShardViolation("Prefill/Decode before Warmup (the shard does not know max_prefill_tokens)")
        return self.limits

    def _run(self, batch_id: int, reqs: list[ReqState]) -> StepOutput:
        num_tokens = sum(r.input_len for r in reqs)
        context = sum(r.computed + r.input_len for r in reqs)
        was_prefill = any(r.prefilling for r in reqs)
        generations = [g for r in reqs if (g := self._advance(r)) is not None]
        if was_prefill and self.config.chunking:
            self._size_chunks(reqs)
        if all(r.finished is not None for r in reqs):
            for r in reqs:
                self.registry.release(r)
            return StepOutput(tuple(generations), None, num_tokens, context)
        self.batches[batch_id] = reqs
        return StepOutput(tuple(generations), self._to_pb(batch_id, reqs), num_tokens, context)

    def _advance(self, r: ReqState) -> pb.Generation | None:
        """Compute `r.input_len` positions, then sample unless it is still prefilling."""
        for p in range(r.computed, r.computed + r.input_len):
            if not r.health:
                error = self.shadow.write(r, p)
                if error:
                    raise ShardViolation(error)
        r.computed += r.input_len
        if r.prefilling:
            return None
        r.input_len = 1
        return self._sample(r)

    def _size_chunks(self, reqs: list[ReqState]) -> None:
        budget = self._require_warmup().max_prefill_tokens - (len(reqs) - 1)
        for r in reversed(reqs):
            remaining = r.prompt_len - r.computed
            if remaining > 0:
                r.input_len = max(min(remaining, budget), 1)
                budget -= r.input_len

    def _sample(self, r: ReqState) -> pb.Generation:
        src = self.source
        token = src.token_at(r.script, len(r.ids), r.ignore_eos)
        r.append(token)
        generated = r.ids[r.prompt_len :]
        text = src.output_text(generated) if r.stop_sequences else ""
        reason = finish_reason(
            r.num_generated, r.max_new_tokens, token, src.eos_id, r.ignore_eos, text, r.stop_sequences
        )
        tokens = pb.Tokens(
            ids=[token], logprobs=[TOKEN_LOGPROB], texts=[src.text(token)], is_special=[token in src.special_ids]
        )
        gen = pb.Generation(request_id=r.id, tokens=tokens)
        if r.top_n_tokens > 0:
            gen.top_tokens.append(tokens)  # NOTE: the sampled token only, standing for the top n
        if reason is not None:
            r.finished = reason
            self.registry.release(r)
            gen.generated_text.CopyFrom(
                pb.GeneratedText(
                    text=src.output_text(generated),
                    generated_tokens=r.num_generated,
                    finish_reason=pb.FinishReason.Name(int(reason)),
                )
            )
            if r.seed is not None:
                gen.generated_text.seed = r.seed
        return gen

    def _to_pb(self, batch_id: int, reqs: list[ReqState]) -> pb.CachedBatch:
        return pb.CachedBatch(
            id=batch_id,
            request_ids=[r.id for r in reqs],
            size=len(reqs),
            max_tokens=sum(len(r.blocks) for r in reqs) * self.config.block_size,
            current_tokens=sum(r.input_len for r in reqs),
        )

    def live_request_ids(self) -> set[int]:
        """Requests in cached batches that have not finished."""
        return {r.id for reqs in self.batches.values() for r in reqs if r.finished is None}
