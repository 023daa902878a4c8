"""`ecoserve`: one group of tests per mechanism of DESIGN.md, each also showing that its switch in
EcoServeConfig turns it off. Predictions are given explicitly; padding is off unless under test."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Any

import pytest
from conftest import make_request, make_scheduler, step

from ecosched import (
    Admission,
    Decision,
    EngineView,
    Prediction,
    Preemption,
    PreemptMode,
    PrefillChunk,
    Request,
    RequestStatus,
    Scheduler,
    TopUp,
)
from ecosched.config import EcoServeConfig, LatencyConfig

BS = 16
DEFAULTS = EcoServeConfig()


def blocks(tokens: int) -> int:
    return -(-tokens // BS)


def eco(
    num_gpu_blocks: int,
    *,
    num_cpu_blocks: int = 64,
    scheduler: dict[str, Any] | None = None,
    slo: dict[str, Any] | None = None,
    latency: dict[str, Any] | None = None,
    pad_cfg: dict[str, Any] | None = None,
    **ecoserve: Any,
) -> Scheduler:
    ecoserve.setdefault("padding", False)
    sections: dict[str, Any] = {
        "cache": {
            "block_size": BS,
            "num_gpu_blocks": num_gpu_blocks,
            "num_cpu_blocks": num_cpu_blocks,
            "max_model_len": 2048,
        },
        "scheduler": scheduler or {},
        "policies": {"ecoserve": ecoserve},
        "predictor": {"kind": "constant", "constant_tokens": 64, "padding": pad_cfg or {}},
        "latency": latency or {},
    }
    if slo is not None:
        sections["slo"] = slo
    return make_scheduler("ecoserve", **sections)


def req(rid: str, prompt: int = 32, max_output: int = 256, arrival: float = 0.0, slo: str | None = None) -> Request:
    return make_request(rid, prompt=prompt, max_output=max_output, arrival=arrival, slo=slo)


def ids(admissions: Iterable[Admission]) -> list[str]:
    return [a.request_id for a in admissions]


# ---------------------------------------------------------------- (1) decode first
@pytest.mark.parametrize("decode_first", [True, False])
def test_1_decodes_are_carried_before_prefills(decode_first: bool) -> None:
    budget = 64
    s = eco(64, scheduler={"max_num_batched_tokens": budget}, dynamic_budget=False, decode_first=decode_first)
    s.add_request(req("dec", prompt=16), Prediction(32))
    step(s)
    s.add_request(req("pre", prompt=300, arrival=1.0), Prediction(32))

    d, _ = step(s, 1.0)

    if decode_first:
        assert d.decodes == ("dec",)
        assert d.prefills == (PrefillChunk("pre", 0, budget - 1, False),)
    else:  # the prefill takes the whole budget; the decode stalls
        assert d.decodes == ()
        assert d.prefills == (PrefillChunk("pre", 0, budget, False),)


# ---------------------------------------------------------------- (2) time-synced batching
def _waiting_key(arrival: float, predicted: int, ttft_s: float) -> float:
    return DEFAULTS.slack_weight * (arrival + ttft_s) + DEFAULTS.length_weight_s_per_token * predicted


@pytest.mark.parametrize("time_synced", [True, False])
def test_2_a_step_admits_one_predicted_length_bucket_together(time_synced: bool) -> None:
    seats = 2
    s = eco(64, scheduler={"max_num_seqs": seats}, time_synced=time_synced)
    ttft_s = s.slo_classes["interactive"].ttft_s
    workload = {"A": (0.0, 20), "B": (0.1, 100), "C": (0.2, 25), "D": (0.3, 110)}
    for rid, (arrival, predicted) in workload.items():
        s.add_request(req(rid, arrival=arrival), Prediction(predicted))

    by_priority = sorted(workload, key=lambda r: _waiting_key(*workload[r], ttft_s))
    edges = sorted(DEFAULTS.rl_bucket_edges)
    bucket = {r: bisect.bisect_left(edges, workload[r][1]) for r in workload}
    head_bucket = [r for r in by_priority if bucket[r] == bucket[by_priority[0]]]
    assert by_priority[:seats] != head_bucket[:seats]  # the two orders differ here

    d = s.schedule(0.3)

    assert ids(d.admitted) == (head_bucket[:seats] if time_synced else by_priority[:seats])


def test_2_requests_admitted_together_from_one_bucket_form_a_group() -> None:
    s = eco(64, scheduler={"max_num_seqs": 8})
    for rid, predicted in {"A": 20, "B": 25, "C": 100}.items():
        s.add_request(req(rid), Prediction(predicted))
    s.schedule(0.0)
    s.add_request(req("D", arrival=0.5), Prediction(22))
    later = s.schedule(0.5)

    assert ids(later.admitted) == ["D"]
    group = {rid: s.get(rid).group for rid in "ABCD"}
    assert group["A"] == group["B"]  # same step, same bucket
    assert group["C"] != group["A"]  # same step, another bucket
    assert group["D"] != group["A"]  # same bucket, a later step
    assert group["D"][1] == group["A"][1]


# ---------------------------------------------------------------- (3) reservation for the predicted length
@pytest.mark.parametrize("reserve_predicted", [True, False])
def test_3_admission_reserves_prompt_plus_predicted_output(reserve_predicted: bool) -> None:
    prompt, predicted = 40, 50
    s = eco(64, reserve_predicted=reserve_predicted)
    s.add_request(req("a", prompt=prompt), Prediction(predicted))

    d, _ = step(s)

    expected = blocks(prompt + predicted) if reserve_predicted else blocks(prompt)
    assert [(a.request_id, a.num_blocks) for a in d.admitted] == [("a", expected)]
    view = s.ledger.view("a")
    assert view.owned == expected
    assert view.used == blocks(prompt)


def test_3_reservation_is_capped_at_max_output() -> None:
    prompt, max_output = 40, 30
    s = eco(64)
    s.add_request(req("a", prompt=prompt, max_output=max_output), Prediction(500))
    d, _ = step(s)
    assert d.admitted[0].num_blocks == blocks(prompt + max_output)


# ---------------------------------------------------------------- (4) KV pipelining
HOST_PROMPT = 32


def _slack(host_capacity_blocks: int, host_computed: int, guest_prompt: int, guest_output: int, margin: int) -> int:
    """CacheOPT's test a_j - (u_j + o_i) - (p_i + o_i) - b: feasible when >= 0."""
    a = host_capacity_blocks * BS
    return a - (host_computed + guest_output) - (guest_prompt + guest_output) - margin


