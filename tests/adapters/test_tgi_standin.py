"""The stand-in TGI shard driven by the sharded gRPC client: protocol behaviour and every check.

Each test starts the stand-in in-process on unix sockets under a short /tmp directory and talks to it
with `ShardedClient` (or raw stubs where a router must misbehave on purpose). The built-in tokenizer
has one token per byte, so a prompt's length is its length in bytes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
from ecosched_adapters.tgi.client import ShardedClient, ShardError, ShardUnavailable, StepResult
from ecosched_adapters.tgi.proto import generate_v3_pb2 as pb
from ecosched_adapters.tgi.proto import generate_v3_pb2_grpc as pb_grpc
from ecosched_adapters.tgi.standin import StandinConfig, StandinShard
from ecosched_adapters.tgi.tokenizer import builtin_tokenizer, decode

T = TypeVar("T")
LENGTH, EOS, STOP = pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_EOS_TOKEN, pb.FINISH_REASON_STOP_SEQUENCE
BS = 16
PLAIN = set("abcdefghijklmnopqrstuvwxyz ")


def run(coro: Awaitable[T], timeout_s: float = 20.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout_s)

    return asyncio.run(bounded())


@pytest.fixture
def base() -> Iterator[str]:
    """A short socket base path (unix socket paths are limited to about 107 bytes)."""
    d = tempfile.mkdtemp(prefix="es", dir="/tmp")
    yield os.path.join(d, "s")
    shutil.rmtree(d, ignore_errors=True)


@asynccontextmanager
async def standin(base: str, **cfg: Any) -> AsyncIterator[tuple[StandinShard, ShardedClient]]:
    config = StandinConfig(**{"num_blocks": 64, "block_size": BS, **cfg})
    async with StandinShard(config, base) as shard:
        client = await ShardedClient.connect_uds(f"{base}-0", timeout_s=5)
        try:
            yield shard, client
        finally:
            await client.close()


async def warm(client: ShardedClient, max_prefill: int = 256, max_input: int = 200, max_total: int = 400) -> None:
    await client.warmup(max_input, max_prefill, max_total, None)


class Blocks:
    """A bump allocator: fresh blocks from 1 up (tests pick overlaps by hand)."""

    def __init__(self, bs: int = BS) -> None:
        self.bs, self.next = bs, 1

    def take(self, num_tokens: int) -> list[int]:
        n = -(-num_tokens // self.bs)
        out = list(range(self.next, self.next + n))
        self.next += n
        return out


def slots_of(blocks: list[int], n: int, bs: int = BS) -> list[int]:
    return [b * bs + o for b in blocks for o in range(bs)][:n]


def request(
    rid: int,
    text: str,
    max_new: int,
    blocks: list[int] | Blocks,
    *,
    cache_len: int = 0,
    chunk_len: int | None = None,
    stop: tuple[str, ...] = (),
    ignore_eos: bool = False,
    slots: list[int] | None = None,
    bs: int = BS,
) -> pb.Request:
    needed = len(text.encode()) + max_new - 1
    table = blocks.take(needed) if isinstance(blocks, Blocks) else blocks
    r = pb.Request(
        id=rid,
        inputs=text,
        input_chunks=pb.Input(chunks=[pb.InputChunk(text=text)]),
        truncate=1000,
        stopping_parameters=pb.StoppingCriteriaParameters(
            max_new_tokens=max_new, stop_sequences=list(stop), ignore_eos_token=ignore_eos
        ),
        blocks=table,
        slots=slots if slots is not None else slots_of(table, needed, bs),
        cache_len=cache_len,
    )
    if chunk_len is not None:
        r.chunk_len = chunk_len
    return r


def batch(bid: int, *reqs: pb.Request) -> pb.Batch:
    return pb.Batch(id=bid, requests=list(reqs), size=len(reqs))


def finished(step: StepResult) -> dict[int, pb.GeneratedText]:
    return {g.request_id: g.generated_text for g in step.generations if g.HasField("generated_text")}


async def run_to_end(client: ShardedClient, step: StepResult, out: dict[int, list[int]]) -> dict[int, pb.GeneratedText]:
    """Decode like TGI's router: record tokens, filter finished requests, stop when the batch is gone."""
    ended: dict[int, pb.GeneratedText] = {}
    while True:
        for g in step.generations:
            out.setdefault(g.request_id, []).extend(g.tokens.ids)
        ended |= finished(step)
        cached = step.batch
        if cached is None:
            return ended
        keep = [i for i in cached.request_ids if i not in ended]
        if len(keep) < len(cached.request_ids):
            cached = await client.filter_batch(cached.id, keep)
        step = await client.decode([cached])


