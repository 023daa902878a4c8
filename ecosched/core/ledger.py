"""The KV block ledger: who holds which share of the KV cache, in blocks, and nothing else.

Per request (an entry), in blocks:

    owned + borrowed  =  used + reserved_unused + lent
    \\_ capacity _/                         \\_ lent to guests (pipelining)

`owned` blocks come from the free pool; `borrowed` ones are reserved-but-unused blocks of a host
request, lent while the guest runs. A guest may lend on to its own guests (a pipeline). Globally:

    free + sum(used) + sum(reserved_unused) == total      and      sum(lent) == sum(borrowed)

`free` includes the global reserve: blocks that admissions may not take but top-ups may. Swapped-out
requests hold host-memory blocks in a second pool: cpu_free + sum(cpu_held) == num_cpu_blocks.
The ledger counts blocks; it never knows tokens or block ids. Failure to allocate is a typed result.
"""

from __future__ import annotations

from dataclasses import dataclass

from ecosched.errors import LedgerError, LedgerInvariantError


@dataclass(frozen=True, slots=True)
class Allocated:
    """The blocks were granted."""

    request_id: str
    num_blocks: int


@dataclass(frozen=True, slots=True)
class AllocationFailure:
    """The blocks were not granted; nothing changed."""

    request_id: str
    num_blocks: int
    num_available: int
    reason: str


AllocationResult = Allocated | AllocationFailure


@dataclass(frozen=True, slots=True)
class EntryView:
    """A snapshot of one request's share, for callers and tests."""

    owned: int
    borrowed: int
    used: int
    lent: int
    host: str | None
    guests: tuple[str, ...]

    @property
    def reserved_unused(self) -> int:
        return self.owned + self.borrowed - self.used - self.lent


class _Entry:
    __slots__ = ("borrowed", "guests", "host", "lent", "owned", "used")

    def __init__(self) -> None:
        self.owned = 0
        self.borrowed = 0
        self.used = 0
        self.lent = 0
        self.host: str | None = None
        self.guests: dict[str, None] = {}  # ordered set

    @property
    def spare(self) -> int:
        return self.owned + self.borrowed - self.used - self.lent


