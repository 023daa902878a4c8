"""ecosched's TGI router against the stand-in shard: exact tokens, no protocol violation, every block
freed once, across ranks, block sizes, chunking and prefix caching; TGI's failure behaviour."""

from __future__ import annotations

import asyncio
import random

import pytest

from integration.tgi_harness import Routed, marked_prompt, routed

# (chunking, prefix caching): TGI's default (flashinfer) has both; the others are the fallbacks
MODES = [(True, True), (False, True), (True, False), (False, False)]


async def _run_mix(r: Routed, n: int, seed: int, max_new: int = 120) -> None:
    """`n` concurrent requests with random prompts and EOS positions (some past max_new_tokens)."""
    rng = random.Random(seed)
    jobs = []
    for _ in range(n):
        prompt_len = rng.randint(20, 300)
        eos = rng.randint(1, 160)
        jobs.append((marked_prompt(prompt_len, eos, rng), prompt_len, eos))

    async def one(prompt: str, prompt_len: int, eos: int) -> None:
        await asyncio.sleep(rng.random() * 0.05)
        status, body = await r.generate(prompt, max_new)
        assert status == 200, body
        details = body["details"]
        want = min(eos, max_new)
        assert details["generated_tokens"] == want, (prompt_len, eos, details)
        # TGI checks the length before EOS: an EOS that is the max_new_tokens-th token reports length
        assert details["finish_reason"] == ("eos_token" if eos < max_new else "length")
        assert len(body["generated_text"]) == want - int(eos <= max_new)  # a byte a token; EOS is not text

    await asyncio.gather(*(one(*job) for job in jobs))


@pytest.mark.parametrize("ranks", [1, 2])
@pytest.mark.parametrize("block_size", [1, 16, 256])
@pytest.mark.parametrize(("chunking", "prefix"), MODES)
def test_every_request_gets_exactly_its_tokens(ranks: int, block_size: int, chunking: bool, prefix: bool) -> None:
    async def scenario() -> None:
        # a pool of 6144 tokens: about eight requests' worth of reservations, so they contend
        async with routed(num_blocks=6144 // block_size, block_size=block_size, ranks=ranks,
                          chunking=chunking, prefix_caching=prefix,
                          overrides=("predictor.kind=constant", "predictor.constant_tokens=40")) as r:
            await _run_mix(r, 24, seed=block_size * 7 + ranks + 2 * chunking + prefix)
            await _settle(r)
            r.assert_clean()
            if prefix:  # predictions of 40 tokens fall short of most outputs: requests paused and resumed
                assert r.router.counters.resumes > 0

    asyncio.run(scenario())


@pytest.mark.parametrize("block_size", [1, 16])
def test_tgi_fifo_serves_the_same_mix(block_size: int) -> None:
    async def scenario() -> None:
        async with routed(num_blocks=6144 // block_size, block_size=block_size, policy="tgi-fifo") as r:
            await _run_mix(r, 24, seed=11)
            await _settle(r)
            r.assert_clean()
            assert r.router.core.stats.num_topups == 0

    asyncio.run(scenario())


async def _settle(r: Routed, timeout_s: float = 5.0) -> None:
    """Wait until the router has filtered ended requests out of the shard (it does so when idle)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while r.shard.live_request_ids() or r.router.table.holders():
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.01)