# -- Info, Warmup, ServiceDiscovery ------------------------------------------------------------------
@pytest.mark.parametrize("ranks", [1, 2])
def test_info_and_warmup_round_trip(base: str, ranks: int) -> None:
    async def scenario() -> None:
        async with standin(base, ranks=ranks, block_size=256, chunking=True, prefix_caching=True) as (shard, client):
            assert client.world_size == ranks and client.urls == shard.urls
            info = await client.info()
            assert (info.block_size, info.attention_impl, info.support_chunking, info.use_prefix_caching) == (
                256,
                "flashdecoding",
                True,
                True,
            )
            assert not info.requires_padding and info.speculate == 0
            assert await client.warmup(1000, 4096, 2000, None) == (64 * 256, 1000, 2000)
            # unset limits: with chunking the shard picks the pool size and one less
            assert await client.warmup(None, 4096, None, 2) == (64 * 256, 64 * 256 - 1, 64 * 256)
            await client.clear_cache(None)
            await client.health()
            assert shard.stats.rpc_counts == {
                "ServiceDiscovery": 1,
                "Info": 1,
                "Warmup": 2,
                "ClearCache": 1,
                "Health": 1,
            }
            assert shard.stats.cached_batches == 0 and not shard.violations

    run(scenario())


def test_connect_to_missing_socket_fails_clearly(base: str) -> None:
    async def scenario() -> None:
        with pytest.raises(ShardUnavailable, match="socket file does not exist"):
            await ShardedClient.connect_uds(f"{base}-0", timeout_s=0.3)

    run(scenario())


# -- generation ------------------------------------------------------------------------------------
def test_prefill_decode_to_eos_with_markers_on_two_ranks(base: str) -> None:
    async def scenario() -> None:
        async with standin(base, ranks=2) as (shard, client):
            await warm(client)
            alloc = Blocks()
            a = request(1, "first [[eos:3]]", 10, alloc)  # rank 1 answers for id 1
            b = request(2, "second prompt [[eos:5]]", 10, alloc)  # rank 0 answers for id 2
            c = request(4, "no marker", 4, alloc)
            step = await client.prefill(batch(7, a, b, c), None)
            # rank 0 answers for even ids, rank 1 for odd ones; the client concatenates in rank order
            assert [g.request_id for g in step.generations] == [2, 4, 1]
            assert step.batch is not None and step.batch.id == 7
            assert list(step.batch.request_ids) == [1, 2, 4] and step.batch.size == 3
            assert step.batch.current_tokens == 3
            assert step.batch.max_tokens == sum(len(r.blocks) for r in (a, b, c)) * BS
            assert shard.live_request_ids() == {1, 2, 4}
            tokens: dict[int, list[int]] = {}
            ended = await run_to_end(client, step, tokens)
            assert {i: (t.finish_reason, t.generated_tokens) for i, t in ended.items()} == {
                1: (EOS, 3),
                2: (EOS, 5),
                4: (LENGTH, 4),
            }
            tok = builtin_tokenizer()
            for rid, text in ended.items():
                assert (tokens[rid][-1] == 2) == (text.finish_reason == EOS)  # `</s>` is id 2
                assert text.text == decode(tok, tokens[rid]) and set(text.text) <= PLAIN
            assert len(ended[1].text) == 2 and len(ended[4].text) == 4
            assert shard.live_request_ids() == set() and not shard.violations

    run(scenario())


