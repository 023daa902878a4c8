"""The PT-queue phase of a step: admitting waiting requests with their reservation.

Candidates come best bucket first (time-synced batching), best key first within a bucket; the
requests one step admits from one bucket form a GT group. NOTE: EcoServe's exact grouping rule is
not available; a bucket drained in priority order, best head first, is our reconstruction. Each gets
its reservation from the free pool outside the global reserve or, failing that, borrows from a
pipelining host. A request that does not fit is skipped or blocks the queue, as the policy says.
Starvation guard (policies that skip): the longest-waiting request, once older than the policy's
starvation factor times its TTFT target, is tried first and, if it does not fit, nobody is admitted.

Shortcuts keep a full KV cache cheap, all exact (they never change a decision):
- Each waiting request carries its smallest footprint (`admit_hint`: the blocks of its smallest
  admission, the host room it needs to borrow), fixed while it waits. One that fits neither the free
  pool nor the largest host room of the pass (rooms only shrink within a pass) fails at once.
- Within a pass, a candidate needing at least as many blocks and as much host room as one that
  already failed fails too: admissions only shrink free blocks and host room.
- A pass that admitted nothing, refused only for lack of KV, is not repeated until the ledger gains
  capacity (`ledger.version`), the queue changes (`waiting.version`: a push or a removal), or the
  budget shrinks (a smaller chunk needs fewer blocks; a larger one needs as many or more).
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING

from ecosched.core.decision import Admission
from ecosched.core.pipelining import HostIndex, room, room_needed
from ecosched.core.request import RequestState, RequestStatus

if TYPE_CHECKING:
    from ecosched.core.step import StepBuilder, StepRunner


_NOTHING_FAILED = ((math.inf, math.inf), (math.inf, math.inf))  # dominates nothing


class Admitter:
    """Admits waiting requests for one scheduler, step after step."""

    def __init__(self, runner: StepRunner) -> None:
        self.runner = runner
        self.s = runner.s
        self.policy = runner.policy
        self.ledger = runner.ledger
        self._blocked: tuple[int, int, int | None, int] | None = None
        self._hosts: HostIndex | None = None
        # (blocks, host room needed) of the failed candidate needing the fewest blocks, and of the
        # one needing the least room: a candidate needing at least as much of both fails too
        self._failed: list[tuple[float, float]] = list(_NOTHING_FAILED)
        self._refused = False
        self._max_room: int | None = None
        self._host_pool: list[RequestState] = []

    def admit(self, b: StepBuilder, now_s: float, engine_free: int | None) -> None:
        if not len(self.s.waiting):
            return
        state_key = (self.ledger.version, self.s.waiting.version, engine_free)
        if self._blocked is not None and self._blocked[:3] == state_key and b.budget_left >= self._blocked[3]:
            return
        self._hosts, self._failed, self._refused, self._max_room = None, list(_NOTHING_FAILED), False, None
        self._host_pool = list(self.s.running)  # hosts: what ran before this pass admitted anyone
        admitted_before = len(b.admitted)
        joined: list[RequestState] = []
        starving = self.s.starving(now_s)
        can_join = len(self.s.running) < self.s.config.scheduler.max_num_seqs and b.budget_left >= 1
        if starving is not None and can_join and starving.request_id not in b.preempted_ids:
            # the starvation guard: the oldest request goes first, and nobody passes it until it fits
            if self._try(starving, (starving.admit_hint or self._hint(starving))[1], b, now_s):
                joined.append(starving)
                stopped_by_kv = self._scan(b, now_s, joined)
            else:
                stopped_by_kv = not self._refused
        else:
            stopped_by_kv = self._scan(b, now_s, joined)
        for st in joined:  # taken off the queue after the scan, which iterates the queue itself
            self.s.waiting.remove(st)
        blocked = stopped_by_kv and len(b.admitted) == admitted_before and not self._refused
        self._blocked = (*state_key, b.budget_left) if blocked else None

    def _scan(self, b: StepBuilder, now_s: float, joined: list[RequestState]) -> bool:
        """Admit in order; True if the scan ended on KV failures (or ran out of candidates)."""
        cfg = self.s.config.scheduler
        running = self.s.running
        failures_left = cfg.max_admission_scan
        skip = self.policy.admission.skip_blocked
        free = self.runner.admittable()
        for lst in self.s.waiting.buckets_by_head():
            for _, st in itertools.islice(lst, failures_left + min(cfg.max_num_seqs - len(running), b.budget_left)):
                if len(running) >= cfg.max_num_seqs or b.budget_left < 1:
                    return False
                if st.status is RequestStatus.RUNNING:
                    continue  # admitted by the starvation guard before the scan
                if st.request_id in b.preempted_ids:
                    self._refused = True  # it may join next step: not a KV verdict to remember
                    continue
                hint = st.admit_hint or self._hint(st)
                # the cheap verdict first: no chunk size fits the free pool and no host can lend
                if (hint[0] <= free or self._may_borrow(*hint)) and self._try(st, hint[1], b, now_s):
                    joined.append(st)
                    free = self.runner.admittable()
                    continue
                failures_left -= 1
                if not skip or failures_left <= 0:
                    return True
        return True

    def _hint(self, st: RequestState) -> tuple[int, int]:
        """(fewest blocks `st` can be admitted with, host room it needs to borrow): fixed while it waits."""
        st.admit_hint = (self.runner.admission_blocks(st, 1), room_needed(st, self.policy.admission.margin_tokens))
        return st.admit_hint

    def _try(self, st: RequestState, need: int, b: StepBuilder, now_s: float) -> bool:
        if not self.policy.admission.allows(st, self.s):
            self._refused = True
            return False
        todo = st.num_tokens_to_compute
        chunk = min(todo, b.budget_left)
        if chunk < todo and not self.runner.may_chunk(st):
            self._refused = True
            return False
        blocks = self.runner.admission_blocks(st, chunk)
        host: RequestState | None = None
        if blocks <= self.runner.admittable():
            self.ledger.allocate(st.request_id, blocks)
        elif self.policy.admission.pipelining and (host := self._find_host(blocks, need)) is not None:
            self.ledger.borrow(st.request_id, host.request_id, blocks)
            host.watermark = self.runner.watermark(host, self.s.blocks_for(host.num_computed_tokens))
            assert self._hosts is not None
            self._hosts.lent(host)
            self.s.stats.num_pipelined += 1
        else:
            return False
        self.s.enter_running(st)
        self.s.stats.num_admitted += 1
        st.admit_seq = self.s.stats.num_admitted
        st.group = (self.s.step_id, st.bucket)
        b.admitted.append(Admission(st.request_id, blocks, None if host is None else host.request_id))
        self.policy.admission.on_admit(self.s, st)
        started = self.runner.run_chunk(st, chunk, b, now_s)
        assert started, "a fresh admission holds at least the blocks of its first chunk"
        return True

    def _may_borrow(self, blocks: int, need: int) -> bool:
        """False when no host can lend: pipelining is off, a smaller request already failed, or no
        running request has the room (an upper bound, computed once per pass: rooms only shrink)."""
        if not self.policy.admission.pipelining or self._dominated(blocks, need):
            return False
        if self._max_room is None:
            self._max_room = max(map(room, self._host_pool), default=-1)
        return need <= self._max_room

    def _dominated(self, blocks: int, need: int) -> bool:
        (b0, n0), (b1, n1) = self._failed
        return (blocks >= b0 and need >= n0) or (blocks >= b1 and need >= n1)

    def _find_host(self, blocks: int, need: int) -> RequestState | None:
        if self._dominated(blocks, need):
            return None
        if self._hosts is None:
            self._hosts = HostIndex(self._host_pool, self.ledger)
        host = self._hosts.best_fit(need, blocks)
        if host is None:
            if blocks < self._failed[0][0]:
                self._failed[0] = (blocks, need)
            if need < self._failed[1][1]:
                self._failed[1] = (blocks, need)
        return host
