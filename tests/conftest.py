"""Shared factories for the unit tests (in the manner of vLLM's create_scheduler/create_requests)."""

from __future__ import annotations

from typing import Any

import pytest

from ecosched import EcoschedConfig, Request, Scheduler, StepOutcome, build_scheduler


def make_config(policy: str = "ecoserve", **sections: Any) -> EcoschedConfig:
    """A config with `policy` and nested overrides, e.g. cache={"num_gpu_blocks": 64}."""
    return EcoschedConfig.model_validate({"policy": policy, **sections})


def make_scheduler(policy: str = "ecoserve", **sections: Any) -> Scheduler:
    return build_scheduler(make_config(policy, **sections))


def make_request(
    rid: str,
    prompt: int = 32,
    max_output: int = 64,
    arrival: float = 0.0,
    *,
    true_output: int | None = None,
    slo: str | None = None,
) -> Request:
    return Request(rid, prompt, max_output, arrival, slo, None, true_output if true_output is not None else max_output)


def step(scheduler: Scheduler, now: float = 0.0, stops: tuple[Any, ...] = ()):  # type: ignore[no-untyped-def]
    """One schedule + update round; returns (decision, ended records)."""
    decision = scheduler.schedule(now)
    ended = scheduler.update(StepOutcome(decision.step_id, now + 0.01, stops))
    return decision, ended


@pytest.fixture
def small_cache() -> dict[str, Any]:
    return {"block_size": 16, "num_gpu_blocks": 64, "num_cpu_blocks": 32, "max_model_len": 1024}


def require_sglang() -> None:
    """Fail a test module that needs SGLang when it is not importable (skip instead with
    ECOSCHED_SKIP_ENGINE_TESTS=1), as the integration tests do with every engine."""
    import importlib.util
    import os
    import sys

    import pytest

    if importlib.util.find_spec("sglang") is not None:
        return
    problem = f"the SGLang adapter tests need sglang, not importable by {sys.executable}"
    if os.environ.get("ECOSCHED_SKIP_ENGINE_TESTS") == "1":
        pytest.skip(f"{problem} (ECOSCHED_SKIP_ENGINE_TESTS=1)", allow_module_level=True)
    pytest.fail(
        f"{problem}: install it with scripts/install_sglang.sh (CPU) or `pip install -e '.[sglang]'`; "
        "or set ECOSCHED_SKIP_ENGINE_TESTS=1 to skip these tests",
        pytrace=False,
    )