def test_outputs_are_deterministic_and_honour_stop_sequences_and_ignore_eos(base: str) -> None:
    async def scenario() -> None:
        async with standin(base) as (shard, client):
            await warm(client)
            alloc = Blocks()
            first = finished(await client.prefill(batch(1, request(1, "same prompt", 1, alloc)), None))
            tokens: dict[int, list[int]] = {}
            ended = await run_to_end(
                client, await client.prefill(batch(2, request(2, "same prompt", 8, alloc)), None), tokens
            )
            text = ended[2].text
            assert (ended[2].finish_reason, text[:1]) == (LENGTH, first[1].text)  # same prompt, same text
            stop = text[3:5]
            step = await client.prefill(batch(3, request(3, "same prompt", 8, alloc, stop=(stop,))), None)
            ended = await run_to_end(client, step, {})
            assert ended[3].finish_reason == STOP and ended[3].text.endswith(stop) and len(ended[3].text) <= 5
            step = await client.prefill(batch(4, request(4, "x [[eos:2]]", 4, alloc, ignore_eos=True)), None)
            ended = await run_to_end(client, step, {})
            assert (ended[4].finish_reason, ended[4].generated_tokens) == (LENGTH, 4)
            # LENGTH is checked before EOS, as TGI's StoppingCriteria does
            step = await client.prefill(batch(5, request(5, "y [[eos:3]]", 3, alloc)), None)
            ended = await run_to_end(client, step, {})
            assert (ended[5].finish_reason, ended[5].generated_tokens) == (LENGTH, 3)
            assert not shard.violations

    run(scenario())


def test_resume_from_text_continues_the_same_output_through_a_genuine_prefix_hit(base: str) -> None:
    """The router's resume: prompt + generated text with cache_len = tokens already in KV."""
    prompt = "resume me [[len:26,eos:7]]"
    assert len(prompt) == 26

    async def scenario() -> None:
        async with standin(base, prefix_caching=True) as (shard, client):
            await warm(client)
            alloc = Blocks()
            whole = await run_to_end(client, await client.prefill(batch(1, request(1, prompt, 20, alloc)), None), {})
            assert (whole[1].finish_reason, whole[1].generated_tokens) == (EOS, 7)
            first = request(2, prompt, 3, alloc)  # 26 + 3 - 1 = 28 slots: blocks of 16
            part = await run_to_end(client, await client.prefill(batch(2, first), None), {})
            assert (part[2].finish_reason, part[2].text) == (LENGTH, whole[1].text[:3])
            # positions 0..27 are in KV (the last sampled token, position 28, never is)
            resumed_text = prompt + part[2].text
            table = [*first.blocks, *alloc.take(16)]
            assert table[1] * BS + 12 not in shard.shadow
            resumed = request(3, resumed_text, 10, table, cache_len=28)
            rest = await run_to_end(client, await client.prefill(batch(3, resumed), None), {})
            assert (rest[3].finish_reason, rest[3].generated_tokens) == (EOS, 4)
            assert part[2].text + rest[3].text == whole[1].text
            assert shard.shadow[first.slots[27]].position == 27
            # a prompt that differs inside the cached prefix is a false hit
            wrong = request(4, resumed_text[:27] + "!" + resumed_text[28:], 10, table, cache_len=28)
            with pytest.raises(ShardError, match="stale prefix"):
                await client.prefill(batch(4, wrong), None)
            assert len(shard.violations) == 1

    run(scenario())


def test_liveness_prefill_uses_block_zero(base: str) -> None:
    async def scenario() -> None:
        async with standin(base, ranks=2) as (shard, client):
            await warm(client)
            await client.model_health()
            assert shard.stats.cached_batches == 0 and not shard.violations and 0 not in shard.shadow

    run(scenario())