@pytest.mark.parametrize(
    ("guest_output", "margin", "feasible"),
    [(100, 16, True), (180, 16, False), (165, 16, False), (165, 0, True)],
)
def test_4_guest_borrows_a_hosts_unused_reservation_only_when_feasible(
    guest_output: int, margin: int, feasible: bool
) -> None:
    host_output, guest_prompt = 400, 64
    host_blocks = blocks(HOST_PROMPT + host_output)
    s = eco(host_blocks + 5, global_reserve_fraction=0.0, pipelining_margin_tokens=margin)
    s.add_request(req("H", prompt=HOST_PROMPT, max_output=host_output), Prediction(host_output))
    step(s)
    s.add_request(req("G", prompt=guest_prompt, max_output=guest_output, arrival=1.0), Prediction(guest_output))
    guest_blocks = blocks(guest_prompt + guest_output)
    host_computed = HOST_PROMPT + 1  # the host decodes first in the step
    assert guest_blocks > s.ledger.num_admittable_blocks  # the free pool cannot take the guest
    assert host_blocks - blocks(host_computed) >= guest_blocks  # the host has the spare blocks either way
    assert (_slack(host_blocks, host_computed, guest_prompt, guest_output, margin) >= 0) is feasible

    d, _ = step(s, 1.0)

    if feasible:
        assert [(a.request_id, a.num_blocks, a.host_id) for a in d.admitted] == [("G", guest_blocks, "H")]
        g, h = s.ledger.view("G"), s.ledger.view("H")
        assert (g.owned, g.borrowed, g.host) == (0, guest_blocks, "H")
        assert h.lent == guest_blocks and h.guests == ("G",)
        assert s.get("G").status is RequestStatus.RUNNING
        s.check_invariants()
    else:
        assert d.admitted == ()
        assert s.get("G").status is RequestStatus.WAITING


