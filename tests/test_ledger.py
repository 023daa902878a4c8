"""BlockLedger: unit tests of each operation, and a rule-based state machine that drives thousands of
random operations and checks the accounting after each one.

Everything is checked through the public API (views, capacities, free counts, typed results): the
conservation law every test leans on is `free + sum(capacity_blocks) == total`, which follows from
the ledger's equation (sum(lent) == sum(borrowed), so the capacities add up to the owned blocks).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from ecosched.core.ledger import Allocated, AllocationFailure, BlockLedger, EntryView
from ecosched.errors import LedgerError

# ---------------------------------------------------------------------------------------------------
# helpers


def snapshot(ledger: BlockLedger, ids: list[str] | None = None) -> tuple[object, ...]:
    """Everything a caller can observe about the ledger (for 'nothing changed' checks)."""
    cpu_ids = sorted(set(ids or []) | set(ledger.request_ids()))
    return (
        ledger.num_free_blocks,
        ledger.num_cpu_free_blocks,
        ledger.num_admittable_blocks,
        {rid: ledger.view(rid) for rid in ledger.request_ids()},
        {rid: ledger.cpu_blocks(rid) for rid in cpu_ids},
    )


def total_capacity(ledger: BlockLedger) -> int:
    return sum(ledger.capacity_blocks(rid) for rid in ledger.request_ids())


def check_observable_accounting(ledger: BlockLedger, cpu_ids: list[str] | None = None) -> None:
    """The accounting as seen through views: conservation, consistent host/guest links, cpu balance."""
    ids = ledger.request_ids()
    assert ledger.num_free_blocks >= 0
    assert ledger.num_free_blocks + total_capacity(ledger) == ledger.num_blocks
    assert ledger.num_admittable_blocks == max(0, ledger.num_free_blocks - ledger.num_reserve_blocks)
    views = {rid: ledger.view(rid) for rid in ids}
    assert ledger.num_used_blocks == sum(v.used for v in views.values())
    assert ledger.num_reserved_unused_blocks == sum(v.reserved_unused for v in views.values())
    assert ledger.num_free_blocks + ledger.num_used_blocks + ledger.num_reserved_unused_blocks == ledger.num_blocks
    assert sum(v.lent for v in views.values()) == sum(v.borrowed for v in views.values())
    for rid, v in views.items():
        assert min(v.owned, v.borrowed, v.used, v.lent, v.reserved_unused) >= 0, (rid, v)
        assert ledger.capacity_blocks(rid) == v.owned + v.borrowed - v.lent
        assert ledger.spare_blocks(rid) == v.reserved_unused == ledger.capacity_blocks(rid) - v.used
        if v.host is not None:
            assert v.host in views, f"{rid!r} names a host {v.host!r} the ledger does not hold"
            assert rid in views[v.host].guests
        else:
            assert v.borrowed == 0, (rid, v)
        for g in v.guests:
            assert g in views and views[g].host == rid, (rid, g)
        assert v.lent == sum(views[g].borrowed for g in v.guests)
        chain, host = {rid}, v.host
        while host is not None:  # host chains end: nobody lends to itself, directly or around a cycle
            assert host not in chain, f"{rid!r}: host chain loops back to {host!r}"
            chain.add(host)
            host = views[host].host
    cpu_ids = sorted(set(cpu_ids or []) | set(ids))
    held = sum(ledger.cpu_blocks(rid) for rid in cpu_ids)
    assert ledger.num_cpu_free_blocks >= 0
    assert ledger.num_cpu_free_blocks + held == ledger.num_cpu_blocks


def release_everything(ledger: BlockLedger, ids: list[str]) -> None:
    for rid in list(ledger.request_ids()):
        ledger.release(rid)
        ledger.check_invariants()
    for rid in ids:
        ledger.drop_swapped(rid)
    ledger.check_invariants()
    assert ledger.request_ids() == []
    assert ledger.num_free_blocks == ledger.num_blocks
    assert ledger.num_cpu_free_blocks == ledger.num_cpu_blocks
    assert ledger.num_used_blocks == 0


# ---------------------------------------------------------------------------------------------------
# construction


@pytest.mark.parametrize(
    ("blocks", "reserve", "cpu"), [(0, 0, 0), (-1, 0, 0), (4, 4, 0), (4, 5, 0), (4, -1, 0), (4, 0, -1)]
)
def test_bad_geometry_raises(blocks: int, reserve: int, cpu: int) -> None:
    with pytest.raises(LedgerError):
        BlockLedger(blocks, reserve, cpu)


def test_fresh_ledger_is_empty() -> None:
    ledger = BlockLedger(10, 2, 5)
    assert ledger.num_free_blocks == 10
    assert ledger.num_admittable_blocks == 8
    assert ledger.num_cpu_free_blocks == 5
    assert ledger.request_ids() == []
    assert "r" not in ledger
    assert ledger.capacity_blocks("r") == 0
    assert ledger.cpu_blocks("r") == 0
    ledger.check_invariants()


# ---------------------------------------------------------------------------------------------------
# allocate


def test_allocate_outside_reserve_then_reserve_only_for_topups() -> None:
    ledger = BlockLedger(10, num_reserve_blocks=2)
    assert ledger.allocate("a", 8) == Allocated("a", 8)
    assert ledger.num_free_blocks == 2 and ledger.num_admittable_blocks == 0
    before = snapshot(ledger, ["a", "b"])
    failure = ledger.allocate("b", 1)
    assert isinstance(failure, AllocationFailure)
    assert (failure.request_id, failure.num_blocks, failure.num_available) == ("b", 1, 0)
    assert failure.reason
    assert "b" not in ledger  # a failed allocation creates no entry
    assert snapshot(ledger, ["a", "b"]) == before
    # the reserve is open to top-ups
    assert ledger.allocate("a", 2, use_reserve=True) == Allocated("a", 2)
    assert ledger.capacity_blocks("a") == 10 and ledger.num_free_blocks == 0
    failure = ledger.allocate("a", 1, use_reserve=True)
    assert isinstance(failure, AllocationFailure) and failure.num_available == 0
    ledger.check_invariants()


def test_allocate_accumulates_and_zero_is_allowed() -> None:
    ledger = BlockLedger(10)
    assert ledger.allocate("a", 0) == Allocated("a", 0)
    assert "a" in ledger and ledger.capacity_blocks("a") == 0
    ledger.allocate("a", 3)
    ledger.allocate("a", 4)
    assert ledger.view("a") == EntryView(owned=7, borrowed=0, used=0, lent=0, host=None, guests=())
    assert ledger.num_free_blocks == 3
    ledger.check_invariants()


def test_allocate_negative_raises_and_changes_nothing() -> None:
    ledger = BlockLedger(10)
    ledger.allocate("a", 3)
    before = snapshot(ledger)
    with pytest.raises(LedgerError):
        ledger.allocate("a", -1)
    assert snapshot(ledger) == before


@settings(max_examples=300, deadline=None)
@given(
    total=st.integers(1, 64),
    reserve_frac=st.floats(0, 0.99),
    prefill=st.integers(0, 64),
    n=st.integers(0, 80),
    use_reserve=st.booleans(),
)
def test_allocate_succeeds_exactly_when_blocks_are_available(
    total: int, reserve_frac: float, prefill: int, n: int, use_reserve: bool
) -> None:
    reserve = min(total - 1, int(reserve_frac * total))
    ledger = BlockLedger(total, reserve)
    ledger.allocate("other", min(prefill, total), use_reserve=True)
    available = ledger.num_free_blocks if use_reserve else max(0, ledger.num_free_blocks - reserve)
    free = ledger.num_free_blocks
    before = snapshot(ledger, ["new"])
    result = ledger.allocate("new", n, use_reserve=use_reserve)
    if n <= available:
        assert result == Allocated("new", n)
        assert ledger.capacity_blocks("new") == n
        assert ledger.num_free_blocks == free - n
    else:
        assert isinstance(result, AllocationFailure)
        assert result.num_available == available and result.num_blocks == n
        assert snapshot(ledger, ["new"]) == before
    check_observable_accounting(ledger)
    ledger.check_invariants()


# ---------------------------------------------------------------------------------------------------
# set_used


def test_set_used_within_and_beyond_capacity() -> None:
    ledger = BlockLedger(10)
    ledger.allocate("a", 4)
    ledger.set_used("a", 4)
    assert ledger.view("a").used == 4 and ledger.spare_blocks("a") == 0
    ledger.set_used("a", 1)  # KV can shrink (a preempted step is taken back)
    assert ledger.spare_blocks("a") == 3
    before = snapshot(ledger)
    for bad in (5, 11, -1):
        with pytest.raises(LedgerError):
            ledger.set_used("a", bad)
        assert snapshot(ledger) == before
    with pytest.raises(LedgerError):
        ledger.set_used("unknown", 0)
    ledger.check_invariants()


def test_set_used_cannot_reach_into_lent_blocks() -> None:
    ledger = BlockLedger(10)
    ledger.allocate("host", 6)
    ledger.set_used("host", 2)
    ledger.borrow("guest", "host", 3)
    assert ledger.capacity_blocks("host") == 3
    ledger.set_used("host", 3)
    with pytest.raises(LedgerError):
        ledger.set_used("host", 4)
    assert ledger.view("host").used == 3
    ledger.set_used("guest", 3)
    with pytest.raises(LedgerError):
        ledger.set_used("guest", 4)
    ledger.check_invariants()


# ---------------------------------------------------------------------------------------------------
# borrow / lend (pipelining)


def test_borrow_lends_spare_blocks_without_touching_the_free_pool() -> None:
    ledger = BlockLedger(20, num_reserve_blocks=2)
    ledger.allocate("host", 10)
    ledger.set_used("host", 3)
    free = ledger.num_free_blocks
    assert ledger.borrow("guest", "host", 4) == Allocated("guest", 4)
    assert ledger.num_free_blocks == free
    assert ledger.view("host") == EntryView(owned=10, borrowed=0, used=3, lent=4, host=None, guests=("guest",))
    assert ledger.view("guest") == EntryView(owned=0, borrowed=4, used=0, lent=0, host="host", guests=())
    assert ledger.capacity_blocks("host") == 6 and ledger.spare_blocks("host") == 3
    assert ledger.capacity_blocks("guest") == 4
    # a second guest may take what is left, not more
    before = snapshot(ledger, ["g2"])
    failure = ledger.borrow("g2", "host", 4)
    assert isinstance(failure, AllocationFailure)
    assert (failure.request_id, failure.num_blocks, failure.num_available) == ("g2", 4, 3)
    assert "g2" not in ledger
    assert snapshot(ledger, ["g2"]) == before
    assert ledger.borrow("g2", "host", 3) == Allocated("g2", 3)
    assert ledger.spare_blocks("host") == 0
    assert set(ledger.view("host").guests) == {"guest", "g2"}
    ledger.check_invariants()
    check_observable_accounting(ledger)


def test_borrow_refusals_raise_and_change_nothing() -> None:
    ledger = BlockLedger(20)
    ledger.allocate("host", 10)
    ledger.allocate("other", 5)
    ledger.borrow("guest", "host", 2)
    before = snapshot(ledger)
    with pytest.raises(LedgerError):
        ledger.borrow("host", "host", 1)  # from itself
    with pytest.raises(LedgerError):
        ledger.borrow("guest", "other", 1)  # already has a host
    with pytest.raises(LedgerError):
        ledger.borrow("x", "nobody", 1)  # unknown host
    with pytest.raises(LedgerError):
        ledger.borrow("x", "host", -1)
    assert snapshot(ledger) == before
    assert "x" not in ledger


def test_an_entry_without_host_may_borrow_on_top_of_its_own_blocks() -> None:
    ledger = BlockLedger(20)
    ledger.allocate("host", 10)
    ledger.allocate("guest", 2)
    assert ledger.borrow("guest", "host", 3) == Allocated("guest", 3)
    assert ledger.capacity_blocks("guest") == 5
    ledger.check_invariants()
    check_observable_accounting(ledger)


# ---------------------------------------------------------------------------------------------------
# release


def test_release_returns_owned_blocks_and_unknown_release_is_a_noop() -> None:
    ledger = BlockLedger(10, 1, 4)
    ledger.allocate("a", 6)
    ledger.set_used("a", 4)
    before = snapshot(ledger, ["zzz"])
    assert ledger.release("zzz") == 0
    assert snapshot(ledger, ["zzz"]) == before
    assert ledger.release("a") == 6
    assert "a" not in ledger and ledger.capacity_blocks("a") == 0
    assert ledger.num_free_blocks == 10
    assert ledger.release("a") == 0
    ledger.check_invariants()


def test_release_host_hands_lent_blocks_to_its_guests() -> None:
    ledger = BlockLedger(20)
    ledger.allocate("host", 10)
    ledger.set_used("host", 2)
    ledger.borrow("g1", "host", 3)
    ledger.borrow("g2", "host", 4)
    ledger.set_used("g1", 2)
    ledger.set_used("g2", 4)
    free = ledger.num_free_blocks
    freed = ledger.release("host")
    assert freed == 3  # 10 owned - 7 lent stay with the guests
    assert ledger.num_free_blocks == free + 3
    assert ledger.view("g1") == EntryView(owned=3, borrowed=0, used=2, lent=0, host=None, guests=())
    assert ledger.view("g2") == EntryView(owned=4, borrowed=0, used=4, lent=0, host=None, guests=())
    ledger.check_invariants()
    check_observable_accounting(ledger)
    release_everything(ledger, [])


def test_release_guest_gives_borrowed_blocks_back_to_host() -> None:
    ledger = BlockLedger(20)
    ledger.allocate("host", 10)
    ledger.borrow("guest", "host", 4)
    ledger.set_used("guest", 4)
    free = ledger.num_free_blocks
    assert ledger.release("guest") == 0  # it owned nothing
    assert ledger.num_free_blocks == free
    assert ledger.view("host") == EntryView(owned=10, borrowed=0, used=0, lent=0, host=None, guests=())
    assert ledger.capacity_blocks("host") == 10
    ledger.check_invariants()


def _chain() -> BlockLedger:
    """host -> g1 -> g2: g1 borrows 6 of host's blocks and lends 3 of them on to g2."""
    ledger = BlockLedger(20)
    ledger.allocate("host", 10)
    ledger.set_used("host", 2)
    assert ledger.borrow("g1", "host", 6) == Allocated("g1", 6)
    ledger.set_used("g1", 2)
    assert ledger.borrow("g2", "g1", 3) == Allocated("g2", 3)
    ledger.set_used("g2", 1)
    ledger.check_invariants()
    assert ledger.capacity_blocks("host") == 4
    assert ledger.capacity_blocks("g1") == 3
    assert ledger.capacity_blocks("g2") == 3
    return ledger


