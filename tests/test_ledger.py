"""BlockLedger: unit tests of each operation, checked through the public API (views, capacities,
free counts, typed results). The conservation law the tests lean on is
`free + sum(capacity_blocks) == total`, which follows from the ledger's equation (sum(lent) ==
sum(borrowed), so the capacities add up to the owned blocks). The random-operation state machine
is in test_ledger_machine.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_helpers import check_observable_accounting, release_everything, snapshot

from ecosched.core.ledger import Allocated, AllocationFailure, BlockLedger, EntryView
from ecosched.errors import LedgerError

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
