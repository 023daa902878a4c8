"""Step timing and counters of a scheduler running inside vLLM, written where a benchmark can read them.

Both the ecosched scheduler and the stock one (timed, not changed: `TimedAsyncScheduler`) record the
wall time of each `schedule()` call in the same way, so their overheads compare within one run.
`PATH` receives every duration as little-endian float64 seconds (appended, flushed at most every
`flush_interval_s`); `PATH.json` holds cumulative counters. A reader diffs both around a run.
`PATH.steps` receives, per step, four float64s: the monotonic time schedule() started, its duration,
the tokens scheduled and the context tokens of the scheduled requests (their KV after the step). The
engine's step time is the gap between consecutive starts while it is busy:
`benchmarks/fit_vllm_latency.py` fits the core's latency model to it.
"""

from __future__ import annotations

import json
import os
import time
from array import array
from typing import Any


class StepStats:
    """Appends schedule() durations to a file and keeps counters; a no-op without a path.
    NOTE: `array.tofile` writes native byte order: little-endian on the x86 and ARM hosts vLLM runs on."""

    def __init__(self, path: str | None, flush_interval_s: float = 1.0) -> None:
        self.path = path
        self.flush_interval_s = flush_interval_s
        self.counters: dict[str, Any] = {"steps": 0, "preemptions": 0, "scheduled_tokens": 0}
        self._pending = array("d")
        self._steps = array("d")
        self._last_flush = time.monotonic()
        if path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            open(path, "wb").close()  # fresh files per server
            open(path + ".steps", "wb").close()

    def step(self, start_s: float, duration_s: float, out: Any, requests: dict[str, Any]) -> None:
        """Record one schedule() call that started at `start_s` (monotonic) and returned `out` (a
        SchedulerOutput); `requests` is the scheduler's request table. Nothing without a path."""
        if self.path is None:
            return
        c = self.counters
        c["steps"] += 1
        c["scheduled_tokens"] += out.total_num_scheduled_tokens
        c["preemptions"] += len(out.preempted_req_ids or ())
        self._pending.append(duration_s)
        context = sum(requests[rid].num_computed_tokens for rid in out.num_scheduled_tokens if rid in requests)
        self._steps.extend((start_s, duration_s, float(out.total_num_scheduled_tokens), float(context)))
        now = time.monotonic()
        if now - self._last_flush >= self.flush_interval_s:
            self.flush(now)

    def flush(self, now: float | None = None, extra: dict[str, Any] | None = None) -> None:
        """Write pending durations and the counters (plus `extra`) now."""
        if self.path is None:
            return
        if extra:
            self.counters.update(extra)
        with open(self.path, "ab") as f:
            self._pending.tofile(f)
        with open(self.path + ".steps", "ab") as f:
            self._steps.tofile(f)
        del self._pending[:]
        del self._steps[:]
        tmp = self.path + ".json.tmp"
        with open(tmp, "w") as f:
            json.dump(self.counters, f)
        os.replace(tmp, self.path + ".json")
        self._last_flush = time.monotonic() if now is None else now