def test_chain_release_middle_guest_moves_the_next_guest_to_the_host() -> None:
    ledger = _chain()
    free = ledger.num_free_blocks
    assert ledger.release("g1") == 0
    assert ledger.num_free_blocks == free
    # g2 keeps its 3 blocks, now borrowed straight from the host; the host gets g1's other 3 back
    assert ledger.view("g2") == EntryView(owned=0, borrowed=3, used=1, lent=0, host="host", guests=())
    assert ledger.view("host") == EntryView(owned=10, borrowed=0, used=2, lent=3, host=None, guests=("g2",))
    assert ledger.capacity_blocks("host") == 7
    ledger.check_invariants()
    check_observable_accounting(ledger)
    assert ledger.release("host") == 7
    assert ledger.view("g2") == EntryView(owned=3, borrowed=0, used=1, lent=0, host=None, guests=())
    release_everything(ledger, [])


def test_chain_release_head_first() -> None:
    ledger = _chain()
    assert ledger.release("host") == 4
    # g1 now owns the 6 blocks it had borrowed and still lends 3 of them to g2
    assert ledger.view("g1") == EntryView(owned=6, borrowed=0, used=2, lent=3, host=None, guests=("g2",))
    assert ledger.view("g2") == EntryView(owned=0, borrowed=3, used=1, lent=0, host="g1", guests=())
    ledger.check_invariants()
    check_observable_accounting(ledger)
    assert ledger.release("g1") == 3
    assert ledger.view("g2") == EntryView(owned=3, borrowed=0, used=1, lent=0, host=None, guests=())
    release_everything(ledger, [])


