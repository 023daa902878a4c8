"""Registries: the built-in policies and predictors, loud failures, and entry-point plugins."""

from __future__ import annotations

from typing import Any

import pytest

import ecosched.registry
from ecosched import EcoschedConfig, Request, build_predictor, build_scheduler
from ecosched.core.latency import LinearLatencyModel
from ecosched.core.policy import Policy
from ecosched.core.predictor import ConstantPredictor
from ecosched.core.scheduler import Scheduler
from ecosched.errors import RegistryError
from ecosched.factory import PREDICTORS
from ecosched.policies import POLICIES
from ecosched.registry import Registry

BUILTIN_POLICIES = {"vllm", "vllm-priority", "sarathi", "sglang", "sjf", "ecoserve", "oracle", "tgi-fifo"}


class FakeEntryPoint:
    """Stands in for importlib.metadata.EntryPoint: `load()` gives the plugin's register callable."""

    def __init__(self, name: str, register: Any) -> None:
        self.name = name
        self._register = register
        self.loads = 0

    def load(self) -> Any:
        self.loads += 1
        return self._register


def fake_entry_points(monkeypatch: pytest.MonkeyPatch, wanted: str, eps: list[FakeEntryPoint]) -> list[str]:
    """Patch ecosched.registry.entry_points to offer `eps` in group `wanted`; returns the groups asked for."""
    asked: list[str] = []

    def entry_points(*, group: str | None = None, **_: Any) -> list[FakeEntryPoint]:
        asked.append(str(group))
        return eps if group == wanted else []

    monkeypatch.setattr(ecosched.registry, "entry_points", entry_points)
    return asked


# ---- built-in policies ----


def test_policies_are_exactly_the_builtins() -> None:
    assert {entry.name for entry in POLICIES} == BUILTIN_POLICIES
    assert len(list(POLICIES)) == len(BUILTIN_POLICIES)


def test_every_policy_has_a_description_and_builds() -> None:
    for entry in POLICIES:
        assert entry.description.strip(), entry.name
        policy = POLICIES.get(entry.name)(EcoschedConfig(policy=entry.name))
        assert isinstance(policy, Policy)


@pytest.mark.parametrize("name", sorted(BUILTIN_POLICIES))
def test_build_scheduler_for_every_policy(name: str) -> None:
    scheduler = build_scheduler(EcoschedConfig(policy=name))
    assert scheduler.num_unfinished == 0
    assert scheduler.schedule(0.0).is_empty


def test_policy_registry_uses_its_entry_point_group() -> None:
    assert POLICIES.entry_point_group == "ecosched.policies"
    assert PREDICTORS.entry_point_group == "ecosched.predictors"


def test_unknown_policy_lists_known_names() -> None:
    with pytest.raises(RegistryError) as exc:
        POLICIES.get("ecoserv")
    message = str(exc.value)
    assert "ecoserv'" in message
    for name in BUILTIN_POLICIES:
        assert name in message


def test_duplicate_policy_name_raises_and_keeps_the_original() -> None:
    original = POLICIES.get("vllm")
    with pytest.raises(RegistryError, match="vllm"):
        POLICIES.add("vllm", "an impostor", lambda config: original(config))
    with pytest.raises(RegistryError, match="vllm"):
        POLICIES.register("vllm", "an impostor")(lambda config: original(config))
    assert POLICIES.get("vllm") is original


def test_build_scheduler_with_unknown_policy_fails_loudly() -> None:
    config = EcoschedConfig(policy="no-such-policy")  # a str field: only the registry can reject it
    with pytest.raises(RegistryError) as exc:
        build_scheduler(config)
    assert "no-such-policy" in str(exc.value)
    assert "ecoserve" in str(exc.value)


# ---- predictors ----


def test_builtin_predictors() -> None:
    names = {entry.name for entry in PREDICTORS}
    assert {"oracle", "noisy-oracle", "constant"} <= names
    for name in ("oracle", "noisy-oracle", "constant"):
        predictor = build_predictor(EcoschedConfig(), name)
        assert predictor.name == name


def test_unknown_predictor_fails_loudly() -> None:
    config = EcoschedConfig.model_validate({"predictor": {"kind": "crystal-ball"}})
    with pytest.raises(RegistryError) as exc:
        build_scheduler(config)
    assert "crystal-ball" in str(exc.value)
    assert "noisy-oracle" in str(exc.value)


# ---- a fresh registry ----


