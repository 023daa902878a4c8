"""`ecoserve` mechanisms (1)-(5) of DESIGN.md, each also with its switch in EcoServeConfig off.
Predictions are given explicitly; padding is off unless under test."""

from __future__ import annotations

import bisect

import pytest
from conftest import step

from ecosched import (
    EngineView,
    Prediction,
    PreemptMode,
    PrefillChunk,
    RequestStatus,
)
from policies.eco_helpers import BS, DEFAULTS, blocks, eco, ids, req


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
