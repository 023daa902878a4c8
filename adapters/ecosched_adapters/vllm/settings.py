"""How the scheduler class, built by vLLM inside its engine-core process, gets its settings.

vLLM constructs the `--scheduler-cls` class itself with its own arguments only, in a process it
spawns, so ecosched's settings travel in environment variables that `ecosched serve` sets (and that
tests set directly):

- `ECOSCHED_CONFIG_JSON`: the whole ecosched configuration as JSON (`EcoschedConfig` fields). The KV
  geometry and batch limits in it are replaced by vLLM's own (block size, number of blocks, context
  length, max_num_seqs, max_num_batched_tokens), so the core and vLLM agree by construction.
- `ECOSCHED_STATS_PATH`: where the scheduler appends the wall time of every `schedule()` call
  (little-endian float64 seconds) and writes `PATH.json` with counters (see `stats.py`). Unset: no
  file is written.
- `ECOSCHED_CHECK_LEDGER=1`: after every step, compare each running request's blocks in vLLM's
  block manager with the core's ledger, and count (and log) disagreements. Off by default: it costs
  a walk over the running requests each step.
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
    """The environment that hands `config` to the scheduler in vLLM's engine-core process."""
    return {CONFIG_ENV: config.model_dump_json()}