# -- chunked prefill -------------------------------------------------------------------------------
def test_chunked_prefill_continuations_follow_tgi_sizing(base: str) -> None:
    async def scenario() -> None:
        async with standin(base, chunking=True) as (shard, client):
            await client.warmup(200, 32, 400, None)  # max_prefill_tokens 32 sizes the continuations
            alloc = Blocks()
            a = request(1, "a" * 100, 5, alloc, chunk_len=32)
            step = await client.prefill(batch(1, a), None)
            assert not step.generations and step.batch is not None and step.batch.current_tokens == 32
            step = await client.decode([step.batch])
            assert not step.generations and step.batch is not None and step.batch.current_tokens == 32
            step = await client.decode([step.batch])
            assert step.batch is not None and step.batch.current_tokens == 4  # 100 - 96 left
            # merged prefill: the router's budget is 32 - 4 = 28; the result keeps the cached batch's id
            b = request(2, "b" * 40, 5, alloc, chunk_len=28)
            step = await client.prefill(batch(2, b), step.batch)
            assert [g.request_id for g in step.generations] == [1]  # A finished prefilling, B did not
            assert step.batch is not None and (step.batch.id, list(step.batch.request_ids)) == (1, [1, 2])
            # budget 32 - (2 - 1) = 31, walked in reverse: B gets its last 12 tokens, A decodes 1
            assert step.batch.current_tokens == 13
            step = await client.decode([step.batch])
            assert [g.request_id for g in step.generations] == [1, 2] and step.batch is not None
            assert step.batch.current_tokens == 2
            await client.clear_cache(1)
            # two fresh prompts over budget: the later one gets the budget first, the earlier one 1 token
            c, d = request(3, "c" * 60, 5, alloc, chunk_len=16), request(4, "d" * 60, 5, alloc, chunk_len=16)
            step = await client.prefill(batch(3, c, d), None)
            assert step.batch is not None and step.batch.current_tokens == 1 + 31
            step = await client.decode([step.batch])  # C: 44 - 1 = 43 left, D: 44 - 31 = 13 left
            assert step.batch is not None and step.batch.current_tokens == 13 + 18
            assert not shard.violations

    run(scenario())


# -- FilterBatch -----------------------------------------------------------------------------------
def test_filter_batch_keeps_the_id_and_the_given_order(base: str) -> None:
    async def scenario() -> None:
        async with standin(base) as (shard, client):
            await warm(client)
            alloc = Blocks()
            reqs = [request(i, f"prompt {i}", 8, alloc) for i in (1, 2, 3)]
            step = await client.prefill(batch(5, *reqs), None)
            same = await client.filter_batch(5, [3, 2, 1])  # the same count: TGI keeps the batch as it is
            assert list(same.request_ids) == [1, 2, 3]
            kept = await client.filter_batch(5, [3, 1])
            assert (kept.id, list(kept.request_ids), kept.size, kept.current_tokens) == (5, [3, 1], 2, 2)
            assert kept.max_tokens == (len(reqs[0].blocks) + len(reqs[2].blocks)) * BS
            assert shard.live_request_ids() == {1, 3}
            # request 2's slots are free again: a new request may take its blocks
            step = await client.prefill(batch(6, request(9, "reuse", 8, list(reqs[1].blocks))), None)
            assert step.batch is not None
            step = await client.decode([kept, step.batch])  # concatenated under the first id
            assert step.batch is not None and (step.batch.id, list(step.batch.request_ids)) == (5, [3, 1, 9])
            assert shard.stats.cached_batches == 1 and not shard.violations

    run(scenario())


# -- violations ------------------------------------------------------------------------------------
async def expect_violation(shard: StandinShard, call: Awaitable[object], phrase: str) -> None:
    before = len(shard.violations)
    with pytest.raises(ShardError, match=re.escape(phrase)) as info:
        await call
    assert not isinstance(info.value, ShardUnavailable)
    assert len(shard.violations) == before + 1 and phrase in shard.violations[-1].message
    assert str(info.value).startswith("protocol violation: ")


