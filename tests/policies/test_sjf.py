"""`sjf`: shortest predicted output first; aging (policies.sjf.aging_tokens_per_s) lets a request that
has waited long enough overtake shorter newer ones; the victim has the longest predicted remaining output."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import make_request, make_scheduler, step

from ecosched import Prediction, Preemption, PreemptMode, RequestStatus, Scheduler, Stop

BS = 16


def blocks(tokens: int) -> int:
    return -(-tokens // BS)


def sjf(num_gpu_blocks: int = 64, aging: float = 50.0, **scheduler: Any) -> Scheduler:
    return make_scheduler(
        "sjf",
        cache={"block_size": BS, "num_gpu_blocks": num_gpu_blocks, "num_cpu_blocks": 0, "max_model_len": 1024},
        scheduler=scheduler,
        policies={"sjf": {"aging_tokens_per_s": aging}},
        predictor={"kind": "constant", "constant_tokens": 100},
    )


def test_shortest_predicted_output_runs_first() -> None:
    s = sjf(max_num_seqs=1)
    for rid, predicted in (("long", 300), ("short", 10), ("mid", 100)):
        s.add_request(make_request(rid, max_output=400), Prediction(predicted))

    order = []
    for i in range(3):
        d, _ = step(s, float(i))
        order += [a.request_id for a in d.admitted]
        # stop whichever runs so the next one gets the seat
        step(s, float(i) + 0.5, stops=tuple(Stop(r.request_id) for r in s.running))
    assert order == ["short", "mid", "long"]


@pytest.mark.parametrize("aging", [20.0, 50.0])
def test_aging_lets_an_old_long_request_overtake_a_newer_short_one(aging: float) -> None:
    long_pred, short_pred = 300, 10
    overtake_after_s = (long_pred - short_pred) / aging  # waiting forgives aging tokens per second
    for wait, winner in ((overtake_after_s - 1.0, "short"), (overtake_after_s + 1.0, "old")):
        s = sjf(aging=aging, max_num_seqs=1)
        s.add_request(make_request("old", max_output=400, arrival=0.0), Prediction(long_pred))
        s.add_request(make_request("short", max_output=400, arrival=wait), Prediction(short_pred))
        d = s.schedule(wait)
        assert [a.request_id for a in d.admitted] == [winner], (aging, wait)


def test_without_aging_short_always_wins() -> None:
    s = sjf(aging=0.0, max_num_seqs=1)
    s.add_request(make_request("old", max_output=400, arrival=0.0), Prediction(300))
    s.add_request(make_request("short", max_output=400, arrival=1000.0), Prediction(10))
    assert [a.request_id for a in s.schedule(1000.0).admitted] == ["short"]


def test_victim_is_the_longest_predicted_remaining_not_the_newest() -> None:
    # `long` runs first; `a` and `c` join later (c is the newest). a's prompt fills its blocks, so its
    # first decode needs a new block and none is free.
    long_prompt, prompt = 20, 2 * BS
    num_blocks = blocks(long_prompt + 2) + 2 * blocks(prompt)
    s = sjf(num_gpu_blocks=num_blocks)
    s.add_request(make_request("long", prompt=long_prompt, max_output=76), Prediction(70))
    step(s)
    s.add_request(make_request("a", prompt=prompt, max_output=64, arrival=1.0), Prediction(20))
    s.add_request(make_request("c", prompt=prompt, max_output=64, arrival=1.0), Prediction(40))
    d, _ = step(s, 1.0)
    assert [x.request_id for x in d.admitted] == ["a", "c"]
    assert s.ledger.num_free_blocks == 0
    remaining = {r.request_id: r.predicted_output_tokens - r.num_output_tokens for r in s.running}
    assert max(remaining, key=remaining.__getitem__) == "long"

    d, _ = step(s, 2.0)

    assert d.preempted == (Preemption("long", PreemptMode.RECOMPUTE),)
    assert d.decodes == ("a", "c")
    assert s.get("long").status is RequestStatus.WAITING
