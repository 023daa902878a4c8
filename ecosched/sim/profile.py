"""Engine profiles: one GPU and model, with a latency model calibrated on measured per-layer timings.

A profile answers the simulator's physical questions: how long a step takes (`ProfileLatencyModel`),
how many KV blocks fit (`num_gpu_blocks`, `num_cpu_blocks`), and what swapping or recomputing a
victim costs. Profiles are YAML files under `configs/profiles/`, written by `ecosched.sim.fit`.

Step time, all terms in seconds (B batched tokens, C KV tokens read by the batch, tp ranks):

    overhead                                    CPU side of a step (scheduling, sampling, launch)
  + L * layer(B)                                fitted non-attention cost of one layer, per rank
  + 2 * L * (lat + 2(tp-1)/tp * B*h*dtype / bw)  two ring all-reduces per layer (tp > 1 only)
  + C * kv_bytes_per_token / (hbm * eff * tp)   decode attention: reading the KV cache
  + lm_head(n)                                  roofline: max(weights / hbm, 2*V*h*n / flops)
  + sum over prefill chunks of attention FLOPs / (peak * attention efficiency * tp)
"""

from __future__ import annotations

import os
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from ecosched.config import _Strict, read_yaml_mapping
from ecosched.errors import ConfigError

GIB = 1 << 30
PROFILES_ENV = "ECOSCHED_PROFILES_DIR"


class GPUSpec(_Strict):
    """One accelerator: capacity, bandwidths, peak compute, and the achievable fractions of them."""

    name: str = Field(description="Accelerator name, e.g. 'H100-SXM-80GB'.")
    memory_gib: float = Field(gt=0, description="Device memory per GPU, GiB (as the driver reports it).")
    hbm_gb_per_s: float = Field(gt=0, description="Peak HBM bandwidth per GPU, GB/s (1e9 bytes/s), from the spec.")
    peak_tflops: float = Field(gt=0, description="Peak dense bf16/fp16 tensor throughput per GPU, TFLOP/s.")
    hbm_efficiency: float = Field(
        gt=0, le=1, description="Achievable fraction of peak HBM bandwidth for KV reads and weight streaming."
    )
    attention_flops_efficiency: float = Field(
        gt=0, le=1, description="Achievable fraction of peak FLOP/s for prefill (flash) attention."
    )
    gemm_flops_efficiency: float = Field(
        0.7, gt=0, le=1, description="Achievable fraction of peak FLOP/s for large GEMMs (the LM head)."
    )
    pcie_gb_per_s: float = Field(
        gt=0, description="Achievable host<->device bandwidth per GPU and direction for KV swaps, GB/s."
    )
    interconnect_gb_per_s: float = Field(
        gt=0, description="GPU-to-GPU bandwidth per GPU and direction (NVLink), GB/s, from the spec."
    )
    interconnect_efficiency: float = Field(
        0.7, gt=0, le=1, description="Achievable fraction of interconnect bandwidth for all-reduce (bus bw)."
    )
    allreduce_latency_us: float = Field(
        8.0, ge=0, description="Fixed latency of one small all-reduce among the tensor-parallel ranks, us."
    )


class ModelSpec(_Strict):
    """Transformer dimensions that set weight size, KV size and attention FLOPs."""

    name: str = Field(description="Model name, e.g. 'llama-2-7b'.")
    num_layers: int = Field(ge=1, description="Transformer layers.")
    hidden_size: int = Field(ge=1, description="Model (embedding) width.")
    num_heads: int = Field(ge=1, description="Query heads per layer.")
    num_kv_heads: int = Field(ge=1, description="Key/value heads per layer (fewer than num_heads under GQA).")
    head_dim: int = Field(ge=1, description="Width of one attention head.")
    intermediate_size: int = Field(ge=1, description="MLP hidden width.")
    vocab_size: int = Field(ge=1, description="Vocabulary size (rows of the LM head).")
    num_params_b: float = Field(gt=0, description="Parameters, billions (sets the weight memory).")
    dtype_bytes: int = Field(2, ge=1, description="Bytes per weight and per KV element (2: fp16/bf16).")
    max_model_len: int = Field(ge=2, description="Context length: prompt plus output tokens.")

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelSpec:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        return self


