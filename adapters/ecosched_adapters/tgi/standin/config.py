"""The stand-in shard's configuration: what a real shard would report in Info, plus test knobs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

# What a real shard reports for each block size (TGI `models/globals.py`): 1 = flashinfer,
# 16 = paged, 64 = ipex, 256 = flashdecoding; any other size reports "paged".
ATTENTION_BY_BLOCK_SIZE = {1: "flashinfer", 16: "paged", 64: "flashdecoding-ipex", 256: "flashdecoding"}
DEFAULT_RANK_SYNC_TIMEOUT_S = 5.0


class StandinConfig(BaseModel):
    """One stand-in shard group (all its ranks). Unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_blocks: int = Field(
        ge=2, description="KV blocks in the pool, block 0 included (reserved for the health probe)."
    )
    block_size: int = Field(
        16, ge=1, description="Tokens per KV block (TGI: 1 flashinfer, 16 paged, 256 flashdecoding)."
    )
    ranks: int = Field(1, ge=1, description="Tensor-parallel ranks; each listens on `unix://{uds_path}-{rank}`.")
    prefix_caching: bool = Field(False, description="Report use_prefix_caching (cache_len > 0 is then allowed).")
    chunking: bool = Field(False, description="Report support_chunking (chunk_len and cached_batch are then allowed).")
    speculate: int = Field(
        0,
        ge=0,
        description="Speculative tokens reported in Info and added to the slot check; one token is still "
        "generated per step.",
    )
    max_model_len: int | None = Field(
        None, ge=2, description="Model context length for Warmup's defaults (None: the KV pool size)."
    )
    latency_profile: str | None = Field(
        None, description="Engine profile name or YAML path giving each forward's duration (None: no sleep)."
    )
    time_scale: float = Field(1.0, ge=0, description="Factor on every modelled forward time before sleeping.")
    output_len: int | None = Field(
        None, ge=1, description="Without a prompt marker, EOS as the N-th generated token of each request."
    )
    eos_at: int | None = Field(
        None, ge=0, description="Without a prompt marker, EOS as the token at this absolute position (0-based)."
    )
    tokenizer: str | None = Field(None, description="tokenizer.json (or a directory holding one); None: built-in.")
    record_path: str | None = Field(None, description="Write one JSON line per RPC (as rank 0 sees it) here.")
    exit_on_violation: bool = Field(False, description="Stop every rank after the first violation, as a crash would.")
    rank_sync_timeout_s: float = Field(
        DEFAULT_RANK_SYNC_TIMEOUT_S,
        gt=0,
        description="How long a rank waits for the other ranks to receive the same call before a violation.",
    )
    dtype: str = Field("torch.float16", description="dtype reported in Info.")

    @model_validator(mode="after")
    def _consistent(self) -> StandinConfig:
        if self.chunking and self.speculate:
            raise ValueError("chunking needs speculate == 0 (TGI turns chunking off when speculating)")
        if self.output_len is not None and self.eos_at is not None:
            raise ValueError("give output_len or eos_at, not both")
        return self

    @property
    def attention_impl(self) -> str:
        return ATTENTION_BY_BLOCK_SIZE.get(self.block_size, "paged")

    @property
    def pool_tokens(self) -> int:
        """KV tokens in the pool: what Warmup reports as max_supported_total_tokens."""
        return self.num_blocks * self.block_size