def test_violations_in_prefill_requests(base: str) -> None:
    async def scenario() -> None:
        async with standin(base) as (shard, client):
            await expect_violation(shard, client.prefill(batch(1, request(1, "early", 4, [1])), None), "before Warmup")
            await warm(client)
            slots = slots_of([1, 2], 20)
            cases = [
                (request(1, "hello", 4, [1], slots=[s + 1 for s in slots_of([1], 8)]), "follow the block table"),
                (request(1, "hello", 4, [0, 1]), "block 0 is reserved"),
                (request(1, "hello", 4, [64]), "outside [1, 64)"),
                (request(1, "hello", 4, [1, 1], slots=slots[:8]), "repeats blocks"),
                (request(1, "hello", 4, [1], slots=slots_of([1], 7)), "7 slots < prompt 5 + max_new_tokens 4"),
                (request(1, "hello", 4, [1], cache_len=2), "does not use prefix caching"),
                (request(1, "hello", 4, [1], chunk_len=2), "does not support chunking"),
                (request(1, "x" * 300, 4, Blocks()), "prefill over budget: 300 new tokens > 256"),
            ]
            for bad, phrase in cases:
                await expect_violation(shard, client.prefill(batch(1, bad), None), phrase)
            no_text = request(1, "hello", 4, [1])
            no_text.ClearField("input_chunks")
            await expect_violation(shard, client.prefill(batch(1, no_text), None), "without a text chunk")
            wrong_size = batch(1, request(1, "hello", 4, [1]))
            wrong_size.size = 2
            await expect_violation(shard, client.prefill(wrong_size, None), "size 2 but 1 requests")
            assert shard.stats.cached_batches == 0 and shard.live_request_ids() == set()

    run(scenario())


def test_violations_between_live_requests(base: str) -> None:
    async def scenario() -> None:
        async with standin(base) as (shard, client):
            await warm(client)
            a = request(1, "hello", 20, [1, 2])
            b = request(2, "world", 20, [2, 3])  # block 2 in both write-sets
            await expect_violation(shard, client.prefill(batch(1, a, b), None), "overlapping write-sets")
            assert shard.live_request_ids() == set()  # all or nothing
            step = await client.prefill(batch(1, a), None)
            await expect_violation(shard, client.prefill(batch(2, b), None), "overlapping write-sets")
            await expect_violation(shard, client.prefill(batch(1, request(3, "x", 4, [5])), None), "already cached")
            await expect_violation(
                shard, client.prefill(batch(2, request(1, "x", 4, [5])), None), "already in a cached batch"
            )
            await expect_violation(shard, client.decode([]), "at least one batch")
            await expect_violation(shard, client.decode([pb.CachedBatch(id=99)]), "Batch ID 99 not found")
            assert step.batch is not None
            await expect_violation(shard, client.decode([step.batch, step.batch]), "repeat")
            # a request that finished must be filtered out before the next step
            short = request(4, "short", 1, [8])
            step = await client.prefill(batch(3, short, request(5, "long", 9, [9])), None)
            assert finished(step).keys() == {4} and step.batch is not None
            await expect_violation(shard, client.decode([step.batch]), "still holds finished requests [4]")
            await expect_violation(shard, client.filter_batch(3, []), "at least one request")
            await expect_violation(shard, client.filter_batch(3, [5, 6]), "ids [6] not in the batch")
            await expect_violation(shard, client.filter_batch(3, [5, 5]), "repeated ids")
            await expect_violation(shard, client.filter_batch(42, [5]), "Batch ID 42 not found")
            kept = await client.filter_batch(3, [5])
            await client.decode([kept])
            assert len(shard.violations) == 12

    run(scenario())


