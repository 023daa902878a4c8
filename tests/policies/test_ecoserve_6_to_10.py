"""`ecoserve` mechanisms (6)-(10) of DESIGN.md, each also with its switch in EcoServeConfig off.
Predictions are given explicitly; padding is off unless under test."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import step

from ecosched import (
    Decision,
    Prediction,
    Preemption,
    PreemptMode,
    PrefillChunk,
    RequestStatus,
    Scheduler,
    TopUp,
)
from ecosched.config import LatencyConfig
from policies.eco_helpers import BS, DEFAULTS, blocks, eco, ids, req

# ---------------------------------------------------------------- (6) padding
QUANTILES = ((0.5, 100), (0.7, 120), (0.9, 150), (0.99, 190))


def test_6_reservation_uses_the_prediction_quantile_at_q() -> None:
    prompt = 40
    pad = {"quantile": 0.9, "rate_adaptive": False}
    s = eco(64, pad_cfg=pad, padding=True)
    st = s.add_request(req("a", prompt=prompt), Prediction(100, QUANTILES))
    expected = dict(QUANTILES)[pad["quantile"]]
    assert st.padded_output_tokens == expected
    assert st.predicted_output_tokens == 100
    d, _ = step(s)
    assert d.admitted[0].num_blocks == blocks(prompt + expected)


def test_6_padding_off_reserves_the_point_prediction() -> None:
    prompt = 40
    s = eco(64, pad_cfg={"quantile": 0.9}, padding=False)
    st = s.add_request(req("a", prompt=prompt), Prediction(100, QUANTILES))
    assert st.padded_output_tokens == st.predicted_output_tokens == 100
    d, _ = step(s)
    assert d.admitted[0].num_blocks == blocks(prompt + 100)


def test_6_without_quantiles_the_point_is_padded_by_the_fallback_margin() -> None:
    margin = 0.25
    s = eco(64, pad_cfg={"fallback_margin": margin, "rate_adaptive": False}, padding=True)
    st = s.add_request(req("a"), Prediction(100))
    assert st.padded_output_tokens == 100 + round(100 * margin)


@pytest.mark.parametrize("rate_adaptive", [True, False])
def test_6_quantile_falls_at_high_arrival_rate(rate_adaptive: bool) -> None:
    pad = {
        "quantile": 0.9,
        "quantile_at_high_rate": 0.7,
        "low_rate_rps": 1.0,
        "high_rate_rps": 20.0,
        "rate_adaptive": rate_adaptive,
    }
    at = dict(QUANTILES)
    s = eco(64, pad_cfg=pad, padding=True)
    first = s.add_request(req("r0", arrival=0.0), Prediction(100, QUANTILES))  # one arrival: no rate yet
    gap = 1.0 / (2 * pad["high_rate_rps"])  # twice the high rate
    burst = [s.add_request(req(f"r{i}", arrival=i * gap), Prediction(100, QUANTILES)) for i in range(1, 4)]

    assert first.padded_output_tokens == at[pad["quantile"]]
    expected = at[pad["quantile_at_high_rate"]] if rate_adaptive else at[pad["quantile"]]
    assert [st.padded_output_tokens for st in burst] == [expected] * 3

    slow = eco(64, pad_cfg=pad, padding=True)  # below low_rate_rps: q stays at quantile
    gap = 2.0 / pad["low_rate_rps"]
    padded = [
        slow.add_request(req(f"r{i}", arrival=i * gap), Prediction(100, QUANTILES)).padded_output_tokens
        for i in range(4)
    ]
    assert padded == [at[pad["quantile"]]] * 4


# ---------------------------------------------------------------- (7) proactive top-up
def _first_topup(s: Scheduler, rid: str, max_steps: int = 200) -> tuple[int, TopUp, int]:
    """Step until `rid` is topped up; returns (computed tokens after that step, the TopUp, capacity before)."""
    now = 0.0
    for _ in range(max_steps):
        cap_before = s.ledger.capacity_blocks(rid)
        d, _ = step(s, now)
        now += 0.05
        for t in d.topups:
            if t.request_id == rid:
                return s.get(rid).num_computed_tokens, t, cap_before
    raise AssertionError("no top-up")


@pytest.mark.parametrize("proactive", [True, False])
def test_7_reservation_is_extended_within_lookahead_of_exhaustion(proactive: bool) -> None:
    prompt, predicted = 30, 20
    s = eco(64, proactive_topup=proactive)
    s.add_request(req("r", prompt=prompt, max_output=200), Prediction(predicted))
    step(s)
    cap_tokens = blocks(prompt + predicted) * BS
    assert s.ledger.capacity_blocks("r") * BS == cap_tokens

    computed, topup, cap_before = _first_topup(s, "r")

    assert cap_before * BS == cap_tokens
    lookahead = DEFAULTS.topup_lookahead_steps
    if proactive:  # the first step that leaves fewer than `lookahead` reserved tokens
        assert computed == cap_tokens - lookahead + 1
    else:  # only when the reservation is exceeded
        assert computed == cap_tokens + 1
    assert topup.num_blocks == blocks(max(1, int(DEFAULTS.topup_fraction * predicted)))


@pytest.mark.parametrize("proactive", [True, False])
def test_7_topups_draw_on_a_global_reserve_that_admissions_cannot_take(proactive: bool) -> None:
    num_blocks, prompt, predicted = 100, 30, 20
    reserve = int(DEFAULTS.global_reserve_fraction * num_blocks)  # with proactive top-up on
    r_blocks = blocks(prompt + predicted)
    filler_tokens = (num_blocks - reserve - r_blocks) * BS  # leaves exactly `reserve` blocks free
    s = eco(num_blocks, pipelining=False, proactive_topup=proactive)
    s.add_request(req("filler", prompt=16, max_output=filler_tokens), Prediction(filler_tokens - 16))
    s.add_request(req("r", prompt=prompt, max_output=200), Prediction(predicted))
    d, _ = step(s)
    assert sorted(ids(d.admitted)) == ["filler", "r"]
    assert s.ledger.num_free_blocks == reserve
    assert s.ledger.num_admittable_blocks == (0 if proactive else reserve)
    s.add_request(req("w", prompt=16, max_output=16, arrival=0.5), Prediction(10))
    assert blocks(16 + 10) <= reserve  # w would fit in the reserve

    admitted, topups = [], []
    now = 1.0
    while s.get("r").num_computed_tokens < r_blocks * BS:
        d, _ = step(s, now)
        now += 0.05
        admitted += ids(d.admitted)
        topups += [t for t in d.topups if t.request_id == "r"]
    if proactive:
        assert admitted == []  # the reserve is not for admissions
        assert topups and s.ledger.num_free_blocks == reserve - sum(t.num_blocks for t in topups)
    else:
        assert admitted == ["w"]  # no reserve: the free blocks go to the next admission


# ---------------------------------------------------------------- (8) victims, swap or recompute
def _run_until_preemption(s: Scheduler, max_steps: int = 50) -> tuple[Decision, dict[str, int]]:
    now = 1.0
    for _ in range(max_steps):
        before = {r.request_id: r.num_computed_tokens for r in s.running}
        d, _ = step(s, now)
        now += 0.05
        if d.preempted:
            return d, before
    raise AssertionError("no preemption")


def _overflow_scenario(
    others: list[tuple[str, int, int, str, float]], q_arrival: float = 0.0, **cfg: Any
) -> tuple[Scheduler, list[str]]:
    """`q` (interactive) is predicted at 2 tokens and outgrows its reservation at its third decode;
    the cache holds exactly every reservation, so someone must leave. Returns (scheduler, admit order)."""
    q_prompt, q_pred = 30, 2
    reservations = blocks(q_prompt + q_pred) + sum(blocks(p + o) for _, p, o, _, _ in others)
    cfg.setdefault("num_cpu_blocks", 64)
    cfg.setdefault("proactive_topup", False)  # no early top-ups: the cache stays exactly full
    s = eco(reservations, **cfg)
    s.add_request(req("q", prompt=q_prompt, max_output=64, arrival=q_arrival), Prediction(q_pred))
    for rid, prompt, predicted, slo, arrival in others:
        s.add_request(
            req(rid, prompt=prompt, max_output=max(64, predicted), arrival=arrival, slo=slo), Prediction(predicted)
        )
    d, _ = step(s)
    assert len(d.admitted) == 1 + len(others)
    assert s.ledger.num_admittable_blocks == 0
    return s, ids(d.admitted)


@pytest.mark.parametrize("bucketed", [True, False])
def test_8_victim_has_the_loosest_tbt_first(bucketed: bool) -> None:
    # A: batch (loose TBT); B: interactive with the longest predicted remaining output
    s, order = _overflow_scenario(
        [("A", 16, 16, "batch", 0.0), ("B", 16, 200, "interactive", 0.0)], bucketed_victims=bucketed
    )
    assert s.get("A").slo.tbt_s > s.get("B").slo.tbt_s
    d, _ = _run_until_preemption(s)
    newest = order[-1]
    assert newest == "B"
    assert [p.request_id for p in d.preempted] == (["A"] if bucketed else [newest])
    assert "q" in d.decodes


@pytest.mark.parametrize("bucketed", [True, False])
def test_8_then_the_longest_predicted_remaining(bucketed: bool) -> None:
    # all interactive; B (long remaining) arrives first and is admitted first, A is the newest
    s, order = _overflow_scenario(
        [("B", 16, 200, "interactive", 0.0), ("A", 16, 16, "interactive", 0.5)],
        q_arrival=0.5,
        bucketed_victims=bucketed,
    )
    width = DEFAULTS.victim_remaining_bucket_tokens
    rem = {r: s.get(r).predicted_remaining_tokens for r in ("A", "B")}
    assert rem["B"] // width > rem["A"] // width
    d, _ = _run_until_preemption(s)
    assert order[-1] == "A"
    assert [p.request_id for p in d.preempted] == (["B"] if bucketed else ["A"])


@pytest.mark.parametrize("bucketed", [True, False])
def test_8_then_the_smallest_kv_footprint(bucketed: bool) -> None:
    kv_width = 2
    s, order = _overflow_scenario(
        [("A", 8, 40, "interactive", 0.1), ("B", 80, 40, "interactive", 0.2)],
        bucketed_victims=bucketed,
        victim_kv_bucket_blocks=kv_width,
    )
    assert order[-1] == "B"
    d, before = _run_until_preemption(s)
    kv_bucket = {r: blocks(before[r]) // kv_width for r in ("q", "A", "B")}
    assert kv_bucket["A"] < kv_bucket["q"] < kv_bucket["B"]
    width = DEFAULTS.victim_remaining_bucket_tokens
    assert s.get("A").predicted_remaining_tokens // width == 0 == s.get("B").predicted_remaining_tokens // width
    assert [p.request_id for p in d.preempted] == (["A"] if bucketed else ["B"])


# a latency model whose swap/recompute crossover (base / (swap per token - per_token)) is about 94 tokens
LATENCY = {"base_ms": 20.0, "per_token_ms": 0.05, "kv_bytes_per_token": 524288, "pcie_gb_per_s": 4.0}


def _cheaper_mode(num_tokens: int) -> PreemptMode:
    lat = LatencyConfig(**LATENCY)
    swap_ms = 2 * num_tokens * lat.kv_bytes_per_token / (lat.pcie_gb_per_s * 1e9) * 1e3
    recompute_ms = lat.base_ms + lat.per_token_ms * num_tokens
    return PreemptMode.SWAP if swap_ms < recompute_ms else PreemptMode.RECOMPUTE


@pytest.mark.parametrize(
    ("victim_prompt", "preempt_mode", "num_cpu_blocks"),
    [
        (16, "cost", 64),
        (240, "cost", 64),
        (240, "swap", 64),
        (16, "recompute", 64),
        (16, "swap", 0),
    ],
)
def test_8_swap_or_recompute(victim_prompt: int, preempt_mode: str, num_cpu_blocks: int) -> None:
    s, _ = _overflow_scenario(
        [("A", victim_prompt, 16, "batch", 0.0), ("B", 16, 200, "interactive", 0.0)],
        preempt_mode=preempt_mode,
        latency=LATENCY,
        num_cpu_blocks=num_cpu_blocks,
        pipelining=False,  # keep a recomputed victim out of B's spare blocks (see the thrash test)
    )
    d, before = _run_until_preemption(s)
    context = before["A"]
    assert _cheaper_mode(16 + 2) is PreemptMode.SWAP and _cheaper_mode(240 + 2) is PreemptMode.RECOMPUTE

    if preempt_mode == "cost":
        expected = _cheaper_mode(context)
    elif preempt_mode == "swap" and num_cpu_blocks >= blocks(context):
        expected = PreemptMode.SWAP
    else:  # forced recompute, or no host memory to swap into
        expected = PreemptMode.RECOMPUTE
    assert d.preempted == (Preemption("A", expected),)
    a = s.get("A")
    if expected is PreemptMode.SWAP:
        assert a.status is RequestStatus.SWAPPED
        assert s.ledger.cpu_blocks("A") == blocks(context)
        assert a.num_computed_tokens == context
    else:
        assert a.status is RequestStatus.WAITING
        assert a.num_computed_tokens == 0
        assert s.ledger.cpu_blocks("A") == 0


@pytest.mark.parametrize("preempt_mode", ["swap", "recompute"])
def test_8_a_victim_does_not_rejoin_the_batch_in_the_step_that_preempted_it(preempt_mode: str) -> None:
    # q1 and q2 each outgrow a 2-block reservation at their third decode. For q1 the smallest victim,
    # v_small (1 block), leaves; for q2, v_big (7 blocks) leaves, and 6 blocks are free again. v_small
    # must not come straight back (swap in, or re-admission) in that same step: it was preempted to
    # make room, and moving it out and back in one step only costs a copy or a recompute.
    small_prompt, big_prompt, q_prompt, v_pred = 8, 100, 31, 8
    num_blocks = 2 * blocks(q_prompt + 1) + blocks(small_prompt + v_pred) + blocks(big_prompt + v_pred)
    s = eco(num_blocks, preempt_mode=preempt_mode, victim_kv_bucket_blocks=2, proactive_topup=False)
    s.add_request(req("q1", prompt=q_prompt, max_output=64), Prediction(1))
    s.add_request(req("q2", prompt=q_prompt, max_output=64), Prediction(1))
    s.add_request(req("v_small", prompt=small_prompt, max_output=64, arrival=0.1, slo="batch"), Prediction(v_pred))
    s.add_request(req("v_big", prompt=big_prompt, max_output=64, arrival=0.2, slo="batch"), Prediction(v_pred))
    assert ids(step(s)[0].admitted) == ["q1", "q2", "v_small", "v_big"]
    step(s, 1.0)

    d, _ = step(s, 2.0)

    assert [x.request_id for x in d.preempted] == ["v_small", "v_big"]
    assert "v_small" not in d.swapped_in
    assert "v_small" not in ids(d.admitted)
    assert s.get("v_small").status is not RequestStatus.RUNNING


# ---------------------------------------------------------------- (9) dynamic budget
LAT9 = {"base_ms": 5.0, "per_token_ms": 0.07, "per_context_token_us": 30.0}
SLO9 = {
    "classes": {
        "interactive": {"ttft_ms": 2000.0, "tbt_ms": 100.0, "rank": 0},
        "batch": {"ttft_ms": 20000.0, "tbt_ms": 500.0, "rank": 1},
        "realtime": {"ttft_ms": 500.0, "tbt_ms": 5.0, "rank": 0},
    },
    "default_class": "interactive",
}
MAX_TOKENS = 2048


def _expected_budget(tbt_ms: float, context_tokens: int) -> int:
    """Largest budget in [min_budget, max] whose step time base + per_token*B + per_context*C fits the target."""
    lat = LatencyConfig(**LAT9)
    target_ms = tbt_ms * DEFAULTS.budget_safety
    lo = DEFAULTS.min_budget_tokens
    best = (target_ms - lat.base_ms - lat.per_context_token_us / 1e3 * context_tokens) / lat.per_token_ms
    return max(lo, min(MAX_TOKENS, int(best)))


def eco9(dynamic: bool = True) -> Scheduler:
    return eco(256, scheduler={"max_num_batched_tokens": MAX_TOKENS}, latency=LAT9, slo=SLO9, dynamic_budget=dynamic)


def test_9_budget_is_the_maximum_with_nothing_running() -> None:
    s = eco9()
    s.add_request(req("a", prompt=100), Prediction(50))
    assert s.schedule(0.0).token_budget == MAX_TOKENS


def test_9_budget_shrinks_as_the_tightest_tbt_tightens() -> None:
    s = eco9()
    s.add_request(req("loose", prompt=100, slo="batch"), Prediction(50))
    step(s)
    d, _ = step(s, 1.0)
    loose_budget = d.token_budget
    assert loose_budget == _expected_budget(500.0, 100)

    s.add_request(req("tight", prompt=200, arrival=1.5), Prediction(50))
    step(s, 2.0)
    s.add_request(req("long", prompt=1500, max_output=64, arrival=2.5, slo="batch"), Prediction(50))
    context = sum(r.num_computed_tokens for r in s.running)
    d, _ = step(s, 3.0)

    expected = _expected_budget(100.0, context)
    assert d.token_budget == expected < loose_budget
    assert d.num_scheduled_tokens <= expected
    assert d.prefills == (PrefillChunk("long", 0, expected - len(d.decodes), False),)  # the budget caps the step


def test_9_budget_shrinks_as_context_grows() -> None:
    budgets = {}
    for prompt in (100, 400):
        s = eco9()
        s.add_request(req("a", prompt=prompt), Prediction(50))
        step(s)
        budgets[prompt] = step(s, 1.0)[0].token_budget
        assert budgets[prompt] == _expected_budget(100.0, prompt)
    assert budgets[400] < budgets[100]


def test_9_budget_never_falls_below_its_floor() -> None:
    s = eco9()
    s.add_request(req("rt", prompt=100, slo="realtime"), Prediction(50))
    step(s)
    assert step(s, 1.0)[0].token_budget == DEFAULTS.min_budget_tokens


def test_9_dynamic_budget_off_keeps_the_fixed_budget() -> None:
    s = eco9(dynamic=False)
    s.add_request(req("tight", prompt=400), Prediction(50))
    step(s)
    assert step(s, 1.0)[0].token_budget == MAX_TOKENS


# ---------------------------------------------------------------- (10) SLO classes first
@pytest.mark.parametrize("classes_first", [True, False])
def test_10_tight_class_is_admitted_before_an_earlier_loose_one(classes_first: bool) -> None:
    s = eco(64, scheduler={"max_num_seqs": 1}, slo_classes_first=classes_first)
    s.add_request(req("loose", arrival=0.0, slo="batch"), Prediction(50))
    s.add_request(req("tight", arrival=19.0, slo="interactive"), Prediction(50))
    loose, tight = s.get("loose"), s.get("tight")
    assert tight.slo.rank < loose.slo.rank
    assert loose.request.arrival_s + loose.slo.ttft_s < tight.request.arrival_s + tight.slo.ttft_s

    d = s.schedule(19.0)

    assert ids(d.admitted) == (["tight"] if classes_first else ["loose"])  # off: the earlier deadline