def test_chain_release_tail_first() -> None:
    ledger = _chain()
    assert ledger.release("g2") == 0
    assert ledger.capacity_blocks("g1") == 6
    assert ledger.view("g1").guests == ()
    release_everything(ledger, [])


def test_chain_lender_that_lends_more_than_it_borrowed_passes_on_own_blocks() -> None:
    ledger = BlockLedger(20)
    ledger.allocate("host", 10)
    ledger.borrow("g1", "host", 2)
    ledger.allocate("g1", 2)  # g1 holds 2 borrowed + 2 owned
    assert ledger.borrow("g2", "g1", 3) == Allocated("g2", 3)
    free = ledger.num_free_blocks
    freed = ledger.release("g1")
    assert freed == 1 and ledger.num_free_blocks == free + 1
    # first from what g1 had borrowed (now borrowed from the host), the rest g2's own
    assert ledger.view("g2") == EntryView(owned=1, borrowed=2, used=0, lent=0, host="host", guests=())
    assert ledger.capacity_blocks("g2") == 3
    assert ledger.view("host").lent == 2
    ledger.check_invariants()
    check_observable_accounting(ledger)
    release_everything(ledger, [])


# ---------------------------------------------------------------------------------------------------
# swap_out / drop_swapped


def test_swap_out_moves_used_blocks_to_host_memory() -> None:
    ledger = BlockLedger(10, 0, num_cpu_blocks=5)
    ledger.allocate("a", 6)
    ledger.set_used("a", 4)
    assert ledger.swap_out("a") == Allocated("a", 4)
    assert "a" not in ledger
    assert ledger.num_free_blocks == 10
    assert ledger.cpu_blocks("a") == 4 and ledger.num_cpu_free_blocks == 1
    ledger.check_invariants()
    # swap back in: allocate again, then drop the host copy
    ledger.allocate("a", 4)
    assert ledger.drop_swapped("a") == 4
    assert ledger.cpu_blocks("a") == 0 and ledger.num_cpu_free_blocks == 5
    assert ledger.drop_swapped("a") == 0
    ledger.check_invariants()


