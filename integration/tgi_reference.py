"""TGI's v3 router and shard on a scripted trace, as a reference for the differential test.

Written from TGI's algorithm (backends/v3/src/queue.rs `next_batch`, backend.rs `batching_task`, the
flash shard's chunk sizing; ../shared/research/tgi.md sections 1.3, 2.3 and 2.5), independently of
ecosched's core: a plain loop over requests that all arrive before the first step, with block size 1
(TGI's default flashinfer layout), no prefix hits and outputs within one segment. It returns the
sequence of forwards TGI would run: ("prefill" | "decode", [(request, tokens computed)]).
"""

from __future__ import annotations

from dataclasses import dataclass, field

SEGMENT = 1024  # TGI's DEFAULT_GENERATION_LENGTH


@dataclass
class _Req:
    name: str
    prompt: int
    max_new: int
    output: int  # EOS comes as this generated token
    computed: int = 0
    generated: int = 0
    next_chunk: int = 0  # tokens the next forward computes while the prompt is not done

    @property
    def prefilling(self) -> bool:
        return self.computed < self.prompt


@dataclass
class TGIReference:
    num_blocks: int  # the pool, block 0 included
    max_prefill_tokens: int
    chunking: bool = True
    waiting_served_ratio: float = 1.2
    max_waiting_tokens: int = 20
    forwards: list[tuple[str, list[tuple[str, int]]]] = field(default_factory=list)

    def run(self, trace: list[tuple[str, int, int, int]]) -> list[tuple[str, list[tuple[str, int]]]]:
        """`trace`: (name, prompt tokens, max_new_tokens, output tokens) in arrival order."""
        queue = [_Req(n, p, m, o) for n, p, m, o in trace]
        free = self.num_blocks - 1  # block 0 is the health probe's
        batch: list[_Req] = []
        while queue or batch:
            if not batch:
                new, free = self._next_batch(queue, free, self.max_prefill_tokens, None, batch)
                if not new:
                    raise AssertionError("the head of the queue can never fit")
                batch = new
                free = self._forward("prefill", batch, free)
                batch = [r for r in batch if not self._done(r)]
                waiting_tokens = 1
            while batch:
                if self.chunking:
                    budget = self.max_prefill_tokens - sum(r.next_chunk if r.prefilling else 1 for r in batch)
                    min_size = None
                else:
                    budget = self.max_prefill_tokens
                    min_size = None if waiting_tokens >= self.max_waiting_tokens else int(
                        len(batch) * self.waiting_served_ratio)
                new, free = self._next_batch(queue, free, budget, min_size, batch)
                if new:
                    if self.chunking:
                        batch = batch + new
                        free = self._forward("prefill", batch, free)
                    else:
                        free = self._forward("prefill", new, free)
                        batch = batch + new
                    batch = [r for r in batch if not self._done(r)]
                    waiting_tokens = 1
                    if not batch:
                        break
                free = self._forward("decode", batch, free)
                batch = [r for r in batch if not self._done(r)]
                waiting_tokens += 1
        return self.forwards

    def _next_batch(
        self, queue: list[_Req], free: int, budget: int, min_size: int | None, running: list[_Req]
    ) -> tuple[list[_Req], int]:
        if not queue or budget <= 0:
            return [], free
        taken: list[_Req] = []
        prefill = 0
        kept_free = free
        for r in list(queue):
            blocks = r.prompt + min(r.max_new, SEGMENT) - 1
            if blocks > free:
                break
            if prefill + r.prompt > budget:
                if self.chunking and budget - prefill > 0:
                    free -= blocks
                    r.next_chunk = budget - prefill
                    taken.append(r)
                break
            free -= blocks
            r.next_chunk = r.prompt
            prefill += r.prompt
            taken.append(r)
        if min_size is not None and len(taken) < min_size:
            return [], kept_free
        for r in taken:
            queue.remove(r)
        return taken, free

    def _forward(self, method: str, batch: list[_Req], free: int) -> int:
        ran = []
        for r in batch:
            if r.prefilling:
                n = r.next_chunk
                r.computed += n
                ran.append((r.name, n))
                if not r.prefilling:
                    r.generated = 1
            else:
                r.computed += 1
                r.generated += 1
                ran.append((r.name, 1))
        self.forwards.append((method, ran))
        # the shard sizes the next chunk of every unfinished prompt, walking the batch backwards
        left = self.max_prefill_tokens - (len(batch) - 1)
        for r in reversed(batch):
            if r.prefilling:
                r.next_chunk = max(min(r.prompt - r.computed, left), 1)
                left -= r.next_chunk
        for r in batch:
            if self._done(r):
                free += r.prompt + min(r.max_new, SEGMENT) - 1
        return free

    @staticmethod
    def _done(r: _Req) -> bool:
        return not r.prefilling and r.generated >= min(r.output, r.max_new)
