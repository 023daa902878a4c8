"""One `ecosched bench` invocation: ask the server what it serves, load and scale the workload, then run
it once per rate, reading the server's counters around each run.

`--api` picks the wire format (`Api`): OpenAI completions with token-id prompts, or TGI's
/generate_stream with text prompts (`bench_tgi`). Everything after the request body, the timing of
every token and the metrics, is one code path for both."""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ecosched.config import EcoschedConfig
from ecosched.errors import ConfigError
from ecosched.serving import bench_tgi, server_stats
from ecosched.serving.bench import (
    LAG_TOLERANCE_S,
    BenchError,
    BenchRequest,
    OpenAIStream,
    Outcome,
    RunOutcome,
    ServerInfo,
    TokenStream,
    bench_requests,
    completion_body,
    get_metrics_text,
    probe,
    prompt_ids,
    run_open_loop,
)
from ecosched.serving.bench_metrics import (
    KVReading,
    MetricsReader,
    OpenAIMetrics,
    ServerDelta,
    run_metrics,
    server_notes,
)
from ecosched.sim.engine import KVSample
from ecosched.sim.metrics import RunMetrics

# NOTE: the server writes --sched-stats in batches (ecosched_adapters.stats flushes at most once a
# second); waiting this long after a run lets a time-based flush land before the file is read.
SCHED_SETTLE_S = 1.2


@dataclass(frozen=True)
class Api:
    """What differs between the APIs `ecosched bench` speaks: where to ask what is served, where to
    stream, how to read the stream and the server's /metrics."""

    probe: Callable[[aiohttp.ClientSession, str], Awaitable[ServerInfo]]
    path: str
    parser_type: type[TokenStream]
    metrics: Callable[[], MetricsReader]


APIS = {
    "openai": Api(probe, "/v1/completions", OpenAIStream, OpenAIMetrics),
    "tgi": Api(bench_tgi.probe_tgi, "/generate_stream", bench_tgi.TgiStream, bench_tgi.TgiMetrics),
}


@dataclass(frozen=True)
class BenchPlan:
    """The parsed command line and what was derived from it before any HTTP."""

    args: argparse.Namespace
    config: EcoschedConfig
    rates: list[float]  # empty: the workload's native rate
    vocab: tuple[int, int]
    stop_ids: list[int] | None = None  # `--force-length stop`: every id that ends a request

    @property
    def base_url(self) -> str:
        url: str = self.args.url.rstrip("/")
        return url[: -len("/v1")] if url.endswith("/v1") else url

    @property
    def api(self) -> Api:
        return APIS[self.args.api]


@dataclass
class BenchResult:
    """Rows for results.json, its setup section, and the lines of requests.jsonl."""

    runs: list[RunMetrics] = field(default_factory=list)
    setup: dict[str, Any] = field(default_factory=dict)
    request_lines: list[dict[str, object]] = field(default_factory=list)
    timelines: dict[str, tuple[float, list[KVSample]]] = field(default_factory=dict)  # for kv_split.png


