"""Scenarios from SGLang's own scheduler unit tests (prefill-adder budget walks, waiting-queue order,
decode retraction order), run against the ecosched SGLang classes: the real `EcoschedPrefillAdder` on
mock caches with SGLang's real `PrefillBudget` and real `Req`s, and `keep_order` on a real ecosched core."""

from __future__ import annotations

import pytest
from conftest import require_sglang

require_sglang()

from array import array
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from unittest.mock import MagicMock

from ecosched_adapters.sglang import scheduler as eco
from ecosched_adapters.sglang.scheduler import EcoschedPrefillAdder, EcoschedSGLangScheduler
from sglang.srt.managers.schedule_batch import Req, ScheduleBatch
from sglang.srt.managers.schedule_policy import AddReqResult, PrefillAdder, SchedulePolicy
from sglang.srt.mem_cache.prefill_budget import PrefillBudget
from sglang.srt.runtime_context import get_context
from sglang.srt.sampling.sampling_params import SamplingParams

from ecosched.config import EcoschedConfig
from ecosched.core.decision import EngineView, PrefillChunk
from ecosched.core.request import Request, RequestStatus
from ecosched.core.scheduler import Scheduler as CoreScheduler
from ecosched.factory import build_scheduler

BIG = eco._BIG


@pytest.fixture(autouse=True, scope="module")
def sglang_config() -> Iterator[None]:
    """SGLang's adder reads its config bags (exec, schedule): publish a dummy one for this module."""
    override = get_context().override_server_args()
    override.install()
    try:
        yield
    finally:
        override.restore()


# ---- fakes in the manner of SGLang's test_prefill_adder.py ----
def tree_cache(*, evictable: int = 0, disable: bool = False) -> MagicMock:
    cache = MagicMock()
    cache.evictable_size.return_value = evictable
    cache.full_evictable_size.return_value = evictable
    cache.supports_mamba.return_value = False
    cache.supports_prefix_sharing.return_value = True
    cache.supports_fast_match_prefix.return_value = False
    cache.disable = disable
    cache.buffer_pipeline = None
    cache.swa_reprefill_tail_tokens.return_value = 0
    return cache


def allocator(available: int) -> MagicMock:
    alloc = MagicMock()
    alloc.page_size = 1
    alloc.available_size.return_value = available
    alloc.request_slot_reserve.return_value = 0
    alloc.create_prefill_budget.side_effect = lambda cache, num_mixed_decode_tokens=0: PrefillBudget(
        alloc, cache, num_mixed_decode_tokens=num_mixed_decode_tokens
    )
    return alloc


def running_batch(reqs: list[Any] | None = None) -> MagicMock:
    batch = MagicMock()
    batch.reqs = list(reqs or [])
    return batch


def make_req(rid: str, prompt: int, max_new: int, *, ignore_eos: bool = False) -> Req:
    req = Req(rid, "", array("q", range(prompt)), SamplingParams(max_new_tokens=max_new, ignore_eos=ignore_eos))
    req.init_next_round_input()
    return req


class FakeOwner:
    """What the adder asks of its scheduler: the step's plan and the ledger's numbers."""

    def __init__(
        self,
        plan: list[PrefillChunk],
        capacity: dict[str, int] | None = None,
        headroom: dict[str, int] | None = None,
    ) -> None:
        self.plan = {c.request_id: c for c in plan}
        self.capacity = capacity or {}
        self.headroom = headroom or {}
        self.headroom_calls: list[str] = []

    def capacity_tokens(self, rid: str) -> int | None:
        return self.capacity.get(rid)

    def headroom_tokens(self, req: Any) -> int:
        self.headroom_calls.append(req.rid)
        return self.headroom.get(req.rid, 0)


def chunk(rid: str, num_tokens: int, start: int = 0, samples_token: bool = True) -> PrefillChunk:
    return PrefillChunk(rid, start, num_tokens, samples_token)


