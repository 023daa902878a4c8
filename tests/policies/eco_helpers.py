"""Builders shared by the `ecoserve` tests: a scheduler with explicit EcoServe switches, requests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from conftest import make_request, make_scheduler

from ecosched import (
    Admission,
    Request,
    Scheduler,
)
from ecosched.config import EcoServeConfig

BS = 16
DEFAULTS = EcoServeConfig()


def blocks(tokens: int) -> int:
    return -(-tokens // BS)


def eco(
    num_gpu_blocks: int,
    *,
    num_cpu_blocks: int = 64,
    scheduler: dict[str, Any] | None = None,
    slo: dict[str, Any] | None = None,
    latency: dict[str, Any] | None = None,
    pad_cfg: dict[str, Any] | None = None,
    **ecoserve: Any,
) -> Scheduler:
    ecoserve.setdefault("padding", False)
    sections: dict[str, Any] = {
        "cache": {
            "block_size": BS,
            "num_gpu_blocks": num_gpu_blocks,
            "num_cpu_blocks": num_cpu_blocks,
            "max_model_len": 2048,
        },
        "scheduler": scheduler or {},
        "policies": {"ecoserve": ecoserve},
        "predictor": {"kind": "constant", "constant_tokens": 64, "padding": pad_cfg or {}},
        "latency": latency or {},
    }
    if slo is not None:
        sections["slo"] = slo
    return make_scheduler("ecoserve", **sections)


def req(rid: str, prompt: int = 32, max_output: int = 256, arrival: float = 0.0, slo: str | None = None) -> Request:
    return make_request(rid, prompt=prompt, max_output=max_output, arrival=arrival, slo=slo)


def ids(admissions: Iterable[Admission]) -> list[str]:
    return [a.request_id for a in admissions]