class LayerCostFit(_Strict):
    """Non-attention time of one layer on one rank vs batch tokens: piecewise linear through knots."""

    knots_tokens: list[int] = Field(description="Batch-token counts of the knots, strictly increasing.")
    knots_ms: list[float] = Field(
        description="Per-layer time at the knots, ms; non-decreasing. Flat below the first knot, linear "
        "extrapolation of the last segment beyond the last knot."
    )
    source: str = Field(description="Measurements the fit was made from, and how they were reduced.")
    command: str = Field(description="Command line that produced this fit.")
    num_train_rows: int = Field(ge=1, description="Distinct token counts the knots were fitted on.")
    num_heldout_rows: int = Field(ge=0, description="Distinct token counts held out of the fit.")
    heldout_mape_pct: float = Field(ge=0, description="Mean absolute percentage error on the held-out rows.")
    heldout_max_abs_pct: float = Field(ge=0, description="Largest absolute percentage error on the held-out rows.")

    @model_validator(mode="after")
    def _knots_valid(self) -> LayerCostFit:
        t, v = self.knots_tokens, self.knots_ms
        if len(t) < 2 or len(t) != len(v):
            raise ValueError(f"need two or more knots with one time each, found {len(t)} tokens, {len(v)} times")
        if any(b <= a for a, b in pairwise(t)) or t[0] < 0:
            raise ValueError("knots_tokens must be non-negative and strictly increasing")
        if any(b < a for a, b in pairwise(v)) or v[0] < 0:
            raise ValueError("knots_ms must be non-negative and non-decreasing (step time may not fall)")
        return self