def test_4_best_fit_host_is_the_feasible_one_with_least_slack() -> None:
    big, small = 400, 200
    guest_prompt, guest_output = 32, 40
    num_blocks = blocks(HOST_PROMPT + big) + blocks(HOST_PROMPT + small) + 2
    s = eco(num_blocks, global_reserve_fraction=0.0)
    s.add_request(req("H_big", prompt=HOST_PROMPT, max_output=big), Prediction(big))
    s.add_request(req("H_small", prompt=HOST_PROMPT, max_output=small), Prediction(small))
    step(s)
    assert s.ledger.num_admittable_blocks == 2
    s.add_request(req("G", prompt=guest_prompt, max_output=guest_output, arrival=1.0), Prediction(guest_output))
    margin = DEFAULTS.pipelining_margin_tokens
    slacks = {
        h: _slack(blocks(HOST_PROMPT + o), HOST_PROMPT + 1, guest_prompt, guest_output, margin)
        for h, o in (("H_big", big), ("H_small", small))
    }
    assert 0 <= slacks["H_small"] < slacks["H_big"]

    d, _ = step(s, 1.0)

    assert [(a.request_id, a.host_id) for a in d.admitted] == [("G", "H_small")]
    assert s.ledger.view("H_big").lent == 0


def test_4_pipelining_off_leaves_the_guest_waiting() -> None:
    host_output, guest_prompt, guest_output = 400, 64, 100
    host_blocks = blocks(HOST_PROMPT + host_output)
    s = eco(host_blocks + 5, global_reserve_fraction=0.0, pipelining=False)
    s.add_request(req("H", prompt=HOST_PROMPT, max_output=host_output), Prediction(host_output))
    step(s)
    s.add_request(req("G", prompt=guest_prompt, max_output=guest_output, arrival=1.0), Prediction(guest_output))
    d, _ = step(s, 1.0)
    assert d.admitted == ()
    assert s.ledger.view("H").lent == 0


# ---------------------------------------------------------------- (5) priority
@pytest.mark.parametrize("kv_weight_s", [DEFAULTS.kv_weight_s, 0.0])
def test_5_running_prefill_holding_more_kv_gets_the_budget_first(kv_weight_s: float) -> None:
    # Two requests mid-prefill compete for a step's budget only after a preemption hands budget back,
    # so the scene is built step by step (incremental KV, fixed budget, classes not ranked):
    #   steps 1-5: V (batch, 11 blocks) prefills and decodes; S (batch) is mid-prefill; the cache is full;
    #   step 6:    S's next chunk needs blocks: S itself is the victim (longest remaining), swapped out;
    #              W and then P (interactive) join, P with a first chunk;
    #   step 7:    P's chunk needs blocks: V is swapped out, and the token of V's decode resumes S.
    # Now P (admitted first) and S (resumed later, more KV) are both mid-prefill.
    budget, v_prompt, s_prompt, p_prompt = 48, 169, 150, 200
    s = eco(
        16,
        scheduler={"max_num_batched_tokens": budget},
        dynamic_budget=False,
        reserve_predicted=False,
        proactive_topup=False,
        pipelining=False,
        slo_classes_first=False,
        preempt_mode="swap",
        victim_remaining_bucket_tokens=8,
        kv_weight_s=kv_weight_s,
    )
    s.add_request(req("V", prompt=v_prompt, max_output=64, slo="batch"), Prediction(8))
    s.add_request(req("S", prompt=s_prompt, max_output=64, arrival=0.1, slo="batch"), Prediction(60))
    for i in range(5):
        step(s, float(i))
    assert s.ledger.num_free_blocks == 0
    assert 0 < s.get("S").num_computed_tokens < s_prompt
    s.add_request(req("W", prompt=30, max_output=64, arrival=5.0), Prediction(8))
    s.add_request(req("P", prompt=p_prompt, max_output=8, arrival=5.0), Prediction(8))

    d, _ = step(s, 5.0)
    assert [(x.request_id, x.mode) for x in d.preempted] == [("S", PreemptMode.SWAP)]
    assert ids(d.admitted) == ["W", "P"]
    d, _ = step(s, 6.0)
    assert [x.request_id for x in d.preempted] == ["V"]
    assert d.swapped_in == ("S",)
    mid = [r.request_id for r in s.running if r.num_tokens_to_compute > 1]
    assert mid == ["P", "S"]  # running order: P first
    assert s.ledger.view("S").used > s.ledger.view("P").used

    d, _ = step(s, 7.0)

    first = d.prefills[0]
    assert first.request_id == ("S" if kv_weight_s else "P")
    assert first.num_tokens == budget - len(d.decodes)  # the other one gets nothing this step


