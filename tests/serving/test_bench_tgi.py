"""`ecosched bench --api tgi`: marked prompts of exact length, the /generate_stream body, TGI's events
counted exactly (the router's stand-in last token included), errors counted not raised, /info and
/metrics read, and the command end to end against a fake TGI server."""

from __future__ import annotations

import pytest

pytest.importorskip("aiohttp", reason="ecosched bench needs aiohttp: pip install -e '.[serve]'")

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp

from ecosched.cli import main
from ecosched.config import EcoschedConfig
from ecosched.serving import bench_tgi
from ecosched.serving.bench import (
    BenchError,
    BenchRequest,
    Outcome,
    RunOutcome,
    ServerInfo,
    StreamError,
    run_open_loop,
)
from ecosched.serving.bench_metrics import ServerDelta, run_metrics
from serving.fake_tgi import FakeTgi, TgiBehaviour, serve_tgi


@pytest.fixture
def fake() -> Iterator[FakeTgi]:
    with serve_tgi(TgiBehaviour()) as server:
        yield server


def _request(i: int = 0, prompt: int = 40, output: int = 6, declared: int = 300) -> BenchRequest:
    return BenchRequest(f"r-{i}", "interactive", prompt, output, declared, i * 0.01)


def _run(server: FakeTgi, requests: list[BenchRequest], *, max_s: float = 30) -> RunOutcome:
    async def go() -> RunOutcome:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            bodies = []
            for r in requests:
                text = bench_tgi.prompt_text(r, 0, marked=True)
                bodies.append((r, bench_tgi.generate_stream_body(r, text, marked=True, xargs=True)))
            url = f"{server.url}/generate_stream"
            return await run_open_loop(
                session, url, bodies, rate=1.0, max_duration_s=max_s, parser_type=bench_tgi.TgiStream
            )

    return asyncio.run(go())


# ----------------------------------------------------------------------------------------- prompts


def test_marked_prompt_is_exactly_its_length_and_scripts_the_output() -> None:
    r = _request(prompt=64, output=17)
    text = bench_tgi.prompt_text(r, 0, marked=True)
    assert text.startswith("[[len:64,eos:17]]") and len(text.encode()) == 64
    assert (
        text == bench_tgi.prompt_text(r, 0, marked=True) != bench_tgi.prompt_text(_request(1, 64, 17), 0, marked=True)
    )
    plain = bench_tgi.prompt_text(r, 0, marked=False)
    assert len(plain) == 64 and plain.isalpha()
    tokenizer = pytest.importorskip("ecosched_adapters.tgi.tokenizer", reason="needs the tgi extra (tokenizers)")
    outputs = pytest.importorskip("ecosched_adapters.tgi.standin.outputs")
    ids = tokenizer.encode(tokenizer.builtin_tokenizer(), text)
    assert len(ids) == 64  # one token per byte: the router and the stand-in see exactly 64
    assert outputs.make_script(text, ids, None, None).eos_position == 64 + 17 - 1  # EOS as token 17


def test_prompts_shorter_than_their_marker_are_lengthened() -> None:
    short = _request(prompt=5, output=300, declared=4091)
    got = bench_tgi.with_marker_room(short, 4096)
    assert got.num_prompt_tokens == len(bench_tgi.marker(got.num_prompt_tokens, 300)) == 18
    assert (got.num_output_tokens, got.declared_max_tokens) == (300, 4078)
    fits = _request(prompt=40)
    assert bench_tgi.with_marker_room(fits, 4096) is fits
    tight = bench_tgi.with_marker_room(_request(prompt=3, output=30, declared=30), 20)
    assert tight.num_prompt_tokens + tight.num_output_tokens <= 20 and tight.declared_max_tokens >= 1
    with pytest.raises(BenchError, match="cannot hold"):
        bench_tgi.prompt_text(_request(prompt=5), 0, marked=True)


def test_body_declares_the_limit_and_tells_the_true_length_only_in_ecosched_fields() -> None:
    r = _request(prompt=40, output=6, declared=300)
    body = bench_tgi.generate_stream_body(r, "x" * 40, marked=True, xargs=True)
    assert body == {
        "inputs": "x" * 40,
        "parameters": {
            "max_new_tokens": 300,
            "details": True,
            "ecosched_slo_class": "interactive",
            "ecosched_true_output_tokens": 6,
        },
    }
    forced = bench_tgi.generate_stream_body(r, "x", marked=False, xargs=False)
    assert forced["parameters"] == {"max_new_tokens": 6, "details": True}


# ------------------------------------------------------------------------------------------ events


def _feed(events: list[dict[str, object]]) -> Outcome:
    outcome = Outcome(_request())
    stream = bench_tgi.TgiStream(outcome)
    for t, event in enumerate(events):
        stream.on_chunk(event, float(t))
    return outcome


def _token(final: int | None = None, special: bool = False) -> dict[str, object]:
    details = None if final is None else {"finish_reason": "eos_token", "generated_tokens": final}
    token = {"id": 2 if special else 97, "text": "" if special else "a", "logprob": None, "special": special}
    return {"index": 1, "token": token, "generated_text": None if final is None else "aaa", "details": details}


def test_events_are_one_token_each_and_the_final_count_wins() -> None:
    o = _feed([_token(), _token(), _token(final=3)])
    assert o.token_times_s == [0.0, 1.0, 2.0] and o.usage_tokens == 3
    stand_in = _feed([_token(), _token(), _token(), _token(final=3, special=True)])
    assert stand_in.token_times_s == [0.0, 1.0, 2.0] and stand_in.usage_tokens == 3  # not a 4th token
    with pytest.raises(StreamError, match="generation: shard died"):
        _feed([_token(), {"error": "shard died", "error_type": "generation"}])


