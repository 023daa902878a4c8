"""The stand-in's model of KV memory: what each slot holds, and who may still write or read it.

TGI's shard writes wherever the router's slots point and never checks them. Two structures turn
that trust into checks:

- `ShadowKV`: slot -> the KV a real shard would hold there (token, position, context hash and the
  writer). A prefix hit (`cache_len > 0`) must find exactly this prompt's KV at every position
  below `cache_len`; anything else is a stale or false hit.
- `SlotRegistry`: for every live request, the slots it will still write (positions from
  `cache_len` up to its reservation) and the prefix slots it reads. No slot may be written by two
  live requests, and no live request may write a slot another live request reads, unless both
  hold the identical prompt KV there (see `ReqState.same_prompt_kv`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from ecosched_adapters.tgi.standin.request import ReqState


@dataclass(frozen=True, slots=True)
class KVEntry:
    """What one KV slot holds."""

    token_id: int
    position: int
    context: int  # hash of every token up to and including this one
    writer: int  # request id


class ShadowKV(Mapping[int, KVEntry]):
    """slot -> KVEntry, for every slot ever written (KV survives FilterBatch and ClearCache)."""

    def __init__(self) -> None:
        self._slots: dict[int, KVEntry] = {}

    def __getitem__(self, slot: int) -> KVEntry:
        return self._slots[slot]

    def __iter__(self) -> Iterator[int]:
        return iter(self._slots)

    def __len__(self) -> int:
        return len(self._slots)

    def stale_prefix(self, req: ReqState) -> str | None:
        """Why the KV below `req.cache_len` is not this prompt's, or None when it is."""
        for p in req.prefix_positions():
            slot = req.slots[p]
            held = self._slots.get(slot)
            if held is None:
                return f"request {req.id}: cache_len {req.cache_len} but slot {slot} (position {p}) was never written"
            if held.position != p or held.token_id != req.ids[p] or held.context != req.ctx[p]:
                what = (
                    f"token {held.token_id} at position {held.position}"
                    if (held.position, held.token_id) != (p, req.ids[p])
                    else "the same token after a different prefix"
                )
                return (
                    f"request {req.id}: stale prefix: cache_len {req.cache_len}, slot {slot} should hold token "
                    f"{req.ids[p]} at position {p} but holds {what} (written by request {held.writer})"
                )
        return None

    def write(self, req: ReqState, position: int) -> str | None:
        """Store the KV of `req`'s token at `position`; a reason if that is outside its slots."""
        if not req.cache_len <= position < min(req.reserved_len, len(req.slots)):
            return (
                f"request {req.id} writes position {position} outside its reservation "
                f"[{req.cache_len}, {min(req.reserved_len, len(req.slots))})"
            )
        self._slots[req.slots[position]] = KVEntry(req.ids[position], position, req.ctx[position], req.id)
        return None


class SlotRegistry:
    """Write-sets and read-only prefixes of the live requests."""

    def __init__(self) -> None:
        self._writers: dict[int, dict[int, int]] = {}  # slot -> {request id: position}
        self._readers: dict[int, dict[int, int]] = {}
        self._reqs: dict[int, ReqState] = {}

    def __contains__(self, request_id: int) -> bool:
        return request_id in self._reqs

    def __len__(self) -> int:
        return len(self._reqs)

    def request_ids(self) -> set[int]:
        return set(self._reqs)

    def blocks_referenced(self) -> int:
        """Distinct blocks in the block tables of the live requests."""
        return len({b for r in self._reqs.values() for b in r.blocks})

    def conflict(self, req: ReqState) -> str | None:
        """Why admitting `req` would let someone overwrite KV a live request still needs, or None."""
        for p in req.owned_positions():
            slot = req.slots[p]
            for table, verb in ((self._writers, "writes"), (self._readers, "reads")):
                for rid, q in table.get(slot, {}).items():
                    if not req.same_prompt_kv(p, self._reqs[rid], q):
                        return (
                            f"request {req.id} would write slot {slot} (position {p}) that live request "
                            f"{rid} {verb} (position {q}): overlapping write-sets"
                        )
        for p in req.prefix_positions():
            slot = req.slots[p]
            for rid, q in self._writers.get(slot, {}).items():
                if not req.same_prompt_kv(p, self._reqs[rid], q):
                    return (
                        f"request {req.id} reads prefix slot {slot} (position {p}) that live request {rid} "
                        f"still writes (position {q})"
                    )
        return None

    def admit(self, req: ReqState) -> None:
        self._reqs[req.id] = req
        for p in req.owned_positions():
            self._writers.setdefault(req.slots[p], {})[req.id] = p
        for p in req.prefix_positions():
            self._readers.setdefault(req.slots[p], {})[req.id] = p

    def release(self, req: ReqState) -> None:
        """Forget `req` (finished, filtered out, cleared or lost); a no-op when it is not live."""
        if self._reqs.pop(req.id, None) is None:
            return
        for table, positions in ((self._writers, req.owned_positions()), (self._readers, req.prefix_positions())):
            for p in positions:
                holders = table.get(req.slots[p])
                if holders is not None:
                    holders.pop(req.id, None)
                    if not holders:
                        del table[req.slots[p]]
