"""`vllm-priority`: waiting order by SLO class rank (0 first) then arrival; the preemption victim is
the lowest-priority request, not the newest one."""

from __future__ import annotations

from conftest import make_request, make_scheduler, step

from ecosched import Preemption, PreemptMode, RequestStatus

BS = 16


def blocks(tokens: int) -> int:
    return -(-tokens // BS)


def cache(num_gpu_blocks: int) -> dict[str, int]:
    return {"block_size": BS, "num_gpu_blocks": num_gpu_blocks, "num_cpu_blocks": 16, "max_model_len": 1024}


def test_tighter_class_is_admitted_before_an_earlier_looser_one() -> None:
    prompt = 32
    sections = {"cache": cache(64), "scheduler": {"max_num_batched_tokens": prompt}}  # room for one
    s = make_scheduler("vllm-priority", **sections)
    s.add_request(make_request("loose", prompt=prompt, arrival=0.0, slo="batch"))
    s.add_request(make_request("tight", prompt=prompt, arrival=1.0, slo="interactive"))
    assert s.slo_classes["interactive"].rank < s.slo_classes["batch"].rank

    d = s.schedule(1.0)
    assert [a.request_id for a in d.admitted] == ["tight"]
    assert s.get("loose").status is RequestStatus.WAITING

    fcfs = make_scheduler("vllm", **sections)  # the same queue in plain vLLM goes by arrival
    fcfs.add_request(make_request("loose", prompt=prompt, arrival=0.0, slo="batch"))
    fcfs.add_request(make_request("tight", prompt=prompt, arrival=1.0, slo="interactive"))
    assert [a.request_id for a in fcfs.schedule(1.0).admitted] == ["loose"]


def test_within_a_class_arrival_order_holds() -> None:
    s = make_scheduler("vllm-priority", cache=cache(64), scheduler={"max_num_seqs": 1})
    s.add_request(make_request("late", arrival=2.0, slo="interactive"))
    s.add_request(make_request("early", arrival=1.0, slo="interactive"))
    assert [a.request_id for a in s.schedule(2.0).admitted] == ["early"]


def test_victim_is_the_lowest_priority_request_not_the_newest() -> None:
    # `low` (batch) runs first and is admitted first; `a` and `c` (interactive) join later, so `c` is
    # the newest. a's prompt fills its blocks exactly, so a's first decode needs a new block.
    low_prompt, prompt = 20, 2 * BS
    num_blocks = blocks(low_prompt + 2) + 2 * blocks(prompt)
    s = make_scheduler("vllm-priority", cache=cache(num_blocks))
    s.add_request(make_request("low", prompt=low_prompt, max_output=32, arrival=0.0, slo="batch"))
    step(s)
    s.add_request(make_request("a", prompt=prompt, max_output=32, arrival=1.0, slo="interactive"))
    s.add_request(make_request("c", prompt=prompt, max_output=32, arrival=2.0, slo="interactive"))
    d, _ = step(s, 2.0)
    assert [x.request_id for x in d.admitted] == ["a", "c"]
    assert s.ledger.num_free_blocks == 0
    outputs_before = s.get("low").num_output_tokens

    d, _ = step(s, 3.0)

    assert d.preempted == (Preemption("low", PreemptMode.RECOMPUTE),)
    assert d.decodes == ("a", "c")
    low = s.get("low")
    assert low.status is RequestStatus.WAITING
    assert low.num_computed_tokens == 0
    assert low.num_output_tokens == outputs_before  # its decode of this step was taken back
    assert "low" not in s.ledger
