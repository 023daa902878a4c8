"""Finding a pipelining host: the running request whose reserved-but-unused blocks can carry a guest.

CacheOPT's feasibility test for guest i on host j (tokens):

    a_j - (u_j + o_i) - (p_i + o_i) >= b

a_j: the host's capacity (blocks it owns or borrowed, minus those it lent; `capacity_tokens`, which
may lag behind a capacity that grew when a guest left: the index then errs on the safe side),
u_j: its computed tokens,
p_i: the tokens the guest holds after its prefill, o_i: the guest's padded predicted output still
to come (the host grows by as much while the guest runs), b: a safety margin. With the host's free
room r_j = a_j - u_j, the test reads r_j >= p_i + 2 o_i + b, so the best fit (least slack) is the
host with the smallest r_j at or above the guest's need: a bisection in hosts sorted by r_j.

The index is built lazily, once per step, and updated when a host lends. Requests admitted in the
same step join it from the next step on (a guest may then host guests of its own).
"""

from __future__ import annotations

import bisect

from ecosched.core.ledger import BlockLedger
from ecosched.core.request import RequestState, RequestStatus


def room(host: RequestState) -> int:
    """r_j: the tokens a host can still hold (its capacity less its computed tokens)."""
    return host.capacity_tokens - host.num_computed_tokens


def room_needed(guest: RequestState, margin_tokens: int) -> int:
    """p_i + 2 o_i + b: the room a host needs to carry `guest`."""
    return guest.num_tokens + 2 * guest.predicted_remaining_tokens + margin_tokens


class HostIndex:
    """Running requests sorted by free room r_j = capacity tokens - computed tokens."""

    def __init__(self, running: list[RequestState], ledger: BlockLedger) -> None:
        self.ledger = ledger
        self._hosts = [h for h in running if h.status is RequestStatus.RUNNING]
        # (room, index into _hosts), sorted
        self._rooms = sorted((room(h), k) for k, h in enumerate(self._hosts))

    def best_fit(self, need: int, num_blocks: int) -> RequestState | None:
        """The feasible host (room >= `need`) with the least slack that can lend `num_blocks`, or None."""
        for i in range(bisect.bisect_left(self._rooms, (need, -1)), len(self._rooms)):
            host = self._hosts[self._rooms[i][1]]
            if self.ledger.spare_blocks(host.request_id) >= num_blocks:
                return host
        return None

    def lent(self, host: RequestState) -> None:
        """Re-file a host after it lent blocks (its room shrank)."""
        k = self._hosts.index(host)
        for i, (_, kk) in enumerate(self._rooms):
            if kk == k:
                del self._rooms[i]
                break
        bisect.insort(self._rooms, (room(host), k))
