"""`tgi-fifo`: TGI's own router as a core policy. Whole segments reserved at admission (prompt +
min(max_new, segment) - 1 tokens), first come first served with head-of-line blocking, no admission
right after a step that admitted into a running batch, used-up segments re-queued at the back,
nothing preempted to make room; without chunking, waiting_served_ratio / max_waiting_tokens."""

from __future__ import annotations

from typing import Any

from conftest import make_request, make_scheduler, step

from ecosched import Scheduler
from ecosched.core.decision import Stop

BS = 1


def tgi(num_gpu_blocks: int = 400, scheduler: dict[str, Any] | None = None, **tgi_cfg: Any) -> Scheduler:
    return make_scheduler(
        "tgi-fifo",
        cache={"block_size": BS, "num_gpu_blocks": num_gpu_blocks, "num_cpu_blocks": 0, "max_model_len": 1024},
        scheduler={"max_num_batched_tokens": 256, **(scheduler or {})},
        policies={"tgi": tgi_cfg},
    )


def test_reserves_the_whole_segment_at_admission() -> None:
    s = tgi(segment_tokens=50)
    s.add_request(make_request("a", prompt=20, max_output=30))
    s.add_request(make_request("b", prompt=20, max_output=300))
    d, _ = step(s)
    held = {a.request_id: a.num_blocks for a in d.admitted}
    assert held == {"a": 20 + 30 - 1, "b": 20 + 50 - 1}


def test_head_of_line_blocks_everyone_behind() -> None:
    s = tgi(num_gpu_blocks=100)
    s.add_request(make_request("big", prompt=60, max_output=40, arrival=0.0))
    s.add_request(make_request("huge", prompt=50, max_output=50, arrival=0.1))
    s.add_request(make_request("tiny", prompt=2, max_output=2, arrival=0.2))
    d, _ = step(s)
    assert [a.request_id for a in d.admitted] == ["big"]  # "tiny" fits but waits behind "huge"
    for _ in range(5):
        d, _ = step(s)
        assert not d.admitted


def test_no_admission_right_after_admitting_into_a_running_batch() -> None:
    s = tgi()
    s.add_request(make_request("a", prompt=10, max_output=50))
    d, _ = step(s)  # from idle
    assert [a.request_id for a in d.admitted] == ["a"]
    s.add_request(make_request("b", prompt=10, max_output=50, arrival=0.1))
    s.add_request(make_request("c", prompt=10, max_output=50, arrival=0.2))
    d, _ = step(s)
    assert [a.request_id for a in d.admitted] == ["b", "c"] and d.decodes == ("a",)
    d, _ = step(s)  # TGI's Decode after Prefill(new, cached)
    s.add_request(make_request("d", prompt=10, max_output=50, arrival=0.3))
    assert not d.admitted
    d, _ = step(s)
    assert [a.request_id for a in d.admitted] == ["d"]


def test_right_after_admitting_from_idle_it_may_admit_again() -> None:
    s = tgi(scheduler={"max_num_batched_tokens": 10})
    s.add_request(make_request("a", prompt=10, max_output=50))
    s.add_request(make_request("b", prompt=5, max_output=50, arrival=0.1))
    d, _ = step(s)
    assert [a.request_id for a in d.admitted] == ["a"]  # the budget is full
    d, _ = step(s)
    assert [a.request_id for a in d.admitted] == ["b"]


def test_a_used_up_segment_requeues_at_the_back() -> None:
    s = tgi(segment_tokens=4, num_gpu_blocks=80)
    s.add_request(make_request("long", prompt=10, max_output=12, arrival=0.0))
    d, _ = step(s)
    s.add_request(make_request("later", prompt=68, max_output=8, arrival=0.5))  # holds 68 + 4 - 1
    for _ in range(3):  # tokens 2..4 of the first segment; "later" cannot fit beside it
        d, _ = step(s)
    assert s.get("long").num_output_tokens == 4
    d, _ = step(s)
    assert [p.request_id for p in d.preempted] == ["long"] and [a.request_id for a in d.admitted] == ["later"]
    assert s.stats.num_recomputes == 1 and s.stats.num_topups == 0
    order = [st.request_id for st in s.waiting]
    assert order == ["long"]
    # it comes back with prompt + output so far, holding one more segment, when "later" re-queues
    while "long" in [st.request_id for st in s.waiting]:
        d, _ = step(s)
    assert [st.request_id for st in s.waiting] == ["later"]
    long = s.get("long")
    assert s.ledger.capacity_blocks("long") == 10 + 4 + 4 - 1 and long.num_recomputes == 1


def test_never_preempts_others_to_make_room() -> None:
    s = tgi(segment_tokens=1000, num_gpu_blocks=120)
    for k in range(3):
        s.add_request(make_request(f"r{k}", prompt=10, max_output=100, arrival=k * 0.1))
    for _ in range(150):
        d, _ = step(s)
        assert not d.preempted
    assert s.stats.num_recomputes == 0


def test_waiting_served_ratio_without_chunking() -> None:
    s = tgi(scheduler={"chunked_prefill": False}, waiting_served_ratio=1.0, max_waiting_tokens=4)
    for k in range(2):
        s.add_request(make_request(f"r{k}", prompt=10, max_output=100, arrival=k * 0.01))
    d, _ = step(s)
    assert len(d.admitted) == 2
    s.add_request(make_request("one", prompt=10, max_output=100, arrival=1.0))
    admitted_at = None
    for k in range(1, 8):
        d, _ = step(s)
        if d.admitted:
            admitted_at = k
            break
    # one waiting request is fewer than 1.0 x 2 running: it joins when TGI's waiting_tokens (1 after
    # the prefill, +1 per decode) reaches max_waiting_tokens, i.e. after three decodes
    assert admitted_at == 4


def test_stops_free_the_segment() -> None:
    s = tgi()
    s.add_request(make_request("a", prompt=10, max_output=50))
    step(s)
    _, ended = step(s, stops=(Stop("a"),))
    assert [r.request_id for r in ended] == ["a"] and s.ledger.num_free_blocks == s.ledger.num_blocks