@pytest.mark.parametrize("kv_weight_s", [DEFAULTS.kv_weight_s, 0.0])
def test_5_swapped_requests_holding_more_kv_resume_first(kv_weight_s: float) -> None:
    # Incremental KV and a fixed budget make every block count:
    #   step 1: v_small (1 block) and v_big (7 blocks), both batch, are admitted;
    #   step 2: q (interactive, prompt = 2 blocks exactly) and p (interactive, long prompt) join,
    #           p gets the rest of the budget as a first chunk; the cache is full;
    #   step 3: q's first decode needs a block: v_small (smallest KV) is swapped out; p's next chunk
    #           needs exactly v_big's 7 blocks: v_big is swapped out. Nothing is left to resume into.
    # Then q and p end, and the engine has room for v_big's 7 blocks only: whoever resumes first wins.
    budget, small_prompt, big_prompt, q_prompt, p_prompt = 114, 8, 100, 2 * BS, 200
    p_chunk2 = budget - 2 - q_prompt  # after v_small's and v_big's decodes
    p_chunk3 = budget - 2  # after v_big's and q's decodes (v_small's is taken back)
    assert blocks(p_chunk2 + p_chunk3) - blocks(p_chunk2) == blocks(big_prompt + 1)
    num_blocks = blocks(small_prompt + 1) + blocks(big_prompt + 1) + blocks(q_prompt) + blocks(p_chunk2)
    s = eco(
        num_blocks,
        scheduler={"max_num_batched_tokens": budget},
        dynamic_budget=False,
        reserve_predicted=False,
        proactive_topup=False,
        preempt_mode="swap",
        victim_kv_bucket_blocks=2,
        kv_weight_s=kv_weight_s,
    )
    s.add_request(req("v_small", prompt=small_prompt, max_output=64, slo="batch"), Prediction(8))
    s.add_request(req("v_big", prompt=big_prompt, max_output=64, arrival=0.1, slo="batch"), Prediction(8))
    assert ids(step(s)[0].admitted) == ["v_small", "v_big"]
    s.add_request(req("q", prompt=q_prompt, max_output=64, arrival=1.0), Prediction(1))
    assert p_prompt > p_chunk2 + p_chunk3  # p is still in prefill after step 3
    s.add_request(req("p", prompt=p_prompt, max_output=8, arrival=1.0), Prediction(8))
    d, _ = step(s, 1.0)
    assert ids(d.admitted) == ["q", "p"]
    assert s.ledger.num_free_blocks == 0

    d, _ = step(s, 2.0)
    assert [(x.request_id, x.mode) for x in d.preempted] == [("v_small", PreemptMode.SWAP), ("v_big", PreemptMode.SWAP)]
    assert d.swapped_in == ()
    assert s.ledger.cpu_blocks("v_big") > s.ledger.cpu_blocks("v_small")
    s.abort("q", 2.5)
    s.abort("p", 2.5)

    d = s.schedule(3.0, EngineView(num_free_blocks=blocks(big_prompt + 2)))

    # more KV first; with the weight at 0, admission order (v_small was admitted first)
    assert d.swapped_in == (("v_big",) if kv_weight_s else ("v_small",))


@pytest.mark.parametrize("slack_weight", [DEFAULTS.slack_weight, 0.0])
def test_5_earlier_ttft_deadline_goes_first(slack_weight: float) -> None:
    slo = {
        "classes": {
            "fast": {"ttft_ms": 1000.0, "tbt_ms": 100.0, "rank": 0},
            "slow": {"ttft_ms": 5000.0, "tbt_ms": 100.0, "rank": 0},
        },
        "default_class": "fast",
    }
    s = eco(64, scheduler={"max_num_seqs": 1}, slo=slo, slack_weight=slack_weight)
    s.add_request(req("slow", arrival=0.0, slo="slow"), Prediction(50))
    s.add_request(req("fast", arrival=1.0, slo="fast"), Prediction(50))
    deadline = {r: s.get(r).request.arrival_s + s.get(r).slo.ttft_s for r in ("slow", "fast")}
    assert deadline["fast"] < deadline["slow"]

    d = s.schedule(1.0)

    assert ids(d.admitted) == (["fast"] if slack_weight else ["slow"])  # off: queue order


@pytest.mark.parametrize("length_weight", [DEFAULTS.length_weight_s_per_token, 0.0])
def test_5_shorter_predicted_output_first_when_deadlines_tie(length_weight: float) -> None:
    s = eco(64, scheduler={"max_num_seqs": 1}, length_weight_s_per_token=length_weight)
    s.add_request(req("long", arrival=0.0), Prediction(200))
    s.add_request(req("short", arrival=0.0), Prediction(20))

    d = s.schedule(0.0)

    assert ids(d.admitted) == (["short"] if length_weight else ["long"])


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
