"""`ecosched bench` against a fake streaming server: timing, exact token counting, errors counted not
raised, the results schema of `ecosched simulate`, the command end to end and its clear failures."""

from __future__ import annotations

import pytest

pytest.importorskip("aiohttp", reason="ecosched bench needs aiohttp: pip install -e '.[serve]'")

import asyncio
import csv
import dataclasses
import json
import math
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import aiohttp

from ecosched.cli import main
from ecosched.config import EcoschedConfig
from ecosched.core.request import Request
from ecosched.serving import bench_runner, server_stats
from ecosched.serving.bench import (
    BenchRequest,
    RunOutcome,
    bench_requests,
    completion_body,
    prompt_ids,
    run_open_loop,
)
from ecosched.serving.bench_metrics import ServerDelta, run_metrics
from ecosched.sim.metrics import RunMetrics
from ecosched.sim.workload import Workload
from serving.fake_openai import Behaviour, FakeServer, serve


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with serve(Behaviour()) as server:
        yield server


def _requests(n: int, *, output: int = 5, gap_s: float = 0.02) -> list[BenchRequest]:
    return [BenchRequest(f"r-{i}", "interactive", 8 + i, output + i, 200, i * gap_s) for i in range(n)]


def _run(server: FakeServer, requests: list[BenchRequest], *, xargs: bool = True, max_s: float = 30) -> RunOutcome:
    async def go() -> RunOutcome:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            bodies = [
                (r, completion_body(r, "fake-model", prompt_ids(r, 0, (10, 1000)), xargs=xargs)) for r in requests
            ]
            return await run_open_loop(session, f"{server.url}/v1/completions", bodies, rate=1.0, max_duration_s=max_s)

    return asyncio.run(go())


def test_ttft_and_token_gaps_are_measured(fake: FakeServer) -> None:
    fake.behaviour.ttft_s, fake.behaviour.chunk_gap_s = 0.05, 0.01
    run = _run(fake, _requests(3))
    for o in run.outcomes:
        assert o.ok and not o.mismatched
        assert o.send_s is not None and abs(o.send_s - o.request.arrival_s) < 0.05  # open loop: on time
        ttft = o.token_times_s[0] - o.send_s
        assert 0.045 <= ttft < 0.5
        gaps = [b - a for a, b in zip(o.token_times_s, o.token_times_s[1:], strict=False)]
        assert len(gaps) == o.request.num_output_tokens - 1
        assert 0.008 <= sum(gaps) / len(gaps) < 0.1
    assert run.num_errors == run.num_unfinished == run.num_mismatched == 0


@pytest.mark.parametrize("xargs", [True, False], ids=["running-usage", "final-usage-only"])
def test_packed_chunks_are_counted_exactly(fake: FakeServer, xargs: bool) -> None:
    fake.behaviour.tokens_per_chunk = 3
    run = _run(fake, _requests(2, output=10), xargs=xargs)
    for o in run.outcomes:
        assert len(o.token_times_s) == o.usage_tokens == o.request.num_output_tokens
        assert not o.mismatched
        assert o.token_times_s == sorted(o.token_times_s)


def test_request_body_is_token_ids_with_forced_length_and_xargs(fake: FakeServer) -> None:
    requests = _requests(2)
    _run(fake, requests)
    by_len = {len(b["prompt"]): b for b in fake.behaviour.bodies}
    for r in requests:
        body = by_len[r.num_prompt_tokens]
        assert all(10 <= t <= 1000 for t in body["prompt"])
        assert body["max_tokens"] == r.num_output_tokens and body["ignore_eos"] is True and body["stream"]
        assert body["vllm_xargs"] == {
            "ecosched_slo_class": "interactive",
            "ecosched_true_output_tokens": r.num_output_tokens,
            "ecosched_max_tokens": 200,
        }
    plain = completion_body(requests[0], "m", [1, 2], xargs=False)
    assert "vllm_xargs" not in plain and plain["stream_options"] == {"include_usage": True}


def test_forcing_lengths_by_stop_ids_hides_them_from_the_engine(tmp_path: Path) -> None:
    """`--force-length stop`: max_tokens is the declared limit, the length comes from min_tokens and a
    stop set covering all but a few ids; SGLang's per-request fields go in custom_params."""
    from ecosched.serving.bench import FREE_IDS, stop_token_ids

    r = _requests(1)[0]
    stops = stop_token_ids(2000)
    assert len(stops) == 2000 - FREE_IDS and 1000 not in stops and 999 in stops
    body = completion_body(r, "m", [1, 2], xargs=True, xargs_field="custom_params", stop_ids=stops)
    assert body["max_tokens"] == 200 and body["min_tokens"] == r.num_output_tokens - 1
    assert body["ignore_eos"] is False and body["stop_token_ids"] is stops
    assert body["custom_params"]["ecosched_true_output_tokens"] == r.num_output_tokens and "vllm_xargs" not in body
    argv = ["bench", "--url", "http://127.0.0.1:9", "--trace", "synthetic", "--force-length", "stop"]
    assert main([*argv, "--out", str(tmp_path)]) == 2  # no --vocab-size: refused before any request


