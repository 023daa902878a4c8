"""Behaviour that must hold against a real SGLang server with the ecosched plugin in charge.

Every test runs against one server per mode (module scope): overlap scheduling and the radix cache
both on (SGLang's defaults), and both off. The KV pool is small on purpose (1,024 tokens, 16
requests at most), so concurrent requests contend for it. The plugin uses the oracle predictor, so
tests can make predictions wrong on purpose (`ecosched_true_output_tokens` in `custom_params`), and
checks SGLang's KV against the core's ledger after every step (`--check-ledger`). After each test
the engine must return to idle with no KV held and the plugin's counters clean (`engine_settles`).
`test_sglang_retraction.py` covers SGLang's own retractions and the stock server.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from integration.client import CompletionResult, complete, complete_unstreamed, new_session, stream_then_disconnect
from integration.server import ServerFactory, ServerHandle

CONTEXT_LEN = 512
KV_TOKENS = 1024
ENGINE_ARGS = [
    "--context-length",
    str(CONTEXT_LEN),
    "--max-total-tokens",
    str(KV_TOKENS),
    "--max-running-requests",
    "16",
    "--chunked-prefill-size",
    "256",
]
ECOSCHED_MODE = ["--policy", "ecoserve", "--predictor", "oracle", "--check-ledger"]
MODES = {
    "overlap-radix": [],
    "no-overlap-no-radix": ["--disable-overlap-schedule", "--disable-radix-cache"],
}
IDLE_TIMEOUT_S = 60.0


@pytest.fixture(scope="module", params=list(MODES), ids=list(MODES))
def server(
    request: pytest.FixtureRequest, sglang_server_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerHandle]:
    stats = tmp_path_factory.mktemp("stats") / "sched.bin"
    mode = [*ECOSCHED_MODE, "--stats", str(stats)]
    with sglang_server_factory(mode, [*ENGINE_ARGS, *MODES[request.param]]) as handle:
        handle.stats_path = stats
        yield handle


@pytest.fixture(autouse=True)
def engine_settles(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test: SGLang goes idle, holds no KV for any request, and the plugin agrees. A
    one-token probe request makes the plugin record a step and write its counters once idle."""
    if "server" not in request.fixturenames:
        yield
        return
    server = request.getfixturevalue("server")
    yield
    before = _counters(server).get("steps", 0)
    probe = asyncio.run(complete(server.url, [11] * 4, 1))
    assert probe[:3] == (1, "length", 200), f"the probe request failed: {probe}"
    check_clean(wait_until_idle(server, after_steps=before), server)


def _counters(server: ServerHandle) -> dict[str, Any]:
    assert server.stats_path is not None
    path = Path(str(server.stats_path) + ".json")
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def wait_until_idle(server: ServerHandle, after_steps: int = 0, timeout_s: float = IDLE_TIMEOUT_S) -> dict[str, Any]:
    """The plugin's counters once it wrote them idle (nothing waiting or running) after `after_steps`."""
    deadline = time.monotonic() + timeout_s
    counters: dict[str, Any] = {}
    while time.monotonic() < deadline:
        counters = _counters(server)
        idle = counters.get("sglang_waiting") == 0 and counters.get("sglang_running") == 0
        if idle and counters.get("core_unfinished") == 0 and counters.get("steps", 0) > after_steps:
            return counters
        time.sleep(0.2)
    raise AssertionError(f"the server did not go idle within {timeout_s:.0f} s: {counters}")


def check_clean(counters: dict[str, Any], server: ServerHandle) -> None:
    """No KV held, the ledger empty, and no disagreement between SGLang and the core so far."""
    where = f"(see {server.log_path})"
    assert counters["ledger_checks"] > 0, counters
    assert counters["ledger_mismatch_steps"] == 0, f"SGLang's KV and the ledger disagreed {where}: {counters}"
    assert counters["unplanned"] == 0, f"SGLang ran work the core did not decide {where}: {counters}"
    assert counters["kv_available_tokens"] + counters["kv_evictable_tokens"] == counters["kv_total_tokens"], counters
    assert counters["kv_protected_tokens"] == 0, counters
    assert counters["ledger_used_blocks"] == 0 and counters["ledger_free_blocks"] == counters["ledger_blocks"], counters


