"""Rank agreement: every state-changing call must reach every rank, identically, in the same order.

Real TGI ranks run each forward as one collective (NCCL all-reduces); a router that sends rank 0
one call and rank 1 another corrupts or hangs the group. Here each rank numbers the state-changing
calls it receives (Warmup, Prefill, Decode, FilterBatch, ClearCache). Call number k waits until every
rank has received its own call k, compares their digests, and only then runs, once for all ranks, in
number order. A mismatch, or a rank that never gets call k within the timeout, is a violation.

Health, Info and ServiceDiscovery change nothing and answer at once on each rank.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ecosched_adapters.tgi.standin.checks import ShardViolation

T = TypeVar("T")


def call_digest(rpc: str, payload: bytes) -> str:
    return hashlib.blake2b(rpc.encode() + b"\0" + payload, digest_size=16).hexdigest()


@dataclass(eq=False)
class _Call(Generic[T]):
    rpc: str
    digest: str
    result: asyncio.Future[T]
    ready: asyncio.Future[None]  # done when every rank has it, or the call failed
    arrived: set[int] = field(default_factory=set)


class RankSync:
    """Orders and compares the state-changing calls of `world` ranks."""

    def __init__(self, world: int, timeout_s: float, on_violation: Callable[[int, str, str], None]) -> None:
        self.world = world
        self.timeout_s = timeout_s
        self._on_violation = on_violation  # (call number, rpc, message)
        self._next = [0] * world
        self._calls: dict[int, _Call[object]] = {}
        self._tail: asyncio.Future[None] | None = None

    async def run(self, rank: int, rpc: str, payload: bytes, execute: Callable[[int], Awaitable[T]]) -> T:
        """Rank `rank` received `rpc`; returns the shared result of `execute(call number)`.

        Raises ShardViolation when the ranks disagree or one of them never receives the call.
        """
        seq = self._next[rank]
        self._next[rank] += 1
        digest = call_digest(rpc, payload)
        loop = asyncio.get_running_loop()
        call = self._calls.get(seq)
        if call is None:
            call = self._calls[seq] = _Call(rpc, digest, loop.create_future(), loop.create_future())
            # a failure nobody waits for any more (the callers were cancelled) is not an asyncio warning
            call.result.add_done_callback(lambda f: f.cancelled() or f.exception())
        call.arrived.add(rank)
        if call.digest != digest:
            self._fail(
                seq,
                call,
                f"rank {rank} received {rpc} as call #{seq}, but another rank received a "
                f"different {call.rpc} (digests {digest[:8]} vs {call.digest[:8]})",
            )
        elif len(call.arrived) == self.world and not call.result.done():
            self._start(seq, call, execute)
        if len(call.arrived) == self.world:
            del self._calls[seq]
        try:
            await asyncio.wait_for(asyncio.shield(call.ready), self.timeout_s)
        except TimeoutError:
            missing = sorted(set(range(self.world)) - call.arrived)
            self._fail(
                seq,
                call,
                f"call #{seq} ({rpc}) reached ranks {sorted(call.arrived)} but not ranks "
                f"{missing} within {self.timeout_s:g} s",
            )
        return await call.result  # type: ignore[return-value]

    def _fail(self, seq: int, call: _Call[object], message: str) -> None:
        if not call.result.done():
            self._on_violation(seq, call.rpc, message)
            call.result.set_exception(ShardViolation(message))
        if not call.ready.done():
            call.ready.set_result(None)

    def _start(self, seq: int, call: _Call[object], execute: Callable[[int], Awaitable[T]]) -> None:
        """Run `execute` after the previous call finished, and hand its outcome to every rank."""
        previous = self._tail
        call.ready.set_result(None)

        async def ordered() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            try:
                value = await execute(seq)
            except Exception as exc:  # handed to every rank's handler
                if not call.result.done():
                    call.result.set_exception(exc)
            else:
                if not call.result.done():
                    call.result.set_result(value)

        self._tail = asyncio.ensure_future(ordered())
