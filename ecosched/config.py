"""The one validated configuration tree of ecosched, loaded from YAML with unknown keys rejected.

Every constant of every policy lives here with its default and help text. `load_config` reads a YAML
file (or none, for the built-in defaults) and applies dotted `key=value` overrides from the CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import to_jsonable_python

from ecosched.errors import ConfigError


class _Strict(BaseModel):
    """A config node: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class CacheConfig(_Strict):
    """KV cache geometry, in blocks of `block_size` tokens."""

    block_size: int = Field(16, ge=1, description="Tokens per KV block.")
    num_gpu_blocks: int = Field(4096, ge=1, description="KV blocks on the accelerator.")
    num_cpu_blocks: int = Field(
        2048, ge=0, description="KV blocks in host memory for swapped-out requests (0: no swap)."
    )
    max_model_len: int = Field(4096, ge=2, description="Context length: prompt plus output tokens.")


class SchedulerConfig(_Strict):
    """Limits shared by every policy."""

    max_num_seqs: int = Field(256, ge=1, description="Most requests running at once.")
    max_num_batched_tokens: int = Field(
        2048, ge=1, description="Per-step token budget (upper bound when a policy sizes it)."
    )
    max_admission_scan: int = Field(
        64,
        ge=1,
        description="Most waiting requests looked at per step when a policy skips ones that do not fit.",
    )
    chunked_prefill: bool = Field(True, description="Split long prompts across steps.")
    max_partial_prefills: int = Field(
        0,
        ge=0,
        description="Most requests with a partly computed prompt at once (0: no limit; SGLang runs one).",
    )
    chunk_recomputes: bool = Field(
        True,
        description="Whether a recomputed request (prompt and output so far) may be split across steps "
        "when chunked prefill is off (an engine that cannot resume part-way through one says no).",
    )
    preempt_partial_prefills: bool = Field(
        True,
        description="Whether a request part-way through its prompt may be preempted (SGLang cannot retract one).",
    )


class SLOClassConfig(_Strict):
    """Latency targets of one class of requests."""

    ttft_ms: float = Field(gt=0, description="Time-to-first-token target, milliseconds.")
    tbt_ms: float = Field(gt=0, description="Time-between-tokens target, milliseconds.")
    rank: int = Field(0, ge=0, description="Priority rank: 0 is the tightest class, served first.")


def _default_slo_classes() -> dict[str, SLOClassConfig]:
    return {
        "interactive": SLOClassConfig(ttft_ms=2000.0, tbt_ms=100.0, rank=0),
        "batch": SLOClassConfig(ttft_ms=20000.0, tbt_ms=500.0, rank=1),
    }


class SLOConfig(_Strict):
    """The SLO classes a request can name."""

    classes: dict[str, SLOClassConfig] = Field(default_factory=_default_slo_classes, description="SLO classes by name.")
    default_class: str = Field("interactive", description="Class of requests that name none.")
    tbt_quantile: float = Field(
        0.99,
        gt=0,
        le=1,
        description="A request meets its TBT target when this quantile of its token gaps is within it (1: every gap).",
    )

    @model_validator(mode="after")
    def _default_exists(self) -> SLOConfig:
        if self.default_class not in self.classes:
            known = ", ".join(sorted(self.classes))
            raise ValueError(f"default_class {self.default_class!r} is not one of the classes: {known}")
        return self


class PaddingConfig(_Strict):
    """Padding of predicted response lengths (CacheOPT: prediction plus an error quantile)."""

    quantile: float = Field(0.9, gt=0, lt=1, description="Confidence q of the padded length.")
    rate_adaptive: bool = Field(
        True, description="Lower q linearly from `quantile` to `quantile_at_high_rate` as load grows."
    )
    low_rate_rps: float = Field(1.0, ge=0, description="Arrival rate at or below which q = quantile.")
    high_rate_rps: float = Field(20.0, gt=0, description="Arrival rate at or above which q = quantile_at_high_rate.")
    quantile_at_high_rate: float = Field(0.7, gt=0, lt=1, description="q under heavy load.")
    rate_window: int = Field(64, ge=2, description="Arrivals used to estimate the arrival rate.")
    error_window: int = Field(1024, ge=1, description="Finished requests whose prediction errors are kept.")
    min_error_samples: int = Field(
        32, ge=1, description="Errors needed before the empirical quantile replaces the fallback."
    )
    fallback_margin: float = Field(0.2, ge=0, description="Relative padding used before enough errors are observed.")


