"""Golden runs: a tiny fixed workload through every policy gives the recorded metrics.

The simulator is deterministic, so any change to these figures is a change of behaviour (in the core,
a policy, the engine model or the metrics) that must be looked at. After an intended change,
regenerate and review the diff:

    python tests/sim/test_golden.py --regen
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ecosched.sim.profile import load_profile
from ecosched.sim.runner import Setup, Variant, run_one
from ecosched.sim.workload import synthetic

GOLDEN = Path(__file__).with_name("golden.json")
POLICIES = ("vllm", "vllm-priority", "sarathi", "sglang", "sjf", "ecoserve", "oracle")
RATE = 14.0
# Compared exactly: counts. Compared within REL: times and fractions (float sums may differ in the
# last bits across platforms).
EXACT = ("num_finished", "num_rejected", "preemptions", "preemptions_swap", "preemptions_recompute", "num_steps")
CLOSE = (
    "slo_attainment", "ttft_attainment", "tbt_attainment", "goodput_rps", "throughput_rps", "mean_ttft_s",
    "p99_ttft_s", "p99_tbt_s", "mean_jct_s", "p99_jct_s", "kv_used_frac", "kv_reserved_unused_frac",
)  # fmt: skip
REL = 1e-6


def golden_run(policy: str) -> dict[str, float]:
    """300 synthetic requests (seed 11) with a mixed SLO load, on the H100 Llama-2-7B profile with its KV
    cut to 1,200 blocks so that admission, reservation and preemption all matter."""
    profile = load_profile("h100-llama-2-7b")
    workload = synthetic(
        300, 5.0, max_model_len=4096, max_output_tokens=1024, slo_mix={"interactive": 0.7, "batch": 0.3}, seed=11
    )
    overrides = ("cache.num_gpu_blocks=1200", "predictor.kind=noisy-oracle", "predictor.noise_sigma=0.5")
    m = run_one(Setup(workload, profile, None, overrides), Variant.of(policy), RATE).metrics.as_dict()
    return {k: m[k] for k in (*EXACT, *CLOSE)}  # type: ignore[misc]


@pytest.mark.parametrize("policy", POLICIES)
def test_golden_metrics(policy: str) -> None:
    expected = json.loads(GOLDEN.read_text())[policy]
    got = golden_run(policy)
    for key in EXACT:
        assert got[key] == expected[key], (policy, key)
    for key in CLOSE:
        assert got[key] == pytest.approx(expected[key], rel=REL, abs=1e-12), (policy, key)


def test_golden_runs_differ_between_policies() -> None:
    """The workload is one where policies disagree (otherwise the golden file would pin little)."""
    runs = json.loads(GOLDEN.read_text())
    assert len({round(r["mean_jct_s"], 6) for r in runs.values()}) >= 4
    assert any(r["preemptions"] > 0 for r in runs.values())
    assert len({round(r["slo_attainment"], 6) for r in runs.values()}) >= 3


if __name__ == "__main__" and "--regen" in sys.argv:
    GOLDEN.write_text(json.dumps({p: golden_run(p) for p in POLICIES}, indent=1) + "\n")
    print(f"wrote {GOLDEN}")