def test_swap_out_fails_when_host_memory_is_full_and_changes_nothing() -> None:
    ledger = BlockLedger(10, 0, num_cpu_blocks=3)
    ledger.allocate("a", 6)
    ledger.set_used("a", 4)
    before = snapshot(ledger, ["a"])
    failure = ledger.swap_out("a")
    assert isinstance(failure, AllocationFailure)
    assert (failure.request_id, failure.num_blocks, failure.num_available) == ("a", 4, 3)
    assert snapshot(ledger, ["a"]) == before
    assert "a" in ledger
    with pytest.raises(LedgerError):
        ledger.swap_out("unknown")
    ledger.check_invariants()


def test_swap_out_of_a_host_keeps_guests_whole() -> None:
    ledger = BlockLedger(20, 0, num_cpu_blocks=8)
    ledger.allocate("host", 10)
    ledger.set_used("host", 3)
    ledger.borrow("guest", "host", 5)
    assert ledger.swap_out("host") == Allocated("host", 3)
    assert ledger.capacity_blocks("guest") == 5
    assert ledger.view("guest").host is None
    assert ledger.num_free_blocks == 15
    ledger.check_invariants()
    check_observable_accounting(ledger, ["host"])
    release_everything(ledger, ["host"])


def test_swap_out_with_nothing_used_holds_no_host_blocks() -> None:
    ledger = BlockLedger(10, 0, num_cpu_blocks=0)
    ledger.allocate("a", 3)
    assert ledger.swap_out("a") == Allocated("a", 0)
    assert ledger.cpu_blocks("a") == 0 and "a" not in ledger
    ledger.check_invariants()


