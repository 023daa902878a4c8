"""Metrics of one simulated run, computed after the fact from per-request records and the engine's logs.

SLO attainment, per request:
- TTFT: first token within the class's TTFT target (a request that never produced a token misses it).
- TBT: the `slo.tbt_quantile` quantile of the request's inter-token gaps is within the class's TBT
  target, i.e. at most floor((1 - q) * gaps) gaps exceed it. With q = 1 every gap must be within it.
  NOTE: the papers do not say which per-request TBT statistic their SLO satisfaction uses; a per-request
  tail keeps one preemption stall from being averaged away, while one slow step among hundreds is
  tolerated.
- both: TTFT and TBT.
Goodput counts requests meeting both per second of the run; throughput counts finished requests.
Requests the core refused, or still unfinished when a run was cut short, count as missing their SLOs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ecosched.config import EcoschedConfig
from ecosched.core.request import FinishReason, RequestRecord
from ecosched.sim.engine import SimResult


@dataclass(frozen=True)
class RunMetrics:
    """One row of results: a policy at a rate."""

    policy: str
    rate: float
    num_requests: int
    num_finished: int
    num_rejected: int
    num_unfinished: int
    stopped_early: bool
    duration_s: float
    throughput_rps: float
    throughput_tokens_s: float
    goodput_rps: float
    slo_attainment: float
    ttft_attainment: float
    tbt_attainment: float
    mean_ttft_s: float
    p50_ttft_s: float
    p90_ttft_s: float
    p99_ttft_s: float
    mean_tbt_s: float
    p50_tbt_s: float
    p90_tbt_s: float
    p99_tbt_s: float
    mean_jct_s: float
    p50_jct_s: float
    p90_jct_s: float
    p99_jct_s: float
    preemptions: int
    preemptions_swap: int
    preemptions_recompute: int
    num_pipelined: int
    kv_used_frac: float
    kv_reserved_unused_frac: float
    kv_free_frac: float
    sched_us_per_step_mean: float
    sched_us_per_step_p99: float
    num_steps: int
    sim_wall_s: float
    requests_per_wall_s: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def percentile(values: object, q: float) -> float:
    """The q-quantile (0..1) of `values` (any order), linear between ranks; nan when there are none."""
    import numpy as np

    arr = np.asarray(values, dtype=float)
    return float(np.quantile(arr, q)) if arr.size else math.nan


def meets_ttft(record: RequestRecord, ttft_s: float) -> bool:
    """True when the request's first token came within `ttft_s` of its arrival."""
    return record.first_token_s is not None and record.first_token_s - record.arrival_s <= ttft_s


def meets_tbt(record: RequestRecord, quantile: float) -> bool:
    """True when at most floor((1 - quantile) * gaps) of the request's token gaps exceeded its class's
    TBT target (the core counts the violations against that target as tokens arrive)."""
    num_gaps = max(0, record.num_output_tokens - 1)
    allowed = math.floor((1.0 - quantile) * num_gaps + 1e-9)
    return record.num_tbt_violations <= allowed


def compute(policy: str, rate: float, config: EcoschedConfig, result: SimResult, num_requests: int) -> RunMetrics:
    """The metrics of `result`, a run of `num_requests` requests of `config.policy` at `rate`."""
    import numpy as np

    ttft_s = {name: c.ttft_ms / 1e3 for name, c in config.slo.classes.items()}
    q = config.slo.tbt_quantile
    recs = [r for r in result.records if r.finish_reason is not FinishReason.ABORT]
    ttft_ok = tbt_ok = both_ok = 0
    ttfts, jcts = [], []
    for r in recs:
        ttfts.append((r.first_token_s if r.first_token_s is not None else r.finished_s) - r.arrival_s)
        jcts.append(r.finished_s - r.arrival_s)
        a = meets_ttft(r, ttft_s[r.slo_class])
        b = meets_tbt(r, q)
        ttft_ok += a
        tbt_ok += b
        both_ok += a and b
    ttft_arr = np.asarray(ttfts, dtype=float)
    jct_arr = np.asarray(jcts, dtype=float)
    gaps = np.frombuffer(result.tbt_gaps_s, dtype=float) if len(result.tbt_gaps_s) else np.zeros(0)
    first_arrival = min((r.arrival_s for r in recs), default=0.0)
    duration = max(result.end_s - first_arrival, 1e-9)
    kv = result.kv_timeline
    total_blocks = max(1, result.num_blocks)
    sched = np.frombuffer(result.schedule_wall_s, dtype=float) if len(result.schedule_wall_s) else np.zeros(1)
    denom = max(1, num_requests)
    return RunMetrics(
        policy=policy,
        rate=rate,
        num_requests=num_requests,
        num_finished=len(recs),
        num_rejected=len(result.rejected),
        num_unfinished=result.num_unfinished,
        stopped_early=result.stopped_early,
        duration_s=duration,
        throughput_rps=len(recs) / duration,
        throughput_tokens_s=sum(r.num_output_tokens for r in recs) / duration,
        goodput_rps=both_ok / duration,
        slo_attainment=both_ok / denom,
        ttft_attainment=ttft_ok / denom,
        tbt_attainment=tbt_ok / denom,
        mean_ttft_s=_mean(ttft_arr),
        p50_ttft_s=percentile(ttft_arr, 0.5),
        p90_ttft_s=percentile(ttft_arr, 0.9),
        p99_ttft_s=percentile(ttft_arr, 0.99),
        mean_tbt_s=_mean(gaps),
        p50_tbt_s=percentile(gaps, 0.5),
        p90_tbt_s=percentile(gaps, 0.9),
        p99_tbt_s=percentile(gaps, 0.99),
        mean_jct_s=_mean(jct_arr),
        p50_jct_s=percentile(jct_arr, 0.5),
        p90_jct_s=percentile(jct_arr, 0.9),
        p99_jct_s=percentile(jct_arr, 0.99),
        preemptions=result.stats.num_swaps + result.stats.num_recomputes,
        preemptions_swap=result.stats.num_swaps,
        preemptions_recompute=result.stats.num_recomputes,
        num_pipelined=result.stats.num_pipelined,
        kv_used_frac=sum(s.used for s in kv) / (len(kv) * total_blocks) if kv else 0.0,
        kv_reserved_unused_frac=sum(s.reserved_unused for s in kv) / (len(kv) * total_blocks) if kv else 0.0,
        kv_free_frac=sum(s.free for s in kv) / (len(kv) * total_blocks) if kv else 1.0,
        sched_us_per_step_mean=float(sched.mean() * 1e6),
        sched_us_per_step_p99=percentile(sched, 0.99) * 1e6,
        num_steps=result.num_steps,
        sim_wall_s=result.wall_s,
        requests_per_wall_s=len(recs) / max(result.wall_s, 1e-9),
    )


def _mean(a: object) -> float:
    import numpy as np

    arr = np.asarray(a)
    return float(arr.mean()) if arr.size else math.nan