def make_adder(
    owner: Any,
    *,
    available: int = 10_000,
    running: list[Any] | None = None,
    rem_input_tokens: int = 4096,
    rem_chunk_tokens: int | None = 64,
    cache: MagicMock | None = None,
) -> EcoschedPrefillAdder:
    bound = type("BoundAdder", (EcoschedPrefillAdder,), {"owner": owner})
    return bound(
        1,
        cache if cache is not None else tree_cache(),
        allocator(available),
        running_batch(running),
        1.0,
        rem_input_tokens,
        rem_chunk_tokens,
    )


def admit_queue(adder: PrefillAdder, queue: list[Req]) -> list[AddReqResult]:
    """SGLang's admission loop in `_get_new_batch_prefill_raw`, without the scheduler around it."""
    results = []
    for req in queue:
        if adder.budget_state() == AddReqResult.OTHER:
            break
        res = adder.add_one_req(req, has_chunked_req=False, truncation_align_size=None)
        results.append(res)
        if res != AddReqResult.CONTINUE:
            break
    return results


# ---- prefill adder: admission follows the plan ----
def test_only_planned_requests_are_admitted_and_an_unplanned_one_stops_the_scan() -> None:
    a, b, c, d = (make_req(rid, 40, 20) for rid in "abcd")
    adder = make_adder(FakeOwner([chunk("a", 40), chunk("b", 40), chunk("d", 40)]))
    results = admit_queue(adder, [a, b, c, d])
    assert results == [AddReqResult.CONTINUE, AddReqResult.CONTINUE, AddReqResult.OTHER]
    assert adder.can_run_list == [a, b]
    assert c.extend_end is None and d.extend_end is None  # c untouched, d never looked at


def test_each_request_gets_exactly_its_planned_chunk_whatever_sglangs_chunk_size() -> None:
    # SGLang's own chunk size (64) would split the 100-token prompt and stop at one request;
    # the plan runs 100 tokens of `a`, then 30 of `b`, which becomes SGLang's chunked request
    a, b = make_req("a", 100, 10), make_req("b", 80, 10)
    adder = make_adder(FakeOwner([chunk("a", 100), chunk("b", 30, samples_token=False)]), rem_chunk_tokens=64)
    assert admit_queue(adder, [a, b]) == [AddReqResult.CONTINUE, AddReqResult.CONTINUE]
    assert adder.can_run_list == [a, b]
    assert (a.extend_len, b.extend_len) == (100, 30)
    assert adder.new_chunked_req is b
    # the budgets are back to "never binds" between requests: the plan is the budget
    assert adder.rem_chunk_tokens == BIG and adder.rem_input_tokens == BIG
    assert adder.budget_state() == AddReqResult.CONTINUE


def test_stock_adder_on_the_same_queue_chunks_by_its_own_size() -> None:
    """The baseline the previous test departs from (SGLang's mixed-chunk budget walk)."""
    a, b = make_req("a", 100, 10), make_req("b", 80, 10)
    adder = PrefillAdder(1, tree_cache(), allocator(10_000), running_batch(), 1.0, 4096, 64)
    assert admit_queue(adder, [a, b]) == [AddReqResult.OTHER]
    assert a.extend_len == 64 and adder.new_chunked_req is a and adder.rem_chunk_tokens == 0


def test_without_chunking_the_chunk_budget_stays_off() -> None:
    a = make_req("a", 50, 10)
    adder = make_adder(FakeOwner([chunk("a", 50)]), rem_chunk_tokens=None)
    assert adder.rem_chunk_tokens is None
    assert admit_queue(adder, [a]) == [AddReqResult.CONTINUE]
    assert a.extend_len == 50 and adder.new_chunked_req is None and adder.rem_chunk_tokens is None


# ---- prefill adder: SGLang's KV check fed with the core's reservation ----
def test_a_request_whose_max_new_tokens_does_not_fit_is_admitted_on_its_reservation() -> None:
    # SGLang alone: 100 prompt + 1000 max_new_tokens + 1 page >= 300 free tokens -> NO_TOKEN
    stock = PrefillAdder(1, tree_cache(), allocator(300), running_batch(), 1.0, 4096, None)
    assert stock.add_one_req(make_req("a", 100, 1000), False, None) == AddReqResult.NO_TOKEN
    assert stock.can_run_list == []
    # the core reserves 150 tokens (prompt + padded prediction): 151 < 300 fits
    a = make_req("a", 100, 1000)
    adder = make_adder(FakeOwner([chunk("a", 100)], capacity={"a": 150}), available=300, rem_chunk_tokens=None)
    assert adder.add_one_req(a, False, None) == AddReqResult.CONTINUE
    assert adder.can_run_list == [a]
    # the pass's budget is charged the reservation, not max_new_tokens: 100 + 1 page + (150 - 100)
    assert adder.memory_budget.total_offset == 151


