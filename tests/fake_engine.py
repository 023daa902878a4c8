"""A fake engine for the scheduler property tests: it keeps its own copy of each request's KV and
output, runs every Decision against that copy (a decision an engine could not run fails), reports
stops, and aborts requests between steps and while a step is in flight."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest

from ecosched import (
    Decision,
    FinishReason,
    PreemptMode,
    Request,
    RequestRecord,
    Scheduler,
    StepOutcome,
    Stop,
)
from ecosched.errors import CapacityError, DuplicateRequestError, UnknownRequestError

BLOCK_SIZE = 16
STEP_S = 0.02

# ---------------------------------------------------------------------------------------------------
# the fake engine


@dataclass
class Tracked:
    """The engine's copy of one request."""

    request: Request
    sampled: int = 0  # output tokens the engine produced
    computed: int = 0  # tokens with KV on the accelerator (or, while swapped, in host memory)
    where: str = "none"  # "none" (no KV), "running", "swapped"
    stopped_at: int | None = None  # output count at which the engine stopped it early

    @property
    def known_tokens(self) -> int:
        return self.request.num_prompt_tokens + self.sampled

    @property
    def owed_output(self) -> int:
        r = self.request
        assert r.true_output_tokens is not None
        return min(r.true_output_tokens, r.max_output_tokens)