class PredictorConfig(_Strict):
    """Which response-length predictor runs at arrival."""

    kind: str = Field(
        "constant", description="Predictor implementation (see `ecosched predictors`); oracles need true lengths."
    )
    constant_tokens: int = Field(256, ge=1, description="Prediction of the `constant` predictor.")
    noise_sigma: float = Field(0.3, ge=0, description="Log-normal sigma of the `noisy-oracle` multiplicative error.")
    seed: int = Field(0, description="Seed of the noisy oracle's random generator.")
    warning_interval_s: float = Field(
        60.0, ge=0, description="At most one predictor-failure warning per this many seconds of arrivals."
    )
    fallback_tokens: int = Field(256, ge=1, description="Length used when the predictor fails for a request.")
    model_path: str | None = Field(
        None, description="Model directory of the `onnx` predictor (null: the model shipped with the package)."
    )
    padding: PaddingConfig = Field(default_factory=PaddingConfig)


class LatencyConfig(_Strict):
    """A linear iteration-latency model and a swap cost model (the simulator ships calibrated ones)."""

    base_ms: float = Field(6.0, ge=0, description="Fixed cost of one engine step, ms.")
    per_token_ms: float = Field(0.05, ge=0, description="Cost per batched (computed) token, ms.")
    per_context_token_us: float = Field(
        0.05, ge=0, description="Attention cost per KV token read by the batch, microseconds."
    )
    kv_bytes_per_token: int = Field(524288, ge=1, description="KV bytes per token (Llama-2-7B fp16: 2*32*4096*2).")
    pcie_gb_per_s: float = Field(25.0, gt=0, description="Host<->device bandwidth for swapping.")


class EcoServeConfig(_Strict):
    """EcoServe/CacheOPT/AccelGen mechanisms; each can be switched off for ablations."""

    decode_first: bool = Field(
        True, description="(1) Carry running GTs before PTs; off: prefills first, decodes stall."
    )
    time_synced: bool = Field(True, description="(2) Admit requests of the same predicted-RL bucket together.")
    rl_bucket_edges: tuple[int, ...] = Field(
        (32, 64, 128, 256, 512, 1024, 2048),
        description="Upper edges (tokens) of the predicted-RL buckets.",
    )
    reserve_predicted: bool = Field(
        True, description="(3) Reserve prompt + padded predicted output at admission; off: incremental."
    )
    pipelining: bool = Field(True, description="(4) Let requests run in reserved-but-unused blocks of running hosts.")
    pipelining_margin_tokens: int = Field(16, ge=0, description="(4) Safety margin b of the feasibility test.")
    kv_weight_s: float = Field(1.0, ge=0, description="(5) Priority seconds per fraction of KV cache held (0: off).")
    slack_weight: float = Field(1.0, ge=0, description="(5) Weight of the TTFT deadline in the waiting order (0: off).")
    length_weight_s_per_token: float = Field(
        0.001, ge=0, description="(5) Priority seconds per predicted output token (0: off)."
    )
    demote_late: bool = Field(
        True, description="(5) Queue requests past their TTFT deadline behind those that can still meet it."
    )
    starvation_factor: float = Field(
        2.0,
        ge=0,
        description="(guard) A request waiting longer than this many times its TTFT target is admitted before "
        "all others and holds the queue until it fits (0: off).",
    )
    padding: bool = Field(True, description="(6) Pad predictions to the confidence quantile.")
    proactive_topup: bool = Field(
        True, description="(7) Extend reservations before they run out, from a global reserve."
    )
    topup_lookahead_steps: int = Field(
        4, ge=0, description="(7) Top up when fewer than this many decode steps (one token each) remain reserved."
    )
    topup_fraction: float = Field(
        0.25, gt=0, description="(7) Top-up size as a fraction of the padded predicted output."
    )
    global_reserve_fraction: float = Field(
        0.03, ge=0, lt=1, description="(7) Fraction of KV blocks kept free for top-ups."
    )
    bucketed_victims: bool = Field(
        True, description="(8) Victims by (loosest TBT, longest remaining, smallest KV) buckets."
    )
    victim_remaining_bucket_tokens: int = Field(
        128, ge=1, description="(8) Bucket width of predicted remaining output."
    )
    victim_kv_bucket_blocks: int = Field(16, ge=1, description="(8) Bucket width of KV footprint.")
    preempt_mode: Literal["cost", "swap", "recompute"] = Field(
        "cost", description="(8) Swap or recompute victims; `cost` asks the cost model."
    )
    dynamic_budget: bool = Field(True, description="(9) Size each step's token budget to the tightest TBT SLO.")
    budget_safety: float = Field(0.9, gt=0, le=1, description="(9) Fraction of the TBT target a step may take.")
    min_budget_tokens: int = Field(64, ge=1, description="(9) Floor of the dynamic budget.")
    slo_classes_first: bool = Field(True, description="(10) Order tight SLO classes before loose ones.")


class SarathiConfig(_Strict):
    """Sarathi-Serve: stall-free batching under a fixed budget."""

    token_budget: int = Field(512, ge=1, description="Fixed per-step token budget (512 or 2048).")


