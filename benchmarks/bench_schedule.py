"""Speed of the core: microseconds per `schedule()` call with 256 running and 1,000 waiting requests.

Two situations, each for `ecoserve` and the `vllm` baseline in the same process:
  seat-bound : max_num_seqs=256 caps the batch; the KV cache is large.
  kv-bound   : the batch is capped by the KV cache (sized so that about 256 requests fit); nothing
               frees KV, so a failed admission scan is not repeated until something changes.
  kv-churn   : kv-bound, and every step one running request stops and a new one (random size)
               arrives, so each step scans the waiting queue and searches pipelining hosts.
Times are microseconds per schedule() call: the median step of each repeat, then the median and
the minimum over repeats (the minimum is the least disturbed by a noisy machine). The ratio
ecoserve / vllm is the figure to read; absolute times depend on the machine.

    python benchmarks/bench_schedule.py [--steps 300] [--repeats 5] [--out results/bench_schedule.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import time
from pathlib import Path

from ecosched import EcoschedConfig, Prediction, Request, Scheduler, StepOutcome, Stop, build_scheduler

NUM_RUNNING = 256
NUM_WAITING = 1000
PROMPT = 512
MAX_OUTPUT = 3000
POLICIES = ("vllm", "ecoserve")
PREDICTED = 600  # padded to 720: no request outgrows its reservation while timed


def build(policy: str, kv_bound: bool) -> Scheduler:
    """A scheduler in steady state: NUM_RUNNING decoding (about that many when kv-bound), the rest waiting."""
    held = PROMPT + int(PREDICTED * 1.2) if policy != "vllm" else PROMPT + 1
    # with the global reserve (ecoserve keeps a fraction of blocks for top-ups) about NUM_RUNNING fit
    blocks = NUM_RUNNING * -(-held // 16) + 8 if kv_bound else 200_000
    config = EcoschedConfig.model_validate(
        {
            "policy": policy,
            "cache": {"num_gpu_blocks": blocks, "num_cpu_blocks": 0, "max_model_len": 1024 + MAX_OUTPUT},
            "scheduler": {"max_num_seqs": 4096 if kv_bound else NUM_RUNNING, "max_num_batched_tokens": 8192},
            "predictor": {"kind": "constant", "constant_tokens": PREDICTED},
        }
    )
    scheduler = build_scheduler(config)
    for i in range(NUM_RUNNING + NUM_WAITING):
        request = Request(f"r{i}", PROMPT, MAX_OUTPUT, i * 1e-3, "interactive" if i % 2 else "batch")
        scheduler.add_request(request, Prediction(PREDICTED))
    now, quiet = 1.0, 0
    while quiet < 5:
        decision = scheduler.schedule(now)
        now += 0.02
        scheduler.update(StepOutcome(decision.step_id, now))
        quiet = 0 if decision.admitted or decision.prefills else quiet + 1
        if decision.step_id > 3000:
            raise RuntimeError(f"{policy}: no steady state after 3000 steps ({len(scheduler.running)} running)")
    return scheduler


def time_steps(scheduler: Scheduler, steps: int, churn: bool) -> list[float]:
    """Microseconds of each schedule() call (update() and arrivals run between calls, untimed)."""
    rng = random.Random(0)
    out = []
    now = 100.0
    gc.disable()
    try:
        for k in range(steps):
            t0 = time.perf_counter_ns()
            decision = scheduler.schedule(now)
            out.append((time.perf_counter_ns() - t0) / 1e3)
            now += 0.02
            stops = (Stop(decision.decodes[k % len(decision.decodes)]),) if churn and decision.decodes else ()
            scheduler.update(StepOutcome(decision.step_id, now, stops))
            if churn:
                prompt, predicted = rng.randint(64, 1024), rng.randint(16, 1200)
                request = Request(f"new{k}", prompt, MAX_OUTPUT, now, rng.choice(("interactive", "batch")))
                scheduler.add_request(request, Prediction(predicted))
    finally:
        gc.enable()
    return out


def measure(kv_bound: bool, churn: bool, steps: int, repeats: int) -> dict[str, dict[str, float | int]]:
    """Per policy: the median over repeats of the median step time. The policies alternate within
    each repeat, so drift in the machine's speed hits both alike."""
    medians: dict[str, list[float]] = {p: [] for p in POLICIES}
    shape: dict[str, tuple[int, int]] = {}
    for _ in range(repeats):
        for policy in POLICIES:
            scheduler = build(policy, kv_bound)
            shape[policy] = (len(scheduler.running), len(scheduler.waiting))
            medians[policy].append(statistics.median(time_steps(scheduler, steps, churn)))
    base, base_min = statistics.median(medians["vllm"]), min(medians["vllm"])
    return {
        p: {
            "us_per_step_median": statistics.median(m),
            "us_per_step_min": min(m),
            "ratio_to_vllm": statistics.median(m) / base,
            "ratio_to_vllm_min": min(m) / base_min,
            "running": shape[p][0],
            "waiting": shape[p][1],
        }
        for p, m in medians.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300, help="timed steps per repeat (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=5, help="fresh schedulers per figure (default: %(default)s)")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args()
    results: dict[str, dict[str, dict[str, float | int]]] = {}
    cols = ("running", "waiting", "median", "min", "ratio", "(min)")
    print(f"{'situation':11s} {'policy':9s} " + " ".join(f"{c:>7s}" for c in cols))
    situations = (("seat-bound", False, False), ("kv-bound", True, False), ("kv-churn", True, True))
    for situation, kv_bound, churn in situations:
        results[situation] = measure(kv_bound, churn, args.steps, args.repeats)
        for policy, r in results[situation].items():
            print(
                f"{situation:11s} {policy:9s} {r['running']:7d} {r['waiting']:7d} "
                f"{r['us_per_step_median']:7.1f} {r['us_per_step_min']:7.1f} {r['ratio_to_vllm']:7.2f} "
                f"{r['ratio_to_vllm_min']:7.2f}"
            )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
