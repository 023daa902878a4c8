"""Checks on what the router sends, each returning why a message is wrong (None when it is fine).

They encode the assumptions a real TGI shard makes silently (ecosched research note tgi.md §1.3,
§6.1): block tables inside the pool, slots that follow the block table, enough slots for the
reservation, prefix and chunk lengths the shard can honour, and the prefill token budget the
router agreed to at Warmup.
"""

from __future__ import annotations

from typing import Any

from ecosched_adapters.tgi.standin.config import StandinConfig


class ShardViolation(Exception):
    """The router broke the shard protocol; the call fails with gRPC INTERNAL and this message."""


def request_text(request: Any) -> str:
    """The prompt text as a flash shard reads it: the single text chunk of `input_chunks`.

    TGI drops non-text chunks (the warmup image) and rejects zero or several text chunks. A router
    that fills only the legacy `inputs` string gets the same error a real shard would raise.
    """
    texts = [c.text for c in request.input_chunks.chunks if c.WhichOneof("chunk") == "text"]
    if not texts:
        raise ShardViolation(f"request {request.id}: Request without a text chunk (input_chunks must hold the text)")
    if len(texts) > 1:
        raise ShardViolation(f"request {request.id}: Request contained more than one text chunk")
    return str(texts[0])


def ceil_to(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def block_table_error(request: Any, cfg: StandinConfig, health: bool) -> str | None:
    """Blocks inside [1, num_blocks) (block 0 only for the health probe), unique, and slots on them."""
    rid, bs, blocks, slots = request.id, cfg.block_size, list(request.blocks), list(request.slots)
    if not blocks:
        return f"request {rid}: empty block table (only Warmup may leave blocks to the shard)"
    low = 0 if health else 1
    bad = [b for b in blocks if not low <= b < cfg.num_blocks]
    if bad:
        why = " (block 0 is reserved for the health probe)" if 0 in bad else ""
        return f"request {rid}: blocks {bad[:8]} outside [{low}, {cfg.num_blocks}){why}"
    if len(set(blocks)) != len(blocks):
        dup = sorted({b for b in blocks if blocks.count(b) > 1})
        return f"request {rid}: block table repeats blocks {dup[:8]}"
    if len(slots) > len(blocks) * bs:
        return f"request {rid}: {len(slots)} slots but {len(blocks)} blocks of {bs} hold only {len(blocks) * bs}"
    for i, s in enumerate(slots):
        expected = blocks[i // bs] * bs + i % bs
        if s != expected:
            return (
                f"request {rid}: slots[{i}] = {s}, expected blocks[{i // bs}] * {bs} + {i % bs} = {expected} "
                "(slots must follow the block table)"
            )
    return None


def lengths_error(request: Any, cfg: StandinConfig, prompt_len: int) -> str | None:
    """Slot count, cache_len and chunk_len against the prompt as the shard tokenizes it."""
    rid = request.id
    max_new = request.stopping_parameters.max_new_tokens
    needed = prompt_len + max_new + cfg.speculate - 1
    if len(request.slots) < needed:
        return (
            f"request {rid}: {len(request.slots)} slots < prompt {prompt_len} + max_new_tokens {max_new} "
            f"+ speculate {cfg.speculate} - 1 = {needed}"
        )
    if prompt_len == 0:
        return f"request {rid}: empty prompt"
    if request.cache_len >= prompt_len:
        return f"request {rid}: cache_len {request.cache_len} must be < prompt length {prompt_len}"
    if request.cache_len > 0 and not cfg.prefix_caching:
        return f"request {rid}: cache_len {request.cache_len} > 0 but the shard does not use prefix caching"
    if request.HasField("chunk_len"):
        if not cfg.chunking:
            return f"request {rid}: chunk_len set but the shard does not support chunking"
        if request.chunk_len <= 0:
            return f"request {rid}: chunk_len must be > 0"
        if request.cache_len + request.chunk_len > prompt_len:
            return (
                f"request {rid}: cache_len {request.cache_len} + chunk_len {request.chunk_len} > prompt length "
                f"{prompt_len} (Rust and Python tokenizers are not aligned)"
            )
    return None


def prefill_budget_error(
    new_tokens: int, cached_tokens: int, cfg: StandinConfig, max_prefill: int, max_input: int
) -> str | None:
    """The tokens new requests add to this forward, against what TGI's router may send.

    With chunking the router's budget is `max_prefill_tokens - cached.current_tokens`, rounded up to
    the block size (`queue.rs next_batch`); the cached batch's own tokens are sized by the shard. Without
    chunking it is `max_prefill_tokens` (rounded up), which the router keeps >= max_input_tokens;
    the larger of the two is allowed so that one whole prompt always fits.
    """
    bs = cfg.block_size
    if cfg.chunking:
        limit = ceil_to(max(max_prefill - cached_tokens, 0), bs)
        basis = f"max_prefill_tokens {max_prefill} - cached current_tokens {cached_tokens}"
    else:
        limit = ceil_to(max(max_prefill, max_input), bs)
        basis = f"max(max_prefill_tokens {max_prefill}, max_input_tokens {max_input})"
    if new_tokens > limit:
        return f"prefill over budget: {new_tokens} new tokens > {limit} ({basis}, rounded up to block_size {bs})"
    return None