def test_http_400_and_mid_stream_errors_are_counted_not_raised(fake: FakeServer) -> None:
    fake.behaviour.reject = lambda body: 400 if len(body["prompt"]) == 8 else None
    fake.behaviour.error_mid_stream = lambda body: len(body["prompt"]) == 9
    run = _run(fake, _requests(4))
    errors = {o.request.request_id: o.error for o in run.outcomes if o.error}
    assert set(errors) == {"r-0", "r-1"}
    assert errors["r-0"].startswith("HTTP 400") and "mid-stream" in errors["r-1"]
    m = run_metrics("bench", run, EcoschedConfig(), ServerDelta())
    assert (m.num_requests, m.num_finished, m.num_rejected, m.num_unfinished) == (4, 2, 2, 0)
    assert m.slo_attainment <= 0.5


def test_short_output_is_a_mismatch(fake: FakeServer) -> None:
    fake.behaviour.short_by = lambda body: 1 if len(body["prompt"]) == 8 else 0
    run = _run(fake, _requests(3))
    assert [o.mismatched for o in run.outcomes] == [True, False, False]
    assert run.outcomes[0].usage_tokens == run.outcomes[0].request.num_output_tokens - 1


def test_max_duration_leaves_the_rest_unfinished(fake: FakeServer) -> None:
    fake.behaviour.chunk_gap_s = 0.05
    run = _run(fake, _requests(3, output=40), max_s=0.3)
    assert run.num_unfinished == 3 and all(not o.token_times_s for o in run.outcomes)
    m = run_metrics("bench", run, EcoschedConfig(), ServerDelta())
    assert m.num_unfinished == 3 and m.slo_attainment == 0.0


def test_metrics_rows_are_run_metrics_with_server_fields(fake: FakeServer) -> None:
    run = _run(fake, _requests(3))
    delta = ServerDelta(preemptions=4, kv_used_samples=[0.2, 0.4])
    m = run_metrics("bench", run, EcoschedConfig(), delta)
    assert isinstance(m, RunMetrics)
    assert (m.preemptions, m.preemptions_swap, m.preemptions_recompute) == (4, 0, 4)
    assert m.kv_used_frac == pytest.approx(0.3) and m.kv_free_frac == pytest.approx(0.7)
    assert math.isnan(m.sched_us_per_step_mean) and math.isnan(m.num_pipelined)
    assert m.num_finished == 3 and m.throughput_tokens_s > 0 and m.mean_tbt_s > 0
    empty = run_metrics("bench", run, EcoschedConfig(), ServerDelta())
    assert math.isnan(empty.preemptions) and math.isnan(empty.kv_used_frac)


def test_lengths_are_scaled_then_clamped_to_the_context() -> None:
    reqs = (
        Request("a", 1000, 500, 0.0, None, None, 400),
        Request("b", 1, 10, 1.0, "batch", None, 1),
        Request("c", 3000, 500, 2.0, None, None, 3000),
    )
    got = bench_requests(
        Workload("w", reqs),
        max_model_len=256,
        length_scale=0.1,
        max_output_tokens=1024,
        declared="context",
        default_class="interactive",
    )
    assert [(r.num_prompt_tokens, r.num_output_tokens) for r in got] == [(100, 40), (1, 1), (255, 1)]
    assert [r.slo_class for r in got] == ["interactive", "batch", "interactive"]
    assert [r.declared_max_tokens for r in got] == [156, 255, 1]
    exact = bench_requests(
        Workload("w", reqs), max_model_len=256, length_scale=0.1, max_output_tokens=30, declared="exact",
        default_class="interactive",
    )  # fmt: skip
    assert [r.num_output_tokens for r in exact] == [r.declared_max_tokens for r in exact] == [30, 1, 1]


