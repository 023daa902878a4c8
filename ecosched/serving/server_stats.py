"""Server-side numbers a benchmark client cannot measure itself: Prometheus counters and gauges from
GET /metrics, and the schedule() timings and counters ecosched's in-engine scheduler writes to disk.

- /metrics (vLLM's names): `vllm:num_preemptions_total` is a counter, read before and after a run;
  `vllm:kv_cache_usage_perc` (a fraction 0..1 despite its name; older vLLM: `vllm:gpu_cache_usage_perc`)
  is a gauge, sampled during the run. Values of one name with different labels (engines) are summed
  for counters and averaged for gauges.
- `--sched-stats PATH`: a file of little-endian float64 schedule() durations in seconds that the
  server appends to; the values appended during a run are that run's steps. A sibling `PATH.json`
  may hold cumulative counters ({"preemptions": int, ...}); their deltas over the run win over
  /metrics, because they come from the scheduler itself.

Anything missing is None here; the caller turns it into NaN and a note.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from array import array
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

PREEMPTIONS = ("vllm:num_preemptions_total", "vllm:num_preemptions")
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
RUNNING = ("vllm:num_requests_running",)
WAITING = ("vllm:num_requests_waiting",)
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_NUM_GPU_BLOCKS = re.compile(r'^vllm:cache_config_info\{[^}]*\bnum_gpu_blocks="(\d+)"', re.MULTILINE)


def parse_prometheus(text: str) -> dict[str, list[float]]:
    """Every sample of the exposition `text`, by metric name (one value per label set, in order)."""
    samples: dict[str, list[float]] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None:  # comments (# HELP, # TYPE) and blank lines
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        samples.setdefault(m.group(1), []).append(value)
    return samples


def counter(samples: dict[str, list[float]], names: tuple[str, ...]) -> float | None:
    """The sum over label sets of the first of `names` present, or None."""
    for name in names:
        if name in samples:
            return sum(samples[name])
    return None


def gauge(samples: dict[str, list[float]], names: tuple[str, ...]) -> float | None:
    """The mean over label sets of the first of `names` present, or None."""
    for name in names:
        if samples.get(name):
            return sum(samples[name]) / len(samples[name])
    return None


def num_gpu_blocks(text: str) -> int | None:
    """The KV cache size in blocks from vLLM's `vllm:cache_config_info` labels (summed over engines)."""
    found = [int(n) for n in _NUM_GPU_BLOCKS.findall(text)]
    return sum(found) if found else None


@dataclass(frozen=True)
class KVPoint:
    """The server's KV usage (fraction) and queue lengths at one moment of a run."""

    t_s: float
    used_frac: float
    num_running: int
    num_waiting: int


def kv_point(text: str, t_s: float) -> KVPoint | None:
    """A KVPoint from one /metrics scrape, or None when it has no KV usage gauge."""
    samples = parse_prometheus(text)
    used = gauge(samples, KV_USAGE)
    if used is None:
        return None
    running, waiting = counter(samples, RUNNING), counter(samples, WAITING)
    return KVPoint(t_s, used, round(running or 0), round(waiting or 0))


@dataclass(frozen=True)
class SchedSnapshot:
    """Where the --sched-stats files stood at one moment."""

    size_bytes: int
    counters: dict[str, float] | None  # None: no PATH.json yet (counters that appear later start at 0)


class SchedStatsFile:
    """The binary schedule() timings at `path` and the counters at `path`.json (both optional)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.counters_path = Path(f"{path}.json")

    def snapshot(self) -> SchedSnapshot:
        size = self.path.stat().st_size if self.path.exists() else 0
        return SchedSnapshot(size, self._counters())

    def durations_since(self, before: SchedSnapshot) -> array[float]:
        """The schedule() durations (seconds) appended since `before`, whole values only."""
        values = array("d")
        if not self.path.exists():
            return values
        with self.path.open("rb") as f:
            f.seek(before.size_bytes - before.size_bytes % 8)
            data = f.read()
        values.frombytes(data[: len(data) - len(data) % 8])
        if sys.byteorder == "big":  # the file is little-endian
            values.byteswap()
        return values

    def counter_deltas(self, before: SchedSnapshot) -> dict[str, float]:
        """after - before of every numeric counter present in both snapshots of the JSON."""
        after = self._counters() or {}
        if before.counters is None:
            return after
        return {k: after[k] - before.counters[k] for k in after if k in before.counters}

    def _counters(self) -> dict[str, float] | None:
        try:
            data = json.loads(self.counters_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("cannot read %s: %s", self.counters_path, exc)
            return {}
        if not isinstance(data, dict):
            return {}
        return {
            k: float(v)
            for k, v in data.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        }
