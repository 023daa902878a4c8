"""`sglang`: admission against the room left after running requests' future tokens discounted by
new_token_ratio; the ratio decays per step and is reset upward after a retraction; the retraction
victim has the fewest output tokens, then the longest prompt; prefills take the budget before decodes."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import make_request, make_scheduler, step

from ecosched import PreemptMode, PrefillChunk, RequestStatus, Scheduler
from ecosched.policies.sglang import NewTokenRatioAdmission

BS = 16


def blocks(tokens: int) -> int:
    return -(-tokens // BS)


def sglang(num_gpu_blocks: int = 64, scheduler: dict[str, Any] | None = None, **sglang_cfg: Any) -> Scheduler:
    return make_scheduler(
        "sglang",
        cache={"block_size": BS, "num_gpu_blocks": num_gpu_blocks, "num_cpu_blocks": 0, "max_model_len": 1024},
        scheduler=scheduler or {},
        policies={"sglang": sglang_cfg},
    )


def ratio_after(num_steps: int, init: float, factor: float, decay_steps: int) -> float:
    floor = init * factor
    return max(floor, init - num_steps * (init - floor) / decay_steps)


def new_token_ratio(s: Scheduler) -> float:
    admission = s.policy.admission
    assert isinstance(admission, NewTokenRatioAdmission)
    return admission.ratio


def room(s: Scheduler, ratio: float, clip: int) -> float:
    """Free tokens minus the running requests' future tokens (min(max_new - output, clip)) times ratio."""
    free = s.ledger.num_admittable_blocks * BS
    future = sum(min(r.request.max_output_tokens - r.num_output_tokens, clip) for r in s.running)
    return free - future * ratio


INIT, FACTOR, DECAY_STEPS, CLIP = 0.7, 0.14, 600, 200


@pytest.mark.parametrize(
    ("prompt", "max_output", "admitted"),
    [
        (542, 400, True),  # counts min(400, clip) = 200: 742 tokens fit the room
        (642, 300, False),  # 842 tokens fit the free KV but not the room left after the discount
    ],
)
def test_admission_compares_prompt_plus_clipped_max_new_with_discounted_room(
    prompt: int, max_output: int, admitted: bool
) -> None:
    s = sglang(init_new_token_ratio=INIT, min_ratio_factor=FACTOR, decay_steps=DECAY_STEPS, clip_max_new_tokens=CLIP)
    s.add_request(make_request("run", prompt=100, max_output=400))
    step(s)
    s.add_request(make_request("new", prompt=prompt, max_output=max_output, arrival=1.0))

    expected_room = room(s, ratio_after(2, INIT, FACTOR, DECAY_STEPS), CLIP)
    need = prompt + min(max_output, CLIP)
    free = s.ledger.num_admittable_blocks * BS
    if admitted:
        assert need <= expected_room - 8
        # without clipping the running request's future tokens, the room would be too small
        unclipped = free - (400 - 1) * ratio_after(2, INIT, FACTOR, DECAY_STEPS)
        assert need > unclipped
    else:
        assert expected_room + 8 <= need <= free

    d, _ = step(s, 1.0)

    assert [a.request_id for a in d.admitted] == (["new"] if admitted else [])


def test_room_shrinks_by_what_the_step_admits() -> None:
    s = sglang(init_new_token_ratio=INIT, min_ratio_factor=FACTOR, decay_steps=DECAY_STEPS, clip_max_new_tokens=CLIP)
    free = s.ledger.num_admittable_blocks * BS
    half = free // 2 + 8  # each fits alone, both together do not
    for i, rid in enumerate("ab"):
        s.add_request(make_request(rid, prompt=half - 100, max_output=100, arrival=0.1 * i))
    d, _ = step(s)
    assert [a.request_id for a in d.admitted] == ["a"]
    assert s.get("b").status is RequestStatus.WAITING


def test_new_token_ratio_decays_each_step_to_its_floor() -> None:
    init, factor, decay_steps = 0.7, 0.14, 3
    s = sglang(init_new_token_ratio=init, min_ratio_factor=factor, decay_steps=decay_steps)
    s.add_request(make_request("run", prompt=16, max_output=64))
    seen = []
    for _ in range(decay_steps + 2):
        step(s)
        seen.append(new_token_ratio(s))
    expected = [ratio_after(k, init, factor, decay_steps) for k in range(1, decay_steps + 3)]
    assert seen == pytest.approx(expected)
    assert seen[-1] == pytest.approx(init * factor)