# ---------------------------------------------------------------------------------------------------
# Misuse of the API must be refused (LedgerError) or leave the ledger consistent.


def test_borrow_cycle_is_refused_or_stays_consistent() -> None:
    """a borrows from b, then b borrows from a: the ledger must refuse the cycle, or cope with it."""
    ledger = BlockLedger(20)
    ledger.allocate("a", 5)
    ledger.allocate("b", 5)
    assert ledger.borrow("a", "b", 2) == Allocated("a", 2)
    try:
        ledger.borrow("b", "a", 1)
    except LedgerError:
        return  # refused: fine
    ledger.check_invariants()
    ledger.release("a")
    ledger.check_invariants()
    check_observable_accounting(ledger)
    ledger.release("b")
    ledger.check_invariants()
    assert ledger.num_free_blocks == ledger.num_blocks


def test_second_swap_out_before_drop_is_refused_or_keeps_cpu_balance() -> None:
    """A request swapped out, re-allocated (a swap-in) and swapped out again before its host copy is
    dropped: the host-memory pool must still balance, or the second swap_out must be refused."""
    ledger = BlockLedger(20, 0, num_cpu_blocks=10)
    ledger.allocate("a", 5)
    ledger.set_used("a", 3)
    assert ledger.swap_out("a") == Allocated("a", 3)
    ledger.allocate("a", 4)
    ledger.set_used("a", 2)
    try:
        ledger.swap_out("a")
    except LedgerError:
        return  # refused: fine
    ledger.check_invariants()
    ledger.drop_swapped("a")
    assert ledger.num_cpu_free_blocks == ledger.num_cpu_blocks