class BlockLedger:
    """Accounting of KV blocks on the accelerator (and swapped ones in host memory)."""

    def __init__(self, num_blocks: int, num_reserve_blocks: int = 0, num_cpu_blocks: int = 0) -> None:
        if num_blocks < 1 or not 0 <= num_reserve_blocks < num_blocks or num_cpu_blocks < 0:
            raise LedgerError(
                f"bad ledger geometry: num_blocks={num_blocks}, reserve={num_reserve_blocks}, cpu={num_cpu_blocks}"
            )
        self.num_blocks = num_blocks
        self.num_reserve_blocks = num_reserve_blocks
        self.num_cpu_blocks = num_cpu_blocks
        self.num_free_blocks = num_blocks
        self.num_cpu_free_blocks = num_cpu_blocks
        self._entries: dict[str, _Entry] = {}
        self._cpu_held: dict[str, int] = {}
        # Bumped whenever free blocks or a request's capacity may have grown (allocate, release):
        # an admission that failed cannot succeed before it changes.
        self.version = 0

    # ---- queries (no mutation) ----
    def __contains__(self, request_id: str) -> bool:
        return request_id in self._entries

    @property
    def num_admittable_blocks(self) -> int:
        """Free blocks an admission may take: the global reserve is kept for top-ups."""
        return max(0, self.num_free_blocks - self.num_reserve_blocks)

    @property
    def num_used_blocks(self) -> int:
        return sum(e.used for e in self._entries.values())

    @property
    def num_reserved_unused_blocks(self) -> int:
        return sum(e.spare for e in self._entries.values())

    def view(self, request_id: str) -> EntryView:
        e = self._get(request_id)
        return EntryView(e.owned, e.borrowed, e.used, e.lent, e.host, tuple(e.guests))

    def spare_blocks(self, request_id: str) -> int:
        """Blocks of `request_id` neither used nor lent: what it can grow into, or lend."""
        return self._get(request_id).spare

    def capacity_blocks(self, request_id: str) -> int:
        """Blocks `request_id` may use: owned + borrowed - lent (0 if it holds nothing)."""
        e = self._entries.get(request_id)
        return 0 if e is None else e.owned + e.borrowed - e.lent

    def cpu_blocks(self, request_id: str) -> int:
        return self._cpu_held.get(request_id, 0)

    def request_ids(self) -> list[str]:
        return list(self._entries)

    # ---- mutations ----
    def allocate(self, request_id: str, num_blocks: int, *, use_reserve: bool = False) -> AllocationResult:
        """Give `request_id` `num_blocks` more owned blocks from the free pool (all or nothing)."""
        if num_blocks < 0:
            raise LedgerError(f"allocate {request_id!r}: negative block count {num_blocks}")
        available = self.num_free_blocks if use_reserve else self.num_admittable_blocks
        if num_blocks > available:
            pool = "free blocks" if use_reserve else "free blocks outside the global reserve"
            return AllocationFailure(request_id, num_blocks, available, f"only {available} {pool}")
        entry = self._entries.get(request_id)
        if entry is None:
            entry = self._entries[request_id] = _Entry()
        entry.owned += num_blocks
        self.num_free_blocks -= num_blocks
        self.version += 1
        return Allocated(request_id, num_blocks)

    def borrow(self, guest_id: str, host_id: str, num_blocks: int) -> AllocationResult:
        """Lend `num_blocks` of the host's spare blocks to a guest that has no host yet."""
        host = self._get(host_id)
        guest = self._entries.get(guest_id)
        if guest is not None and guest.host is not None:
            raise LedgerError(f"borrow: {guest_id!r} already borrows from {guest.host!r}")
        if self._in_host_chain(guest_id, host_id):
            raise LedgerError(f"borrow: {guest_id!r} cannot borrow from {host_id!r}, which borrows from it")
        if num_blocks < 0:
            raise LedgerError(f"borrow {guest_id!r}: negative block count {num_blocks}")
        if num_blocks > host.spare:
            return AllocationFailure(guest_id, num_blocks, host.spare, f"host {host_id!r} has {host.spare} spare")
        if guest is None:
            guest = self._entries[guest_id] = _Entry()
        guest.borrowed += num_blocks
        guest.host = host_id
        host.lent += num_blocks
        host.guests[guest_id] = None
        return Allocated(guest_id, num_blocks)

    def _in_host_chain(self, request_id: str, host_id: str) -> bool:
        """True if `request_id` is `host_id` or one of the hosts it borrows from, transitively."""
        current: str | None = host_id
        while current is not None:
            if current == request_id:
                return True
            current = self._entries[current].host
        return False

    def set_used(self, request_id: str, num_blocks: int) -> None:
        """Record that `request_id` now has KV in `num_blocks` of its capacity."""
        e = self._get(request_id)
        if not 0 <= num_blocks <= e.owned + e.borrowed - e.lent:
            raise LedgerError(
                f"set_used {request_id!r}: {num_blocks} blocks, capacity is {e.owned + e.borrowed - e.lent}"
            )
        e.used = num_blocks

    def release(self, request_id: str) -> int:
        """Drop `request_id`'s share. Blocks lent to guests stay with them; returns blocks freed."""
        e = self._entries.pop(request_id, None)
        if e is None:
            return 0
        self.version += 1
        host = self._entries[e.host] if e.host is not None else None
        for guest_id in e.guests:
            self._hand_over(e, self._entries[guest_id], guest_id, e.host, host)
        if host is not None:
            host.lent -= e.borrowed
            del host.guests[request_id]
        self.num_free_blocks += e.owned
        return e.owned

    def _hand_over(self, e: _Entry, guest: _Entry, guest_id: str, host_id: str | None, host: _Entry | None) -> None:
        """A leaving lender passes the blocks a guest borrowed on: first from what it had borrowed
        itself (the guest now borrows them from the lender's host), the rest become the guest's own."""
        from_host = min(guest.borrowed, e.borrowed)
        e.borrowed -= from_host
        e.owned -= guest.borrowed - from_host
        guest.owned += guest.borrowed - from_host
        guest.borrowed = from_host
        if host is not None and host_id is not None and from_host > 0:
            guest.host = host_id
            host.guests[guest_id] = None
        else:
            guest.host = None

    def swap_out(self, request_id: str) -> AllocationResult:
        """Copy `request_id`'s used blocks to host memory and release its accelerator share."""
        e = self._get(request_id)
        if e.used > self.num_cpu_free_blocks:
            return AllocationFailure(request_id, e.used, self.num_cpu_free_blocks, "host swap space is full")
        self.num_cpu_free_blocks -= e.used
        self._cpu_held[request_id] = self._cpu_held.get(request_id, 0) + e.used
        self.release(request_id)
        return Allocated(request_id, e.used)

    def drop_swapped(self, request_id: str) -> int:
        """Free `request_id`'s host-memory blocks (after swap-in, or when it ends while swapped)."""
        held = self._cpu_held.pop(request_id, 0)
        self.num_cpu_free_blocks += held
        return held

    def _get(self, request_id: str) -> _Entry:
        e = self._entries.get(request_id)
        if e is None:
            raise LedgerError(f"no ledger entry for request {request_id!r}")
        return e

    # ---- the equation ----
    def check_invariants(self) -> None:
        """Raise LedgerInvariantError unless: per entry, owned + borrowed == used + reserved_unused + lent
        with every term >= 0, lent == sum of its guests' borrowed; globally, free + sum(used) +
        sum(reserved_unused) == total, and cpu_free + sum(cpu_held) == num_cpu_blocks."""
        total_owned = used = unused = 0
        for rid, e in self._entries.items():
            if min(e.owned, e.borrowed, e.used, e.lent, e.spare) < 0:
                raise LedgerInvariantError(f"{rid!r}: negative share {self.view(rid)}")
            if e.lent != sum(self._entries[g].borrowed for g in e.guests):
                raise LedgerInvariantError(f"{rid!r}: lent {e.lent} != sum of guests' borrowed")
            if any(self._entries[g].host != rid for g in e.guests):
                raise LedgerInvariantError(f"{rid!r}: a guest names another host")
            if e.borrowed > 0 and e.host is None:
                raise LedgerInvariantError(f"{rid!r}: borrows {e.borrowed} blocks without a host")
            if e.host is not None and rid not in self._entries[e.host].guests:
                raise LedgerInvariantError(f"{rid!r}: host {e.host!r} does not list it as a guest")
            total_owned += e.owned
            used += e.used
            unused += e.spare
        if self.num_free_blocks < 0 or self.num_free_blocks + used + unused != self.num_blocks:
            raise LedgerInvariantError(
                f"free {self.num_free_blocks} + used {used} + reserved-unused {unused} != total {self.num_blocks}"
            )
        if self.num_free_blocks + total_owned != self.num_blocks:
            raise LedgerInvariantError(f"free {self.num_free_blocks} + owned {total_owned} != total {self.num_blocks}")
        cpu = self.num_cpu_free_blocks + sum(self._cpu_held.values())
        if self.num_cpu_free_blocks < 0 or cpu != self.num_cpu_blocks:
            raise LedgerInvariantError(f"cpu free + held {cpu} != cpu total {self.num_cpu_blocks}")
