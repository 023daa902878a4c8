"""vLLM's own scheduler, unchanged, with `schedule()` timed the way `EcoschedScheduler` times its own:
the stock side of a stock-vs-ecosched comparison (`ecosched serve --no-ecosched` with stats on)."""

from __future__ import annotations

import time
from typing import Any

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.engine import EngineCoreOutputs

from ecosched_adapters.settings import AdapterSettings
from ecosched_adapters.stats import StepStats


def record_step(
    stats: StepStats, start_s: float, duration_s: float, out: SchedulerOutput, requests: dict[str, Any]
) -> None:
    """Record one vLLM schedule() call (`out`, over the scheduler's request table) in `stats`."""
    if not stats.enabled:
        return
    context = sum(requests[rid].num_computed_tokens for rid in out.num_scheduled_tokens if rid in requests)
    stats.step(start_s, duration_s, out.total_num_scheduled_tokens, context, len(out.preempted_req_ids or ()))


class TimedAsyncScheduler(AsyncScheduler):
    """Stock vLLM scheduling; records each schedule() call's wall time and preemptions."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stats_out = StepStats(AdapterSettings.from_env().stats_path)

    def schedule(self, throttle_prefills: bool = False) -> SchedulerOutput:
        start = time.monotonic()
        t0 = time.perf_counter()
        out = super().schedule(throttle_prefills)
        record_step(self.stats_out, start, time.perf_counter() - t0, out, self.requests)
        return out

    def update_from_output(
        self, scheduler_output: SchedulerOutput, model_runner_output: Any
    ) -> dict[int, EngineCoreOutputs]:
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        if not self.requests:
            self.stats_out.flush(extra={"policy": "vllm (stock)"})
        return outputs

    def shutdown(self) -> None:
        self.stats_out.flush(extra={"policy": "vllm (stock)"})
        super().shutdown()
