"""Runs of the simulator: one policy at one rate, the capacity search, and many runs across processes.

A `Setup` fixes everything but the policy and the rate: the workload (at its own timing), the engine
profile (KV capacity, step times, swap costs), the config file and overrides, and the predictor. For
each policy the config is the profile's geometry, then the user's file and overrides, then the policy.

Capacity is the highest arrival rate at which at least `target` of the requests meet both SLOs. The
search brackets it by doubling or halving from a starting rate, then bisects (in log rate) until the
bracket is within `rel_tol`. A run stops as soon as more than (1 - target) of its requests have
missed, since the rate has failed whatever happens next. NOTE: this assumes attainment falls with
rate, which holds for every policy here up to noise; each evaluated point is kept in the results.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import TypeVar

from ecosched.config import EcoschedConfig, load_config
from ecosched.core.request import RequestRecord
from ecosched.factory import build_scheduler
from ecosched.sim import engine
from ecosched.sim.metrics import RunMetrics, compute, meets_tbt, meets_ttft
from ecosched.sim.profile import Profile
from ecosched.sim.workload import Workload, retime


@dataclass(frozen=True)
class Variant:
    """A policy with its own config overrides, under a label (`ecoserve`, `ecoserve-no-pipelining`)."""

    label: str
    policy: str
    overrides: tuple[str, ...] = ()

    @classmethod
    def of(cls, policy: str) -> Variant:
        return cls(policy, policy)


@dataclass(frozen=True)
class Setup:
    """What every run of a comparison shares."""

    workload: Workload
    profile: Profile | None = None
    config_path: str | None = None
    overrides: tuple[str, ...] = ()
    kv_sample_interval_s: float = 1.0
    output_log: str | None = None  # append (prompt, output tokens) of finished requests with a prompt

    def config_for(self, variant: Variant) -> EcoschedConfig:
        return load_config(
            self.config_path,
            [*self.profile_overrides(), *self.overrides, *variant.overrides, f"policy={variant.policy}"],
        )

    def profile_overrides(self) -> list[str]:
        """Config fields the engine profile decides: KV geometry, context length, swap costs."""
        p = self.profile
        if p is None:
            return []
        block = load_config(self.config_path, list(self.overrides)).cache.block_size
        return [
            f"cache.num_gpu_blocks={p.num_gpu_blocks(block)}",
            f"cache.num_cpu_blocks={p.num_cpu_blocks(block)}",
            f"cache.max_model_len={p.model.max_model_len}",
            f"latency.kv_bytes_per_token={p.kv_bytes_per_token()}",
            f"latency.pcie_gb_per_s={p.gpu.pcie_gb_per_s * p.tensor_parallel}",  # one link per rank
        ]


@dataclass
class Run:
    """One finished run: its metrics and, when kept, its KV timeline."""

    metrics: RunMetrics
    kv_timeline: list[engine.KVSample] = field(default_factory=list)


class _MissCounter:
    """Stops a run once more than `allowed` requests have missed their SLOs (counted as they end)."""

    def __init__(self, config: EcoschedConfig, allowed: int) -> None:
        self.ttft = {name: c.ttft_ms / 1e3 for name, c in config.slo.classes.items()}
        self.q = config.slo.tbt_quantile
        self.allowed = allowed
        self.seen = 0
        self.missed = 0

    def __call__(self, records: list[RequestRecord], now_s: float) -> bool:
        for r in records[self.seen :]:
            if not (meets_ttft(r, self.ttft[r.slo_class]) and meets_tbt(r, self.q)):
                self.missed += 1
        self.seen = len(records)
        return self.missed > self.allowed


def run_one(
    setup: Setup,
    variant: Variant,
    rate: float | None,
    *,
    target: float | None = None,
    keep_timeline: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> Run:
    """`variant` on the workload re-timed to `rate` (None: its own timing). With `target`, the run stops
    once the target attainment is out of reach."""
    config = setup.config_for(variant)
    workload = setup.workload if rate is None else retime(setup.workload, rate)
    model = setup.profile.latency_model() if setup.profile is not None else None
    scheduler = build_scheduler(config, latency_model=model)
    n = workload.num_requests
    stop = None
    if target is not None:
        stop = _MissCounter(config, math.floor((1.0 - target) * n))
    result = engine.run(
        scheduler,
        workload.requests,
        engine=model,
        kv_sample_interval_s=setup.kv_sample_interval_s,
        on_progress=on_progress,
        stop_when=stop,
    )
    if setup.output_log is not None:
        _log_outputs(setup.output_log, workload, result.records)
    metrics = compute(variant.label, workload.rate_rps if rate is None else rate, config, result, n)
    return Run(metrics, result.kv_timeline if keep_timeline else [])


def _log_outputs(path: str, workload: Workload, records: list[RequestRecord]) -> None:
    """The prediction log for online learning: what each finished request's prompt really produced."""
    from ecosched.core.request import FinishReason
    from ecosched.prediction_log import PredictionLog

    prompts = {r.request_id: r.prompt for r in workload.requests if r.prompt}
    rows = [
        (prompts[rec.request_id], rec.num_output_tokens)
        for rec in records
        if rec.request_id in prompts and rec.finish_reason is not FinishReason.ABORT and rec.num_output_tokens > 0
    ]
    PredictionLog(path).extend(rows)


