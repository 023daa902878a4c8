"""A minimal virtual-time driver for the core, and the built-in scenario of `ecosched demo`.

`drive` plays an engine that runs every decision at once: a step lasts what the scheduler's latency
model predicts, and a request stops when it reaches its true output length. It is the smallest
loop that exercises the step contract end to end (the trace-driven simulator in `ecosched.sim`
adds the calibrated engine model, swap costs and the full metrics).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ecosched.config import EcoschedConfig, load_config
from ecosched.core.decision import Decision, StepOutcome, Stop
from ecosched.core.request import Request, RequestRecord
from ecosched.core.scheduler import Scheduler
from ecosched.errors import EcoschedError


class StallError(EcoschedError):
    """The scheduler kept unfinished requests but scheduled nothing, with no arrival to wait for."""


@dataclass(frozen=True)
class DriveResult:
    records: list[RequestRecord]
    num_steps: int
    end_s: float


def drive(
    scheduler: Scheduler,
    requests: Sequence[Request],
    *,
    max_steps: int = 1_000_000,
    on_step: Callable[[Decision], None] | None = None,
) -> DriveResult:
    """Run `requests` (with `true_output_tokens`) through `scheduler` until all have ended."""
    pending = sorted(requests, key=lambda r: r.arrival_s)
    records: list[RequestRecord] = []
    now, i, steps = 0.0, 0, 0
    while i < len(pending) or scheduler.num_unfinished:
        batch = []
        while i < len(pending) and pending[i].arrival_s <= now:
            batch.append(pending[i])
            i += 1
        if batch:
            scheduler.add_requests(batch)
        decision = scheduler.schedule(now)
        steps += 1
        if on_step is not None:
            on_step(decision)
        if decision.is_empty:
            scheduler.update(StepOutcome(decision.step_id, now))
            if i == len(pending):
                raise StallError(f"{scheduler.num_unfinished} requests unfinished, nothing scheduled at t={now:.3f}s")
            now = max(now, pending[i].arrival_s)
            continue
        now += scheduler.latency_model.iteration_time_s(decision.num_scheduled_tokens, scheduler.num_context_tokens)
        records += scheduler.update(StepOutcome(decision.step_id, now, _stops(scheduler, decision)))
        if steps >= max_steps:
            raise StallError(f"no end after {max_steps} steps")
    return DriveResult(records, steps, now)


def _stops(scheduler: Scheduler, decision: Decision) -> tuple[Stop, ...]:
    """Requests whose sampled token this step was their last (their true length was reached)."""
    length_capped = set(decision.length_finished)
    sampled = list(decision.decodes) + [c.request_id for c in decision.prefills if c.samples_token]
    stops = []
    for rid in sampled:
        state = scheduler.requests.get(rid)
        if state is None or rid in length_capped:
            continue
        true = state.request.true_output_tokens
        if true is not None and state.num_output_tokens >= true:
            stops.append(Stop(rid))
    return tuple(stops)


def synthetic_requests(
    n: int,
    rate_rps: float,
    seed: int,
    *,
    prompt_median: float = 600.0,
    output_median: float = 180.0,
    sigma: float = 0.8,
    max_output_tokens: int = 1024,
    classes: Sequence[str] = ("interactive", "batch"),
) -> list[Request]:
    """Poisson arrivals, log-normal prompt and output lengths, SLO classes drawn uniformly."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for k in range(n):
        t += rng.expovariate(rate_rps)
        prompt = max(1, min(3000, round(rng.lognormvariate(math.log(prompt_median), sigma))))
        true_out = max(1, min(max_output_tokens, round(rng.lognormvariate(math.log(output_median), sigma))))
        out.append(Request(f"req-{k}", prompt, max_output_tokens, t, rng.choice(list(classes)), None, true_out))
    return out


DEMO_OVERRIDES = ("cache.num_gpu_blocks=1500", "cache.num_cpu_blocks=1024", "predictor.kind=noisy-oracle")


def demo_config(policy: str, path: str | None = None, overrides: Sequence[str] = ()) -> EcoschedConfig:
    """The built-in scenario's engine: a KV cache small enough that admission decisions matter, and
    a predictor of known error (true length x exp(N(0, 0.3))). A config file replaces these
    built-in settings; `overrides` apply on top of either."""
    base = [] if path is not None else list(DEMO_OVERRIDES)
    return load_config(path, [*base, *overrides, f"policy={policy}"])


@dataclass(frozen=True)
class Summary:
    """Headline figures of one run, from its records."""

    policy: str
    num_finished: int
    mean_ttft_s: float
    p99_ttft_s: float
    mean_jct_s: float
    p99_jct_s: float
    slo_attainment: float
    num_preemptions: int
    throughput_tokens_s: float


def summarize(policy: str, config: EcoschedConfig, result: DriveResult) -> Summary:
    """Figures from per-request records: TTFT, JCT, share meeting both SLOs, preemptions."""
    recs = result.records
    classes = config.slo.classes
    ttft = sorted((r.first_token_s or r.finished_s) - r.arrival_s for r in recs)
    jct = sorted(r.finished_s - r.arrival_s for r in recs)
    met = sum(
        1
        for r, t in zip(recs, ((r.first_token_s or r.finished_s) - r.arrival_s for r in recs), strict=True)
        if t * 1e3 <= classes[r.slo_class].ttft_ms and r.num_tbt_violations == 0
    )
    tokens = sum(r.num_output_tokens for r in recs)
    return Summary(
        policy=policy,
        num_finished=len(recs),
        mean_ttft_s=sum(ttft) / len(ttft),
        p99_ttft_s=_p99(ttft),
        mean_jct_s=sum(jct) / len(jct),
        p99_jct_s=_p99(jct),
        slo_attainment=met / len(recs),
        num_preemptions=sum(r.num_recomputes + r.num_swaps for r in recs),
        throughput_tokens_s=tokens / result.end_s if result.end_s > 0 else 0.0,
    )


def _p99(sorted_values: list[float]) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(0.99 * len(sorted_values)))]