# ---------------------------------------------------------------------------------------------------
# the state machine

IDS = tuple(f"r{i}" for i in range(8))


class LedgerMachine(RuleBasedStateMachine):
    """Random allocate / borrow / set_used / release / swap_out / drop_swapped, each checked against
    what it promises (including the refusals), with the ledger's equation checked after every one."""

    def __init__(self) -> None:
        super().__init__()
        self.ledger = BlockLedger(1)

    @initialize(total=st.integers(1, 80), reserve_frac=st.floats(0, 0.5), cpu=st.integers(0, 40))
    def setup(self, total: int, reserve_frac: float, cpu: int) -> None:
        self.ledger = BlockLedger(total, min(total - 1, int(reserve_frac * total)), cpu)

    # ---- helpers ----
    def _ids(self) -> list[str]:
        return sorted(self.ledger.request_ids())

    def _ancestors(self, rid: str) -> set[str]:
        seen: set[str] = set()
        host = self.ledger.view(rid).host
        while host is not None and host not in seen:
            seen.add(host)
            host = self.ledger.view(host).host
        return seen

    def _guests_before_release(self, rid: str) -> dict[str, tuple[int, int]]:
        return {g: (self.ledger.capacity_blocks(g), self.ledger.view(g).used) for g in self.ledger.view(rid).guests}

    def _check_departure(self, rid: str, guests: dict[str, tuple[int, int]], others: dict[str, EntryView]) -> None:
        """After `rid` left: its guests keep capacity and KV; bystanders are untouched."""
        assert rid not in self.ledger
        for g, (cap, used) in guests.items():
            assert g in self.ledger
            assert self.ledger.capacity_blocks(g) == cap
            assert self.ledger.view(g).used == used
        for other, view in others.items():
            assert self.ledger.view(other) == view

    def _bystanders(self, rid: str) -> dict[str, EntryView]:
        v = self.ledger.view(rid)
        near = {rid, *v.guests} | ({v.host} if v.host is not None else set())
        return {o: self.ledger.view(o) for o in self.ledger.request_ids() if o not in near}

    # ---- rules ----
    @rule(rid=st.sampled_from(IDS), n=st.integers(0, 30), use_reserve=st.booleans())
    def allocate(self, rid: str, n: int, use_reserve: bool) -> None:
        ledger = self.ledger
        available = ledger.num_free_blocks if use_reserve else ledger.num_admittable_blocks
        cap = ledger.capacity_blocks(rid)
        free = ledger.num_free_blocks
        before = snapshot(ledger, list(IDS))
        result = ledger.allocate(rid, n, use_reserve=use_reserve)
        if n <= available:
            assert result == Allocated(rid, n)
            assert ledger.capacity_blocks(rid) == cap + n
            assert ledger.num_free_blocks == free - n
        else:
            assert isinstance(result, AllocationFailure)
            assert result.num_available == available
            assert snapshot(ledger, list(IDS)) == before

    @precondition(lambda self: len(self.ledger.request_ids()) > 0)
    @rule(data=st.data(), n=st.integers(0, 12))
    def borrow(self, data: st.DataObject, n: int) -> None:
        ledger = self.ledger
        host = data.draw(st.sampled_from(self._ids()), label="host")
        candidates = [g for g in IDS if g != host and (g not in ledger or ledger.view(g).host is None)]
        assume(candidates)
        guest = data.draw(st.sampled_from(candidates), label="guest")
        if guest in self._ancestors(host):
            # a guest lending back up its own chain would make a cycle: refused, nothing changed
            event("borrow: cycle refused")
            before = snapshot(ledger, list(IDS))
            with pytest.raises(LedgerError):
                ledger.borrow(guest, host, n)
            assert snapshot(ledger, list(IDS)) == before
            return
        spare = ledger.spare_blocks(host)
        host_cap, guest_cap = ledger.capacity_blocks(host), ledger.capacity_blocks(guest)
        free = ledger.num_free_blocks
        before = snapshot(ledger, list(IDS))
        result = ledger.borrow(guest, host, n)
        if n <= spare:
            event("borrow: granted" + (" (guest lends on)" if ledger.view(host).host is not None else ""))
            assert result == Allocated(guest, n)
            assert ledger.capacity_blocks(host) == host_cap - n
            assert ledger.capacity_blocks(guest) == guest_cap + n
            assert ledger.view(guest).host == host
            assert guest in ledger.view(host).guests
            assert ledger.num_free_blocks == free
        else:
            assert isinstance(result, AllocationFailure)
            assert result.num_available == spare
            assert snapshot(ledger, list(IDS)) == before

    @precondition(lambda self: len(self.ledger.request_ids()) > 0)
    @rule(data=st.data(), n=st.integers(0, 6))
    def borrow_small(self, data: st.DataObject, n: int) -> None:
        """The same as `borrow`, with small counts: long host -> guest -> guest chains form."""
        self.borrow(data, n)

    @precondition(lambda self: len(self.ledger.request_ids()) > 0)
    @rule(data=st.data())
    def refused_borrow(self, data: st.DataObject) -> None:
        """Borrowing from oneself, with a host already, from nobody, or a negative count: LedgerError."""
        ledger = self.ledger
        host = data.draw(st.sampled_from(self._ids()), label="host")
        with_host = [g for g in self._ids() if ledger.view(g).host is not None and g != host]
        cases = [(host, host, 1), ("nobody-guest", "nobody-host", 1), ("fresh", host, -1)]
        cases += [(g, host, 0) for g in with_host]
        guest, h, n = data.draw(st.sampled_from(cases), label="case")
        before = snapshot(ledger, list(IDS))
        with pytest.raises(LedgerError):
            ledger.borrow(guest, h, n)
        assert snapshot(ledger, list(IDS)) == before

    @precondition(lambda self: len(self.ledger.request_ids()) > 0)
    @rule(data=st.data(), extra=st.integers(-3, 3))
    def set_used(self, data: st.DataObject, extra: int) -> None:
        ledger = self.ledger
        rid = data.draw(st.sampled_from(self._ids()), label="rid")
        cap = ledger.capacity_blocks(rid)
        n = data.draw(st.integers(0, cap), label="n") if extra == 0 else cap + extra
        free = ledger.num_free_blocks
        before = snapshot(ledger, list(IDS))
        if 0 <= n <= cap:
            ledger.set_used(rid, n)
            assert ledger.view(rid).used == n
            assert ledger.spare_blocks(rid) == cap - n
            assert ledger.capacity_blocks(rid) == cap
            assert ledger.num_free_blocks == free
        else:
            with pytest.raises(LedgerError):
                ledger.set_used(rid, n)
            assert snapshot(ledger, list(IDS)) == before

    @rule(rid=st.sampled_from(IDS))
    def release(self, rid: str) -> None:
        ledger = self.ledger
        if rid not in ledger:
            before = snapshot(ledger, list(IDS))
            assert ledger.release(rid) == 0
            assert snapshot(ledger, list(IDS)) == before
            return
        guests = self._guests_before_release(rid)
        others = self._bystanders(rid)
        event(
            f"release: {'a guest' if ledger.view(rid).host else 'no guest'}, {'lends' if guests else 'lends nothing'}"
        )
        free, cpu = ledger.num_free_blocks, ledger.cpu_blocks(rid)
        freed = ledger.release(rid)
        assert freed >= 0
        assert ledger.num_free_blocks == free + freed
        assert ledger.cpu_blocks(rid) == cpu  # releasing KV does not touch host memory
        self._check_departure(rid, guests, others)

    @precondition(lambda self: len(self.ledger.request_ids()) > 0)
    @rule(data=st.data())
    def swap_out(self, data: st.DataObject) -> None:
        ledger = self.ledger
        rid = data.draw(st.sampled_from(self._ids()), label="rid")
        used, cpu_free, held = ledger.view(rid).used, ledger.num_cpu_free_blocks, ledger.cpu_blocks(rid)
        guests = self._guests_before_release(rid)
        others = self._bystanders(rid)
        free = ledger.num_free_blocks
        before = snapshot(ledger, list(IDS))
        result = ledger.swap_out(rid)
        if used <= cpu_free:
            event(f"swap_out: granted, {'lends' if guests else 'lends nothing'}")
            assert result == Allocated(rid, used)
            if held:
                event("swap_out: again before the host copy was dropped")
            assert ledger.cpu_blocks(rid) == held + used  # host copies add up
            assert ledger.num_cpu_free_blocks == cpu_free - used
            assert ledger.num_free_blocks >= free
            self._check_departure(rid, guests, others)
        else:
            assert isinstance(result, AllocationFailure)
            assert result.num_available == cpu_free and result.num_blocks == used
            assert snapshot(ledger, list(IDS)) == before

    @precondition(lambda self: any(self.ledger.cpu_blocks(r) and r not in self.ledger for r in IDS))
    @rule(data=st.data())
    def swap_in(self, data: st.DataObject) -> None:
        """A swapped request comes back: blocks for its KV from the free pool (its host copy is
        dropped by a separate `drop_swapped`, so it may be swapped out again before that)."""
        ledger = self.ledger
        rid = data.draw(st.sampled_from([r for r in IDS if ledger.cpu_blocks(r) and r not in ledger]), label="rid")
        held, free = ledger.cpu_blocks(rid), ledger.num_free_blocks
        n = min(held, ledger.num_admittable_blocks)
        assert ledger.allocate(rid, n) == Allocated(rid, n)
        ledger.set_used(rid, n)
        assert ledger.capacity_blocks(rid) == ledger.view(rid).used == n
        assert ledger.num_free_blocks == free - n
        assert ledger.cpu_blocks(rid) == held

    @rule(rid=st.sampled_from(IDS))
    def drop_swapped(self, rid: str) -> None:
        ledger = self.ledger
        held, cpu_free = ledger.cpu_blocks(rid), ledger.num_cpu_free_blocks
        entries = {r: ledger.view(r) for r in ledger.request_ids()}
        free = ledger.num_free_blocks
        assert ledger.drop_swapped(rid) == held
        assert ledger.cpu_blocks(rid) == 0
        assert ledger.num_cpu_free_blocks == cpu_free + held
        assert ledger.num_free_blocks == free
        assert {r: ledger.view(r) for r in ledger.request_ids()} == entries

    @rule(go=st.integers(0, 15))
    def release_all(self, go: int) -> None:
        """Now and then (1 in 16), release every entry and drop every host copy: nothing leaks."""
        if go == 0:
            release_everything(self.ledger, list(IDS))

    # ---- after every step ----
    @invariant()
    def equation_holds(self) -> None:
        self.ledger.check_invariants()
        check_observable_accounting(self.ledger, list(IDS))

    def teardown(self) -> None:
        release_everything(self.ledger, list(IDS))


LedgerMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
TestLedgerMachine = LedgerMachine.TestCase
