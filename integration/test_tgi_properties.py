"""Property test: random arrivals, prompt and output lengths, client disconnects and predictions
wrong in both directions, on random shard geometries. Whatever happens, every request that runs to
its end gets exactly its tokens, the stand-in raises no violation, and every block is freed once."""

from __future__ import annotations

import asyncio
import random

from ecosched_adapters.tgi.types import End, GenerateRequest, Token
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from integration.tgi_harness import marked_prompt, routed

request_specs = st.lists(
    st.tuples(
        st.floats(0.0, 0.08),  # arrival delay, seconds
        st.integers(20, 260),  # prompt tokens
        st.integers(1, 200),  # EOS as this output token (past max_new_tokens: the limit ends it)
        st.integers(1, 160),  # max_new_tokens
        st.one_of(st.none(), st.integers(0, 30)),  # disconnect after this many tokens, or never
    ),
    min_size=1,
    max_size=18,
)
geometries = st.sampled_from(
    [(bs, ranks, chunking, prefix) for bs in (1, 16, 256) for ranks in (1, 2)
     for chunking, prefix in ((True, True), (False, True), (True, False), (False, False))]
)


@settings(max_examples=24, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=request_specs, geometry=geometries, predicted=st.integers(1, 200),
       policy=st.sampled_from(["ecoserve", "tgi-fifo"]), seed=st.integers(0, 2**16))
def test_random_traffic_keeps_every_invariant(
    specs: list[tuple[float, int, int, int, int | None]],
    geometry: tuple[int, int, bool, bool],
    predicted: int,
    policy: str,
    seed: int,
) -> None:
    block_size, ranks, chunking, prefix = geometry

    async def scenario() -> None:
        async with routed(num_blocks=4096 // block_size, block_size=block_size, ranks=ranks, chunking=chunking,
                          prefix_caching=prefix, policy=policy,
                          overrides=("predictor.kind=constant", f"predictor.constant_tokens={predicted}")) as r:
            router = r.router
            rng = random.Random(seed)

            async def one(delay: float, prompt_len: int, eos: int, max_new: int, leave_after: int | None) -> None:
                await asyncio.sleep(delay)
                prompt = marked_prompt(prompt_len, eos, rng)
                ids = tuple(router.tokenizer.encode(prompt, add_special_tokens=False).ids)
                tokens, end = 0, None
                stream = router.generate(GenerateRequest(prompt, ids, max_new, truncate=400))
                async for event in stream:
                    if isinstance(event, Token):
                        tokens += 1
                        if leave_after is not None and tokens >= leave_after:
                            break  # the client disconnects
                    else:
                        end = event
                await stream.aclose()
                if leave_after is not None and end is None:
                    return
                assert isinstance(end, End), end
                want = min(eos, max_new)
                assert tokens == end.generated_tokens == want, (prompt_len, eos, max_new, tokens, end)
                assert end.finish_reason.value == ("eos_token" if eos < max_new else "length")

            await asyncio.gather(*(one(*spec) for spec in specs))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while (router.table.holders() or r.shard.live_request_ids()) and loop.time() < deadline:
                await asyncio.sleep(0.01)
            r.assert_clean()

    asyncio.run(scenario())
