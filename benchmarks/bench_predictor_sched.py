"""Effect of the shipped ONNX predictor on scheduling (issue 4): `ecoserve` with it vs the oracle.

    python benchmarks/bench_predictor_sched.py --out benchmarks/results/predictor-sched

The workload is the predictor's own held-out ShareGPT test split (conversations it never saw in
training), served as a chat engine would see it: each request's prompt is the rendered conversation
so far, its true output the recorded answer; both lengths are counted with the predictor's tokenizer,
so prediction and truth share one unit. Arrivals are Poisson (seeded); the engine is the
`h100-llama-2-7b` profile. Every variant's capacity (highest rate with 90% of requests meeting both
SLOs) is searched on the same requests, and all variants run again at one common rate.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from ecosched.core.request import Request
from ecosched.sim.profile import load_profile
from ecosched.sim.runner import Setup, Variant, map_capacities, map_runs
from ecosched.sim.workload import Workload

VARIANTS = (
    Variant("vllm", "vllm"),
    Variant("ecoserve-constant", "ecoserve", ("predictor.kind=constant",)),
    Variant("ecoserve-onnx", "ecoserve", ("predictor.kind=onnx",)),
    Variant("oracle", "oracle"),
)


def sharegpt_test_workload(num_requests: int, rate_rps: float, seed: int, max_model_len: int, cap: int) -> Workload:
    from ecosched_predictor_onnx import data
    from ecosched_predictor_onnx.runtime import load_model
    from ecosched_predictor_onnx.tokenizer import count_tokens

    model = load_model()
    tc = model.meta["train_config"]
    splits = data.split_examples(
        data.load_sharegpt(), tc["seed"], (tc["validation_fraction"], tc["test_fraction"]), tc["max_history_turns"]
    )
    test = list(splits["test"])
    random.Random(seed).shuffle(test)
    prompts = count_tokens(model.tokenizer, [e.prompt for e in test])
    outputs = count_tokens(model.tokenizer, [e.response for e in test])
    rng = random.Random(seed + 1)
    t, requests, skipped = 0.0, [], 0
    for e, p, o in zip(test, prompts, outputs, strict=True):
        if len(requests) == num_requests:
            break
        if p + 1 > max_model_len:
            skipped += 1
            continue
        t += rng.expovariate(rate_rps)
        k = len(requests)
        requests.append(Request(f"sg-{k}", p, min(cap, max_model_len - p), t, None, e.prompt, max(1, o)))
    first = requests[0].arrival_s
    requests = [
        Request(
            r.request_id,
            r.num_prompt_tokens,
            r.max_output_tokens,
            r.arrival_s - first,
            None,
            r.prompt,
            r.true_output_tokens,
        )
        for r in requests
    ]
    return Workload(f"sharegpt-test({len(requests)} req)", tuple(requests), skipped)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-requests", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", default="h100-llama-2-7b")
    p.add_argument("--out", default="benchmarks/results/predictor-sched")
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    profile = load_profile(args.profile)
    workload = sharegpt_test_workload(args.num_requests, 5.0, args.seed, profile.model.max_model_len, 1024)
    setup = Setup(workload, profile, None, ())
    caps = map_capacities(
        VARIANTS, setup, jobs=args.jobs, target=0.9, start_rate=workload.rate_rps, rel_tol=0.03,
        on_done=lambda c: print(f"{c.label:20s} capacity {c.rate:6.2f} req/s", flush=True),
    )  # fmt: skip
    capacity = {c.label: c.rate for c in caps}
    common = round(capacity["vllm"], 3)
    runs = map_runs([(v, common) for v in VARIANTS], setup, jobs=args.jobs)
    for r in runs:
        m = r.metrics
        print(
            f"at {common:.2f} req/s: {m.policy:20s} SLO met {m.slo_attainment:6.1%} mean JCT {m.mean_jct_s:6.2f} s "
            f"p99 TTFT {m.p99_ttft_s:6.2f} s preemptions {m.preemptions:5d} "
            f"KV reserved-unused {m.kv_reserved_unused_frac:5.1%}"
        )
    (out / "predictor_sched.json").write_text(
        json.dumps(
            {
                "workload": workload.name,
                "num_skipped_too_long": workload.num_skipped_too_long,
                "capacity": capacity,
                "at_vllm_capacity": [r.metrics.as_dict() for r in runs],
                "search_runs": [m.as_dict() for c in caps for m in c.runs],
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
