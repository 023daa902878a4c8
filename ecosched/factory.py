"""Builds a ready scheduler from a configuration: policy from the policy registry, predictor from
the predictor registry (out-of-tree predictors, such as the ONNX one, register through the
entry-point group `ecosched.predictors`), latency model from the config."""

from __future__ import annotations

import random
from collections.abc import Callable

from ecosched.config import EcoschedConfig
from ecosched.core.latency import LatencyModel, LinearLatencyModel
from ecosched.core.predictor import ConstantPredictor, LengthPredictor, NoisyOraclePredictor, OraclePredictor
from ecosched.core.scheduler import Scheduler
from ecosched.policies import POLICIES
from ecosched.registry import Registry

PredictorFactory = Callable[[EcoschedConfig], LengthPredictor]
PREDICTORS: Registry[PredictorFactory] = Registry("predictor", entry_point_group="ecosched.predictors")
PREDICTORS.add("oracle", "the true response length (simulation only)", lambda c: OraclePredictor())
PREDICTORS.add(
    "noisy-oracle",
    "true length x exp(N(0, sigma)), seeded",
    lambda c: NoisyOraclePredictor(c.predictor.noise_sigma, random.Random(c.predictor.seed)),
)
PREDICTORS.add(
    "constant", "the same length for every request", lambda c: ConstantPredictor(c.predictor.constant_tokens)
)


def build_predictor(config: EcoschedConfig, kind: str | None = None) -> LengthPredictor:
    """The predictor named by `kind`, or by `config.predictor.kind`."""
    return PREDICTORS.get(kind or config.predictor.kind)(config)


def build_scheduler(
    config: EcoschedConfig | None = None,
    *,
    predictor: LengthPredictor | None = None,
    latency_model: LatencyModel | None = None,
) -> Scheduler:
    """A scheduler running `config.policy`. A policy that needs a given predictor (`oracle`) gets it."""
    config = config or EcoschedConfig()
    policy = POLICIES.get(config.policy)(config)
    if predictor is None:
        predictor = build_predictor(config, policy.predictor_override)
    model = latency_model or LinearLatencyModel.from_config(config.latency)
    return Scheduler(config, policy, predictor, model)
