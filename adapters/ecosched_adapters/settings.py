"""How an in-engine scheduler (vLLM's `--scheduler-cls`, SGLang's plugin) gets its settings.

The engine builds the scheduler itself, with its own arguments only, in a process it spawns, so
ecosched's settings travel in environment variables that `ecosched serve` sets (and that tests set
directly):

- `ECOSCHED_CONFIG_JSON`: the whole ecosched configuration as JSON (`EcoschedConfig` fields). The KV
  geometry and batch limits in it are replaced by the engine's own (block size, number of blocks,
  context length, most running requests, per-step tokens), so the core and the engine agree by
  construction.
- `ECOSCHED_STATS_PATH`: where the scheduler appends the wall time of every `schedule()` call
  (little-endian float64 seconds) and writes `PATH.json` with counters (see `stats.py`). Unset: no
  file is written.
- `ECOSCHED_CHECK_LEDGER=1`: after every step, compare each running request's KV in the engine
  with the core's ledger, and count (and log) disagreements. Off by default: it costs a walk over
  the running requests each step.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from ecosched.config import EcoschedConfig
from ecosched.errors import ConfigError

CONFIG_ENV = "ECOSCHED_CONFIG_JSON"
STATS_ENV = "ECOSCHED_STATS_PATH"
CHECK_LEDGER_ENV = "ECOSCHED_CHECK_LEDGER"


@dataclass(frozen=True)
class AdapterSettings:
    config_data: dict[str, Any]
    stats_path: str | None
    check_ledger: bool

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> AdapterSettings:
        env = dict(os.environ) if env is None else env
        raw = env.get(CONFIG_ENV)
        data: dict[str, Any] = {}
        if raw:
            try:
                loaded = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{CONFIG_ENV} is not valid JSON: {exc}") from exc
            if not isinstance(loaded, dict):
                raise ConfigError(f"{CONFIG_ENV} must hold a JSON object, got {type(loaded).__name__}")
            data = loaded
        return cls(data, env.get(STATS_ENV) or None, env.get(CHECK_LEDGER_ENV, "") not in ("", "0"))


def config_env(config: EcoschedConfig) -> dict[str, str]:
    """The environment that hands `config` to the scheduler in the engine's scheduling process."""
    return {CONFIG_ENV: config.model_dump_json()}


def engine_config(
    base: dict[str, Any],
    *,
    block_size: int,
    num_blocks: int,
    max_model_len: int,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    chunked_prefill: bool,
    max_partial_prefills: int = 0,
    preempt_partial_prefills: bool = True,
) -> EcoschedConfig:
    """`base` (a config as a mapping) with the engine's KV geometry and batch limits put in: the core
    then counts the same blocks the engine has. No swap space: the in-engine adapters preempt by
    recompute only."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    data["cache"] = {
        **data.get("cache", {}),
        "block_size": block_size,
        "num_gpu_blocks": num_blocks,
        "num_cpu_blocks": 0,
        "max_model_len": max_model_len,
    }
    data["scheduler"] = {
        **data.get("scheduler", {}),
        "max_num_seqs": max_num_seqs,
        "max_num_batched_tokens": max_num_batched_tokens,
        "chunked_prefill": chunked_prefill,
        "max_partial_prefills": max_partial_prefills,
        "preempt_partial_prefills": preempt_partial_prefills,
    }
    try:
        return EcoschedConfig.model_validate(data)
    except Exception as exc:
        raise ConfigError(f"invalid ecosched configuration for the engine adapter: {exc}") from exc
