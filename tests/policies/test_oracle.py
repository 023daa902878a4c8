"""`oracle`: EcoServe fed the true response lengths. It reserves prompt + true output at admission and,
with exact predictions, never needs a top-up or a preemption."""

from __future__ import annotations

from typing import Any

from conftest import make_request, make_scheduler

from ecosched import Decision, Scheduler, StepOutcome, Stop

BS = 16


def blocks(tokens: int) -> int:
    return -(-tokens // BS)


def oracle(num_gpu_blocks: int, **ecoserve: Any) -> Scheduler:
    return make_scheduler(
        "oracle",
        cache={"block_size": BS, "num_gpu_blocks": num_gpu_blocks, "num_cpu_blocks": 64, "max_model_len": 2048},
        predictor={"kind": "constant", "constant_tokens": 7},  # ignored: the policy brings the oracle
        policies={"ecoserve": ecoserve},
    )


def run_like_an_engine(s: Scheduler, max_steps: int = 2000) -> list[Decision]:
    """Step until every request ends; a request stops when it has produced its true output length."""
    decisions: list[Decision] = []
    now = 0.0
    for _ in range(max_steps):
        if not s.num_unfinished:
            return decisions
        d = s.schedule(now)
        decisions.append(d)
        sampled = list(d.decodes) + [c.request_id for c in d.prefills if c.samples_token]
        stops = []
        for rid in sampled:
            st = s.get(rid)
            true_output = st.request.true_output_tokens
            assert true_output is not None
            if st.num_output_tokens >= true_output and rid not in d.length_finished:
                stops.append(Stop(rid))
        now += 0.01
        s.update(StepOutcome(d.step_id, now, tuple(stops)))
        s.check_invariants()
    raise AssertionError("requests did not finish")


def test_reserves_prompt_plus_true_output_from_true_output_tokens() -> None:
    prompt, true_output, max_output = 40, 30, 200
    s = oracle(64)
    st = s.add_request(make_request("a", prompt=prompt, max_output=max_output, true_output=true_output))
    assert st.predicted_output_tokens == st.padded_output_tokens == true_output

    d = s.schedule(0.0)

    assert [(a.request_id, a.num_blocks, a.host_id) for a in d.admitted] == [("a", blocks(prompt + true_output), None)]
    assert s.ledger.view("a").owned == blocks(prompt + true_output)


# (prompt, true output): includes reservations that end exactly on a block boundary and just past one
WORKLOAD = [(40, 30), (64, 16), (100, 28), (16, 47), (33, 95), (70, 10), (48, 48), (20, 60)]


def _tight_workload() -> Scheduler:
    # the cache holds about every reservation at once: no room to waste
    s = oracle(sum(blocks(p + o) for p, o in WORKLOAD))
    for i, (p, o) in enumerate(WORKLOAD):
        s.add_request(make_request(f"r{i}", prompt=p, max_output=4 * o, arrival=0.001 * i, true_output=o))
    return s


def test_exact_predictions_never_preempt() -> None:
    s = _tight_workload()
    decisions = run_like_an_engine(s)
    assert [x for d in decisions for x in d.preempted] == []
    assert s.stats.num_finished == len(WORKLOAD)
    assert s.stats.num_swaps == s.stats.num_recomputes == 0


def test_exact_predictions_never_top_up() -> None:
    # a request ends at its true length, using prompt + true - 1 tokens of KV: its reservation suffices
    s = _tight_workload()
    decisions = run_like_an_engine(s)
    assert [t for d in decisions for t in d.topups] == []
    assert s.stats.num_topups == 0
