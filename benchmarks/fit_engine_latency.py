"""Fit the core's linear step-time model to a real engine's steps (vLLM or SGLang).

`ecosched serve --stats PATH` makes the scheduler (stock or ecosched) log, per step, when its
scheduling call (vLLM's schedule(), SGLang's get_next_batch_to_run) started, the tokens it scheduled
and the context tokens of the scheduled requests (`PATH.steps`). While the engine is busy, a step's
time is the gap to the next start. This script fits

    step = base + per_token * tokens + per_context_token * context tokens

by least squares over busy steps (gaps under --max-gap-ms) and prints the `latency:` block for an
ecosched config, with the fit's error. The ecoserve policy sizes its per-step token budget with this
model (the largest budget whose predicted step stays within the tightest TBT target x budget_safety).

    python benchmarks/fit_engine_latency.py results/vllm-cpu-tiny/vllm.sched.bin
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def load_steps(path: str) -> np.ndarray:
    """[N, 4]: start (s), schedule() duration (s), scheduled tokens, context tokens."""
    raw = np.fromfile(path, dtype="<f8")
    return raw[: raw.size // 4 * 4].reshape(-1, 4)


def busy_steps(steps: np.ndarray, max_gap_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, context, step time) of steps followed by another within `max_gap_s` (the engine was busy)."""
    gap = np.diff(steps[:, 0])
    keep = (gap > 0) & (gap < max_gap_s) & (steps[:-1, 2] > 0)
    return steps[:-1, 2][keep], steps[:-1, 3][keep], gap[keep]


def fit(tokens: np.ndarray, context: np.ndarray, step_s: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Non-negative least squares over [1, tokens, context]; returns (coefficients, MAPE, p90 abs error)."""
    from scipy.optimize import nnls

    design = np.stack([np.ones_like(tokens), tokens, context], axis=1)
    coef, _ = nnls(design, step_s)
    pred = design @ coef
    rel = np.abs(pred - step_s) / step_s
    return coef, float(rel.mean()), float(np.quantile(np.abs(pred - step_s), 0.9))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stats", nargs="+", help="PATH given to `ecosched serve --stats` (PATH.steps is read)")
    p.add_argument("--max-gap-ms", type=float, default=500.0, help="gaps longer than this are idle time")
    args = p.parse_args()
    parts = [busy_steps(load_steps(s + ".steps"), args.max_gap_ms / 1e3) for s in args.stats]
    tokens, context, step_s = (np.concatenate([part[k] for part in parts]) for k in range(3))
    if tokens.size < 20:
        print(f"only {tokens.size} busy steps: run a load first", file=sys.stderr)
        return 2
    coef, mape, p90 = fit(tokens, context, step_s)
    print(f"# fitted on {tokens.size} busy steps: MAPE {mape:.1%}, p90 abs error {p90 * 1e3:.1f} ms")
    p50_ms = np.median(step_s) * 1e3
    print(f"# tokens per step: p50 {np.median(tokens):.0f}, max {tokens.max():.0f}; step p50 {p50_ms:.1f} ms")
    for lo, hi in ((1, 16), (16, 64), (64, 256), (256, 100_000)):
        sel = (tokens >= lo) & (tokens < hi)
        if sel.any():
            print(f"#   {lo:>4}-{hi:<6} tokens: {sel.sum():6d} steps, median {np.median(step_s[sel]) * 1e3:6.1f} ms")
    print("latency:")
    print(f"  base_ms: {coef[0] * 1e3:.3f}")
    print(f"  per_token_ms: {coef[1] * 1e3:.5f}")
    print(f"  per_context_token_us: {coef[2] * 1e6:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
