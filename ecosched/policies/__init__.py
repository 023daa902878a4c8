"""Scheduling policies, one module each, all in one registry (`POLICIES`)."""

from ecosched.policies import ecoserve, oracle, sarathi, sglang, sjf, tgi, vllm, vllm_priority
from ecosched.policies.registry import POLICIES, PolicyFactory

__all__ = [
    "POLICIES",
    "PolicyFactory",
    "ecoserve",
    "oracle",
    "sarathi",
    "sglang",
    "sjf",
    "tgi",
    "vllm",
    "vllm_priority",
]