def test_prometheus_text_and_sched_stats_file(tmp_path: Path) -> None:
    samples = server_stats.parse_prometheus(
        "# TYPE vllm:num_preemptions_total counter\n"
        'vllm:num_preemptions_total{engine="0"} 3.0\nvllm:num_preemptions_total{engine="1"} 2\n'
        'vllm:kv_cache_usage_perc{engine="0"} 0.25\nvllm:kv_cache_usage_perc{engine="1"} 0.75\n'
    )
    assert server_stats.counter(samples, server_stats.PREEMPTIONS) == 5.0
    assert server_stats.gauge(samples, server_stats.KV_USAGE) == 0.5
    assert server_stats.counter(samples, ("nope",)) is None
    text = 'vllm:cache_config_info{block_size="16",num_gpu_blocks="512"} 1.0\nvllm:kv_cache_usage_perc 0.5\n'
    assert server_stats.num_gpu_blocks(text) == 512
    assert server_stats.kv_point(text, 1.5) == server_stats.KVPoint(1.5, 0.5, 0, 0)
    path = tmp_path / "sched.bin"
    path.write_bytes(struct.pack("<2d", 1.0, 2.0))
    Path(f"{path}.json").write_text('{"preemptions": 7}')
    stats = server_stats.SchedStatsFile(path)
    before = stats.snapshot()
    with path.open("ab") as f:
        f.write(struct.pack("<3d", 3e-6, 4e-6, 5e-6) + b"\x00\x01")  # a value half written
    Path(f"{path}.json").write_text('{"preemptions": 10, "note": "x"}')
    assert list(stats.durations_since(before)) == [3e-6, 4e-6, 5e-6]
    assert stats.counter_deltas(before) == {"preemptions": 3.0}


# ------------------------------------------------------------------------------------- the command


def test_cli_end_to_end_writes_results_like_simulate(
    fake: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench_runner, "SCHED_SETTLE_S", 0.0)  # the fake server writes its stats at once
    fake.behaviour.sched_stats = tmp_path / "sched.bin"
    out = tmp_path / "out"
    argv = ["bench", "--url", f"{fake.url}/v1", "--num-requests", "10", "--rates", "40,80", "--synthetic-rate", "20"]
    argv += ["--length-scale", "0.02", "--slo-mix", "interactive=0.5,batch=0.5", "--out", str(out), "--quiet"]
    argv += ["--sched-stats", str(fake.behaviour.sched_stats)]
    assert main(argv) == 0
    data = json.loads((out / "results.json").read_text())
    assert set(data) == {"setup", "runs", "capacity"}
    fields = [f.name for f in dataclasses.fields(RunMetrics)]
    assert [list(r) for r in data["runs"]] == [fields, fields]
    assert [(r["policy"], r["rate"]) for r in data["runs"]] == [("bench", 40.0), ("bench", 80.0)]
    for r in data["runs"]:
        assert r["num_finished"] == 10 and r["num_rejected"] == r["num_unfinished"] == 0
        assert r["num_steps"] == 20 and r["sched_us_per_step_mean"] == pytest.approx(150.0)
        assert r["preemptions"] == 20  # from sched.bin.json (2 per request), not /metrics (1 per request)
    assert data["capacity"] == {"bench": 80.0}
    assert data["setup"]["model"] == "fake-model" and data["setup"]["max_model_len"] == 256
    assert [b["num_mismatched_tokens"] for b in data["setup"]["bench"]] == [0, 0]
    with (out / "results.csv").open() as f:
        assert list(csv.DictReader(f).fieldnames or []) == fields
    lines = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert len(lines) == 20 and all(line["status"] == 200 and line["error"] is None for line in lines)
    prompt_lens = sorted(len(b["prompt"]) for b in fake.behaviour.bodies)
    assert prompt_lens == sorted(line["num_prompt_tokens"] for line in lines)
    assert all(line["num_prompt_tokens"] + line["num_output_tokens"] <= 256 for line in lines)
    for name in ("attainment.png", "latency.png", "jct.png", "kv_split.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert "bench" in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_cli_fails_clearly_on_unreachable_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    assert main(["bench", "--url", url, "--num-requests", "2", "--out", str(tmp_path), "--quiet"]) == 2
    assert "cannot reach" in capsys.readouterr().err


def test_cli_fails_clearly_on_a_non_openai_endpoint(
    fake: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.behaviour.models_status = 404
    assert main(["bench", "--url", fake.url, "--num-requests", "2", "--out", str(tmp_path), "--quiet"]) == 2
    assert "not an OpenAI-compatible endpoint" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--vocab-range", "5"], "--vocab-range"),
        (["--rate", "1", "--rates", "1,2"], "not both"),
        (["--rates", "0"], "positive"),
        (["--length-scale", "0"], "--length-scale"),
        (["--model", "other"], "not served"),
        (["--slo-mix", "gold=1"], "not configured"),
    ],
)
def test_cli_rejects_bad_arguments(
    fake: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    argv = ["bench", "--url", fake.url, "--num-requests", "2", "--out", str(tmp_path), "--quiet", *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not fake.behaviour.bodies  # failed before sending anything


def test_help_answers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--url", "--length-scale", "--declared-max-tokens", "--no-xargs", "--sched-stats"):
        assert flag in text
