"""Running ecosched's TGI router against the stand-in shard, in one process, for the integration tests.

`routed(...)` starts a stand-in shard group on fresh unix sockets and the router (HTTP on an
ephemeral 127.0.0.1 port) in front of it, and tears both down. Prompts carry the stand-in's output
marker, `[[len:P,eos:K]]`: the request ends with EOS as its K-th token (if max_new_tokens allows),
which the router cannot see, exactly as with a real model.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from ecosched_adapters.tgi.app import RouterOptions, RunningRouter, start
from ecosched_adapters.tgi.standin.config import StandinConfig
from ecosched_adapters.tgi.standin.shard import StandinShard

FILLER = "abcdefghijklmnopqrstuvwxyz"


def marked_prompt(num_tokens: int, eos_after: int, rng: random.Random) -> str:
    """A prompt of exactly `num_tokens` built-in tokens (one per byte) whose output ends with EOS as
    token `eos_after`."""
    marker = f"[[len:{num_tokens},eos:{eos_after}]]"
    if len(marker) > num_tokens:
        raise ValueError(f"a {num_tokens}-token prompt cannot hold the marker {marker!r}")
    return marker + "".join(rng.choice(FILLER) for _ in range(num_tokens - len(marker)))


@dataclass
class Routed:
    shard: StandinShard
    running: RunningRouter
    session: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.running.port}"

    @property
    def router(self) -> Any:
        return self.running.router

    async def generate(self, prompt: str, max_new_tokens: int, **params: Any) -> tuple[int, dict[str, Any]]:
        body = {"inputs": prompt, "parameters": {"max_new_tokens": max_new_tokens, "details": True, **params}}
        async with self.session.post(self.url + "/generate", json=body) as resp:
            return resp.status, await resp.json()

    async def stream(self, prompt: str, max_new_tokens: int, **params: Any) -> list[dict[str, Any]]:
        """Every SSE event of /generate_stream, parsed."""
        body = {"inputs": prompt, "parameters": {"max_new_tokens": max_new_tokens, "details": True, **params}}
        events = []
        async with self.session.post(self.url + "/generate_stream", json=body) as resp:
            async for raw in resp.content:
                line = raw.decode().strip()
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
        return events

    def assert_clean(self) -> None:
        """No violation, nothing left in the shard, the ledger or the block table; every block freed once."""
        assert not self.shard.violations, self.shard.violations[:5]
        router = self.router
        table = router.table
        assert table.holders() == [], table.holders()
        assert table.num_allocated == table.num_freed
        assert table.num_free == table.num_usable_blocks
        ledger = router.core.ledger
        assert ledger.request_ids() == [] and ledger.num_free_blocks == ledger.num_blocks
        assert router.core.num_unfinished == 0
        assert self.shard.live_request_ids() == set(), self.shard.live_request_ids()


@contextlib.asynccontextmanager
async def routed(
    *,
    num_blocks: int,
    block_size: int,
    ranks: int = 1,
    prefix_caching: bool = True,
    chunking: bool = True,
    policy: str = "ecoserve",
    latency_profile: str | None = None,
    time_scale: float = 1.0,
    max_input_tokens: int = 400,
    max_total_tokens: int = 700,
    max_batch_prefill_tokens: int = 1024,
    overrides: tuple[str, ...] = (),
    record_forwards: bool = False,
    **router_options: Any,
) -> AsyncIterator[Routed]:
    tmp = tempfile.mkdtemp(prefix="es")  # short: unix socket paths are limited to ~107 bytes
    base = f"{tmp}/shard"
    config = StandinConfig(
        num_blocks=num_blocks,
        block_size=block_size,
        ranks=ranks,
        prefix_caching=prefix_caching,
        chunking=chunking,
        latency_profile=latency_profile,
        time_scale=time_scale,
    )
    try:
        async with StandinShard(config, base) as shard:
            opts = RouterOptions(
                master_shard_uds_path=f"{base}-0",
                port=0,
                prometheus_port=None,
                max_input_tokens=max_input_tokens,
                max_total_tokens=max_total_tokens,
                max_batch_prefill_tokens=max_batch_prefill_tokens,
                policy=policy,
                check_ledger=True,
                config_overrides=overrides,
                **router_options,
            )
            running = await start(opts, record_forwards=record_forwards)
            try:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
                    yield Routed(shard, running, session)
            finally:
                await running.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
