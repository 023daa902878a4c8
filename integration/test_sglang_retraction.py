"""SGLang's own retractions (forced with its SGLANG_TEST_RETRACT knob) take the policy's victims, and
stock SGLang (`--no-ecosched --stats`) is timed the way the plugin is. One server per test."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from integration.client import CompletionResult, complete, new_session
from integration.server import ServerFactory
from integration.test_sglang_server import (
    CONTEXT_LEN,
    ECOSCHED_MODE,
    ENGINE_ARGS,
    IDLE_TIMEOUT_S,
    _oracle,
    _prompt,
    check_clean,
    wait_until_idle,
)


def test_forced_retractions_take_the_policys_victims(
    sglang_server_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    stats = tmp_path_factory.mktemp("retract") / "sched.bin"
    env = {"SGLANG_TEST_RETRACT": "1", "SGLANG_TEST_RETRACT_INTERVAL": "7"}
    mode = [*ECOSCHED_MODE, "--stats", str(stats)]
    engine = ["--context-length", str(CONTEXT_LEN), "--max-total-tokens", "4096", "--max-running-requests", "16"]
    rng = random.Random(99)
    shapes = [(rng.randint(10, 200), rng.randint(20, 150)) for _ in range(16)]
    with sglang_server_factory(mode, engine, env) as handle:
        handle.stats_path = stats

        async def run() -> list[CompletionResult]:
            async with new_session() as session:
                return list(
                    await asyncio.gather(
                        *(complete(handle.url, _prompt(rng, p), m, session=session, **_oracle(m)) for p, m in shapes)
                    )
                )

        for (p, m), result in zip(shapes, asyncio.run(run()), strict=True):
            assert result[:3] == (m, "length", 200), f"prompt {p}, max_tokens {m}: {result}"
        counters = wait_until_idle(handle)
        check_clean(counters, handle)
    assert counters["sglang_retractions"] > 0, f"SGLang retracted nothing: {counters}"
    assert counters["retractions_off_policy"] == 0, f"SGLang retracted others than the policy's victims: {counters}"
    assert counters["retractions_unlike_sglang"] > 0, f"the policy never chose differently from SGLang: {counters}"


def test_stock_sglang_is_timed_for_comparison(
    sglang_server_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`--no-ecosched --stats`: stock SGLang scheduling, its steps recorded like the plugin's."""
    stats = tmp_path_factory.mktemp("stock") / "sched.bin"
    with sglang_server_factory(["--no-ecosched", "--stats", str(stats)], ENGINE_ARGS) as handle:
        results = asyncio.run(_burst(handle.url, [(30, 20), (60, 40), (10, 5)]))
        assert [r[:3] for r in results] == [(20, "length", 200), (40, "length", 200), (5, "length", 200)]
        deadline = time.monotonic() + IDLE_TIMEOUT_S
        counters: dict[str, Any] = {}
        while time.monotonic() < deadline and not counters.get("steps"):
            time.sleep(0.2)
            path = Path(str(stats) + ".json")
            counters = json.loads(path.read_text()) if path.exists() else {}
    assert counters["policy"] == "sglang (stock)" and counters["steps"] > 0, counters
    assert counters["scheduled_tokens"] >= 100 + 65, counters


async def _burst(url: str, shapes: Sequence[tuple[int, int]]) -> list[CompletionResult]:
    async with new_session() as session:
        return list(await asyncio.gather(*(complete(url, [11] * p, m, session=session) for p, m in shapes)))
