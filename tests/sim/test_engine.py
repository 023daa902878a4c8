"""The simulated engine loop and the metrics computed from its runs, on small hand-checkable cases."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import make_config, make_request

from ecosched import build_scheduler
from ecosched.core.latency import LinearLatencyModel
from ecosched.core.request import FinishReason, RequestRecord
from ecosched.sim import engine
from ecosched.sim.metrics import compute, meets_tbt, percentile
from ecosched.sim.runner import _MissCounter


def scheduler(policy: str = "vllm", step_ms: float = 10.0, **sections: Any):  # type: ignore[no-untyped-def]
    """A scheduler whose every step takes exactly `step_ms` (no per-token cost)."""
    model = LinearLatencyModel(step_ms / 1e3, 0.0, 0.0)
    return build_scheduler(make_config(policy, **sections), latency_model=model)


def test_one_request_timeline_is_exact() -> None:
    s = scheduler()
    result = engine.run(s, [make_request("a", prompt=32, max_output=64, true_output=5)])
    (rec,) = result.records
    # step 1: prefill samples token 1; steps 2-5: one decode each; 10 ms per step
    assert result.num_steps == 5
    assert rec.first_token_s == pytest.approx(0.010)
    assert rec.finished_s == pytest.approx(0.050)
    assert rec.num_output_tokens == 5
    assert rec.finish_reason is FinishReason.STOP
    assert list(result.tbt_gaps_s) == pytest.approx([0.010] * 4)


def test_clock_jumps_to_the_next_arrival_when_idle() -> None:
    s = scheduler()
    reqs = [make_request("a", true_output=2), make_request("b", arrival=5.0, true_output=2)]
    result = engine.run(s, reqs)
    by_id = {r.request_id: r for r in result.records}
    assert by_id["b"].first_token_s == pytest.approx(5.010)
    assert result.end_s == pytest.approx(5.020)
    assert all(g == pytest.approx(0.010) for g in result.tbt_gaps_s)


def test_gap_log_matches_the_cores_own_tbt_bookkeeping() -> None:
    # A cache so small that requests are preempted: resumed requests see long gaps, and the engine's
    # gap log must agree with the max TBT the core recorded for each request.
    s = scheduler("vllm", cache={"num_gpu_blocks": 24, "num_cpu_blocks": 0, "block_size": 16})
    reqs = [make_request(f"r{i}", prompt=100, max_output=200, arrival=0.001 * i, true_output=150) for i in range(6)]
    result = engine.run(s, reqs)
    assert result.stats.num_recomputes > 0
    total_gaps = sum(r.num_output_tokens - 1 for r in result.records)
    assert len(result.tbt_gaps_s) == total_gaps
    assert max(result.tbt_gaps_s) == pytest.approx(max(r.max_tbt_s for r in result.records))
    assert sorted(result.tbt_gaps_s)[-1] > 0.010 * 5  # a stall, not a normal step


@dataclass(frozen=True)
class StepModel:
    """A step-time model with the simulator's richer interface, to see that the engine uses it."""

    prefill_s_per_token: float = 1e-4
    decode_s: float = 0.01
    swap_s_per_token: float = 1e-5

    def iteration_time_s(self, num_batched_tokens: int, num_context_tokens: int) -> float:
        return self.decode_s + self.prefill_s_per_token * num_batched_tokens

    def step_time_s(self, num_batched_tokens, num_context_tokens, prefill_chunks, num_sampled):  # type: ignore[no-untyped-def]
        return self.decode_s + self.prefill_s_per_token * sum(n for _, n in prefill_chunks)

    def swap_time_s(self, num_tokens: int) -> float:
        return self.swap_s_per_token * num_tokens


def test_engine_prices_steps_with_step_time_and_swaps() -> None:
    s = scheduler()
    model = StepModel()
    result = engine.run(s, [make_request("a", prompt=100, max_output=64, true_output=3)], engine=model)
    # prefill of 100 tokens: 10 ms + 10 ms, then two decodes of 10 ms
    assert result.end_s == pytest.approx(0.020 + 0.010 + 0.010)


def test_swap_preemptions_cost_link_time() -> None:
    # the predictor says 10 tokens, so reservations run out and victims are preempted (swap is cheaper here)
    cfg = {
        "cache": {"num_gpu_blocks": 40, "num_cpu_blocks": 256, "block_size": 16},
        "predictor": {"kind": "constant", "constant_tokens": 10},
    }
    reqs = [make_request(f"r{i}", prompt=200, max_output=400, arrival=0.001 * i, true_output=300) for i in range(8)]
    free = engine.run(scheduler("ecoserve", **cfg), reqs, engine=StepModel(swap_s_per_token=0.0))
    paid = engine.run(scheduler("ecoserve", **cfg), reqs, engine=StepModel(swap_s_per_token=1e-3))
    assert free.stats.num_swaps > 0, "the scenario must swap for this test to mean anything"
    assert paid.stats.num_swaps == free.stats.num_swaps
    assert paid.end_s > free.end_s


