"""One `ecosched bench` invocation: ask the server what it serves, load and scale the workload, then run
it once per rate, reading the server's counters around each run."""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ecosched.config import EcoschedConfig
from ecosched.errors import ConfigError
from ecosched.serving import server_stats
from ecosched.serving.bench import (
    LAG_TOLERANCE_S,
    BenchError,
    BenchRequest,
    Outcome,
    RunOutcome,
    ServerInfo,
    bench_requests,
    completion_body,
    get_metrics_text,
    probe,
    prompt_ids,
    run_open_loop,
)
from ecosched.serving.bench_metrics import ServerDelta, run_metrics, server_notes
from ecosched.sim.engine import KVSample
from ecosched.sim.metrics import RunMetrics

# NOTE: the server writes --sched-stats in batches (ecosched_adapters.stats flushes at most once a
# second); waiting this long after a run lets a time-based flush land before the file is read.
SCHED_SETTLE_S = 1.2


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
        info = await probe(session, plan.base_url)
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
        for rate in rates:
            run, delta, timeline, has_metrics = await _one_rate(session, plan, workload, rate, model, max_model_len)
            if timeline and (rate == kv_rate or not result.timelines):
                result.timelines = {plan.args.label: (rate, timeline)}
            result.runs.append(run_metrics(plan.args.label, run, plan.config, delta))
            result.request_lines += [o.as_json(rate) for o in run.outcomes]
            result.setup["bench"].append(_run_extras(run))
            notes.update(server_notes(delta, has_metrics=has_metrics, sched_stats=plan.args.sched_stats))
        result.setup["notes"] += sorted(notes)
    return result


def _model(args: argparse.Namespace, info: ServerInfo) -> tuple[str, int]:
    model = args.model or info.models[0]
    if model not in info.models:
        raise BenchError(f"--model {model!r} is not served; GET /v1/models lists {', '.join(info.models)}")
    max_len = args.max_model_len or info.max_model_len.get(model)
    if max_len is None:
        raise BenchError(f"GET /v1/models gives no max_model_len for {model!r}: pass --max-model-len")
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
    session: aiohttp.ClientSession, plan: BenchPlan, workload: Any, rate: float, model: str, max_model_len: int
) -> tuple[RunOutcome, ServerDelta, list[KVSample], bool]:
    from tqdm import tqdm

    from ecosched.sim.workload import retime

    args = plan.args
    timed = retime(workload, rate) if plan.rates else workload
    requests = bench_requests(
        timed,
        max_model_len=max_model_len,
        length_scale=args.length_scale,
        max_output_tokens=args.max_output_tokens,
        declared=args.declared_max_tokens,
        default_class=plan.config.slo.default_class,
    )
    bodies = [(r, _body(plan, r, model)) for r in requests]
    sched = server_stats.SchedStatsFile(args.sched_stats) if args.sched_stats else None
    sched_before = sched.snapshot() if sched else None
    metrics_before = await get_metrics_text(session, plan.base_url)

    points: list[server_stats.KVPoint] = []

    async def kv_usage(now_s: float) -> None:
        text = await get_metrics_text(session, plan.base_url)
        point = server_stats.kv_point(text, now_s) if text else None
        if point is not None:
            points.append(point)

    with tqdm(total=len(bodies), desc=f"{rate:g} req/s", unit="req", disable=True if args.quiet else None) as bar:

        def done(outcome: Outcome) -> None:
            bar.update(1)

        run = await run_open_loop(
            session,
            f"{plan.base_url}/v1/completions",
            bodies,
            rate=rate,
            max_duration_s=args.max_duration_s,
            on_done=done,
            sample=kv_usage if metrics_before is not None else None,
        )
    if sched is not None:
        await asyncio.sleep(SCHED_SETTLE_S)
    metrics_after = await get_metrics_text(session, plan.base_url)
    delta = ServerDelta(kv_used_samples=[p.used_frac for p in points])
    if metrics_before is not None and metrics_after is not None:
        before = server_stats.counter(server_stats.parse_prometheus(metrics_before), server_stats.PREEMPTIONS)
        after = server_stats.counter(server_stats.parse_prometheus(metrics_after), server_stats.PREEMPTIONS)
        delta.preemptions = after - before if before is not None and after is not None else None
    if sched is not None and sched_before is not None:
        delta.sched_durations_s = sched.durations_since(sched_before)
        counters = sched.counter_deltas(sched_before)
        delta.preemptions = counters.get("preemptions", delta.preemptions)
        delta.preemptions_swap = counters.get("preemptions_swap")
        delta.num_pipelined = counters.get("num_pipelined")
    blocks = server_stats.num_gpu_blocks(metrics_before) if metrics_before else None
    return run, delta, _timeline(points, blocks), metrics_before is not None


def _timeline(points: list[server_stats.KVPoint], num_blocks: int | None) -> list[KVSample]:
    """The KV samples in blocks for kv_split.png; none when the server does not say its block count.
    vLLM reserves no blocks ahead, so everything is used or free."""
    if not num_blocks:
        return []
    out = []
    for p in points:
        used = round(p.used_frac * num_blocks)
        out.append(KVSample(p.t_s, used, 0, num_blocks - used, p.num_running, p.num_waiting))
    return out


def _body(plan: BenchPlan, request: BenchRequest, model: str) -> dict[str, object]:
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
        "xargs_field": args.xargs_field,
        "force_length": "stop" if plan.stop_ids is not None else "max-tokens",
        "max_duration_s": args.max_duration_s,
        "sched_stats": args.sched_stats,
        "label": args.label,
        "bench": [],  # one entry per run: what the client saw beyond RunMetrics
        "notes": ["predicted/padded output lengths are not visible to a client"],
    }


def _run_extras(run: RunOutcome) -> dict[str, object]:
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
    }