def test_prefix_violations_against_the_shadow_kv(base: str) -> None:
    async def scenario() -> None:
        async with standin(base, prefix_caching=True) as (shard, client):
            await warm(client)
            a = request(1, "p" * 16 + "tail", 3, [1, 2])
            await run_to_end(client, await client.prefill(batch(1, a), None), {})
            # a genuine hit on block 1 (its 16 tokens), then a false hit: another prompt, same block
            hit = request(2, "p" * 16 + "other", 3, [1, 3], cache_len=16)
            await run_to_end(client, await client.prefill(batch(2, hit), None), {})
            false_hit = request(3, "q" * 16 + "other", 3, [1, 4], cache_len=16)
            await expect_violation(shard, client.prefill(batch(3, false_hit), None), "stale prefix")
            never = request(4, "r" * 40, 3, [5, 6, 7], cache_len=16)
            await expect_violation(shard, client.prefill(batch(4, never), None), "was never written")
            # a live request may not write a block another live request reads as its prefix
            reader = request(5, "p" * 16 + "again", 10, [1, 8], cache_len=16)
            step = await client.prefill(batch(5, reader), None)
            assert step.batch is not None
            writer = request(6, "zz", 10, [1])
            await expect_violation(shard, client.prefill(batch(6, writer), None), "reads (position")
            # a full-prompt hit (cache_len = prompt - 1) recomputes the last prompt token into the
            # shared block: identical KV, allowed
            full = request(7, "p" * 16, 10, [1, 9], cache_len=15)
            assert (await client.prefill(batch(7, full), None)).batch is not None
            assert len(shard.violations) == 3

    run(scenario())


def test_chunked_prefill_budget_and_cached_batch_violations(base: str) -> None:
    async def scenario() -> None:
        async with standin(base, chunking=True) as (shard, client):
            await client.warmup(200, 32, 400, None)
            alloc = Blocks()
            await expect_violation(
                shard,
                client.prefill(batch(1, request(1, "a" * 60, 4, alloc, chunk_len=48)), None),
                "48 new tokens > 32",
            )
            step = await client.prefill(batch(1, request(2, "a" * 60, 4, alloc, chunk_len=20)), None)
            assert step.batch is not None and step.batch.current_tokens == 32
            # the cached batch takes the whole budget: any new token is over it
            await expect_violation(
                shard,
                client.prefill(batch(2, request(3, "b" * 30, 4, alloc, chunk_len=1)), step.batch),
                "1 new tokens > 0",
            )
            await expect_violation(
                shard,
                client.prefill(batch(2, request(3, "b" * 30, 4, alloc, chunk_len=31)), None),
                "(Rust and Python tokenizers are not aligned)",
            )
            ghost = pb.CachedBatch(id=77)
            await expect_violation(shard, client.prefill(batch(2, request(3, "b", 4, alloc)), ghost), "77 not found")

    run(scenario())


def test_ranks_must_receive_identical_calls(base: str) -> None:
    import grpc

    async def scenario() -> None:
        async with standin(base, ranks=2, rank_sync_timeout_s=0.3) as (shard, _client):
            channels = [grpc.aio.insecure_channel(url) for url in shard.urls]
            stubs = [pb_grpc.TextGenerationServiceStub(c) for c in channels]  # type: ignore[no-untyped-call]
            try:
                calls = [
                    stubs[0].ClearCache(pb.ClearCacheRequest(id=1)),
                    stubs[1].ClearCache(pb.ClearCacheRequest(id=2)),
                ]
                results = await asyncio.gather(*calls, return_exceptions=True)
                assert all(isinstance(r, grpc.aio.AioRpcError) for r in results)
                assert all(r.code() == grpc.StatusCode.INTERNAL for r in results)  # type: ignore[union-attr]
                assert "another rank received a different ClearCache" in shard.violations[-1].message
                with pytest.raises(grpc.aio.AioRpcError, match="reached ranks \\[0\\] but not ranks \\[1\\]"):
                    await stubs[0].ClearCache(pb.ClearCacheRequest())
                assert [v.call for v in shard.violations] == [0, 1]
            finally:
                for c in channels:
                    await c.close()

    run(scenario())