def test_a_request_refused_early_is_admitted_once_the_ratio_has_decayed() -> None:
    init, factor, decay_steps, clip = 0.7, 0.14, 3, 100
    s = sglang(init_new_token_ratio=init, min_ratio_factor=factor, decay_steps=decay_steps, clip_max_new_tokens=clip)
    s.add_request(make_request("run", prompt=100, max_output=400))
    step(s)
    room2 = room(s, ratio_after(2, init, factor, decay_steps), clip)
    # at step 3 run has one more output token; its future stays at the clip, its blocks the same
    assert blocks(101) == blocks(100)
    room3 = room(s, ratio_after(3, init, factor, decay_steps), clip)
    need = int((room2 + room3) / 2)
    assert room2 < need <= room3
    s.add_request(make_request("new", prompt=need - clip, max_output=clip, arrival=1.0))

    d2, _ = step(s, 1.0)
    d3, _ = step(s, 2.0)

    assert d2.admitted == ()
    assert [a.request_id for a in d3.admitted] == ["new"]


def test_prefills_take_the_budget_before_decodes() -> None:
    budget = 50
    s = sglang(scheduler={"max_num_batched_tokens": budget})
    s.add_request(make_request("dec", prompt=16))
    step(s)
    s.add_request(make_request("pre", prompt=budget, arrival=1.0))

    d, _ = step(s, 1.0)

    assert d.prefills == (PrefillChunk("pre", 0, budget, True),)
    assert d.decodes == ()  # the decode stalls this step
    d, _ = step(s, 2.0)
    assert set(d.decodes) == {"dec", "pre"}


def _retraction_scenario(clip: int = 64, retract_decode_steps: int = 20, decay_steps: int = 600) -> Scheduler:
    """p runs one step ahead of s and q (more output tokens) and has the longest prompt; s has a longer
    prompt than q, is admitted before q (q is the newest). Decodes fill the cache until one is retracted."""
    s = sglang(
        num_gpu_blocks=21,
        init_new_token_ratio=INIT,
        min_ratio_factor=FACTOR,
        clip_max_new_tokens=clip,
        retract_decode_steps=retract_decode_steps,
        decay_steps=decay_steps,
    )
    s.add_request(make_request("p", prompt=50, max_output=200, arrival=0.0))
    step(s)
    s.add_request(make_request("s", prompt=44, max_output=200, arrival=1.0))
    s.add_request(make_request("q", prompt=40, max_output=200, arrival=1.1))
    d, _ = step(s, 1.0)
    assert [a.request_id for a in d.admitted] == ["s", "q"]
    return s


def test_retraction_victim_has_fewest_outputs_then_longest_prompt() -> None:
    s = _retraction_scenario()
    now = 2.0
    for _ in range(200):
        before = {r.request_id: (r.num_output_tokens, r.request.num_prompt_tokens) for r in s.running}
        d, _ = step(s, now)
        now += 1.0
        if d.preempted:
            break
    else:
        pytest.fail("the cache never ran out")
    assert before["p"][0] > before["s"][0] == before["q"][0]  # p decoded one step longer
    assert before["p"][1] > before["s"][1] > before["q"][1]
    assert [(x.request_id, x.mode) for x in d.preempted] == [("s", PreemptMode.RECOMPUTE)]
    assert s.get("s").status is RequestStatus.WAITING
    assert s.get("s").num_computed_tokens == 0


def test_retraction_resets_the_decayed_ratio_upward_from_decoded_tokens() -> None:
    retract_steps = 20
    s = _retraction_scenario(retract_decode_steps=retract_steps, decay_steps=5)  # at its floor before the OOM
    now = 2.0
    for _ in range(200):
        ratio_before = new_token_ratio(s)
        d, _ = step(s, now)
        now += 1.0
        if d.preempted:
            break
    else:
        pytest.fail("the cache never ran out")
    running = s.running
    total_max = sum(r.request.max_output_tokens for r in running)
    decoded = sum(r.num_output_tokens for r in running)
    expected = min(1.0, (decoded + retract_steps * len(running)) / total_max)
    ratio = new_token_ratio(s)
    # decoded is counted at the retraction, mid-step: up to one token per running request earlier
    assert expected - len(running) / total_max - 1e-9 <= ratio <= expected + 1e-9
    assert ratio_before == pytest.approx(INIT * FACTOR)
    assert ratio > ratio_before
    step(s, now)  # and decays again from there
    assert new_token_ratio(s) < ratio