def test_a_request_that_fits_by_max_new_tokens_is_refused_when_its_reservation_does_not() -> None:
    stock = PrefillAdder(1, tree_cache(), allocator(300), running_batch(), 1.0, 4096, None)
    stock.add_one_req(make_req("a", 100, 10), False, None)
    assert len(stock.can_run_list) == 1  # SGLang alone would admit it
    a = make_req("a", 100, 10)
    adder = make_adder(FakeOwner([chunk("a", 100)], capacity={"a": 400}), available=300, rem_chunk_tokens=None)
    # refused by SGLang's check; the adder goes on with the rest of the plan (CONTINUE)
    assert adder.add_one_req(a, False, None) == AddReqResult.CONTINUE
    assert adder.can_run_list == [] and adder.memory_budget.total_offset == 0


def test_a_request_without_a_reservation_gets_sglangs_own_numbers() -> None:
    a = make_req("a", 100, 1000)
    adder = make_adder(FakeOwner([chunk("a", 100)]), available=300, rem_chunk_tokens=None)
    adder.add_one_req(a, False, None)
    assert adder.can_run_list == []  # 1101 >= 300, as stock SGLang


def test_ignore_eos_requests_take_the_common_path_and_keep_their_flag() -> None:
    # with the radix cache off SGLang sends ignore_eos requests through its own reservation
    # path (prompt + max_new_tokens, no early-EOS estimate); the core's reservation replaces it
    a = make_req("a", 100, 1000, ignore_eos=True)
    adder = make_adder(
        FakeOwner([chunk("a", 100)], capacity={"a": 150}),
        available=300,
        rem_chunk_tokens=None,
        cache=tree_cache(disable=True),
    )
    adder.add_one_req(a, False, None)
    assert adder.can_run_list == [a]
    assert a.sampling_params.ignore_eos is True


# ---- prefill adder: running requests' headroom ----
def test_running_requests_headroom_comes_from_the_ledger() -> None:
    running = [make_req("run1", 10, 50), make_req("run2", 10, 75), make_req("run3", 10, 100)]
    stock = PrefillAdder(1, tree_cache(), allocator(10_000), running_batch(running), 1.0, 4096, None)
    assert stock.memory_budget.total_offset == 225  # SGLang: max_new_tokens - output so far
    owner = FakeOwner([], headroom={"run1": 5, "run2": 0, "run3": 40})
    adder = make_adder(owner, running=running)
    assert owner.headroom_calls == ["run1", "run2", "run3"]
    assert adder.memory_budget.total_offset == 45
    assert adder._get_running_request_total_token_offset(running[2]) == 40


def test_headroom_is_the_reserved_but_unused_kv() -> None:
    core = make_core()
    core.add_request(Request("r", 20, 100, 0.0, None, None, 50))
    core.schedule(0.0, EngineView(4096))
    holder = CoreHolder(core)
    cap = holder.capacity_tokens("r")
    assert cap is not None and cap >= 20 + 50
    req = SimpleNamespace(rid="r", kv=SimpleNamespace(kv_allocated_len=20))
    assert holder.headroom_tokens(req) == cap - 20
    req.kv.kv_allocated_len = cap + 5
    assert holder.headroom_tokens(req) == 0
    assert holder.capacity_tokens("unknown") is None
    assert holder.headroom_tokens(SimpleNamespace(rid="unknown", kv=SimpleNamespace(kv_allocated_len=7))) == 0


# ---- prefill adder: SGLang's chunked request ----
def chunked_req(rid: str, prompt: int, done: int) -> Req:
    req = make_req(rid, prompt, 10)
    req.prefix_len = done  # what init_next_round_input finds after the earlier chunks
    return req


