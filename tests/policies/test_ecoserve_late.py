"""(5) Negative slack: requests past their TTFT deadline without a first token go behind the others."""

from __future__ import annotations

import pytest
from conftest import make_scheduler, step

from ecosched import Prediction, RequestStatus
from policies.eco_helpers import eco, ids, req


@pytest.mark.parametrize("demote_late", [True, False])
def test_a_late_request_waits_behind_one_that_can_still_make_it(demote_late: bool) -> None:
    # 12 blocks of 16 tokens; the hog holds 9 of them until t=10 s, each waiting request needs 4.
    s = eco(12, scheduler={"max_num_seqs": 8}, time_synced=False, demote_late=demote_late)
    ttft = s.slo_classes["interactive"].ttft_s
    s.add_request(req("hog", prompt=120, max_output=24), Prediction(24))
    s.schedule(0.0)
    s.add_request(req("old", prompt=50, max_output=14, arrival=0.0), Prediction(14))
    s.add_request(req("new", prompt=50, max_output=14, arrival=ttft + 1.0), Prediction(14))
    s.schedule(ttft + 1.5)  # nothing fits yet; "old" is past its deadline, "new" is not
    assert s.get("old").late is demote_late
    assert not s.get("new").late
    s.abort("hog", ttft + 2.0)

    d = s.schedule(ttft + 2.0)

    assert ids(d.admitted)[0] == ("new" if demote_late else "old")


def test_late_is_marked_for_a_running_request_and_kept_when_requeued() -> None:
    # a request admitted but not yet through its prefill when its deadline passes is late too, and a
    # recompute sends it back to the queue with the late key
    s = eco(64, scheduler={"max_num_seqs": 8, "max_num_batched_tokens": 64}, time_synced=False, dynamic_budget=False)
    s.add_request(req("long", prompt=600, max_output=8), Prediction(8))
    s.schedule(0.0)
    assert s.get("long").status is RequestStatus.RUNNING and s.get("long").first_token_s is None
    s.schedule(s.slo_classes["interactive"].ttft_s + 0.5)
    assert s.get("long").late
    key = s.policy.order.waiting_key(s.get("long"))
    assert key[0] == 1.0  # the late tier sorts after every on-time request


def test_a_request_that_got_its_token_in_time_is_never_late() -> None:
    s = eco(64, time_synced=False)
    s.add_request(req("quick", prompt=32, max_output=200), Prediction(200))
    step(s, 0.0)
    assert s.get("quick").first_token_s is not None
    s.schedule(100.0)
    assert not s.get("quick").late


def test_fcfs_policies_do_not_demote() -> None:
    s = make_scheduler("vllm", cache={"num_gpu_blocks": 8})
    s.add_request(req("a", prompt=100, max_output=8))
    s.add_request(req("b", prompt=100, max_output=8))
    s.schedule(50.0)
    assert not s.get("b").late
    assert s.policy.order.demotes_late is False
