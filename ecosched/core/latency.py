"""Iteration-latency and preemption-cost models, as the core sees them.

The core asks two questions: how long a step with B batched tokens over C context tokens takes (to
size the token budget to a TBT target), and whether swapping or recomputing a victim is cheaper.
`LinearLatencyModel` answers from configuration; the simulator supplies calibrated models that follow
the same `LatencyModel` protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ecosched.config import LatencyConfig


class LatencyModel(Protocol):
    """Predicted wall time of one engine step."""

    def iteration_time_s(self, num_batched_tokens: int, num_context_tokens: int) -> float: ...


@dataclass(frozen=True, slots=True)
class LinearLatencyModel:
    """step = base + per_token * batched tokens + per_context_token * context tokens read."""

    base_s: float
    per_token_s: float
    per_context_token_s: float

    @classmethod
    def from_config(cls, c: LatencyConfig) -> LinearLatencyModel:
        return cls(c.base_ms / 1e3, c.per_token_ms / 1e3, c.per_context_token_us / 1e6)

    def iteration_time_s(self, num_batched_tokens: int, num_context_tokens: int) -> float:
        return self.base_s + self.per_token_s * num_batched_tokens + self.per_context_token_s * num_context_tokens


def max_tokens_within(model: LatencyModel, target_s: float, num_context_tokens: int, lo: int, hi: int) -> int:
    """The largest budget in [lo, hi] whose predicted step time is within `target_s` (lo if none is).

    Assumes step time does not fall as tokens grow; a binary search, about log2(hi) model calls.
    """
    if model.iteration_time_s(hi, num_context_tokens) <= target_s:
        return hi
    if model.iteration_time_s(lo, num_context_tokens) > target_s:
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if model.iteration_time_s(mid, num_context_tokens) <= target_s:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True, slots=True)
class PreemptionCost:
    """Swap moves KV out and back over the host link; recompute re-runs the prefill."""

    kv_bytes_per_token: int
    link_bytes_per_s: float

    @classmethod
    def from_config(cls, c: LatencyConfig) -> PreemptionCost:
        return cls(c.kv_bytes_per_token, c.pcie_gb_per_s * 1e9)

    def swap_s(self, num_tokens: int) -> float:
        return 2.0 * num_tokens * self.kv_bytes_per_token / self.link_bytes_per_s

    def swap_is_cheaper(self, model: LatencyModel, num_tokens: int) -> bool:
        """True when swapping `num_tokens` of KV out and back beats recomputing them."""
        return self.swap_s(num_tokens) < model.iteration_time_s(num_tokens, 0)
