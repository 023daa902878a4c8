"""The engine runs less than decided (`withdraw`), preempts on its own (`preempt`), or already holds a
prompt prefix (`set_prefix_hit`); and at most `max_partial_prefills` prompts are part-way at once.
These are what an engine with its own loop (SGLang) needs from the core."""

from __future__ import annotations

import pytest
from conftest import make_scheduler

from ecosched import Prediction, Request, StepOutcome
from ecosched.core.request import RequestStatus
from ecosched.errors import OutcomeError, UnknownRequestError

CACHE = {"block_size": 1, "num_gpu_blocks": 512, "num_cpu_blocks": 0, "max_model_len": 512}


def _step(s, now: float, withdraw: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    d = s.schedule(now)
    if withdraw:
        s.withdraw(withdraw)
    ended = s.update(StepOutcome(d.step_id, now + 0.01))
    s.check_invariants()
    return d, ended


def test_a_withdrawn_decode_runs_in_a_later_step_and_the_request_ends_with_its_exact_length() -> None:
    s = make_scheduler("ecoserve", cache=CACHE)
    s.add_request(Request("a", 10, 5, 0.0), Prediction(5))
    _step(s, 0.0)  # prefill: token 1
    d, _ = _step(s, 0.1, withdraw=("a",))  # the engine sat the decode out
    assert d.decodes == ("a",)
    st = s.get("a")
    assert (st.num_computed_tokens, st.num_output_tokens) == (10, 1)
    assert s.ledger.view("a").used == 10
    ended = []
    for i in range(10):
        ended += _step(s, 0.2 + i / 10)[1]
        if ended:
            break
    assert [(r.request_id, r.num_output_tokens) for r in ended] == [("a", 5)]
    assert s.ledger.num_free_blocks == s.ledger.num_blocks


def test_a_withdrawn_last_token_does_not_end_the_request() -> None:
    s = make_scheduler("ecoserve", cache=CACHE)
    s.add_request(Request("a", 10, 2, 0.0), Prediction(2))
    _step(s, 0.0)
    d, ended = _step(s, 0.1, withdraw=("a",))
    assert d.length_finished == ("a",) and ended == []
    assert s.get("a").status is RequestStatus.RUNNING
    d, ended = _step(s, 0.2)
    assert [(r.request_id, r.num_output_tokens) for r in ended] == [("a", 2)]


def test_a_withdrawn_admission_goes_back_to_the_queue_with_its_reservation_released() -> None:
    s = make_scheduler("ecoserve", cache=CACHE)
    s.add_request(Request("a", 10, 20, 0.0), Prediction(20))
    d = s.schedule(0.0)
    assert [a.request_id for a in d.admitted] == ["a"]
    s.withdraw(["a"])
    assert s.get("a").status is RequestStatus.WAITING
    assert s.ledger.num_free_blocks == s.ledger.num_blocks and "a" not in s.ledger
    assert s.stats.num_withdrawn == 1 and s.stats.num_recomputes == 0
    s.update(StepOutcome(d.step_id, 0.05))
    s.check_invariants()
    d, _ = _step(s, 0.1)
    assert [a.request_id for a in d.admitted] == ["a"]


def test_withdraw_is_only_for_the_open_step() -> None:
    s = make_scheduler("ecoserve", cache=CACHE)
    s.add_request(Request("a", 10, 20, 0.0), Prediction(20))
    d = s.schedule(0.0)
    s.update(StepOutcome(d.step_id, 0.05))
    with pytest.raises(OutcomeError):
        s.withdraw(["a"])
    d2 = s.schedule(0.1)
    s.withdraw(["unknown-id"])  # ids the step did not schedule are ignored
    assert d2.decodes == ("a",) and s.get("a").num_output_tokens == 2


def test_an_engine_preemption_requeues_and_drops_the_in_flight_token() -> None:
    s = make_scheduler("ecoserve", cache=CACHE)
    s.add_request(Request("a", 10, 8, 0.0), Prediction(8))
    _step(s, 0.0)  # output 1
    d1 = s.schedule(0.1)  # output 2, in flight
    s.preempt("a", num_output_tokens=1)  # the engine retracted it; its in-flight token is dropped
    st = s.get("a")
    assert st.status is RequestStatus.WAITING and st.num_output_tokens == 1 and st.num_computed_tokens == 0
    assert "a" not in s.ledger and s.stats.num_engine_preemptions == 1
    s.update(StepOutcome(d1.step_id, 0.15))
    s.check_invariants()
    ended = []
    for i in range(20):
        _, e = _step(s, 0.2 + i / 10)
        ended += e
        if ended:
            break
    assert [(r.request_id, r.num_output_tokens) for r in ended] == [("a", 8)]
    with pytest.raises(UnknownRequestError):
        s.preempt("a")  # it ended


def test_a_prefix_hit_counts_as_computed_and_is_not_scheduled() -> None:
    s = make_scheduler("ecoserve", cache=CACHE)
    s.add_request(Request("a", 100, 4, 0.0), Prediction(4))
    s.set_prefix_hit("a", 60)
    d = s.schedule(0.0)
    assert [(c.request_id, c.start, c.num_tokens) for c in d.prefills] == [("a", 60, 40)]
    assert s.ledger.view("a").used == 100  # the KV of the prefix still counts as the request's
    s.set_prefix_hit("a", 0)  # ignored once running
    s.update(StepOutcome(d.step_id, 0.1))
    s.check_invariants()


def test_a_prefix_hit_leaves_one_token_to_compute() -> None:
    s = make_scheduler("ecoserve", cache=CACHE)
    s.add_request(Request("a", 50, 4, 0.0), Prediction(4))
    s.set_prefix_hit("a", 50)
    d = s.schedule(0.0)
    assert [(c.start, c.num_tokens, c.samples_token) for c in d.prefills] == [(49, 1, True)]


@pytest.mark.parametrize("limit", [0, 1])
def test_max_partial_prefills_caps_requests_part_way_through_their_prompt(limit: int) -> None:
    s = make_scheduler("vllm", cache=CACHE, scheduler={"max_partial_prefills": limit, "max_num_batched_tokens": 64})
    s.add_request(Request("long", 300, 4, 0.0), Prediction(4))
    s.add_request(Request("next", 300, 4, 0.0), Prediction(4))
    d, _ = _step(s, 0.0)
    assert [(c.request_id, c.num_tokens) for c in d.prefills] == [("long", 64)]
    # with "long" part-way through its prompt, may "next" be split too?
    assert s._runner.may_chunk(s.get("next")) is (limit == 0)
    assert s._runner.may_chunk(s.get("long"))  # the partial request itself may always go on
    most = 0
    for i in range(40):
        _step(s, 0.1 + i / 10)
        most = max(most, sum(1 for st in s.running if st.num_tokens_to_compute > 1))
        if not s.num_unfinished:
            break
    assert not s.num_unfinished and most == 1


def test_tokens_in_flight_for_a_preempted_request_can_be_dropped() -> None:
    """The core preempts a request while a step with its token is in flight, and the engine discards
    that token (SGLang's overlap loop): the request's count follows the engine and it ends exactly."""
    s = make_scheduler("vllm", cache={**CACHE, "num_gpu_blocks": 40})
    s.add_request(Request("a", 10, 20, 0.0), Prediction(20))
    s.add_request(Request("b", 10, 20, 0.1), Prediction(20))
    d = s.schedule(0.0)
    s.update(StepOutcome(d.step_id, 0.01))
    in_flight = []
    preempted = None
    for i in range(40):
        d = s.schedule(0.1 + i / 10)
        if d.preempted:
            preempted = d.preempted[0].request_id
            break
        in_flight.append(d)
        if len(in_flight) > 1:
            s.update(StepOutcome(in_flight.pop(0).step_id, 0.1 + i / 10))
    assert preempted is not None, "no preemption: the scenario needs KV pressure"
    engine_count = s.get(preempted).num_output_tokens - 1  # the in-flight step's token never comes
    other = "a" if preempted == "b" else "b"
    with pytest.raises(OutcomeError):
        s.drop_in_flight_tokens(other, 1)  # only for a request that waits again
    s.drop_in_flight_tokens(preempted, engine_count)
    for pending in in_flight:
        s.update(StepOutcome(pending.step_id, 5.0))
    s.update(StepOutcome(d.step_id, 5.0))
    assert s.get(preempted).num_output_tokens == engine_count
    ended = []
    for i in range(200):
        ended += _step(s, 6.0 + i / 10)[1]
        if not s.num_unfinished:
            break
    assert sorted((r.request_id, r.num_output_tokens) for r in ended) == [("a", 20), ("b", 20)]