def test_stop_when_cuts_the_run_short() -> None:
    s = scheduler()
    reqs = [make_request(f"r{i}", arrival=0.1 * i, true_output=3) for i in range(20)]
    result = engine.run(s, reqs, stop_when=lambda records, now: len(records) >= 5)
    assert result.stopped_early
    assert 5 <= len(result.records) < 20
    assert result.num_unfinished == 20 - len(result.records)


def test_rejected_requests_are_counted_not_fatal() -> None:
    s = scheduler(cache={"max_model_len": 256})
    reqs = [make_request("ok", prompt=32, max_output=64, true_output=2), make_request("huge", prompt=300)]
    result = engine.run(s, reqs)
    assert [r.request_id for r in result.records] == ["ok"]
    assert [rid for rid, _ in result.rejected] == ["huge"]
    assert "context length" in result.rejected[0][1]


def record(n_out: int, violations: int, **kw: Any) -> RequestRecord:
    base = dict(
        request_id="x", slo_class="interactive", num_prompt_tokens=10, num_output_tokens=n_out,
        predicted_output_tokens=n_out, padded_output_tokens=n_out, arrival_s=0.0, first_scheduled_s=0.0,
        first_token_s=0.5, finished_s=2.0, finish_reason=FinishReason.STOP, num_recomputes=0, num_swaps=0,
        max_tbt_s=0.05, num_tbt_violations=violations,
    )  # fmt: skip
    base.update(kw)
    return RequestRecord(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("n_out", "violations", "q", "ok"),
    [
        (201, 0, 1.0, True),
        (201, 1, 1.0, False),
        (201, 2, 0.99, True),  # 200 gaps: 1% is 2 gaps
        (201, 3, 0.99, False),
        (100, 0, 0.99, True),  # 99 gaps: not even one may exceed at q=0.99
        (100, 1, 0.99, False),
        (1, 0, 0.99, True),  # no gaps at all
    ],
)
def test_tbt_slo_is_a_per_request_quantile(n_out: int, violations: int, q: float, ok: bool) -> None:
    assert meets_tbt(record(n_out, violations), q) is ok


def test_percentile_interpolates() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == pytest.approx(2.5)
    assert percentile([5.0], 0.99) == 5.0
    assert math.isnan(percentile([], 0.5))


def test_compute_counts_attainment_goodput_and_preemptions() -> None:
    s = scheduler("vllm", step_ms=10.0, cache={"num_gpu_blocks": 24, "num_cpu_blocks": 0, "block_size": 16})
    reqs = [make_request(f"r{i}", prompt=100, max_output=200, arrival=0.001 * i, true_output=150) for i in range(6)]
    result = engine.run(s, reqs)
    config = make_config("vllm")
    m = compute("vllm", 6.0, config, result, num_requests=len(reqs))
    ttft_target = config.slo.classes["interactive"].ttft_ms / 1e3
    expect_ttft = sum((r.first_token_s or 0) - r.arrival_s <= ttft_target for r in result.records)
    expect_both = sum(
        (r.first_token_s or 0) - r.arrival_s <= ttft_target and meets_tbt(r, config.slo.tbt_quantile)
        for r in result.records
    )
    assert m.ttft_attainment == pytest.approx(expect_ttft / 6)
    assert m.slo_attainment == pytest.approx(expect_both / 6)
    assert m.slo_attainment < 1.0  # the recompute stalls break some TBT targets
    assert m.goodput_rps == pytest.approx(expect_both / m.duration_s)
    assert m.preemptions == m.preemptions_recompute == result.stats.num_recomputes > 0
    assert m.p99_tbt_s >= m.p50_tbt_s == pytest.approx(0.010)
    assert 0 < m.kv_used_frac <= 1
    assert m.kv_used_frac + m.kv_reserved_unused_frac + m.kv_free_frac == pytest.approx(1.0)


def test_miss_counter_stops_after_the_allowed_misses() -> None:
    config = make_config("vllm")
    stop = _MissCounter(config, allowed=1)
    late = record(10, 0, first_token_s=30.0)  # TTFT 30 s misses the 2 s target
    good = record(10, 0)
    recs = [good, late]
    assert not stop(recs, 1.0)
    recs.append(late)
    assert stop(recs, 2.0)
    assert stop.missed == 2 and stop.seen == 3
