"""The PT-queue phase of a step: admitting waiting requests with their reservation.

Candidates come best bucket first (time-synced batching), best key first within a bucket. Each gets
its reservation from the free pool outside the global reserve or, failing that, borrows from a
pipelining host. A request that does not fit is skipped or blocks the queue, as the policy says.

Two shortcuts keep a full KV cache cheap, both exact (they never change a decision):
- Within a pass, a candidate needing at least as many blocks and as much host room as one that
  already failed fails too: admissions only shrink free blocks and host room.
- A pass that admitted nothing, refused only for lack of KV, is not repeated until the ledger gains
  capacity (`ledger.version`), the queue gains a request (`waiting.version`), or the budget shrinks
  (a smaller chunk needs fewer blocks; a larger one needs as many or more).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ecosched.core.decision import Admission
from ecosched.core.pipelining import HostIndex
from ecosched.core.request import RequestState

if TYPE_CHECKING:
    from ecosched.core.step import StepBuilder, StepRunner


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
        self._failed: list[tuple[int, int]] = []
        self._refused = False

    def admit(self, b: StepBuilder, now_s: float, engine_free: int | None) -> None:
        state_key = (self.ledger.version, self.s.waiting.version, engine_free)
        if self._blocked is not None and self._blocked[:3] == state_key and b.budget_left >= self._blocked[3]:
            return
        self._hosts, self._failed, self._refused = None, [], False
        admitted_before = len(b.admitted)
        stopped_by_kv = self._scan(b, now_s)
        blocked = stopped_by_kv and len(b.admitted) == admitted_before and not self._refused
        self._blocked = (*state_key, b.budget_left) if blocked else None

    def _scan(self, b: StepBuilder, now_s: float) -> bool:
        """Admit in order; True if the scan ended on KV failures (or ran out of candidates)."""
        cfg = self.s.config.scheduler
        failures_left = cfg.max_admission_scan
        skip = self.policy.admission.skip_blocked
        for lst in self.s.waiting.buckets_by_head():
            seats = cfg.max_num_seqs - len(self.s.running)
            for _, st in lst[: failures_left + min(seats, b.budget_left)]:
                if len(self.s.running) >= cfg.max_num_seqs or b.budget_left < 1:
                    return False
                if st.request_id in b.preempted_ids:
                    self._refused = True  # it may join next step: not a KV verdict to remember
                    continue
                if self._try(st, b, now_s):
                    continue
                failures_left -= 1
                if not skip or failures_left <= 0:
                    return True
        return True

    def _try(self, st: RequestState, b: StepBuilder, now_s: float) -> bool:
        if not self.policy.admission.allows(st, self.s):
            self._refused = True
            return False
        todo = st.num_tokens_to_compute
        chunk = min(todo, b.budget_left)
        if chunk < todo and not self.s.config.scheduler.chunked_prefill:
            self._refused = True
            return False
        blocks = self.runner.admission_blocks(st, chunk)
        host: RequestState | None = None
        if blocks <= self.runner.admittable():
            self.ledger.allocate(st.request_id, blocks)
        elif self.policy.admission.pipelining and (host := self._find_host(st, blocks)) is not None:
            self.ledger.borrow(st.request_id, host.request_id, blocks)
            host.watermark = self.runner.watermark(host, self.s.blocks_for(host.num_computed_tokens))
            assert self._hosts is not None
            self._hosts.lent(host)
            self.s.stats.num_pipelined += 1
        else:
            return False
        self.s.waiting.remove(st)
        self.s.enter_running(st)
        self.s.stats.num_admitted += 1
        st.admit_seq = self.s.stats.num_admitted
        b.admitted.append(Admission(st.request_id, blocks, None if host is None else host.request_id))
        return self.runner.run_chunk(st, chunk, b, now_s)

    def _find_host(self, guest: RequestState, blocks: int) -> RequestState | None:
        margin = self.policy.admission.margin_tokens
        need = guest.num_tokens + 2 * guest.predicted_remaining_tokens + margin
        if any(blocks >= fb and need >= fn for fb, fn in self._failed):
            return None
        if self._hosts is None:
            self._hosts = HostIndex(self.s.running, self.ledger)
        host = self._hosts.best_fit(guest, blocks, margin)
        if host is None:
            if not self._failed:
                self._failed = [(blocks, need), (blocks, need)]
            if blocks < self._failed[0][0]:
                self._failed[0] = (blocks, need)
            if need < self._failed[1][1]:
                self._failed[1] = (blocks, need)
        return host
