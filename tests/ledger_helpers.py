"""Checks of the ledger's accounting through its public API, shared by the ledger tests."""

from __future__ import annotations

from ecosched.core.ledger import BlockLedger


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
