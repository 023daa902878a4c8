"""The one SGLang version the plugin is written against, checked when the plugin installs itself.

The plugin subclasses SGLang's `Scheduler` and `PrefillAdder` and relies on private methods
(`_add_request_to_queue`, `_get_decode_retraction_order`, the adder's budget arithmetic) that change
between releases; `tests/adapters/test_sglang_contract.py` checks their shapes.
"""

from __future__ import annotations

from ecosched_adapters.version import EngineVersionError, installed_version

SUPPORTED_SGLANG = "0.5.23"


def check_sglang_version(found: str | None = None) -> str:
    """Return the installed version; raise EngineVersionError unless it is SUPPORTED_SGLANG."""
    found = found if found is not None else installed_version("sglang")
    if found is None:
        raise EngineVersionError(
            f"SGLang is not installed; the ecosched SGLang plugin needs sglang {SUPPORTED_SGLANG} "
            f"(GPU: pip install 'ecosched[sglang]'; CPU: scripts/install_sglang.sh)"
        )
    if found.split("+", 1)[0] != SUPPORTED_SGLANG:
        raise EngineVersionError(
            f"the ecosched SGLang plugin supports sglang {SUPPORTED_SGLANG} only (it patches scheduler internals "
            f"that change between releases), found {found}; install sglang=={SUPPORTED_SGLANG}"
        )
    return found
