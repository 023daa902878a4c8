"""The phases of one scheduling step (see the model at the top of `scheduler.py`).

`StepBuilder` collects what the step decides; `StepRunner` runs the phases against the scheduler's
queues and ledger. Kept apart from `Scheduler` so the hot loop (decodes) reads top to bottom.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ecosched.core.admission import Admitter
from ecosched.core.decision import Admission, Decision, EngineView, Preemption, PrefillChunk, TopUp
from ecosched.core.ledger import Allocated
from ecosched.core.request import PreemptMode, RequestState, RequestStatus

if TYPE_CHECKING:
    from ecosched.core.scheduler import Scheduler

_RUNNING = RequestStatus.RUNNING


class StepBuilder:
    """What one step decides, filled in phase by phase."""

    def __init__(self, step_id: int, token_budget: int) -> None:
        self.step_id = step_id
        self.token_budget = token_budget
        self.budget_left = token_budget
        self.decodes: list[str] = []
        self.prefills: list[PrefillChunk] = []
        self.admitted: list[Admission] = []
        self.swapped_in: list[str] = []
        self.topups: list[TopUp] = []
        self.preempted: list[Preemption] = []
        self.preempted_ids: set[str] = set()  # preempted in this step: not to rejoin before the next
        self.generating: list[RequestState] = []  # sample a token this step
        self.finishing: list[RequestState] = []  # reach max_output_tokens this step

    def build(self) -> Decision:
        return Decision(
            step_id=self.step_id,
            token_budget=self.token_budget,
            decodes=tuple(self.decodes),
            prefills=tuple(self.prefills),
            admitted=tuple(self.admitted),
            swapped_in=tuple(self.swapped_in),
            topups=tuple(self.topups),
            preempted=tuple(self.preempted),
            length_finished=tuple(s.request_id for s in self.finishing),
        )


class StepRunner:
    """Runs the phases of a step for one scheduler."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.s = scheduler
        self.policy = scheduler.policy
        self.ledger = scheduler.ledger
        self.bs = scheduler.block_size
        self._engine_free: int | None = None
        self._free_at_start = 0
        self.admitter = Admitter(self)

    def run(self, b: StepBuilder, now_s: float, view: EngineView | None) -> None:
        self._engine_free = None if view is None else view.num_free_blocks
        self._free_at_start = self.ledger.num_free_blocks
        if self.policy.decode_first:
            prefilling = self._decodes(b, list(self.s.running))
            self._running_prefills(b, prefilling, now_s)
            self._resume_swapped(b, now_s)
            self.admitter.admit(b, now_s, self._engine_free)
        else:
            running = list(self.s.running)
            decoding = [st for st in running if st.num_tokens_to_compute == 1]
            self._running_prefills(b, [st for st in running if st.num_tokens_to_compute > 1], now_s)
            self._resume_swapped(b, now_s)
            self.admitter.admit(b, now_s, self._engine_free)
            self._decodes(b, decoding)

    # ---- phase: decodes (the hot loop) ----
    def _decodes(self, b: StepBuilder, states: list[RequestState]) -> list[RequestState]:
        """Give each decoding request its one token; returns the running requests still in prefill.

        The budget and the context count live in locals here and are written back around the slow
        path (`_make_room`, which may take tokens back from preempted requests) and at the end."""
        prefilling = []
        decodes, generating, finishing = b.decodes, b.generating, b.finishing
        budget, num_decoded = b.budget_left, 0
        for st in states:
            computed = st.num_computed_tokens
            output = st.num_output_tokens
            if st.num_prompt_tokens + output - computed != 1:
                prefilling.append(st)
                continue
            if budget < 1 or st.status is not _RUNNING:
                continue
            if computed >= st.watermark:  # the token would pass the watermark
                b.budget_left = budget
                self.s.num_context_tokens += num_decoded
                num_decoded = 0
                fits = self._make_room(st, computed + 1, b)
                budget = b.budget_left
                if not fits:
                    continue
            st.num_computed_tokens = computed + 1
            st.num_output_tokens = output = output + 1
            budget -= 1
            num_decoded += 1
            decodes.append(st.request_id)
            generating.append(st)
            if output >= st.max_output_tokens:
                finishing.append(st)
        b.budget_left = budget
        self.s.num_context_tokens += num_decoded
        return prefilling

    # ---- phase: running prefills ----
    def _running_prefills(self, b: StepBuilder, states: list[RequestState], now_s: float) -> None:
        if not states:
            return
        order = self.policy.order
        keyed = [
            (order.prefill_key(st, self.s.blocks_for(st.num_computed_tokens)), i, st) for i, st in enumerate(states)
        ]
        if any(k is not None for k, _, _ in keyed):
            keyed.sort(key=lambda item: (item[0] or (), item[1]))
        for _, _, st in keyed:
            if b.budget_left < 1:
                return
            if st.status is not _RUNNING:
                continue
            todo = st.num_tokens_to_compute
            if todo > b.budget_left and not self.may_chunk(st):
                continue
            self.run_chunk(st, min(todo, b.budget_left), b, now_s)

    def run_chunk(self, st: RequestState, num_tokens: int, b: StepBuilder, now_s: float) -> bool:
        """Compute `num_tokens` more tokens of `st` this step (a prefill chunk, or a resumed decode)."""
        start = st.num_computed_tokens
        new = start + num_tokens
        if new > st.watermark and not self._make_room(st, new, b):
            return False
        st.num_computed_tokens = new
        self.s.num_context_tokens += num_tokens
        b.budget_left -= num_tokens
        if st.first_scheduled_s is None:
            st.first_scheduled_s = now_s
        samples = new == st.num_tokens
        b.prefills.append(PrefillChunk(st.request_id, start, num_tokens, samples))
        if samples:
            st.num_output_tokens += 1
            b.generating.append(st)
            if st.num_output_tokens >= st.max_output_tokens:
                b.finishing.append(st)
        return True

    # ---- KV growth: top-up, or preemption ----
    def _make_room(self, st: RequestState, new_computed: int, b: StepBuilder) -> bool:
        """Make `st` able to hold `new_computed` tokens; False if `st` itself had to be preempted."""
        rid, ledger, res = st.request_id, self.ledger, self.policy.reservation
        need = self.s.blocks_for(new_computed)
        cap = ledger.capacity_blocks(rid)
        cap_tokens = cap * self.bs
        # proactive top-up: few reserved tokens left, and the request is expected to need more
        # (its padded prediction does not fit, or it has already outrun it)
        low = (
            res.lookahead_tokens > 0
            and cap_tokens - new_computed < res.lookahead_tokens
            and (st.predicted_remaining_tokens == 0 or st.num_tokens + st.predicted_remaining_tokens > cap_tokens)
        )
        if need > cap and not res.grows:
            self._preempt(st, b)  # its segment is used up: it queues again at the back
            return False
        if (need > cap or low) and res.grows:
            want = max(need - cap, self.s.blocks_for(res.topup_tokens(st)))
            if isinstance(ledger.allocate(rid, want, use_reserve=res.topup_from_reserve), Allocated):
                self._topped_up(rid, want, b)
            elif need > cap and not self._preempt_until_fits(st, need, b):
                return False
        ledger.set_used(rid, need)
        st.watermark = self.watermark(st, need)
        return True

    def watermark(self, st: RequestState, used_blocks: int) -> int:
        """Computed-token count past which `st` needs `_make_room` again; refreshes its capacity."""
        st.capacity_tokens = self.ledger.capacity_blocks(st.request_id) * self.bs
        return min(used_blocks * self.bs, st.capacity_tokens - self.policy.reservation.lookahead_tokens)

    def _topped_up(self, rid: str, num_blocks: int, b: StepBuilder) -> None:
        b.topups.append(TopUp(rid, num_blocks))
        self.s.stats.num_topups += 1

    def _preempt_until_fits(self, st: RequestState, need: int, b: StepBuilder) -> bool:
        rid = st.request_id
        while True:
            short = need - self.ledger.capacity_blocks(rid)
            if short <= 0:
                return True
            if isinstance(self.ledger.allocate(rid, short, use_reserve=True), Allocated):
                self._topped_up(rid, short, b)
                return True
            candidates = [r for r in self.s.running if r.status is _RUNNING]
            if not self.s.config.scheduler.preempt_partial_prefills:
                # the engine cannot preempt a request part-way through its prompt: it waits instead
                candidates = [r for r in candidates if r.num_tokens_to_compute <= 1]
                if not candidates:
                    return False
            victim = self.policy.victims.choose(candidates, self.s)
            self._preempt(victim, b)
            if victim is st:
                return False

    def _preempt(self, victim: RequestState, b: StepBuilder) -> None:
        rid = victim.request_id
        mode = self.policy.victims.mode(victim, self.s)
        swapped_in_now = rid in b.swapped_in
        joined_now = self.unschedule(victim, b)
        b.preempted_ids.add(rid)
        if joined_now and not swapped_in_now:
            # admitted from the waiting queue in this very step: the engine never saw it join, so it
            # simply goes back where it was (it holds no KV the engine knows of; nothing to swap)
            self.ledger.release(rid)
            self.s.requeue(victim, to_swapped=False, counted=False)
            self.policy.admission.on_preempt(self.s, victim)
            return
        if mode is PreemptMode.SWAP and not isinstance(self.ledger.swap_out(rid), Allocated):
            mode = PreemptMode.RECOMPUTE
        if mode is PreemptMode.RECOMPUTE:
            self.ledger.release(rid)
        self.s.requeue(victim, to_swapped=mode is PreemptMode.SWAP)
        if not joined_now:
            b.preempted.append(Preemption(rid, mode))
        if mode is PreemptMode.SWAP:
            self.s.stats.num_swaps += 1
        else:
            self.s.stats.num_recomputes += 1
        self.policy.admission.on_preempt(self.s, victim)

    def unschedule(self, st: RequestState, b: StepBuilder) -> bool:
        """Take back whatever this step gave `st`; True if it joined the batch in this very step."""
        rid = st.request_id
        tokens, sampled = 0, False
        if rid in b.decodes:
            b.decodes.remove(rid)
            tokens, sampled = 1, True
        else:
            for i, chunk in enumerate(b.prefills):
                if chunk.request_id == rid:
                    tokens, sampled = chunk.num_tokens, chunk.samples_token
                    del b.prefills[i]
                    break
        if sampled:
            st.num_output_tokens -= 1
            b.generating.remove(st)
            if st in b.finishing:
                b.finishing.remove(st)
        st.num_computed_tokens -= tokens
        self.s.num_context_tokens -= tokens
        b.budget_left += tokens
        if rid in self.ledger:
            self.ledger.set_used(rid, self.s.blocks_for(st.num_computed_tokens))
        joined = [a for a in b.admitted if a.request_id == rid]
        for a in joined:
            b.admitted.remove(a)
        if rid in b.swapped_in:
            b.swapped_in.remove(rid)
            return True
        return bool(joined)

    # ---- phase: the GT queue (swapped requests) ----
    def _resume_swapped(self, b: StepBuilder, now_s: float) -> None:
        if not len(self.s.swapped):
            return
        limit = self.s.config.scheduler.max_num_seqs
        for st in list(self.s.swapped):
            if len(self.s.running) >= limit or b.budget_left < 1:
                return
            if st.request_id in b.preempted_ids:
                continue  # preempted in this very step: it waits for the next one
            todo = st.num_tokens_to_compute
            blocks = self.admission_blocks(st, todo)
            if blocks > self.admittable():
                if self.policy.admission.skip_blocked:
                    continue
                return
            self.ledger.allocate(st.request_id, blocks)
            self.ledger.drop_swapped(st.request_id)
            self.s.swapped.remove(st)
            self.s.enter_running(st)
            b.swapped_in.append(st.request_id)
            self.run_chunk(st, min(todo, b.budget_left), b, now_s)

    def admission_blocks(self, st: RequestState, num_new_tokens: int) -> int:
        """Blocks a request takes when it joins: the policy's reservation, at least what this step
        computes, at most what the cache can give outside the global reserve (so a request that
        needs nearly the whole cache can start; top-ups, which may use the reserve, bring the rest)."""
        need = self.s.blocks_for(st.num_computed_tokens + num_new_tokens)
        want = self.s.blocks_for(self.policy.reservation.admission_tokens(st, num_new_tokens))
        return max(need, min(want, self.ledger.num_blocks - self.ledger.num_reserve_blocks))

    def may_chunk(self, st: RequestState) -> bool:
        """Whether `st`'s work may be split across steps: with chunked prefill, or when it is a
        recompute (prompt and output together may exceed any step's budget), and while fewer than
        `max_partial_prefills` other requests are part-way through their prompt."""
        cfg = self.s.config.scheduler
        if not (cfg.chunked_prefill or (cfg.chunk_recomputes and st.num_output_tokens > 0)):
            return False
        limit = cfg.max_partial_prefills
        if not limit:
            return True
        partial = sum(1 for r in self.s.running if r is not st and r.status is _RUNNING and r.num_tokens_to_compute > 1)
        return partial < limit

    def admittable(self) -> int:
        """Blocks an admission may take now: outside the global reserve, and within the engine's own free count."""
        free = self.ledger.num_admittable_blocks
        if self._engine_free is None:
            return free
        taken_this_step = self._free_at_start - self.ledger.num_free_blocks
        return min(free, self._engine_free - taken_this_step)