class SGLangConfig(_Strict):
    """SGLang-style admission by estimated future tokens, with retraction."""

    init_new_token_ratio: float = Field(0.7, gt=0, le=1, description="Initial new_token_ratio.")
    min_ratio_factor: float = Field(0.14, gt=0, le=1, description="Floor = init * factor.")
    decay_steps: int = Field(600, ge=1, description="Decode steps to decay from init to floor.")
    clip_max_new_tokens: int = Field(4096, ge=1, description="Cap on max_new_tokens in estimates.")
    retract_decode_steps: int = Field(20, ge=0, description="Steps assumed left after a retraction.")


class TGIConfig(_Strict):
    """TGI's own router (v3 backend), reproduced as the baseline for the TGI backend."""

    segment_tokens: int = Field(
        1024,
        ge=1,
        description="Output tokens reserved per segment; a longer generation is re-queued at the back "
        "after each segment (TGI's DEFAULT_GENERATION_LENGTH).",
    )
    waiting_served_ratio: float = Field(
        1.2,
        ge=0,
        description="Without chunked prefill: a new prefill interrupts decoding only when at least this "
        "many times the running count would join (TGI's router default; its launcher passes 0.3).",
    )
    max_waiting_tokens: int = Field(
        20,
        ge=0,
        description="Without chunked prefill: decode steps after which a prefill of any size may join.",
    )


class SJFConfig(_Strict):
    """Shortest predicted job first with aging."""

    aging_tokens_per_s: float = Field(50.0, ge=0, description="Predicted tokens forgiven per second of waiting.")


class PoliciesConfig(_Strict):
    """Per-policy parameters."""

    ecoserve: EcoServeConfig = Field(default_factory=EcoServeConfig)
    sarathi: SarathiConfig = Field(default_factory=SarathiConfig)
    sglang: SGLangConfig = Field(default_factory=SGLangConfig)
    sjf: SJFConfig = Field(default_factory=SJFConfig)
    tgi: TGIConfig = Field(default_factory=TGIConfig)


class EcoschedConfig(_Strict):
    """The whole configuration tree."""

    policy: str = Field("ecoserve", description="Scheduling policy (see `ecosched policies`).")
    cache: CacheConfig = Field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    slo: SLOConfig = Field(default_factory=SLOConfig)
    predictor: PredictorConfig = Field(default_factory=PredictorConfig)
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    policies: PoliciesConfig = Field(default_factory=PoliciesConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> EcoschedConfig:
    """Load the YAML at `path` (or the defaults) and apply `key.path=value` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml_mapping(Path(path))
    for item in overrides or []:
        _apply_override(data, item)
    try:
        return EcoschedConfig.model_validate(data)
    except ValidationError as exc:
        where = f" in {path}" if path is not None else ""
        raise ConfigError(f"invalid configuration{where}:\n{exc}") from exc


def read_yaml_mapping(path: Path, kind: str = "config", *, allow_empty: bool = True) -> dict[str, Any]:
    """The top-level mapping of a YAML file; `ConfigError` naming the `kind` of file and its path when
    it is missing, not YAML, or not a mapping (an empty file is `{}` when `allow_empty`)."""
    try:
        loaded = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{kind} file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{kind} file {path} is not valid YAML: {exc}") from exc
    if loaded is None and allow_empty:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{kind} file {path}: expected a mapping at top level, found {type(loaded).__name__}")
    return loaded


def _apply_override(data: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected KEY.PATH=VALUE")
    parts = key.strip().split(".")
    _check_path(parts, item)
    node = data
    model: type[BaseModel] | None = EcoschedConfig
    for part in parts[:-1]:
        if part not in node and model is not None:
            # entering a mapping the data does not spell out: start from its defaults, so that
            # `slo.classes.interactive.ttft_ms=500` keeps the other fields and classes
            field = model.model_fields[part]
            if not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
                node[part] = to_jsonable_python(field.get_default(call_default_factory=True))
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node = child
        model = _node_model(model, part)
    node[parts[-1]] = yaml.safe_load(raw)


def _node_model(model: type[BaseModel] | None, part: str) -> type[BaseModel] | None:
    """The config node class of field `part` of `model`, or None when it is not a node."""
    if model is None or part not in model.model_fields:
        return None
    annotation = model.model_fields[part].annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _check_path(parts: list[str], item: str) -> None:
    """Reject an override whose key does not name a field, listing the fields that exist there."""
    model: type[BaseModel] | None = EcoschedConfig
    for depth, part in enumerate(parts):
        if model is None:
            break
        fields = model.model_fields
        if part not in fields:
            here = ".".join(parts[:depth]) or "top level"
            raise ConfigError(f"override {item!r}: unknown key {part!r} at {here}; known: {', '.join(fields)}")
        model = _node_model(model, part)
