"""TGI's behaviour at the edges, through ecosched's router and the stand-in shard: 429 past the
concurrency limit, 422 for bad input, 424 and recovery after a shard error, a client that leaves,
a shard that dies mid-stream."""

from __future__ import annotations

import asyncio
import random

from integration.tgi_harness import marked_prompt, routed

SLOW = {"latency_profile": "h100-llama-2-7b", "time_scale": 4.0}  # about 50-100 ms a step


def _prompt(n: int = 40, eos: int = 30, seed: int = 0) -> str:
    return marked_prompt(n, eos, random.Random(seed))


def test_429_past_max_concurrent_requests() -> None:
    async def scenario() -> None:
        async with routed(num_blocks=512, block_size=16, max_concurrent_requests=2, **SLOW) as r:
            held = [asyncio.create_task(r.generate(_prompt(eos=40, seed=k), 60)) for k in range(2)]
            await asyncio.sleep(0.3)
            status, body = await r.generate(_prompt(seed=9), 10)
            assert status == 429 and body == {"error": "Model is overloaded", "error_type": "overloaded"}
            assert [(await t)[0] for t in held] == [200, 200]
            status, _ = await r.generate(_prompt(seed=9), 10)  # permits are back
            assert status == 200
            r.assert_clean()

    asyncio.run(scenario())


def test_422_for_bad_input() -> None:
    async def scenario() -> None:
        async with routed(num_blocks=512, block_size=16, max_input_tokens=100, max_total_tokens=200) as r:
            status, body = await r.generate("x" * 150, 10)
            assert status == 422 and body["error_type"] == "validation"
            assert "must have less than 100 tokens" in body["error"], body
            status, body = await r.generate("x" * 90, 150)
            assert status == 422 and "must be <= 200" in body["error"], body
            status, body = await r.generate("hello", 0)
            assert status == 422 and "max_new_tokens" in body["error"], body
            async with r.session.post(r.url + "/generate",
                                      json={"inputs": "hi", "parameters": {"max_new_tokens": -3}}) as resp:
                assert resp.status == 422 and "max_new_tokens" in await resp.text()
            status, body = await r.generate("hello", 5, temperature=-1.0)
            assert status == 422 and "temperature" in body["error"], body
            status, body = await r.generate("", 5)
            assert status == 422 and body["error_type"] == "validation"
            status, body = await r.generate(_prompt(), 5, ecosched_slo_class="no-such-class")
            assert status == 422 and "no-such-class" in body["error"], body
            r.assert_clean()

    asyncio.run(scenario())


def test_424_on_a_shard_error_then_recovery() -> None:
    async def scenario() -> None:
        async with routed(num_blocks=512, block_size=16, **SLOW) as r:
            tasks = [asyncio.create_task(r.generate(_prompt(eos=40, seed=k), 60)) for k in range(3)]
            await asyncio.sleep(0.4)  # all three decoding
            clears = r.shard.stats.rpc_counts.get("ClearCache", 0)
            r.shard.inject_error("Decode", "CUDA error: an illegal memory access was encountered")
            results = [await t for t in tasks]
            assert [s for s, _ in results] == [424] * 3
            for _, body in results:
                assert body["error_type"] == "generation"
                assert "illegal memory access" in body["error"], body
            await _until(lambda: r.shard.stats.rpc_counts.get("ClearCache", 0) > clears)
            assert r.router.counters.shard_errors == 1
            status, body = await r.generate(_prompt(eos=5, seed=7), 20)  # the router keeps serving
            assert status == 200 and body["details"]["generated_tokens"] == 5
            async with r.session.get(r.url + "/health") as resp:
                assert resp.status == 200
            await _until(lambda: not r.router.table.holders())
            r.assert_clean()

    asyncio.run(scenario())


def test_client_disconnect_cancels_and_frees() -> None:
    async def scenario() -> None:
        async with routed(num_blocks=512, block_size=16, **SLOW) as r:
            body = {"inputs": _prompt(eos=200), "parameters": {"max_new_tokens": 250}}
            resp = await r.session.post(r.url + "/generate_stream", json=body)
            seen = 0
            async for raw in resp.content:
                seen += raw.startswith(b"data:")
                if seen == 3:
                    break
            resp.close()  # the client goes away mid-stream
            await _until(lambda: r.router.core.num_unfinished == 0 and not r.shard.live_request_ids())
            await _until(lambda: not r.router.table.holders())
            r.assert_clean()
            assert r.router.core.stats.num_aborted == 1

    asyncio.run(scenario())


def test_a_dead_shard_fails_every_stream_and_health() -> None:
    async def scenario() -> None:
        async with routed(num_blocks=512, block_size=16, ranks=2, **SLOW) as r:
            streams = [asyncio.create_task(r.stream(_prompt(eos=80, seed=k), 100)) for k in range(3)]
            plain = asyncio.create_task(r.generate(_prompt(eos=80, seed=5), 100))
            await asyncio.sleep(0.4)
            await r.shard.kill()
            for t in streams:
                events = await t
                assert events and "error" in events[-1], events[-1:]
                assert events[-1]["error_type"] == "generation"
            status, body = await plain
            assert status == 424 and body["error_type"] == "generation"
            async with r.session.get(r.url + "/health") as resp:
                assert resp.status == 503
                assert await resp.json() == {"error": "unhealthy", "error_type": "healthcheck"}
            core = r.router.core
            assert core.num_unfinished == 0 and core.ledger.num_free_blocks == core.ledger.num_blocks
            assert not r.router.table.holders()

    asyncio.run(scenario())


async def _until(cond, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)
