"""Step timing and counters of a scheduler running inside an engine, written where a benchmark can read them.

In every engine adapter both the ecosched scheduler and the stock one (timed, not changed) record the
wall time of each scheduling call in the same way, so their overheads compare within one run.
`PATH` receives every duration as little-endian float64 seconds (appended, flushed at most every
`flush_interval_s`); `PATH.json` holds cumulative counters. A reader diffs both around a run.
`PATH.steps` receives, per step, four float64s: the monotonic time the scheduling call started, its
duration, the tokens scheduled and the context tokens of the scheduled requests (their KV after the
step). The engine's step time is the gap between consecutive starts while it is busy:
`benchmarks/fit_engine_latency.py` fits the core's latency model to it. `PATH.check` receives the
duration of every ledger-versus-engine KV check, when the adapter runs one; `PATH.policy` the time of
the core's decision within each step, where the engine's scheduling call does more (SGLang).
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
        # pending values per file, by suffix: durations, step records, KV checks, core decisions
        self._series: dict[str, array[float]] = {suffix: array("d") for suffix in ("", ".steps", ".check", ".policy")}
        self._pending, self._steps = self._series[""], self._series[".steps"]
        self._last_flush = time.monotonic()
        if path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            for suffix in self._series:
                open(path + suffix, "wb").close()  # fresh files per server

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def step(
        self, start_s: float, duration_s: float, num_tokens: int, context_tokens: int, preemptions: int = 0
    ) -> None:
        """Record one scheduling call that started at `start_s` (monotonic), took `duration_s` and
        scheduled `num_tokens` tokens of requests holding `context_tokens` KV tokens after the step.
        Nothing without a path (callers check `enabled` before computing the figures)."""
        if self.path is None:
            return
        c = self.counters
        c["steps"] += 1
        c["scheduled_tokens"] += num_tokens
        c["preemptions"] += preemptions
        self._pending.append(duration_s)
        self._steps.extend((start_s, duration_s, float(num_tokens), float(context_tokens)))
        now = time.monotonic()
        if now - self._last_flush >= self.flush_interval_s:
            self.flush(now)

    def check(self, duration_s: float) -> None:
        """Record the duration of one ledger-versus-engine KV check."""
        if self.path is not None:
            self._series[".check"].append(duration_s)

    def policy(self, duration_s: float) -> None:
        """Record the duration of the core's decision within one step (`PATH.policy`), where the
        engine's scheduling call does more than ask the core (SGLang)."""
        if self.path is not None:
            self._series[".policy"].append(duration_s)

    def flush(self, now: float | None = None, extra: dict[str, Any] | None = None) -> None:
        """Write pending durations and the counters (plus `extra`) now."""
        if self.path is None:
            return
        if extra:
            self.counters.update(extra)
        for suffix, values in self._series.items():
            with open(self.path + suffix, "ab") as f:
                values.tofile(f)
            del values[:]
        tmp = self.path + ".json.tmp"
        with open(tmp, "w") as f:
            json.dump(self.counters, f)
        os.replace(tmp, self.path + ".json")
        self._last_flush = time.monotonic() if now is None else now
