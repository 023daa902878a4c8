"""Oracle EcoServe: `ecoserve` fed the true response lengths, the upper bound of any predictor."""

from __future__ import annotations

from ecosched.config import EcoschedConfig
from ecosched.core.policy import Policy
from ecosched.policies.ecoserve import build
from ecosched.policies.registry import POLICIES

DESCRIPTION = "EcoServe with true response lengths (needs true_output_tokens): the upper bound"


@POLICIES.register("oracle", DESCRIPTION)
def make(config: EcoschedConfig) -> Policy:
    return build(config, "oracle", DESCRIPTION, predictor_override="oracle")