def _prompt(rng: random.Random, num_tokens: int) -> list[int]:
    return [rng.randint(10, 1000) for _ in range(num_tokens)]


def _oracle(tokens: int) -> dict[str, Any]:
    return {"custom_params": {"ecosched_true_output_tokens": max(1, tokens)}}


def _assert_normal_request_succeeds(server: ServerHandle) -> None:
    result = asyncio.run(complete(server.url, [11] * 16, 8))
    assert result[:3] == (8, "length", 200), f"a normal request failed afterwards: {result[:3]} {result.body}"


def test_concurrent_requests_under_kv_pressure_complete_exactly(server: ServerHandle) -> None:
    rng = random.Random(20261123)
    shapes = [(rng.randint(4, 300), rng.randint(1, 200)) for _ in range(22)] + [(300, 200), (4, 1)]
    assert sum(p + m for p, m in shapes) > 3 * KV_TOKENS, "the workload must not fit the KV cache at once"
    prompts = [_prompt(rng, p) for p, _ in shapes]

    async def run() -> list[CompletionResult]:
        async with new_session() as session:
            return list(
                await asyncio.gather(
                    *(
                        complete(server.url, prompt, m, session=session, **_oracle(m))
                        for prompt, (_, m) in zip(prompts, shapes, strict=True)
                    )
                )
            )

    for (p, m), result in zip(shapes, asyncio.run(run()), strict=True):
        assert result[:3] == (m, "length", 200), f"prompt {p}, max_tokens {m}: {result}"


@pytest.mark.parametrize("factor", [0.1, 10.0], ids=["10x-under", "10x-over"])
def test_wrong_predictions_complete(server: ServerHandle, factor: float) -> None:
    """Every request told a length 10x too short (top-ups, preemptions) or 10x too long (reservations
    wasted, capped at the limit) still completes with exactly its tokens."""
    rng = random.Random(int(factor * 10))
    shapes = [(rng.randint(4, 200), rng.randint(8, 150)) for _ in range(16)]

    async def run() -> list[CompletionResult]:
        async with new_session() as session:
            return list(
                await asyncio.gather(
                    *(
                        complete(server.url, _prompt(rng, p), m, session=session, **_oracle(int(m * factor)))
                        for p, m in shapes
                    )
                )
            )

    for (p, m), result in zip(shapes, asyncio.run(run()), strict=True):
        assert result[:3] == (m, "length", 200), f"prompt {p}, max_tokens {m}: {result}"
    if factor < 1:
        counters = wait_until_idle(server)
        assert counters["core_topups"] + counters["core_recomputes"] > 0, f"no top-up nor preemption: {counters}"


def test_stop_before_predicted_length(server: ServerHandle, tiny_model: Path) -> None:
    """An over-prediction ended by the engine: the oracle says 300, stop ids end it after min_tokens."""
    vocab_size = json.loads((tiny_model / "config.json").read_text())["vocab_size"]
    allowed = range(1000, 1010)
    stop_ids = [token for token in range(vocab_size) if token not in allowed]
    extra = {"ignore_eos": False, "min_tokens": 5, "stop_token_ids": stop_ids, **_oracle(300)}
    for send in (complete, complete_unstreamed):
        result = asyncio.run(send(server.url, _prompt(random.Random(3), 20), 300, **extra))
        assert result.http_status == 200, f"{send.__name__}: {result.body}"
        assert result.finish_reason == "stop", f"{send.__name__}: {result[:3]}"
        assert result.num_output_tokens is not None and 5 <= result.num_output_tokens <= 6, result[:3]


def test_shared_prefixes_complete_exactly(server: ServerHandle) -> None:
    """Requests sharing a long prompt prefix (radix cache hits when it is on) complete exactly."""
    rng = random.Random(11)
    prefix = _prompt(rng, 200)
    shapes = [(rng.randint(1, 60), rng.randint(4, 100)) for _ in range(12)]

    async def run() -> list[CompletionResult]:
        async with new_session() as session:
            first = await complete(server.url, prefix + _prompt(rng, 5), 4, session=session)
            rest = await asyncio.gather(
                *(
                    complete(server.url, prefix + _prompt(rng, tail), m, session=session, **_oracle(m))
                    for tail, m in shapes
                )
            )
            return [first, *rest]

    results = asyncio.run(run())
    assert results[0][:3] == (4, "length", 200), results[0]
    for (tail, m), result in zip(shapes, results[1:], strict=True):
        assert result[:3] == (m, "length", 200), f"tail {tail}, max_tokens {m}: {result}"