@dataclass
class Engine:
    scheduler: Scheduler
    max_num_seqs: int
    live: dict[str, Tracked] = field(default_factory=dict)
    ended: dict[str, RequestRecord] = field(default_factory=dict)
    ended_log: list[str] = field(default_factory=list)  # ids of every record returned, in order
    added: list[str] = field(default_factory=list)
    now: float = 0.0
    num_steps: int = 0
    _next_id: int = 0
    _ended_tracked: dict[str, Tracked] = field(default_factory=dict)
    seen: Counter[str] = field(default_factory=Counter)  # mechanisms the decisions used

    # ---- requests in ----
    def blocks(self, r: Request) -> int:
        return -(-(r.num_prompt_tokens + r.max_output_tokens) // BLOCK_SIZE)

    def must_accept(self, r: Request) -> bool:
        """Fits the cache outside the global reserve: `add_request` must take it."""
        ledger = self.scheduler.ledger
        return self.blocks(r) <= ledger.num_blocks - ledger.num_reserve_blocks

    def must_refuse(self, r: Request) -> bool:
        """Cannot fit even the whole cache: `add_request` must refuse it (in between, either will do)."""
        return self.blocks(r) > self.scheduler.ledger.num_blocks

    def arrive(self, specs: list[tuple[int, int, int, str | None]]) -> None:
        batch = []
        for prompt, max_output, true_output, slo in specs:
            rid = f"r{self._next_id}"
            self._next_id += 1
            batch.append(Request(rid, prompt, max_output, self.now, slo, None, true_output))
        unfinished = self.scheduler.num_unfinished
        try:
            self.scheduler.add_requests(batch)
            accepted = batch
        except CapacityError:
            # all or nothing: one request that can never fit refuses the whole batch, changing nothing
            assert not all(self.must_accept(r) for r in batch), batch
            assert self.scheduler.num_unfinished == unfinished
            for r in batch:
                with pytest.raises(UnknownRequestError):
                    self.scheduler.get(r.request_id)
            accepted = []
            for r in batch:
                try:
                    self.scheduler.add_request(r)
                    accepted.append(r)
                except CapacityError:
                    assert not self.must_accept(r), r
        assert not any(self.must_refuse(r) for r in accepted), accepted
        for r in accepted:
            self.live[r.request_id] = Tracked(r)
            self.added.append(r.request_id)
        assert self.scheduler.num_unfinished == unfinished + len(accepted) == len(self.live)
        self.scheduler.check_invariants()

    def duplicate(self, pick: int) -> None:
        """Adding a request whose id is live is refused and changes nothing."""
        if not self.live:
            return
        rid = sorted(self.live)[pick % len(self.live)]
        before = self.scheduler.num_unfinished
        with pytest.raises(DuplicateRequestError):
            self.scheduler.add_request(Request(rid, 4, 4, self.now, None, None, 4))
        assert self.scheduler.num_unfinished == before
        self.scheduler.check_invariants()

    # ---- aborts ----
    def abort(self, pick: int) -> None:
        if not self.live:
            return
        rid = sorted(self.live)[pick % len(self.live)]
        record = self.scheduler.abort(rid, self.now)
        assert record.finish_reason is FinishReason.ABORT
        self._ended(record)
        self.scheduler.check_invariants()
        before = self.scheduler.num_unfinished
        with pytest.raises(UnknownRequestError):  # a second abort of an ended request
            self.scheduler.abort(rid, self.now)
        assert self.scheduler.num_unfinished == before

    # ---- one step ----
    def step(self, early: tuple[int, ...] = (), in_flight_aborts: tuple[int, ...] = ()) -> Decision:
        decision = self.scheduler.schedule(self.now)
        self.num_steps += 1
        if (
            decision.admitted
            or decision.preempted
            or decision.swapped_in
            or decision.topups
            or decision.length_finished
        ):
            self.scheduler.check_invariants()  # mid-flight, when the step moved KV (always after update)
        sampled = self.run(decision)
        self.now += STEP_S

        aborted = set()
        for pick in in_flight_aborts:
            if self.live:
                rid = sorted(self.live)[pick % len(self.live)]
                record = self.scheduler.abort(rid, self.now)
                assert record.finish_reason is FinishReason.ABORT
                self._ended(record)
                aborted.add(rid)
                self.scheduler.check_invariants()

        # stops: true length reached (also for requests aborted meanwhile: a race the scheduler must
        # ignore), plus random early stops; never for requests that reached max_output_tokens
        length_finished = set(decision.length_finished)
        stops = []
        stopped = set()
        candidates = [rid for rid in sampled if rid not in length_finished]
        early_ids = {candidates[p % len(candidates)] for p in early} if candidates else set()
        for rid in candidates:
            t = self.live.get(rid) or self._ended_tracked.get(rid)
            assert t is not None
            assert t.request.true_output_tokens is not None
            if t.sampled >= t.request.true_output_tokens or rid in early_ids:
                stops.append(Stop(rid))
                if rid not in aborted:
                    stopped.add(rid)
                    t.stopped_at = t.sampled
        records = self.scheduler.update(StepOutcome(decision.step_id, self.now, tuple(stops)))
        self.scheduler.check_invariants()
        expected = (stopped | length_finished) - aborted
        assert {r.request_id for r in records} == expected, (decision, stops)
        for record in records:
            rid = record.request_id
            if rid in stopped:
                assert record.finish_reason is FinishReason.STOP
            else:
                assert record.finish_reason is FinishReason.LENGTH
            self._ended(record)
        return decision

    def run(self, d: Decision) -> list[str]:
        """Run decision `d` against the engine's copy; returns the requests that sampled a token."""
        mentioned = (
            [p.request_id for p in d.preempted]
            + list(d.swapped_in)
            + [a.request_id for a in d.admitted]
            + [t.request_id for t in d.topups]
            + list(d.decodes)
            + [c.request_id for c in d.prefills]
            + list(d.length_finished)
        )
        for rid in mentioned:
            assert rid in self.live, f"step {d.step_id} names {rid!r}, which is not live"
        scheduled = list(d.decodes) + [c.request_id for c in d.prefills]
        assert len(scheduled) == len(set(scheduled)), d
        assert 0 <= d.num_scheduled_tokens <= d.token_budget, d
        assert all(t.num_blocks >= 1 for t in d.topups), d
        if d.topups:
            self.seen["topped up"] += 1

        for p in d.preempted:
            t = self.live[p.request_id]
            assert t.where == "running", (p, t)
            self.seen[f"preempted by {p.mode.value}"] += 1
            if p.mode is PreemptMode.SWAP:
                t.where = "swapped"
            else:
                t.where, t.computed = "none", 0
        for rid in d.swapped_in:
            t = self.live[rid]
            assert t.where == "swapped", (rid, t)
            t.where = "running"
        for a in d.admitted:
            t = self.live[a.request_id]
            assert t.where == "none" and t.computed == 0, (a, t)
            assert a.num_blocks >= 1
            if a.host_id is not None:
                assert a.host_id in self.live and a.host_id != a.request_id
                self.seen["pipelined"] += 1
            t.where = "running"

        sampled = []
        for c in d.prefills:
            t = self.live[c.request_id]
            assert t.where == "running", (c, t)
            assert c.num_tokens >= 1 and c.start == t.computed, (c, t)
            t.computed += c.num_tokens
            assert t.computed <= t.known_tokens, (c, t)
            assert c.samples_token == (t.computed == t.known_tokens), (c, t)
            if c.samples_token:
                t.sampled += 1
                sampled.append(c.request_id)
        for rid in d.decodes:
            t = self.live[rid]
            assert t.where == "running", (rid, t)
            assert t.computed == t.known_tokens - 1, (rid, t)
            t.computed += 1
            t.sampled += 1
            sampled.append(rid)

        running = sum(1 for t in self.live.values() if t.where == "running")
        assert running <= self.max_num_seqs
        for rid in sampled:
            t = self.live[rid]
            assert t.sampled <= t.request.max_output_tokens, t
            assert (t.sampled == t.request.max_output_tokens) == (rid in d.length_finished), (rid, t, d)
        assert set(d.length_finished) <= set(sampled), d
        return sampled

    # ---- ends ----
    def _ended(self, record: RequestRecord) -> None:
        rid = record.request_id
        self.ended_log.append(rid)
        assert rid not in self.ended, f"{rid!r} ended twice: {self.ended[rid]} and {record}"
        assert rid in self.live, f"{rid!r} ended but was never added"
        t = self.live.pop(rid)
        self._ended_tracked[rid] = t
        self.ended[rid] = record
        r = t.request
        assert record.num_prompt_tokens == r.num_prompt_tokens
        assert record.num_output_tokens == t.sampled, (record, t)  # every token the engine produced
        if record.finish_reason is FinishReason.LENGTH:
            assert record.num_output_tokens == r.max_output_tokens, record
        elif record.finish_reason is FinishReason.STOP:
            assert record.num_output_tokens == t.stopped_at, (record, t)
            assert t.stopped_at is not None and t.stopped_at <= t.owed_output
        if record.finish_reason is not FinishReason.ABORT and t.stopped_at in (None, t.owed_output):
            # not stopped early: it got exactly what it was owed, ended the way it was owed
            assert record.num_output_tokens == t.owed_output, (record, t)
            owed_reason = FinishReason.LENGTH if t.owed_output == r.max_output_tokens else FinishReason.STOP
            assert record.finish_reason is owed_reason, (record, t)
        assert record.finished_s >= record.arrival_s == r.arrival_s

    def some_live(self) -> list[Tracked]:
        return sorted(self.live.values(), key=lambda t: t.request.request_id)[:6]

    def progress(self) -> int:
        """Output tokens produced plus requests ended: a scheduler that is not stuck raises this."""
        return sum(t.sampled for t in self.live.values()) + len(self.ended)

    def drain(self) -> None:
        """Step with no new arrivals until every request ended. Fails when that takes too long, or
        when no token is sampled and no request ends for longer than recomputing every live request
        from scratch would take at 8 tokens a step (a livelock)."""
        tokens = sum(t.request.num_prompt_tokens + t.request.max_output_tokens for t in self.live.values())
        bound = self.num_steps + 200 + 4 * tokens
        patience = 200 + tokens // 8
        last, last_step = self.progress(), self.num_steps
        while self.scheduler.num_unfinished:
            # (the messages are only built when an assertion fails)
            assert self.num_steps < bound, (
                f"no end after {self.num_steps} steps: {self.scheduler.num_unfinished} unfinished, {self.some_live()}"
            )
            assert self.num_steps - last_step < patience, (
                f"stuck: no token sampled and no request ended in the last {patience} steps; "
                f"{self.scheduler.num_unfinished} unfinished, {self.some_live()}"
            )
            self.step()
            now = self.progress()
            if now != last:
                last, last_step = now, self.num_steps

    def check_end(self) -> None:
        assert not self.live and self.scheduler.num_unfinished == 0
        counts = Counter(self.ended_log)
        assert sorted(counts) == sorted(self.added)
        assert all(n == 1 for n in counts.values()), counts
        ledger = self.scheduler.ledger
        ledger.check_invariants()
        assert ledger.request_ids() == []
        assert ledger.num_free_blocks == ledger.num_blocks
        assert ledger.num_cpu_free_blocks == ledger.num_cpu_blocks
        assert ledger.num_used_blocks == 0
        # and it still works: one more request runs to its end on the emptied scheduler
        self.arrive([(5, 3, 3, None)])
        self.drain()
        assert not self.live and self.scheduler.num_unfinished == 0
        assert ledger.num_free_blocks == ledger.num_blocks