class Profile(_Strict):
    """A GPU, a model on `tensor_parallel` of those GPUs, memory policy, and the fitted layer cost."""

    name: str = Field(description="Profile name (the YAML file's stem).")
    description: str = Field(description="What the profile models.")
    gpu: GPUSpec = Field(description="The accelerator.")
    model: ModelSpec = Field(description="The model.")
    tensor_parallel: int = Field(ge=1, description="Tensor-parallel ranks (GPUs) serving one model replica.")
    gpu_memory_utilization: float = Field(gt=0, le=1, description="Fraction of device memory the engine may use.")
    activation_reserve_gib: float = Field(
        ge=0, description="Per-GPU memory kept for activations, CUDA graphs and communication buffers, GiB."
    )
    swap_space_gib: float = Field(ge=0, description="Host memory for swapped-out KV per GPU, GiB.")
    step_overhead_ms: float = Field(ge=0, description="CPU-side time of every step, ms.")
    layer_cost: LayerCostFit = Field(description="Fitted per-layer non-attention cost at this tensor-parallel degree.")

    @model_validator(mode="after")
    def _tp_divides_heads(self) -> Profile:
        if self.model.num_heads % self.tensor_parallel:
            raise ValueError(f"tensor_parallel {self.tensor_parallel} does not divide {self.model.num_heads} heads")
        return self

    def kv_bytes_per_token(self) -> int:
        """KV bytes of one token: K and V, every layer, every rank together."""
        m = self.model
        return 2 * m.num_layers * m.num_kv_heads * m.head_dim * m.dtype_bytes

    def weight_bytes(self) -> int:
        """Bytes of the model weights, all ranks together."""
        return int(self.model.num_params_b * 1e9 * self.model.dtype_bytes)

    def num_gpu_blocks(self, block_size: int) -> int:
        """KV blocks of `block_size` tokens: (tp * memory * util - weights - tp * reserve) / block bytes."""
        tp = self.tensor_parallel
        free = tp * self.gpu.memory_gib * GIB * self.gpu_memory_utilization
        free -= self.weight_bytes() + tp * self.activation_reserve_gib * GIB
        blocks = int(free // (block_size * self.kv_bytes_per_token()))
        if blocks <= 0:
            raise ConfigError(
                f"profile {self.name}: no room for KV blocks: {free / GIB:.1f} GiB left after weights "
                f"({self.weight_bytes() / GIB:.1f} GiB) and activation reserve on {tp} GPU(s)"
            )
        return blocks

    def num_cpu_blocks(self, block_size: int) -> int:
        """KV blocks of `block_size` tokens in the host swap space of all ranks."""
        return int(self.tensor_parallel * self.swap_space_gib * GIB // (block_size * self.kv_bytes_per_token()))

    def latency_model(self) -> ProfileLatencyModel:
        """The step-time model of this profile, with every per-call constant precomputed."""
        return ProfileLatencyModel.from_profile(self)


@dataclass(frozen=True, slots=True)
class ProfileLatencyModel:
    """Step time from a profile (see the module docstring); satisfies `ecosched.core.latency.LatencyModel`.

    LM head: `iteration_time_s` charges it as if every batched token were sampled. That is exact for
    decode-only steps (the ones a TBT budget is sized for) and an upper bound otherwise (under 1% of a
    2048-token prefill step of Llama-2-7B). `step_time_s` swaps that term for the LM head of the tokens
    actually sampled, so step_time_s <= iteration_time_s + prefill attention.
    """

    overhead_s: float
    knots_tokens: tuple[int, ...]
    knots_s: tuple[float, ...]  # all layers together
    slopes_s: tuple[float, ...]  # per segment, per token
    allreduce_fixed_s: float
    allreduce_s_per_token: float
    kv_read_s_per_token: float
    lm_head_weights_s: float
    lm_head_s_per_token: float
    attention_s_per_pair: float  # one (query, key) pair, all layers and heads
    swap_s_per_token: float

    @classmethod
    def from_profile(cls, p: Profile) -> ProfileLatencyModel:
        g, m, tp, fit = p.gpu, p.model, p.tensor_parallel, p.layer_cost
        hbm = g.hbm_gb_per_s * 1e9 * g.hbm_efficiency * tp  # bytes/s, all ranks
        flops = g.peak_tflops * 1e12 * tp  # peak FLOP/s, all ranks
        link = g.interconnect_gb_per_s * 1e9 * g.interconnect_efficiency
        knots_s = tuple(m.num_layers * ms / 1e3 for ms in fit.knots_ms)
        t = fit.knots_tokens
        slopes = tuple((knots_s[i + 1] - knots_s[i]) / (t[i + 1] - t[i]) for i in range(len(t) - 1))
        # a ring all-reduce moves 2(tp-1)/tp of the message over each rank's link; two per layer
        ring_s_per_token = 2 * (tp - 1) / tp * m.hidden_size * m.dtype_bytes / link
        return cls(
            overhead_s=p.step_overhead_ms / 1e3,
            knots_tokens=tuple(t),
            knots_s=knots_s,
            slopes_s=slopes,
            allreduce_fixed_s=2 * m.num_layers * g.allreduce_latency_us / 1e6 if tp > 1 else 0.0,
            allreduce_s_per_token=2 * m.num_layers * ring_s_per_token,
            kv_read_s_per_token=p.kv_bytes_per_token() / hbm,
            lm_head_weights_s=m.vocab_size * m.hidden_size * m.dtype_bytes / hbm,
            lm_head_s_per_token=2 * m.vocab_size * m.hidden_size / (flops * g.gemm_flops_efficiency),
            # per (query, key) pair and query head: 2 * head_dim for q.k and 2 * head_dim for p.v
            attention_s_per_pair=4 * m.num_layers * m.num_heads * m.head_dim / (flops * g.attention_flops_efficiency),
            swap_s_per_token=p.kv_bytes_per_token() / (g.pcie_gb_per_s * 1e9 * tp),
        )

    def layers_s(self, num_batched_tokens: int) -> float:
        """Fitted non-attention time of all layers for a batch of `num_batched_tokens` tokens."""
        i = bisect_right(self.knots_tokens, num_batched_tokens) - 1
        if i < 0:
            return self.knots_s[0]
        i = min(i, len(self.slopes_s) - 1)
        return self.knots_s[i] + self.slopes_s[i] * (num_batched_tokens - self.knots_tokens[i])

    def lm_head_s(self, num_sampled: int) -> float:
        """LM head for `num_sampled` tokens: memory-bound weight read or compute, whichever is longer."""
        if num_sampled <= 0:
            return 0.0
        return max(self.lm_head_weights_s, self.lm_head_s_per_token * num_sampled)

    def prefill_attention_s(self, start: int, num_tokens: int) -> float:
        """Causal attention compute of a chunk of `num_tokens` new tokens after `start` cached ones.

        Query i (0-based) attends to start + i + 1 keys, so the chunk has
        num_tokens * (start + (num_tokens + 1) / 2) (query, key) pairs, each costing
        4 * layers * heads * head_dim FLOPs (q.k and p.v), spread over the tp ranks' heads.
        """
        return self.attention_s_per_pair * num_tokens * (start + (num_tokens + 1) / 2)

    def iteration_time_s(self, num_batched_tokens: int, num_context_tokens: int) -> float:
        """Predicted step time; non-decreasing in both arguments (the budget search relies on it)."""
        b = num_batched_tokens
        if b <= 0:
            return self.overhead_s
        return (
            self.overhead_s
            + self.layers_s(b)
            + self.allreduce_fixed_s
            + self.allreduce_s_per_token * b
            + self.kv_read_s_per_token * num_context_tokens
            + max(self.lm_head_weights_s, self.lm_head_s_per_token * b)
        )

    def step_time_s(
        self,
        num_batched_tokens: int,
        num_context_tokens: int,
        prefill_chunks: Sequence[tuple[int, int]],
        num_sampled: int,
    ) -> float:
        """Simulated step time: `iteration_time_s` with the LM head of `num_sampled` tokens and the
        attention compute of each prefill chunk `(start, num_tokens)`.

        NOTE: the KV-read term (memory) and the prefill attention term (compute) are added, not
        overlapped: a conservative bound that is exact when one of them is zero.
        """
        t = self.iteration_time_s(num_batched_tokens, num_context_tokens)
        if num_batched_tokens > 0:
            t += self.lm_head_s(num_sampled) - self.lm_head_s(num_batched_tokens)
        for start, tokens in prefill_chunks:
            t += self.prefill_attention_s(start, tokens)
        return t

    def swap_time_s(self, num_tokens: int) -> float:
        """Moving the KV of `num_tokens` tokens one way over PCIe, every rank over its own link."""
        return max(num_tokens, 0) * self.swap_s_per_token

    def recompute_time_s(self, num_tokens: int) -> float:
        """GPU time a from-scratch prefill of `num_tokens` adds to a step that runs anyway.

        Marginal cost: the layer cost above the one-token floor (the weights are streamed for the
        running batch regardless), per-token all-reduce traffic, and causal attention from position 0.
        The step overhead and the LM head of the one token sampled are not extra. Compare with
        2 * swap_time_s (out and back in).
        """
        if num_tokens <= 0:
            return 0.0
        extra_layers = self.layers_s(num_tokens) - self.layers_s(1)
        return extra_layers + self.allreduce_s_per_token * num_tokens + self.prefill_attention_s(0, num_tokens)


def profiles_dir() -> Path:
    """Where named profiles live: $ECOSCHED_PROFILES_DIR, else configs/profiles of the repository."""
    override = os.environ.get(PROFILES_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "configs" / "profiles"


def list_profiles() -> list[str]:
    """Names of the profiles in `profiles_dir()`, sorted."""
    d = profiles_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def load_profile(name_or_path: str) -> Profile:
    """A profile from a YAML path, or from a name in `profiles_dir()` (`NAME` -> NAME.yaml)."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml") and os.sep not in name_or_path and "/" not in name_or_path:
        path = profiles_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            known = ", ".join(list_profiles()) or "none"
            raise ConfigError(f"unknown profile {name_or_path!r} (looked in {profiles_dir()}); known: {known}")
    return _validate(path, read_yaml_mapping(path, "profile", allow_empty=False))


def _validate(path: Path, data: dict[str, Any]) -> Profile:
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid profile file {path}:\n{exc}") from exc
