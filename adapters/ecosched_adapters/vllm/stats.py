"""Step timing and counters of a scheduler running inside vLLM, written where a benchmark can read them.

Both the ecosched scheduler and the stock one (timed, not changed: `TimedAsyncScheduler`) record the
wall time of each `schedule()` call in the same way, so their overheads compare within one run.
`PATH` receives every duration as little-endian float64 seconds (appended, flushed at most every
`flush_interval_s`); `PATH.json` holds cumulative counters. A reader diffs both around a run.
"""

from __future__ import annotations

import json
import os
import time
from array import array
from typing import Any


class StepStats:
    """Appends schedule() durations to a file and keeps counters; a no-op without a path."""

    def __init__(self, path: str | None, flush_interval_s: float = 1.0) -> None:
        self.path = path
        self.flush_interval_s = flush_interval_s
        self.counters: dict[str, Any] = {"steps": 0, "preemptions": 0, "scheduled_tokens": 0}
        self._pending = array("d")
        self._last_flush = time.monotonic()
        if path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            open(path, "wb").close()  # a fresh file per server

    def step(self, duration_s: float, num_tokens: int, num_preempted: int) -> None:
        c = self.counters
        c["steps"] += 1
        c["scheduled_tokens"] += num_tokens
        c["preemptions"] += num_preempted
        if self.path is None:
            return
        self._pending.append(duration_s)
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
        del self._pending[:]
        tmp = self.path + ".json.tmp"
        with open(tmp, "w") as f:
            json.dump(self.counters, f)
        os.replace(tmp, self.path + ".json")
        self._last_flush = time.monotonic() if now is None else now
