"""One request as the stand-in shard holds it: its block table, slots, tokens and progress.

Positions are 0-based over prompt + generated tokens. ``computed`` counts the positions whose KV
is written; a request is prefilling while ``computed < prompt_len``. The last sampled token is in
``ids`` but not yet in KV: the next decode step writes it (TGI writes a token's KV when it is the
forward's input), so the final token of a finished request is never written.

::

    position  0 .. cache_len-1 | cache_len .. computed-1 | computed .. len(ids)-1 | .. reserved_len-1
              read-only prefix | written by this request  | sampled, not yet in KV | still to write
                               |<----------- owned (write-set): cache_len .. reserved_len-1 ---------->|
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ecosched_adapters.tgi.standin.outputs import Finish, OutputScript, mix64

HEALTH_ID = (1 << 64) - 1  # TGI's liveness probe: request and batch id u64::MAX, block 0, slot 0
_CTX_ROOT = 0x5EED


def context_hashes(ids: list[int]) -> list[int]:
    """ctx[p] identifies ids[0..p] (KV at position p depends on every earlier token)."""
    out, h = [], _CTX_ROOT
    for t in ids:
        h = mix64(h, t)
        out.append(h)
    return out


@dataclass(eq=False, slots=True)
class ReqState:
    """A request inside a cached batch."""

    id: int
    blocks: tuple[int, ...]
    slots: tuple[int, ...]
    cache_len: int
    prompt_len: int
    max_new_tokens: int
    reserved_len: int  # prompt_len + max_new_tokens + speculate - 1: positions it may ever write
    script: OutputScript
    stop_sequences: tuple[str, ...] = ()
    ignore_eos: bool = False
    seed: int | None = None  # reported in GeneratedText (do_sample only, as TGI)
    top_n_tokens: int = 0
    health: bool = False
    ids: list[int] = field(default_factory=list)
    ctx: list[int] = field(default_factory=list)
    computed: int = 0
    input_len: int = 0  # tokens of this request in the next forward
    finished: Finish | None = None

    @property
    def prefilling(self) -> bool:
        return self.computed < self.prompt_len

    @property
    def num_generated(self) -> int:
        return len(self.ids) - self.prompt_len

    def owned_positions(self) -> range:
        """Positions this request writes over its life: [cache_len, reserved_len)."""
        return range(self.cache_len, min(self.reserved_len, len(self.slots)))

    def prefix_positions(self) -> range:
        """Positions it only reads (a prefix hit): [0, cache_len)."""
        return range(self.cache_len)

    def same_prompt_kv(self, position: int, other: ReqState, other_position: int) -> bool:
        """Whether both would hold identical KV there: the same prompt position with the same context.

        Such an overlap is benign: TGI's router sends `cache_len = prompt_len - 1` for a full prefix
        hit, so the last prompt token is recomputed into a shared block with the same value.
        """
        return (
            position == other_position
            and position < self.prompt_len
            and other_position < other.prompt_len
            and self.ctx[position] == other.ctx[other_position]
        )

    def append(self, token_id: int) -> None:
        prev = self.ctx[-1] if self.ctx else _CTX_ROOT
        self.ids.append(token_id)
        self.ctx.append(mix64(prev, token_id))