def test_registry_register_get_and_iterate() -> None:
    reg: Registry[int] = Registry("widget")
    reg.add("b", "the second", 2)
    assert reg.register("a", "the first")(1) == 1
    assert reg.get("a") == 1 and reg.get("b") == 2
    assert [(e.name, e.description) for e in reg] == [("a", "the first"), ("b", "the second")]
    assert "a" in reg and "c" not in reg


def test_registry_duplicate_raises() -> None:
    reg: Registry[int] = Registry("widget")
    reg.add("a", "one", 1)
    with pytest.raises(RegistryError, match="widget 'a' is already registered"):
        reg.add("a", "again", 2)
    assert reg.get("a") == 1


def test_registry_unknown_lists_known() -> None:
    reg: Registry[int] = Registry("widget")
    reg.add("alpha", "", 1)
    reg.add("beta", "", 2)
    with pytest.raises(RegistryError, match=r"unknown widget 'gamma'; known: alpha, beta"):
        reg.get("gamma")


def test_registry_without_group_never_reads_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = fake_entry_points(monkeypatch, "anything", [])
    reg: Registry[int] = Registry("widget")
    with pytest.raises(RegistryError):
        reg.get("missing")
    assert list(reg) == []
    assert asked == []


def test_registry_loads_plugins_from_its_entry_point_group(monkeypatch: pytest.MonkeyPatch) -> None:
    def register(registry: Registry[int]) -> None:
        registry.add("plugged", "from a plugin", 42)

    ep = FakeEntryPoint("my-plugin", register)
    asked = fake_entry_points(monkeypatch, "ecosched.test_widgets", [ep])
    reg: Registry[int] = Registry("widget", entry_point_group="ecosched.test_widgets")
    reg.add("builtin", "in tree", 1)

    assert reg.get("builtin") == 1
    assert ep.loads == 0  # a hit does not load plugins
    assert reg.get("plugged") == 42  # a miss does
    assert asked == ["ecosched.test_widgets"]
    assert ep.loads == 1
    assert {e.name for e in reg} == {"builtin", "plugged"}
    with pytest.raises(RegistryError, match="known: builtin, plugged"):
        reg.get("absent")
    assert ep.loads == 1  # plugins load once


def test_registry_iteration_loads_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = FakeEntryPoint("p", lambda registry: registry.add("plugged", "from a plugin", 7))
    fake_entry_points(monkeypatch, "ecosched.test_widgets", [ep])
    reg: Registry[int] = Registry("widget", entry_point_group="ecosched.test_widgets")
    assert [e.name for e in reg] == ["plugged"]


def test_registry_membership_sees_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    # `name in registry` must agree with `registry.get(name)`: a plugin entry is known before any lookup.
    ep = FakeEntryPoint("p", lambda registry: registry.add("plugged", "from a plugin", 7))
    fake_entry_points(monkeypatch, "ecosched.test_widgets", [ep])
    reg: Registry[int] = Registry("widget", entry_point_group="ecosched.test_widgets")
    assert "plugged" in reg


def test_plugin_duplicating_a_builtin_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = FakeEntryPoint("p", lambda registry: registry.add("builtin", "shadowing", 99))
    fake_entry_points(monkeypatch, "ecosched.test_widgets", [ep])
    reg: Registry[int] = Registry("widget", entry_point_group="ecosched.test_widgets")
    reg.add("builtin", "in tree", 1)
    with pytest.raises(RegistryError, match="already registered"):
        reg.get("other")
    assert reg.get("builtin") == 1


def test_plugin_policy_builds_a_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plugin policy registered through the entry point runs end to end (on a private registry)."""
    vllm = POLICIES.get("vllm")

    def register(registry: Registry[Any]) -> None:
        registry.add("my-policy", "vLLM under another name", vllm)

    fake_entry_points(monkeypatch, "ecosched.test_policies", [FakeEntryPoint("mine", register)])
    reg: Registry[Any] = Registry("policy", entry_point_group="ecosched.test_policies")
    config = EcoschedConfig(policy="my-policy")
    policy = reg.get(config.policy)(config)
    scheduler = Scheduler(config, policy, ConstantPredictor(8), LinearLatencyModel.from_config(config.latency))
    assert isinstance(scheduler.policy, Policy)
    scheduler.add_request(Request("r", 8, 4, 0.0, None, None, 4))
    decision = scheduler.schedule(0.0)
    assert decision.num_scheduled_tokens > 0