async def run_bench(plan: BenchPlan) -> BenchResult:
    connector = aiohttp.TCPConnector(limit=0)  # open loop: never queue requests in the client
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        info = await plan.api.probe(session, plan.base_url)
        model, max_model_len = _model(plan.args, info)
        workload = _workload(plan, max_model_len)
        print(
            f"workload: {workload.name}: {workload.num_requests} requests, {workload.rate_rps:.2f} req/s native, "
            f"{workload.num_skipped_too_long} skipped as too long; model {model}, max_model_len {max_model_len}",
            file=sys.stderr,
        )
        result = BenchResult(setup=_setup(plan, workload, model, max_model_len))
        notes: set[str] = set()
        rates = plan.rates or [workload.rate_rps]
        kv_rate = rates[len(rates) // 2]  # the KV plot shows one run, the middle rate as in `simulate`
        served = _Served(model, max_model_len, info.max_prompt_tokens.get(model))
        result.setup["num_prompts_lengthened"] = _requests(plan, workload, rates[0], served)[1]
        for rate in rates:
            run, delta, timeline, has_metrics = await _one_rate(session, plan, workload, rate, served)
            if timeline and (rate == kv_rate or not result.timelines):
                result.timelines = {plan.args.label: (rate, timeline)}
            result.runs.append(run_metrics(plan.args.label, run, plan.config, delta))
            result.request_lines += [o.as_json(rate) for o in run.outcomes]
            result.setup["bench"].append(_run_extras(run, delta))
            notes.update(server_notes(delta, has_metrics=has_metrics, sched_stats=plan.args.sched_stats))
        result.setup["notes"] += sorted(notes)
    return result


@dataclass(frozen=True)
class _Served:
    """The model a run requests and its limits."""

    model: str
    max_model_len: int
    max_prompt_tokens: int | None


def _model(args: argparse.Namespace, info: ServerInfo) -> tuple[str, int]:
    where = "GET /info" if args.api == "tgi" else "GET /v1/models"
    model = args.model or info.models[0]
    if model not in info.models:
        raise BenchError(f"--model {model!r} is not served; {where} lists {', '.join(info.models)}")
    max_len = args.max_model_len or info.max_model_len.get(model)
    if max_len is None:
        raise BenchError(f"{where} gives no max_model_len for {model!r}: pass --max-model-len")
    return model, max_len


def _workload(plan: BenchPlan, max_model_len: int) -> Any:
    """The workload loaded as `ecosched simulate` loads it, with a context limit widened by 1/scale so
    the too-long rule applies to the scaled lengths."""
    from ecosched.sim.cli import load_workload

    classes = plan.config.slo.classes
    workload = load_workload(plan.args, max(2, math.floor(max_model_len / plan.args.length_scale)))
    unknown = {r.slo_class for r in workload.requests if r.slo_class is not None} - set(classes)
    if unknown:
        raise ConfigError(f"SLO classes {sorted(unknown)} are not configured; known: {', '.join(classes)}")
    return workload


async def _one_rate(
    session: aiohttp.ClientSession, plan: BenchPlan, workload: Any, rate: float, served: _Served
) -> tuple[RunOutcome, ServerDelta, list[KVSample], bool]:
    from tqdm import tqdm

    args = plan.args
    requests, _ = _requests(plan, workload, rate, served)
    bodies = [(r, _body(plan, r, served.model)) for r in requests]
    sched = server_stats.SchedStatsFile(args.sched_stats) if args.sched_stats else None
    sched_before = sched.snapshot() if sched else None
    reader = plan.api.metrics()
    metrics_before = await get_metrics_text(session, plan.base_url)
    readings: list[KVReading] = []

    async def kv_usage(now_s: float) -> None:
        text = await get_metrics_text(session, plan.base_url)
        reading = reader.kv(text, now_s) if text else None
        if reading is not None:
            readings.append(reading)

    with tqdm(total=len(bodies), desc=f"{rate:g} req/s", unit="req", disable=True if args.quiet else None) as bar:

        def done(outcome: Outcome) -> None:
            bar.update(1)

        run = await run_open_loop(
            session,
            plan.base_url + plan.api.path,
            bodies,
            rate=rate,
            max_duration_s=args.max_duration_s,
            on_done=done,
            sample=kv_usage if metrics_before is not None else None,
            parser_type=plan.api.parser_type,
        )
    if sched is not None:
        await asyncio.sleep(SCHED_SETTLE_S)
    metrics_after = await get_metrics_text(session, plan.base_url)
    delta = ServerDelta(
        kv_used_samples=[r.used_frac for r in readings], kv_reserved_samples=[r.reserved_frac for r in readings]
    )
    if metrics_before is not None and metrics_after is not None:
        before, after = reader.counters(metrics_before), reader.counters(metrics_after)
        # a labelled series appears on its first sample: absent before the run means 0
        delta.counters = {k: after[k] - before.get(k, 0.0) for k in after}
        delta.preemptions = delta.counters.get("preemptions")
    if sched is not None and sched_before is not None:
        delta.sched_durations_s = sched.durations_since(sched_before)
        counters = sched.counter_deltas(sched_before)
        if not (reader.counters_win and delta.preemptions is not None):
            delta.preemptions = counters.get("preemptions", delta.preemptions)
        delta.preemptions_swap = counters.get("preemptions_swap")
        delta.num_pipelined = counters.get("num_pipelined")
    timeline = [k for k in (r.sample() for r in readings) if k is not None]
    return run, delta, timeline, metrics_before is not None


def _requests(plan: BenchPlan, workload: Any, rate: float, served: _Served) -> tuple[list[BenchRequest], int]:
    """The workload re-timed to `rate`, scaled and clamped (`bench_requests`); with `--force-length
    marker`, prompts too short for their marker lengthened (`bench_tgi.with_marker_room`). Also the
    number of prompts lengthened."""
    from ecosched.sim.workload import retime

    args = plan.args
    timed = retime(workload, rate) if plan.rates else workload
    requests = bench_requests(
        timed,
        max_model_len=served.max_model_len,
        length_scale=args.length_scale,
        max_output_tokens=args.max_output_tokens,
        declared=args.declared_max_tokens,
        default_class=plan.config.slo.default_class,
        max_prompt_tokens=served.max_prompt_tokens,
    )
    if args.force_length != "marker":
        return requests, 0
    marked = [bench_tgi.with_marker_room(r, served.max_model_len) for r in requests]
    return marked, sum(a is not b for a, b in zip(requests, marked, strict=True))


def _body(plan: BenchPlan, request: BenchRequest, model: str) -> dict[str, object]:
    if plan.args.api == "tgi":
        marked = plan.args.force_length == "marker"
        text = bench_tgi.prompt_text(request, plan.args.seed, marked=marked)
        return bench_tgi.generate_stream_body(request, text, marked=marked, xargs=not plan.args.no_xargs)
    ids = prompt_ids(request, plan.args.seed, plan.vocab)
    return completion_body(
        request, model, ids, xargs=not plan.args.no_xargs, xargs_field=plan.args.xargs_field, stop_ids=plan.stop_ids
    )


def _setup(plan: BenchPlan, workload: Any, model: str, max_model_len: int) -> dict[str, Any]:
    from ecosched.sim.cli import setup_info

    args = plan.args
    return {
        **setup_info(args, workload, None),
        "url": plan.base_url,
        "model": model,
        "max_model_len": max_model_len,
        "length_scale": args.length_scale,
        "max_output_tokens": args.max_output_tokens,
        "vocab_range": list(plan.vocab),
        "declared_max_tokens": args.declared_max_tokens,
        "xargs": not args.no_xargs,
        "api": args.api,
        "xargs_field": "parameters" if args.api == "tgi" else args.xargs_field,
        "force_length": args.force_length,
        "max_duration_s": args.max_duration_s,
        "sched_stats": args.sched_stats,
        "label": args.label,
        "bench": [],  # one entry per run: what the client saw beyond RunMetrics
        "notes": ["predicted/padded output lengths are not visible to a client"],
    }


def _run_extras(run: RunOutcome, delta: ServerDelta) -> dict[str, object]:
    lags = run.lags_s
    errors = list(dict.fromkeys(o.error for o in run.outcomes if o.error is not None))
    return {
        "rate": run.rate,
        "num_errors": run.num_errors,
        "num_mismatched_tokens": run.num_mismatched,
        "num_unfinished": run.num_unfinished,
        "num_late_sends": sum(lag > LAG_TOLERANCE_S for lag in lags),
        "max_send_lag_s": max(lags, default=0.0),
        "wall_s": run.wall_s,
        "errors": errors[:5],
        "server": delta.counters,  # every /metrics counter's growth over the run (see the API's MetricsReader)
    }