# -- fault injection, crashes, exit on violation ---------------------------------------------------------
def test_injected_errors_fail_every_rank_and_lose_the_popped_batches(base: str) -> None:
    async def scenario() -> None:
        async with standin(base, ranks=2) as (shard, client):
            await warm(client)
            step = await client.prefill(batch(1, request(1, "hello", 8, [1])), None)
            assert step.batch is not None
            shard.inject_error("Decode", "CUDA error: an illegal memory access")
            with pytest.raises(ShardError) as info:
                await client.decode([step.batch])
            assert str(info.value) == "CUDA error: an illegal memory access" and info.value.rpc == "Decode"
            assert shard.stats.cached_batches == 0 and shard.live_request_ids() == set()
            await client.clear_cache(1)  # what TGI's router does after a failed step
            shard.inject_error("Prefill", "boom")
            with pytest.raises(ShardError, match="boom"):
                await client.prefill(batch(2, request(2, "hello", 8, [1])), None)
            assert (await client.prefill(batch(2, request(2, "hello", 8, [1])), None)).batch is not None
            shard.inject_error("Health", "sick", count=2)
            for _ in range(2):
                with pytest.raises(ShardError, match="sick"):
                    await client.health()
            await client.health()
            assert not shard.violations and shard.stats.injected_errors == 4

    run(scenario())


def test_kill_makes_every_call_unavailable(base: str) -> None:
    async def scenario() -> None:
        async with standin(base, ranks=2, latency_profile="h100-llama-2-7b", time_scale=200.0) as (shard, client):
            await warm(client)
            in_flight = asyncio.ensure_future(client.prefill(batch(1, request(1, "hello", 8, [1])), None))
            await asyncio.sleep(0.1)  # the forward sleeps about 1.5 s
            await shard.kill()
            assert not any(os.path.exists(p) for p in shard.socket_paths)
            with pytest.raises(ShardUnavailable):
                await in_flight
            with pytest.raises(ShardUnavailable):
                await client.health()

    run(scenario())


def test_exit_on_violation_stops_the_shard(base: str) -> None:
    async def scenario() -> None:
        async with standin(base, exit_on_violation=True) as (shard, client):
            await warm(client)
            with pytest.raises(ShardError, match="not found"):
                await client.decode([pb.CachedBatch(id=3)])
            await asyncio.wait_for(shard.wait_closed(), 5)
            assert shard.exited_on_violation and not os.path.exists(shard.socket_paths[0])

    run(scenario())


# -- timings and records -----------------------------------------------------------------------------
def test_latency_profile_sets_forward_time(base: str) -> None:
    from ecosched.sim.profile import load_profile

    model = load_profile("h100-llama-2-7b").latency_model()

    async def scenario() -> None:
        async with standin(base, latency_profile="h100-llama-2-7b", time_scale=0.5) as (_shard, client):
            await warm(client)
            step = await client.prefill(batch(1, request(1, "x" * 100, 4, Blocks())), None)
            expected_ns = model.iteration_time_s(100, 100) * 0.5 * 1e9
            assert expected_ns * 0.9 <= step.forward_ns <= step.total_ns

    run(scenario())


def test_record_writes_one_json_line_per_rpc(base: str) -> None:
    path = os.path.join(os.path.dirname(base), "rec.jsonl")

    async def scenario() -> None:
        async with standin(base, ranks=2, record_path=path) as (_shard, client):
            await warm(client)
            step = await client.prefill(batch(1, request(1, "hi [[eos:2]]", 8, [1, 2]), request(2, "yo", 8, [3])), None)
            assert step.batch is not None
            await client.decode([step.batch])
            with pytest.raises(ShardError):
                await client.decode([pb.CachedBatch(id=1)])

    run(scenario())
    with open(path, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f]
    assert [x["rpc"] for x in lines] == ["ServiceDiscovery", "Warmup", "Prefill", "Decode", "Decode"]
    prefill = lines[2]
    assert prefill["request"]["batch"]["id"] == "1"
    assert [g["id"] for g in prefill["result"]["generations"]] == ["1", "2"]  # every rank's
    assert lines[3]["result"]["generations"][0]["finish"] == EOS
    assert lines[4]["result"]["error"].startswith("protocol violation: Decode: batch 1 still holds finished")


