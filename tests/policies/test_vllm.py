"""`vllm` (vLLM v1, FCFS): arrival order, chunked prefill under max_num_batched_tokens, blocks for
scheduled tokens only, head-of-line blocking, newest-first recompute preemption, max_num_seqs."""

from __future__ import annotations

from conftest import make_request, make_scheduler, step

from ecosched import Admission, Preemption, PreemptMode, PrefillChunk, RequestStatus, Stop

BS = 16


def blocks(tokens: int) -> int:
    return -(-tokens // BS)


def cache(num_gpu_blocks: int) -> dict[str, int]:
    return {"block_size": BS, "num_gpu_blocks": num_gpu_blocks, "num_cpu_blocks": 16, "max_model_len": 1024}


def test_fcfs_serves_in_arrival_order_not_submission_order() -> None:
    budget, prompt = 100, 40
    s = make_scheduler("vllm", cache=cache(64), scheduler={"max_num_batched_tokens": budget})
    for rid, arrival in (("c", 0.2), ("a", 0.0), ("b", 0.1)):
        s.add_request(make_request(rid, prompt=prompt, arrival=arrival))

    d = s.schedule(1.0)

    assert d.token_budget == budget
    assert [a.request_id for a in d.admitted] == ["a", "b", "c"]
    last = budget - 2 * prompt
    assert d.prefills == (
        PrefillChunk("a", 0, prompt, True),
        PrefillChunk("b", 0, prompt, True),
        PrefillChunk("c", 0, last, False),
    )
    assert d.num_scheduled_tokens == budget


def test_long_prompt_is_chunked_and_holds_blocks_only_for_computed_tokens() -> None:
    budget, prompt = 48, 128
    s = make_scheduler("vllm", cache=cache(64), scheduler={"max_num_batched_tokens": budget})
    s.add_request(make_request("a", prompt=prompt, max_output=32))

    start = 0
    while start < prompt:
        d, _ = step(s)
        n = min(budget, prompt - start)
        if start == 0:
            assert d.admitted == (Admission("a", blocks(n)),)
        assert d.prefills == (PrefillChunk("a", start, n, start + n == prompt),)
        start += n
        view = s.ledger.view("a")
        assert view.owned == view.used == blocks(start)  # nothing reserved ahead
        assert view.reserved_unused == 0

    d, _ = step(s)  # first decode: the 129th token needs one more block, and only that one
    assert d.decodes == ("a",)
    assert s.ledger.view("a").owned == blocks(prompt + 1) == blocks(prompt) + 1


def test_head_of_line_request_that_does_not_fit_blocks_smaller_ones_behind_it() -> None:
    s = make_scheduler("vllm", cache=cache(8))
    s.add_request(make_request("a", prompt=100, max_output=8))
    step(s)
    s.add_request(make_request("b", prompt=64, max_output=8, arrival=1.0))
    s.add_request(make_request("c", prompt=8, max_output=8, arrival=2.0))

    d, _ = step(s, 2.0)

    assert d.decodes == ("a",)
    free = s.ledger.num_admittable_blocks
    assert blocks(64) > free >= blocks(8)  # b does not fit; c would
    assert d.admitted == ()
    assert s.get("b").status is RequestStatus.WAITING
    assert s.get("c").status is RequestStatus.WAITING

    s.abort("a", 3.0)
    d, _ = step(s, 3.0)
    assert [a.request_id for a in d.admitted] == ["b", "c"]


def test_decode_without_a_free_block_preempts_the_newest_request_by_recompute() -> None:
    prompt = 2 * BS  # each prompt fills its blocks exactly: the first decode needs a new block
    s = make_scheduler("vllm", cache=cache(3 * blocks(prompt)))
    for i, rid in enumerate("abc"):
        s.add_request(make_request(rid, prompt=prompt, arrival=0.1 * i))
    d, _ = step(s)
    assert [a.request_id for a in d.admitted] == ["a", "b", "c"]
    assert s.ledger.num_free_blocks == 0

    d, _ = step(s, 1.0)

    assert d.preempted == (Preemption("c", PreemptMode.RECOMPUTE),)
    assert d.decodes == ("a", "b")
    c = s.get("c")
    assert c.status is RequestStatus.WAITING
    assert c.num_computed_tokens == 0
    assert c.num_output_tokens == 1  # keeps its output; recomputes it with the prompt
    assert "c" not in s.ledger
    assert s.ledger.view("a").owned == blocks(prompt + 1)
    assert s.stats.num_recomputes == 1 and s.stats.num_swaps == 0

    s.abort("a", 2.0)
    d, _ = step(s, 2.0)
    assert d.decodes == ("b",)
    assert d.prefills == (PrefillChunk("c", 0, prompt + 1, True),)


def test_max_num_seqs_caps_the_running_set() -> None:
    s = make_scheduler("vllm", cache=cache(64), scheduler={"max_num_seqs": 2})
    for i, rid in enumerate("abc"):
        s.add_request(make_request(rid, prompt=16, arrival=0.1 * i))

    d, _ = step(s)
    assert [a.request_id for a in d.admitted] == ["a", "b"]
    d, _ = step(s, 1.0, stops=(Stop("a"),))
    assert d.admitted == ()
    assert d.decodes == ("a", "b")
    assert s.get("c").status is RequestStatus.WAITING

    d, _ = step(s, 2.0)  # a stopped: a seat is free
    assert [a.request_id for a in d.admitted] == ["c"]
    assert len(s.running) == 2
