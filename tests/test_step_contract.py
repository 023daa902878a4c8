"""The step contract under engines that run ahead (async scheduling), stale ids, engine-side aborts,
and the admission memo: regressions found in review."""

from __future__ import annotations

import pytest
from conftest import make_scheduler

from ecosched import EngineView, FinishReason, InvalidRequestError, Prediction, Request, StepOutcome, Stop

CACHE = {"block_size": 16, "num_gpu_blocks": 64, "num_cpu_blocks": 0, "max_model_len": 1024}


def _run(s, steps: int, view: EngineView | None = None) -> list:  # type: ignore[no-untyped-def]
    ended = []
    for i in range(steps):
        d = s.schedule(float(i), view)
        ended += s.update(StepOutcome(d.step_id, i + 0.5))
        if not s.num_unfinished:
            break
    return ended


def test_a_stop_reported_late_counts_only_the_tokens_up_to_its_step() -> None:
    s = make_scheduler("vllm", cache=CACHE)
    s.add_request(Request("r", 16, 50, 0.0), Prediction(50))
    d0 = s.schedule(0.0)
    s.update(StepOutcome(d0.step_id, 0.1))  # prefill: token 1
    d1 = s.schedule(0.1)  # token 2
    d2 = s.schedule(0.2)  # token 3, scheduled before step 1's outcome (async engine)
    assert d1.decodes == d2.decodes == ("r",)
    ended = s.update(StepOutcome(d1.step_id, 0.3, (Stop("r"),)))
    assert [(r.request_id, r.num_output_tokens) for r in ended] == [("r", 2)]
    assert s.update(StepOutcome(d2.step_id, 0.4)) == []
    assert s.ledger.num_free_blocks == s.ledger.num_blocks


def test_a_token_delivered_before_a_preemption_still_counts_for_ttft() -> None:
    s = make_scheduler("vllm", cache={**CACHE, "num_gpu_blocks": 4})
    s.add_request(Request("a", 32, 30, 0.0), Prediction(30))
    s.add_request(Request("b", 32, 30, 0.1), Prediction(30))
    d1 = s.schedule(0.0)
    d2 = s.schedule(0.1)  # both need a third block: the newest, b, is preempted
    assert [p.request_id for p in d2.preempted] == ["b"]
    s.update(StepOutcome(d1.step_id, 0.2))
    assert s.get("b").first_token_s == 0.2


def test_a_stale_stop_does_not_end_a_newer_request_with_the_same_id() -> None:
    s = make_scheduler("vllm", cache=CACHE)
    s.add_request(Request("r", 16, 50, 0.0), Prediction(50))
    d1 = s.schedule(0.0)
    s.abort("r", 0.05)
    s.add_request(Request("r", 16, 50, 0.06), Prediction(50))
    assert s.update(StepOutcome(d1.step_id, 0.1, (Stop("r"),))) == []
    assert s.get("r").request.arrival_s == 0.06


def test_an_engine_side_abort_is_counted_as_an_abort() -> None:
    s = make_scheduler("vllm", cache=CACHE)
    s.add_request(Request("r", 16, 50, 0.0), Prediction(50))
    d = s.schedule(0.0)
    ended = s.update(StepOutcome(d.step_id, 0.1, (Stop("r", FinishReason.ABORT),)))
    assert [r.finish_reason for r in ended] == [FinishReason.ABORT]
    assert (s.stats.num_aborted, s.stats.num_finished) == (1, 0)


def test_aborting_the_request_that_blocked_admission_lets_the_next_one_in() -> None:
    s = make_scheduler("sarathi", cache=CACHE)
    view = EngineView(num_free_blocks=10)  # the engine holds the rest (e.g. its prefix cache)
    s.add_request(Request("big", 320, 8, 0.0), Prediction(8))  # 20 blocks: blocks the queue head
    s.add_request(Request("small", 32, 8, 0.1), Prediction(8))
    d = s.schedule(0.0, view)
    s.update(StepOutcome(d.step_id, 0.5))
    assert d.admitted == ()
    s.abort("big", 0.6)
    d = s.schedule(1.0, view)
    assert [a.request_id for a in d.admitted] == ["small"]


def test_without_chunked_prefill_a_prompt_over_the_budget_is_refused() -> None:
    s = make_scheduler("vllm", cache=CACHE, scheduler={"chunked_prefill": False, "max_num_batched_tokens": 64})
    with pytest.raises(InvalidRequestError, match="token budget"):
        s.add_request(Request("long", 100, 8, 0.0), Prediction(8))
    assert s.num_unfinished == 0


def test_without_chunked_prefill_a_recompute_longer_than_the_budget_still_finishes() -> None:
    s = make_scheduler(
        "vllm",
        cache={**CACHE, "num_gpu_blocks": 8},
        scheduler={"chunked_prefill": False, "max_num_batched_tokens": 60},
    )
    s.add_request(Request("a", 40, 80, 0.0), Prediction(80))
    s.add_request(Request("b", 40, 80, 0.0), Prediction(80))
    ended = _run(s, 600)
    assert sorted((r.request_id, r.num_output_tokens) for r in ended) == [("a", 80), ("b", 80)]
    assert sum(r.num_recomputes for r in ended) > 0  # the case under test did happen
