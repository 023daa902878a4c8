"""Behaviour that must hold against a real vLLM OpenAI server, stock and under the ecosched adapter.

Every test runs once per entry of SERVER_MODES, against one server per mode (module scope). The
server's KV cache is small on purpose (39 usable blocks of 32 tokens, 16 sequences at most), so
concurrent requests contend for it. After each test the engine must return to idle: nothing running
or waiting and no KV cache held (the `engine_settles` fixture), and the adapter's own bookkeeping
must agree with the engine (`check_adapter_stats`, the place for the ecosched-only checks).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from integration.client import (
    CompletionResult,
    complete,
    complete_unstreamed,
    fetch_metric,
    new_session,
    stream_then_disconnect,
    wait_until_idle,
    watch_peak,
)
from integration.server import ServerFactory, ServerHandle

# The ecoserve server uses the oracle predictor so tests can make its predictions wrong on purpose
# (`ecosched_true_output_tokens` in vllm_xargs); requests that carry no length fall back to
# `predictor.fallback_tokens`, a wrong prediction of its own. It records its counters and compares
# vLLM's blocks with the core's ledger after every step.
ECOSCHED_MODE = ["--policy", "ecoserve", "--predictor", "oracle", "--check-ledger"]
SERVER_MODES = [["--no-ecosched"], ECOSCHED_MODE]

MAX_MODEL_LEN = 512
BLOCK_SIZE = 32
NUM_BLOCKS = 40  # block 0 is vLLM's null block: 39 usable, 1,248 tokens, under 3 full-length requests
ENGINE_ARGS = [
    "--enforce-eager", "--block-size", str(BLOCK_SIZE), "--max-model-len", str(MAX_MODEL_LEN),
    "--max-num-seqs", "16", "--max-num-batched-tokens", "256", "--num-gpu-blocks-override", str(NUM_BLOCKS),
    "--no-enable-prefix-caching",
]


def _mode_id(mode: Sequence[str]) -> str:
    return "-".join(arg.lstrip("-") for arg in mode)


@pytest.fixture(scope="module", params=SERVER_MODES, ids=_mode_id)
def server(
    request: pytest.FixtureRequest, vllm_server_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerHandle]:
    mode = list(request.param)
    if mode == ECOSCHED_MODE:
        mode += ["--stats", str(tmp_path_factory.mktemp("stats") / "sched.bin")]
    with vllm_server_factory(mode, ENGINE_ARGS) as handle:
        handle.stats_path = Path(mode[-1]) if "--stats" in mode else None
        yield handle


@pytest.fixture(autouse=True)
def engine_settles(server: ServerHandle) -> Iterator[None]:
    """After each test: the engine goes idle and holds no KV cache, and the adapter agrees."""
    yield
    wait_until_idle(server.url, timeout_s=30.0)
    check_adapter_stats(server)


def check_adapter_stats(server: ServerHandle) -> None:
    """For the ecosched server: vLLM's blocks equalled the core ledger's at every step so far (the
    adapter compares them after each step), and with the engine idle the core holds no request and
    no block, exactly like vLLM. The adapter writes these counters when it goes idle."""
    path = server.stats_path
    if path is None:
        return
    counters = json.loads(Path(str(path) + ".json").read_text())
    assert counters["ledger_checks"] > 0, counters
    assert counters["ledger_mismatches"] == 0, f"ledger and vLLM disagreed: see {server.log_path}"
    assert counters["core_requests"] == 0, counters
    assert counters["core_free_blocks"] == counters["num_blocks"] == counters["vllm_free_blocks"], counters


def _prompt(rng: random.Random, num_tokens: int) -> list[int]:
    return [rng.randint(10, 1000) for _ in range(num_tokens)]


def _blocks(num_tokens: int) -> int:
    return -(-num_tokens // BLOCK_SIZE)


def test_concurrent_requests_under_kv_pressure_complete_exactly(server: ServerHandle) -> None:
    rng = random.Random(20261123)
    shapes = [(rng.randint(4, 300), rng.randint(1, 200)) for _ in range(22)] + [(300, 200), (4, 1)]
    demand_blocks = sum(_blocks(prompt + output) for prompt, output in shapes)
    assert demand_blocks > 3 * (NUM_BLOCKS - 1), "the workload must not fit the KV cache at once"
    prompts = [_prompt(rng, prompt) for prompt, _ in shapes]

    async def run() -> tuple[list[CompletionResult], float]:
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch_peak(server.url, "vllm:kv_cache_usage_perc", stop))
        async with new_session() as session:
            results = await asyncio.gather(*(complete(server.url, prompt, output, session=session)
                                              for prompt, (_, output) in zip(prompts, shapes, strict=True)))
        stop.set()
        return list(results), await watcher

    results, peak_usage = asyncio.run(run())
    for (prompt_len, max_tokens), result in zip(shapes, results, strict=True):
        assert result[:3] == (max_tokens, "length", 200), f"prompt {prompt_len}, max_tokens {max_tokens}: {result}"
    assert peak_usage >= 0.5, f"the KV cache never filled up (peak usage {peak_usage:.2f}): no contention tested"


# (case, prompt tokens, max_tokens, expected status, words the error message must contain)
REJECTED = [
    ("prompt-longer-than-context", 600, 4, 400, ("maximum context length", "600")),
    ("prompt-fills-context", MAX_MODEL_LEN, 4, 400, ("max_tokens",)),
    ("max-tokens-zero", 10, 0, 400, ("max_tokens",)),
    ("max-tokens-negative", 10, -1, 400, ("max_tokens",)),
    ("max-tokens-over-context", 10, MAX_MODEL_LEN + 88, 400, ("max_tokens", "max_model_len")),
]


@pytest.mark.parametrize("stream", [False, True], ids=["unstreamed", "streamed"])
@pytest.mark.parametrize(("case", "prompt_len", "max_tokens", "status", "words"), REJECTED,
                         ids=[case[0] for case in REJECTED])
def test_bad_request_is_rejected_and_server_keeps_serving(
    server: ServerHandle, stream: bool, case: str, prompt_len: int, max_tokens: int, status: int,
    words: tuple[str, ...],
) -> None:
    send = complete if stream else complete_unstreamed
    bad = asyncio.run(send(server.url, [11] * prompt_len, max_tokens))
    assert bad.http_status == status, f"{case}: expected HTTP {status}, got {bad[:3]} {bad.body}"
    error = bad.body["error"]
    assert error["code"] == status and error["type"] == "BadRequestError", f"{case}: {error}"
    assert all(word in error["message"] for word in words), f"{case}: {error['message']!r} lacks {words}"
    _assert_normal_request_succeeds(server)


def test_prompt_plus_max_tokens_over_context_is_clamped_to_the_context(server: ServerHandle) -> None:
    """vLLM 0.32 does not reject this: `max_tokens` is lowered to what the context leaves (get_max_tokens)."""
    prompt_len, max_tokens = 400, 200
    for send in (complete_unstreamed, complete):
        result = asyncio.run(send(server.url, [11] * prompt_len, max_tokens))
        assert result[:3] == (MAX_MODEL_LEN - prompt_len, "length", 200), f"{send.__name__}: {result.body}"
    _assert_normal_request_succeeds(server)


def test_disconnected_clients_release_everything(server: ServerHandle) -> None:
    """8 streams of 400 tokens dropped after 3 chunks: the engine aborts them and frees their KV cache.

    NOTE: vLLM 0.32 does not count these aborts in `vllm:request_success_total{finished_reason="abort"}`
    (it stays 0), so "aborted" is checked as: far fewer tokens generated than 8 x 400.
    """
    rng = random.Random(7)
    num_streams, max_tokens = 8, 400
    generated_before = fetch_metric(server.url, "vllm:generation_tokens_total")

    async def abandon_all() -> list[int]:
        return list(await asyncio.gather(*(stream_then_disconnect(server.url, _prompt(rng, 64), max_tokens, 3)
                                           for _ in range(num_streams))))

    assert asyncio.run(abandon_all()) == [3] * num_streams
    _assert_normal_request_succeeds(server)
    wait_until_idle(server.url, timeout_s=30.0)
    generated = fetch_metric(server.url, "vllm:generation_tokens_total") - generated_before
    assert generated < num_streams * max_tokens / 2, f"the dropped streams ran on: {generated:.0f} tokens generated"


def test_stop_before_predicted_length(server: ServerHandle, tiny_model: Path) -> None:
    """An over-prediction: the oracle length says 300, the request stops after min_tokens (plus the stop token)."""
    vocab_size = json.loads((tiny_model / "config.json").read_text())["vocab_size"]
    allowed = range(1000, 1010)  # min_tokens masks the stop ids; these remain to be sampled meanwhile
    stop_ids = [token for token in range(vocab_size) if token not in allowed]
    extra = {"ignore_eos": False, "min_tokens": 5, "stop_token_ids": stop_ids,
             "vllm_xargs": {"ecosched_true_output_tokens": 300}}
    for send in (complete, complete_unstreamed):
        result = asyncio.run(send(server.url, _prompt(random.Random(3), 20), 300, **extra))
        assert result.http_status == 200, f"{send.__name__}: vllm_xargs or stop ids refused: {result.body}"
        assert result.finish_reason == "stop", f"{send.__name__}: {result[:3]}"
        assert result.num_output_tokens is not None and 5 <= result.num_output_tokens <= 6, (
            f"{send.__name__}: expected min_tokens (5) plus the stop token, got {result.num_output_tokens}")


def test_vllm_xargs_is_a_known_field(server: ServerHandle) -> None:
    """A mistyped `vllm_xargs` is refused, so the field is parsed, not ignored as an unknown extra."""
    bad = asyncio.run(complete_unstreamed(server.url, [11] * 8, 2, vllm_xargs={"nested": {"a": 1}}))
    assert bad.http_status == 400, bad.body
    good = asyncio.run(complete_unstreamed(server.url, [11] * 8, 2, vllm_xargs={"ecosched_true_output_tokens": 2}))
    assert good[:3] == (2, "length", 200), good.body


@pytest.mark.parametrize("factor", [0.1, 10.0], ids=["10x-under", "10x-over"])
def test_wrong_predictions_complete(server: ServerHandle, factor: float) -> None:
    """Every request told a length 10x too short (top-ups, preemptions) or 10x too long (reservations
    wasted; capped at the declared limit) still completes with exactly its tokens."""
    rng = random.Random(int(factor * 10))
    shapes = [(rng.randint(4, 200), rng.randint(8, 120)) for _ in range(16)]

    async def run() -> list[CompletionResult]:
        async with new_session() as session:
            return list(await asyncio.gather(*(
                complete(server.url, _prompt(rng, p), m, session=session,
                         vllm_xargs={"ecosched_true_output_tokens": max(1, int(m * factor))})
                for p, m in shapes)))

    for (p, m), result in zip(shapes, asyncio.run(run()), strict=True):
        assert result[:3] == (m, "length", 200), f"prompt {p}, max_tokens {m}: {result}"


def _assert_normal_request_succeeds(server: ServerHandle) -> None:
    result = asyncio.run(complete(server.url, [11] * 16, 8))
    assert result[:3] == (8, "length", 200), f"a normal request failed afterwards: {result[:3]} {result.body}"
