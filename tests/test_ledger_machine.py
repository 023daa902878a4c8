"""BlockLedger under a rule-based state machine: thousands of random operations, the accounting
checked after each one (see test_ledger.py for the law it leans on)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from ledger_helpers import check_observable_accounting, release_everything, snapshot

from ecosched.core.ledger import Allocated, AllocationFailure, BlockLedger, EntryView
from ecosched.errors import LedgerError

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
