"""The router's KV block table: which physical blocks each request holds, the physical side of the
core's ledger.

TGI's shards keep no allocator of their own: the router sends every request its block ids and one
slot per token position (`slot = block * block_size + offset`). Block 0 is TGI's health-probe block
and is never handed out. The core's ledger counts blocks; this table names them, and
`check_against` proves after every step that the two agree: the same holders, each with exactly
its ledger capacity, and the same number free. Every block is freed exactly once (a second free
is an error, not a no-op).
"""

from __future__ import annotations

from collections import deque

from ecosched.core.ledger import BlockLedger
from ecosched.errors import LedgerInvariantError

HEALTH_BLOCK = 0  # TGI's liveness prefill writes block 0, slot 0


class BlockTable:
    """Physical blocks 1..num_blocks-1 handed to requests by id."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 2:
            raise ValueError(f"the KV pool needs at least 2 blocks (block 0 is reserved), got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(1, num_blocks))
        self._held: dict[str, list[int]] = {}
        self.num_allocated = 0  # blocks handed out since start
        self.num_freed = 0  # blocks given back since start

    @property
    def num_usable_blocks(self) -> int:
        """Blocks requests may hold: the pool less block 0 (what the core's ledger counts)."""
        return self.num_blocks - 1

    @property
    def num_free(self) -> int:
        return len(self._free)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._held

    def holders(self) -> list[str]:
        return list(self._held)

    def blocks(self, request_id: str) -> list[int]:
        return self._held[request_id]

    def capacity_tokens(self, request_id: str) -> int:
        return len(self._held[request_id]) * self.block_size

    def slots(self, request_id: str) -> list[int]:
        """One slot per token position the request's blocks can hold, in position order."""
        bs = self.block_size
        return [b * bs + o for b in self._held[request_id] for o in range(bs)]

    def grow(self, request_id: str, num_blocks: int) -> list[int]:
        """Hand `num_blocks` more blocks to `request_id` (a new holder, or a top-up)."""
        if num_blocks > len(self._free):
            raise LedgerInvariantError(
                f"block table: {request_id!r} needs {num_blocks} blocks, {len(self._free)} are free "
                "(the core granted blocks the table does not have)"
            )
        new = [self._free.popleft() for _ in range(num_blocks)]
        self._held.setdefault(request_id, []).extend(new)
        self.num_allocated += num_blocks
        return new

    def free(self, request_id: str) -> int:
        """Give back every block of `request_id`; an unknown holder is an error (a double free)."""
        blocks = self._held.pop(request_id, None)
        if blocks is None:
            raise LedgerInvariantError(f"block table: {request_id!r} holds no blocks (freed twice?)")
        self._free.extend(blocks)
        self.num_freed += len(blocks)
        return len(blocks)

    def check_against(self, ledger: BlockLedger) -> None:
        """The table is the ledger in block ids: same holders, same capacities, same free count."""
        holders = set(self._held)
        booked = set(ledger.request_ids())
        if holders != booked:
            raise LedgerInvariantError(
                f"block table and ledger disagree on holders: only in the table {sorted(holders - booked)}, "
                f"only in the ledger {sorted(booked - holders)}"
            )
        for rid, blocks in self._held.items():
            cap = ledger.capacity_blocks(rid)
            if len(blocks) != cap:
                raise LedgerInvariantError(f"{rid!r} holds {len(blocks)} blocks in the table, {cap} in the ledger")
        if len(self._free) != ledger.num_free_blocks:
            raise LedgerInvariantError(
                f"{len(self._free)} blocks free in the table, {ledger.num_free_blocks} in the ledger"
            )
        held = sum(len(b) for b in self._held.values())
        if held + len(self._free) != self.num_usable_blocks or self.num_allocated - self.num_freed != held:
            raise LedgerInvariantError(
                f"block table lost blocks: {held} held + {len(self._free)} free != {self.num_usable_blocks}"
            )