# -- command line ----------------------------------------------------------------------------------
def test_cli_serves_until_sigterm_and_removes_its_sockets(base: str) -> None:
    import signal
    import subprocess
    import sys
    import time

    cmd = [
        sys.executable,
        "-m",
        "ecosched.cli",
        "standin",
        "tgi-shard",
        "--uds-path",
        base,
        "--num-blocks",
        "32",
        "--block-size",
        "16",
        "--ranks",
        "2",
        "--chunking",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not all(os.path.exists(f"{base}-{r}") for r in range(2)):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.05)

        async def scenario() -> tuple[int, bool]:
            async with await ShardedClient.connect_uds(f"{base}-0", timeout_s=5) as client:
                info = await client.info()
                return client.world_size, info.support_chunking

        assert run(scenario()) == (2, True)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert not any(os.path.exists(f"{base}-{r}") for r in range(2))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_rejects_an_invalid_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    from ecosched_adapters.tgi.standin import main

    assert main(["--uds-path", "/tmp/es-unused", "--num-blocks", "1", "--block-size", "16"]) == 2
    assert "num_blocks" in capsys.readouterr().err


# -- block sizes, modes and configured outputs ---------------------------------------------------------
@pytest.mark.parametrize(
    ("block_size", "chunking", "prefix_caching", "speculate"),
    [(1, True, True, 0), (16, False, True, 0), (256, True, False, 0), (16, False, False, 2)],
)
def test_requests_run_to_completion_in_every_mode(
    base: str, block_size: int, chunking: bool, prefix_caching: bool, speculate: int
) -> None:
    async def scenario() -> None:
        cfg = {"block_size": block_size, "chunking": chunking, "prefix_caching": prefix_caching}
        async with standin(base, num_blocks=4096 // block_size, speculate=speculate, **cfg) as (shard, client):
            await warm(client, max_prefill=64)
            alloc = Blocks(block_size)
            reqs = []
            for i, k in enumerate((2, 5, 9)):
                text = f"request {i} [[eos:{k}]]"
                r = request(i, text, 12, [], bs=block_size)
                needed = len(text) + 12 + speculate - 1
                r.blocks[:] = alloc.take(needed)
                r.slots[:] = slots_of(list(r.blocks), needed, block_size)
                reqs.append(r)
            ended = await run_to_end(client, await client.prefill(batch(1, *reqs), None), {})
            assert {i: t.generated_tokens for i, t in ended.items()} == {0: 2, 1: 5, 2: 9}
            assert shard.stats.blocks_referenced == 0 and not shard.violations

    run(scenario())


@pytest.mark.parametrize(("setting", "expected"), [({"output_len": 3}, (EOS, 3)), ({"eos_at": 12}, (EOS, 5))])
def test_configured_output_lengths(base: str, setting: dict[str, int], expected: tuple[int, int]) -> None:
    async def scenario() -> None:
        async with standin(base, **setting) as (_shard, client):
            await warm(client)
            step = await client.prefill(batch(1, request(1, "8 tokens", 10, Blocks())), None)
            ended = await run_to_end(client, step, {})
            assert (ended[1].finish_reason, ended[1].generated_tokens) == expected

    run(scenario())


def test_warmup_batch_is_built_like_tgi() -> None:
    from ecosched_adapters.tgi.client import liveness_batch, warmup_batch

    b = warmup_batch(100, 250, 300, None)
    assert [r.truncate for r in b.requests] == [100, 100, 50] and b.size == 3
    assert [r.stopping_parameters.max_new_tokens for r in b.requests] == [200, 200, 250]
    assert all(not r.blocks and r.input_chunks.chunks[0].text == "_test " * r.truncate for r in b.requests)
    assert len(warmup_batch(100, 250, 300, 2).requests) == 2
    assert [r.stopping_parameters.max_new_tokens for r in warmup_batch(None, 10, None, None).requests] == [1]
    live = liveness_batch()
    assert (live.id, list(live.requests[0].blocks), list(live.requests[0].slots)) == (2**64 - 1, [0], [0])
