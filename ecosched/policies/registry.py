"""The policy registry: name -> factory(config) -> Policy. Out-of-tree policies register through
the entry-point group `ecosched.policies` (a callable that receives this registry)."""

from __future__ import annotations

from collections.abc import Callable

from ecosched.config import EcoschedConfig
from ecosched.core.policy import Policy
from ecosched.registry import Registry

PolicyFactory = Callable[[EcoschedConfig], Policy]

POLICIES: Registry[PolicyFactory] = Registry("policy", entry_point_group="ecosched.policies")
