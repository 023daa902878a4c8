"""Differential test: ecosched's `tgi-fifo` policy, driving the stand-in shard through the router,
runs the same sequence of batches as TGI's own router would on a scripted trace.

The expected sequence comes from `tgi_reference`, an independent model of TGI's v3 batching loop and
its shard's chunk sizing. A batch is compared by what it computes: which requests, and how many
tokens each. (Where TGI's shard continues a part-way prompt inside a Decode, ecosched's router sends
the next chunk as a Prefill with cache_len; the forward computes the same tokens.)
"""

from __future__ import annotations

import asyncio
import random

import pytest
from ecosched_adapters.tgi.types import GenerateRequest

from integration.tgi_harness import marked_prompt, routed
from integration.tgi_reference import TGIReference


def _trace(seed: int, n: int) -> list[tuple[str, int, int, int]]:
    rng = random.Random(seed)
    return [(f"q{k}", rng.randint(40, 400), 150, rng.randint(3, 120)) for k in range(n)]


@pytest.mark.parametrize("chunking", [True, False])
@pytest.mark.parametrize("seed", [1, 2])
def test_tgi_fifo_runs_tgis_batches(chunking: bool, seed: int) -> None:
    trace = _trace(seed, 14)
    num_blocks, max_prefill = 1600, 600  # prompts up to 400 + 150 new tokens fit max_total_tokens (560)
    expected = TGIReference(num_blocks, max_prefill, chunking=chunking).run(trace)

    async def scenario() -> list[tuple[str, list[tuple[str, int]]]]:
        async with routed(num_blocks=num_blocks, block_size=1, chunking=chunking, prefix_caching=True,
                          policy="tgi-fifo", max_input_tokens=400, max_total_tokens=560,
                          max_batch_prefill_tokens=max_prefill, record_forwards=True) as r:
            router = r.router
            rng = random.Random(seed)
            names = {}

            async def consume(name: str, prompt: str, max_new: int) -> None:
                ids = tuple(router.tokenizer.encode(prompt, add_special_tokens=False).ids)
                request = GenerateRequest(prompt, ids, max_new, truncate=400)
                async for _ in router.generate(request):
                    pass

            tasks = []
            for name, prompt_len, max_new, output in trace:  # all queued before the first step
                tasks.append(asyncio.create_task(consume(name, marked_prompt(prompt_len, output, rng), max_new)))
                names[f"t{len(tasks)}"] = name
            await asyncio.gather(*tasks)
            r.assert_clean()
            return [(m, [(names[rid], n) for rid, n in ran]) for m, ran in router.forward_log]

    got = asyncio.run(scenario())
    assert len(got) == len(expected)
    for k, ((_, ran), (_, want)) in enumerate(zip(got, expected, strict=True)):
        assert sorted(ran) == sorted(want), f"forward {k}: router {sorted(ran)} != TGI {sorted(want)}"
