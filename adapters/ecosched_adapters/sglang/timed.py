"""SGLang's own scheduler, unchanged, with each scheduling call timed the way the ecosched one is:
the stock side of a stock-vs-ecosched comparison (`ecosched serve --backend sglang --no-ecosched
--stats PATH`). It records `get_next_batch_to_run` wall times, tokens per step and SGLang's
retractions, in the files `ecosched_adapters.stats` describes."""

from __future__ import annotations

import time
from typing import Any

from sglang.srt.managers.scheduler import Scheduler

from ecosched_adapters.settings import AdapterSettings
from ecosched_adapters.sglang.version import check_sglang_version
from ecosched_adapters.stats import StepStats


def batch_totals(batch: Any) -> tuple[int, int]:
    """(tokens computed, context tokens after the step) of an SGLang batch."""
    if batch is None or batch.is_empty():
        return 0, 0
    tokens = len(batch.reqs) if batch.forward_mode.is_decode() else int(sum(batch.extend_lens))
    return tokens, int(batch.seq_lens_sum or 0)


class TimedScheduler(Scheduler):
    """Stock SGLang scheduling; records each get_next_batch_to_run call and SGLang's retractions."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        check_sglang_version()
        super().__init__(*args, **kwargs)
        self.stats_out = StepStats(AdapterSettings.from_env().stats_path)
        self._retracted = 0
        self._flushed_steps = 0

    def get_next_batch_to_run(self, running_batch: Any, last_batch: Any) -> Any:
        start = time.monotonic()
        t0 = time.perf_counter()
        before = self._retracted
        plan = super().get_next_batch_to_run(running_batch, last_batch)
        if self.stats_out.enabled and plan.batch_to_run is not None:
            tokens, context = batch_totals(plan.batch_to_run)
            self.stats_out.step(start, time.perf_counter() - t0, tokens, context, self._retracted - before)
        return plan

    def _add_request_to_queue(self, req: Any, is_retracted: bool = False) -> None:
        self._retracted += is_retracted
        super()._add_request_to_queue(req, is_retracted)

    def on_idle(self) -> None:
        super().on_idle()
        steps = self.stats_out.counters["steps"]
        if self.stats_out.enabled and steps != self._flushed_steps:
            self._flushed_steps = steps
            self.stats_out.flush(extra={"policy": "sglang (stock)", "sglang_retractions": self._retracted})