def test_streams_are_timed_and_counted_against_a_fake_tgi(fake: FakeTgi) -> None:
    fake.behaviour.stand_in_last = True
    run = _run(fake, [_request(i, output=5 + i) for i in range(3)])
    for o in run.outcomes:
        assert o.ok and not o.mismatched and len(o.token_times_s) == o.request.num_output_tokens
        assert o.token_times_s == sorted(o.token_times_s) and o.token_times_s[0] > (o.send_s or 0)
    body = fake.behaviour.bodies[0]
    assert body["parameters"]["max_new_tokens"] == 300 and "[[len:40,eos:" in body["inputs"]


def test_error_events_and_http_errors_are_counted_not_raised(fake: FakeTgi) -> None:
    fake.behaviour.error_after = lambda body: 2 if "eos:6" in body["inputs"] else None
    fake.behaviour.reject = lambda body: 422 if "eos:7" in body["inputs"] else None
    run = _run(fake, [_request(i, output=6 + i) for i in range(3)])
    errors = {o.request.request_id: o.error for o in run.outcomes if o.error}
    assert errors["r-0"] is not None and "generation: shard died" in errors["r-0"]
    assert errors["r-1"] is not None and errors["r-1"].startswith("HTTP 422")
    m = run_metrics("bench", run, EcoschedConfig(), ServerDelta())
    assert (m.num_finished, m.num_rejected) == (1, 2)


# -------------------------------------------------------------------------------------- info, metrics


def test_info_gives_the_context_and_the_longest_prompt(fake: FakeTgi) -> None:
    async def go(url: str) -> ServerInfo:
        async with aiohttp.ClientSession() as session:
            return await bench_tgi.probe_tgi(session, url)

    info = asyncio.run(go(fake.url))
    assert info.models == ("fake-tgi",) and info.max_model_len == {"fake-tgi": 512}
    assert info.max_prompt_tokens == {"fake-tgi": 400}
    with pytest.raises(BenchError, match="not a TGI endpoint"):
        asyncio.run(go(fake.url + "/nowhere"))


def test_router_metrics_are_read_by_name_and_method() -> None:
    text = (
        "# HELP ecosched_pauses_total Requests paused\necosched_pauses_total 4.0\necosched_resumes_total 3.0\n"
        'tgi_batch_forward_duration_sum{method="decode"} 0.5\ntgi_batch_forward_duration_count{method="decode"} 50\n'
        'tgi_batch_forward_duration_sum{method="prefill"} 0.25\ntgi_request_failure{err="overloaded"} 2\n'
        'tgi_request_failure{err="validation"} 1\necosched_kv_blocks_used 30\n'
        "ecosched_kv_blocks_reserved_unused 10\necosched_kv_blocks_free 60\ntgi_batch_current_size 3\n"
    )
    reader = bench_tgi.TgiMetrics()
    counters = reader.counters(text)
    assert counters["pauses"] == 4 and counters["resumes"] == 3 and counters["requests_failed"] == 3
    assert counters["forward_s_decode"] == 0.5 and counters["forwards_decode"] == 50
    assert counters["forward_s_prefill"] == 0.25 and "preemptions" not in counters
    kv = reader.kv(text, 1.0)
    assert kv is not None and (kv.used_frac, kv.reserved_frac, kv.num_blocks, kv.num_running) == (0.3, 0.1, 100, 3)
    sample = kv.sample()
    assert sample is not None and (sample.used, sample.reserved_unused, sample.free) == (30, 10, 60)
    assert reader.kv("ecosched_kv_blocks_used 1\n", 0.0) is None


# -------------------------------------------------------------------------------------- the command


def test_cli_end_to_end_against_tgi(fake: FakeTgi, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["bench", "--api", "tgi", "--force-length", "marker", "--url", fake.url, "--num-requests", "6"]
    argv += ["--rates", "50", "--synthetic-rate", "20", "--max-output-tokens", "12", "--out", str(out), "--quiet"]
    assert main([*argv, "--no-plots"]) == 0
    data = json.loads((out / "results.json").read_text())
    run = data["runs"][0]
    assert run["num_finished"] == 6 and run["num_rejected"] == 0
    assert run["kv_used_frac"] == pytest.approx(0.3) and run["kv_reserved_unused_frac"] == pytest.approx(0.1)
    setup = data["setup"]
    assert (setup["api"], setup["force_length"], setup["max_model_len"]) == ("tgi", "marker", 512)
    bench = setup["bench"][0]
    assert bench["num_mismatched_tokens"] == 0 and bench["server"]["pauses"] == 6
    for body in fake.behaviour.bodies:  # prompts within /info's max_input_tokens, limits declared
        prompt = len(body["inputs"].encode())
        assert prompt <= 400 and body["parameters"]["max_new_tokens"] == 512 - prompt


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--force-length", "marker"], "does not work with --api openai"),
        (["--api", "tgi", "--force-length", "stop"], "does not work with --api tgi"),
    ],
)
def test_cli_rejects_a_length_forcing_the_api_cannot_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    argv = ["bench", "--url", "http://127.0.0.1:9", "--num-requests", "2", "--out", str(tmp_path), "--quiet"]
    assert main([*argv, *extra]) == 2
    assert message in capsys.readouterr().err
