"""A benchmark run's `RunMetrics`: the simulator's own metric code applied to what the client measured.

The client's measurements become `RequestRecord`s (`ecosched.serving.bench.to_record`) and every
inter-token gap; they go through `ecosched.sim.metrics.compute` inside a `SimResult`, so TTFT, TBT and
SLO attainment follow exactly the simulator's rules. The fields only the server knows are then
replaced by what it reported (`ServerDelta`), or NaN where it reported nothing:
- preemptions (all by recompute: vLLM v1 does not swap), from --sched-stats PATH.json or /metrics
  (ecosched's TGI router: /metrics first, see `bench_tgi.TgiMetrics`);
- num_pipelined, from PATH.json only (a client cannot see lending);
- KV: the means of the sampled gauges as used and reserved-unused (vLLM reserves nothing ahead: 0);
- schedule() time per step and the number of steps, from the --sched-stats timings.
A `MetricsReader` reads one server's /metrics: `OpenAIMetrics` vLLM's names, `bench_tgi.TgiMetrics`
ecosched's TGI router's.
Requests that failed (HTTP error, error mid-stream) count as rejected, those cut off by
--max-duration-s as unfinished; both miss their SLOs, as in the simulator.
"""

from __future__ import annotations

import dataclasses
import math
from array import array
from dataclasses import dataclass, field
from typing import Any, Protocol

from ecosched.config import EcoschedConfig
from ecosched.core.scheduler import SchedulerStats
from ecosched.serving import server_stats
from ecosched.serving.bench import RunOutcome, tbt_gaps, to_record
from ecosched.sim.engine import KVSample, SimResult
from ecosched.sim.metrics import RunMetrics, compute, percentile


@dataclass(frozen=True, slots=True)
class KVReading:
    """One /metrics scrape's KV split (fractions of the pool) and batch sizes; `num_blocks` is the pool
    in blocks when the server says it (for the KV timeline plot)."""

    t_s: float
    used_frac: float
    reserved_frac: float
    num_blocks: int | None
    num_running: int
    num_waiting: int

    def sample(self) -> KVSample | None:
        """The reading in blocks, or None without a pool size."""
        if not self.num_blocks:
            return None
        used, reserved = round(self.used_frac * self.num_blocks), round(self.reserved_frac * self.num_blocks)
        free = self.num_blocks - used - reserved
        return KVSample(self.t_s, used, reserved, free, self.num_running, self.num_waiting)


class MetricsReader(Protocol):
    """What a server's /metrics text says: cumulative counters by key ("preemptions" feeds RunMetrics;
    the rest go to the run's `server` extras) and the KV split at one moment."""

    counters_win: bool  # whether these counters win over the --sched-stats PATH.json ones

    def counters(self, text: str) -> dict[str, float]: ...

    def kv(self, text: str, t_s: float) -> KVReading | None: ...


class OpenAIMetrics:
    """vLLM's /metrics (`server_stats`): preemptions, KV usage, the pool size from cache_config_info.
    The scheduler's own counters (--sched-stats PATH.json) win over these."""

    counters_win = False

    def __init__(self) -> None:
        self._num_blocks: int | None = None

    def counters(self, text: str) -> dict[str, float]:
        value = server_stats.counter(server_stats.parse_prometheus(text), server_stats.PREEMPTIONS)
        return {} if value is None else {"preemptions": value}

    def kv(self, text: str, t_s: float) -> KVReading | None:
        point = server_stats.kv_point(text, t_s)
        if point is None:
            return None
        if self._num_blocks is None:
            self._num_blocks = server_stats.num_gpu_blocks(text)
        return KVReading(t_s, point.used_frac, 0.0, self._num_blocks, point.num_running, point.num_waiting)


@dataclass
class ServerDelta:
    """What the server reported about one run; None (or empty) where it reported nothing."""

    preemptions: float | None = None
    preemptions_swap: float | None = None
    num_pipelined: float | None = None
    kv_used_samples: list[float] = field(default_factory=list)
    kv_reserved_samples: list[float] = field(default_factory=list)  # empty: the server reserves nothing ahead
    sched_durations_s: array[float] | None = None
    counters: dict[str, float] = field(default_factory=dict)  # every /metrics counter's growth over the run


def run_metrics(label: str, run: RunOutcome, config: EcoschedConfig, server: ServerDelta) -> RunMetrics:
    """The row of results.json for `run`, labelled `label`."""
    tbt_s = {name: c.tbt_ms / 1e3 for name, c in config.slo.classes.items()}
    ended = [o for o in run.outcomes if o.ok or o.error is not None]
    records = [to_record(o, tbt_s[o.request.slo_class]) for o in ended]
    finishes = [o.finished_s for o in run.outcomes if o.finished_s is not None]
    result = SimResult(
        records=records,
        rejected=[(o.request.request_id, o.error) for o in run.outcomes if o.error is not None],
        num_steps=0,
        end_s=run.wall_s if run.num_unfinished or not finishes else max(finishes),
        tbt_gaps_s=array("d", tbt_gaps(run.outcomes)),
        kv_timeline=[],
        schedule_wall_s=array("d"),
        wall_s=run.wall_s,
        stats=SchedulerStats(),
        num_blocks=1,
        num_unfinished=run.num_unfinished,
    )
    m = compute(label, run.rate, config, result, len(run.outcomes))
    return dataclasses.replace(m, **_server_fields(server))


def _server_fields(server: ServerDelta) -> dict[str, Any]:
    """RunMetrics fields a client cannot measure, from `server` (NaN where it gave nothing)."""
    nan = math.nan
    pre = server.preemptions
    swap = server.preemptions_swap if server.preemptions_swap is not None else (0 if pre is not None else None)
    kv, held = server.kv_used_samples, server.kv_reserved_samples
    used = sum(kv) / len(kv) if kv else nan
    reserved = sum(held) / len(held) if held else (0.0 if kv else nan)
    sched = server.sched_durations_s
    return {
        "preemptions": _int_or_nan(pre),
        "preemptions_swap": _int_or_nan(swap),
        "preemptions_recompute": _int_or_nan(pre - swap) if pre is not None and swap is not None else nan,
        "num_pipelined": _int_or_nan(server.num_pipelined),
        "kv_used_frac": used,
        "kv_reserved_unused_frac": reserved,
        "kv_free_frac": 1.0 - used - reserved,
        "sched_us_per_step_mean": sum(sched) / len(sched) * 1e6 if sched else nan,
        "sched_us_per_step_p99": percentile(sched, 0.99) * 1e6 if sched else nan,
        "num_steps": len(sched) if sched else nan,
    }


def _int_or_nan(value: float | None) -> int | float:
    return round(value) if value is not None else math.nan


def server_notes(server: ServerDelta, *, has_metrics: bool, sched_stats: str | None) -> list[str]:
    """One line per field left NaN, saying why."""
    notes = []
    if server.preemptions is None:
        notes.append(
            "preemptions*: NaN (no vllm:num_preemptions_total or ecosched_preemptions_total on /metrics and no "
            "--sched-stats PATH.json)"
        )
    if server.num_pipelined is None:
        notes.append("num_pipelined: NaN (only --sched-stats PATH.json can report it)")
    if not server.kv_used_samples:
        why = "no KV gauges on /metrics" if has_metrics else "no /metrics"
        notes.append(f"kv_*_frac: NaN ({why})")
    if server.sched_durations_s is None or not len(server.sched_durations_s):
        why = "no --sched-stats" if sched_stats is None else f"nothing appended to {sched_stats} during the run"
        notes.append(f"sched_us_per_step_*, num_steps: NaN ({why})")
    return notes