def test_the_chunked_request_continues_by_the_planned_chunk_only() -> None:
    req = chunked_req("c", 100, 30)
    owner = FakeOwner([chunk("c", 20, start=30, samples_token=False)], capacity={"c": 130})
    adder = make_adder(owner, rem_chunk_tokens=64)
    assert adder.add_chunked_req(req) is req  # still truncated: stays the chunked request
    assert adder.can_run_list == [req] and req.extend_end == 50
    # charged the chunk plus what the ledger keeps beyond it: 20 + 1 page + (130 - 50)
    assert adder.memory_budget.total_offset == 101
    assert adder.rem_chunk_tokens == BIG


def test_the_last_chunk_ends_the_chunked_request() -> None:
    req = chunked_req("c", 100, 60)
    adder = make_adder(FakeOwner([chunk("c", 40, start=60)]), rem_chunk_tokens=64)
    assert adder.add_chunked_req(req) is None
    assert req.extend_end == 100


def test_an_unplanned_chunked_request_makes_no_progress() -> None:
    req = chunked_req("c", 100, 30)
    adder = make_adder(FakeOwner([]), rem_chunk_tokens=64)
    assert adder.add_chunked_req(req) is req
    assert adder.can_run_list == [] and req.extend_end is None
    assert adder.memory_budget.total_offset == 0


# ---- the core and the adder together ----
def make_core(policy: str = "ecoserve", num_blocks: int = 4096) -> CoreScheduler:
    config = EcoschedConfig.model_validate(
        {
            "policy": policy,
            "predictor": {"kind": "oracle"},
            "cache": {"block_size": 1, "num_gpu_blocks": num_blocks, "num_cpu_blocks": 0, "max_model_len": 4096},
        }
    )
    return build_scheduler(config)


class CoreHolder:
    """The parts of `EcoschedSGLangScheduler` these scenarios call, on a real core, without SGLang's
    scheduler around them."""

    keep_order = EcoschedSGLangScheduler.keep_order
    capacity_tokens = EcoschedSGLangScheduler.capacity_tokens
    headroom_tokens = EcoschedSGLangScheduler.headroom_tokens
    _sort_waiting = EcoschedSGLangScheduler._sort_waiting

    def __init__(self, core: CoreScheduler, page_size: int = 1) -> None:
        self.core = core
        self.page_size = page_size
        self.plan: dict[str, PrefillChunk] = {}
        self._plan_rank: dict[str, int] = {}

    def decide(self, now: float = 0.0) -> None:
        decision = self.core.schedule(now, EngineView(self.core.config.cache.num_gpu_blocks))
        self.plan = {c.request_id: c for c in decision.prefills}
        self._plan_rank = {c.request_id: i for i, c in enumerate(decision.prefills)}


def test_a_core_decision_admits_through_the_adder_with_its_reservations() -> None:
    core = make_core()
    sizes = {"a": (40, 30), "b": (60, 200), "c": (20, 10)}
    for rid, (prompt, out) in sizes.items():
        core.add_request(Request(rid, prompt, 1000, 0.0, None, None, out))
    holder = CoreHolder(core)
    holder.decide()
    assert set(holder.plan) == set(sizes)
    queue = [make_req(rid, prompt, 1000) for rid, (prompt, _) in sizes.items()]
    holder._sort_waiting(queue)
    assert [r.rid for r in queue] == list(holder.plan)  # the decision's order
    adder = make_adder(holder, available=4096, rem_chunk_tokens=2048)
    admit_queue(adder, queue)
    assert adder.can_run_list == queue
    assert all(r.extend_len == holder.plan[r.rid].num_tokens for r in queue)
    caps = [holder.capacity_tokens(r.rid) for r in queue]
    assert all(cap is not None and cap < 1000 for cap in caps)  # the prediction, not max_new_tokens
    assert adder.memory_budget.total_offset == sum(cap + 1 for cap in caps if cap is not None)