@dataclass
class Capacity:
    """The capacity of one variant and every run the search made."""

    label: str
    rate: float  # 0.0 when even the lowest rate tried missed the target
    runs: list[RunMetrics]


def find_capacity(
    setup: Setup,
    variant: Variant,
    *,
    target: float = 0.9,
    start_rate: float | None = None,
    rel_tol: float = 0.03,
    min_rate: float = 0.05,
    max_rate: float = 1000.0,
    on_eval: Callable[[RunMetrics], None] | None = None,
) -> Capacity:
    """The highest rate at which at least `target` of the requests meet both SLOs (see module doc)."""
    runs: list[RunMetrics] = []

    def ok(rate: float) -> bool:
        m = run_one(setup, variant, rate, target=target).metrics
        runs.append(m)
        if on_eval is not None:
            on_eval(m)
        return m.slo_attainment >= target and not m.stopped_early

    rate = start_rate or setup.workload.rate_rps
    if ok(rate):  # double until a rate fails
        lo = rate
        while True:
            if lo * 2 > max_rate:
                return Capacity(variant.label, lo, runs)
            if not ok(lo * 2):
                hi = lo * 2
                break
            lo *= 2
    else:  # halve until a rate passes
        hi = rate
        while True:
            if hi / 2 < min_rate:
                return Capacity(variant.label, 0.0, runs)
            if ok(hi / 2):
                lo = hi / 2
                break
            hi /= 2
    while hi / lo > 1 + rel_tol:
        mid = math.sqrt(lo * hi)
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return Capacity(variant.label, lo, runs)


def default_jobs() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def map_runs(
    tasks: Sequence[tuple[Variant, float | None]],
    setup: Setup,
    *,
    jobs: int,
    keep_timeline_for: Callable[[Variant, float | None], bool] = lambda v, r: False,
    on_done: Callable[[Run], None] | None = None,
) -> list[Run]:
    """Every (variant, rate) task, in `jobs` processes; results in task order."""
    calls = [functools.partial(run_one, setup, v, r, keep_timeline=keep_timeline_for(v, r)) for v, r in tasks]
    return _map(calls, jobs, on_done)


def map_capacities(
    variants: Iterable[Variant],
    setup: Setup,
    *,
    jobs: int,
    target: float,
    start_rate: float | None,
    rel_tol: float,
    on_done: Callable[[Capacity], None] | None = None,
) -> list[Capacity]:
    """`find_capacity` for every variant, in `jobs` processes; results in variant order."""
    calls = [
        functools.partial(find_capacity, setup, v, target=target, start_rate=start_rate, rel_tol=rel_tol)
        for v in variants
    ]
    return _map(calls, jobs, on_done)


_T = TypeVar("_T")


def _map(calls: Sequence[Callable[[], _T]], jobs: int, on_done: Callable[[_T], None] | None) -> list[_T]:
    """Each call's result in call order, run here (jobs <= 1) or in `jobs` processes; `on_done` sees
    results as they complete."""
    if jobs <= 1:
        out = []
        for call in calls:
            result = call()
            if on_done is not None:
                on_done(result)
            out.append(result)
        return out
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(call): i for i, call in enumerate(calls)}
        done: dict[int, _T] = {}
        for f in as_completed(futures):
            done[futures[f]] = f.result()
            if on_done is not None:
                on_done(done[futures[f]])
    return [done[i] for i in range(len(calls))]