# (case, prompt tokens, max_tokens, extra body fields, words the error message must contain)
REJECTED: list[tuple[str, int, int, dict[str, Any], tuple[str, ...]]] = [
    ("prompt-longer-than-context", 600, 4, {}, ("longer than", "context length")),
    ("prompt-plus-output-over-context", 500, 40, {}, ("context length",)),
    ("max-tokens-zero", 10, 0, {}, ("max_tokens",)),
    ("unknown-slo-class", 10, 4, {"custom_params": {"ecosched_slo_class": "nope"}}, ("SLO class", "nope")),
    ("bad-declared-limit", 10, 4, {"custom_params": {"ecosched_max_tokens": -3}}, ("ecosched_max_tokens",)),
]


@pytest.mark.parametrize("stream", [False, True], ids=["unstreamed", "streamed"])
@pytest.mark.parametrize(
    ("case", "prompt_len", "max_tokens", "extra", "words"), REJECTED, ids=[case[0] for case in REJECTED]
)
def test_bad_request_is_rejected_and_server_keeps_serving(
    server: ServerHandle,
    stream: bool,
    case: str,
    prompt_len: int,
    max_tokens: int,
    extra: dict[str, Any],
    words: tuple[str, ...],
) -> None:
    send = complete if stream else complete_unstreamed
    bad = asyncio.run(send(server.url, [11] * prompt_len, max_tokens, **extra))
    if bad.http_status == 200:
        # SGLang reports an error found after the stream started (in its scheduler) as an error event
        assert stream and bad.num_output_tokens == 0, f"{case}: expected an error, got {bad[:3]}"
        errors = [event["error"] for event in bad.body if isinstance(event, dict) and "error" in event]
        assert errors and errors[0]["code"] == 400, f"{case}: expected an error event with code 400: {bad.body}"
    else:
        assert bad.http_status == 400, f"{case}: expected HTTP 400, got {bad[:3]} {bad.body}"
    message = json.dumps(bad.body)
    assert all(word in message for word in words), f"{case}: {message[:500]} lacks {words}"
    _assert_normal_request_succeeds(server)


def test_disconnected_clients_release_everything(server: ServerHandle) -> None:
    """16 streams of 440 tokens (more than the KV pool holds at once) dropped after 3 chunks: whether
    SGLang aborts them or runs them to the end, every KV token comes back and the core forgets them
    (checked by `engine_settles`)."""
    rng = random.Random(7)

    async def abandon_all() -> list[int]:
        return list(
            await asyncio.gather(
                *(stream_then_disconnect(server.url, _prompt(rng, 64), 440, 3, **_oracle(440)) for _ in range(16))
            )
        )

    assert asyncio.run(abandon_all()) == [3] * 16
    _assert_normal_request_succeeds(server)


def test_aborted_requests_release_everything(server: ServerHandle) -> None:
    """SGLang's /abort_request while requests wait and run: they end, the rest complete exactly."""
    rng = random.Random(5)
    shapes = [(rng.randint(50, 200), 300) for _ in range(6)]

    async def run() -> list[CompletionResult]:
        async with new_session() as session:
            tasks = [
                asyncio.create_task(
                    complete(server.url, _prompt(rng, p), m, session=session, rid=f"abort-{i}", **_oracle(m))
                )
                for i, (p, m) in enumerate(shapes)
            ]
            await asyncio.sleep(1.0)
            for i in range(0, len(shapes), 2):
                async with session.post(server.url + "/abort_request", json={"rid": f"abort-{i}"}) as response:
                    assert response.status == 200, await response.text()
            return list(await asyncio.gather(*tasks))

    results = asyncio.run(run())
    for i, result in enumerate(results):
        if i % 2:
            assert result[:3] == (300, "length", 200), f"request {i}: {result[:3]}"
        else:
            assert result.finish_reason == "abort" or result.http_status != 200 or result.num_output_tokens != 300, (
                f"request {i} was not aborted: {result[:3]}"
            )