# ---- waiting-queue order (SGLang's test_schedule_policy scenarios) ----
def test_the_plan_order_overrides_sglangs_sort_and_keeps_it_for_the_rest() -> None:
    policy = SchedulePolicy("lof", tree_cache(disable=True), False, False, False)
    queue = [make_req(rid, 10, out) for rid, out in [("a", 10), ("b", 40), ("c", 30), ("d", 20), ("e", 50)]]
    policy.calc_priority(queue)
    assert [r.rid for r in queue] == ["e", "b", "c", "d", "a"]  # SGLang: longest output first
    holder = CoreHolder(make_core())
    holder._plan_rank = {"a": 0, "d": 1}
    holder._sort_waiting(queue)
    assert [r.rid for r in queue] == ["a", "d", "e", "b", "c"]
    holder._plan_rank = {}
    holder._sort_waiting(queue)  # no plan: SGLang's order stays
    assert [r.rid for r in queue] == ["a", "d", "e", "b", "c"]


# ---- decode retraction order ----
def running_core() -> CoreScheduler:
    """a, c, d interactive with 500, 40 and 1000 predicted output tokens; b batch (loosest TBT)."""
    core = make_core()
    for rid, prompt, out, slo in [
        ("a", 32, 500, "interactive"),
        ("b", 32, 40, "batch"),
        ("c", 64, 40, "interactive"),
        ("d", 16, 1000, "interactive"),
    ]:
        core.add_request(Request(rid, prompt, 2000, 0.0, slo, None, out))
    core.schedule(0.0, EngineView(4096))
    assert all(s.status is RequestStatus.RUNNING for s in core.requests.values())
    core.add_request(Request("w", 8, 10, 1.0, None, None, 5))  # known to the core, waiting
    return core


def sgl_req(rid: str, prompt: int, output: int) -> SimpleNamespace:
    return SimpleNamespace(
        rid=rid, origin_input_ids=array("q", range(prompt)), output_ids=array("q", range(output)), priority=None
    )


def retraction_batch() -> list[SimpleNamespace]:
    return [
        sgl_req("a", 32, 10),
        sgl_req("x", 8, 1),  # unknown to the core (e.g. SGLang's own request)
        sgl_req("b", 32, 30),
        sgl_req("c", 64, 2),
        sgl_req("w", 8, 3),
        sgl_req("d", 16, 20),
    ]


def test_keep_order_follows_the_policys_victim_choice() -> None:
    holder = CoreHolder(running_core())
    reqs = retraction_batch()
    order = holder.keep_order(reqs)
    assert sorted(order) == list(range(len(reqs)))
    # requests the core does not run first, in batch order; then the reverse of the victim order
    # b (batch class: loosest TBT), d (longest predicted remaining), a, c
    assert [reqs[i].rid for i in order] == ["x", "w", "c", "a", "d", "b"]
    # SGLang retracts from the end of the list: the policy's first victim goes first
    victims = [holder.core.policy.victims.choose([holder.core.requests["b"], holder.core.requests["c"]], holder.core)]
    assert victims[0].request.request_id == "b"


def test_sglangs_default_order_differs_on_the_same_batch() -> None:
    reqs = retraction_batch()
    order = ScheduleBatch._get_decode_retraction_order(reqs)
    # length policy: fewest output tokens (then longest prompt) retracted first
    assert [reqs[i].rid for i in order] == ["b", "d", "a", "w", "c", "x"]
    assert order != CoreHolder(running_core()).keep_order(reqs)


def test_keep_order_with_no_request_known_to_the_core_keeps_the_batch_order() -> None:
    holder = CoreHolder(make_core())
    reqs = [sgl_req("p", 4, 1), sgl_req("q", 4, 9)]
    assert holder.keep_order(reqs) == [0, 1]
    assert holder.keep_order([]) == []


def test_the_retraction_hook_uses_the_active_scheduler_or_else_sglangs_order(monkeypatch: pytest.MonkeyPatch) -> None:
    reqs = retraction_batch()
    original = ScheduleBatch._get_decode_retraction_order
    monkeypatch.setattr(eco, "_ACTIVE", None)
    assert eco.retraction_order(original, reqs) == original(reqs)
    holder = CoreHolder(running_core())
    monkeypatch.setattr(eco, "_ACTIVE", holder)
    calls: list[Any] = []
    assert eco.retraction_order(lambda *a, **k: calls.append(a) or [], reqs, "extra", flag=True) == holder.keep_order(
        reqs
    )
    assert calls == []  # the original is not consulted while ecosched is in charge
