"""The policy comparison of issue 3: capacities, curves, ablations, predictor error and simulator speed.

    python benchmarks/bench_sim.py --out benchmarks/results/azure-h100-7b            # every part
    python benchmarks/bench_sim.py --parts speed                                      # one part

Every figure comes from runs made by this script in one invocation, on the same trace and profile.
Each part writes its own JSON under --out (so parts can be rerun alone), plus plots; write-up in
benchmarks/README.md. The predictor of the predicting policies is the noisy oracle with
--sigma, the multiplicative log-normal error that matches a real predictor's ranking quality (see the
write-up): the Azure trace has no prompt text for the ONNX predictor to read.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from tqdm import tqdm

from ecosched.sim.plots import plot_all
from ecosched.sim.profile import load_profile
from ecosched.sim.runner import Capacity, Run, Setup, Variant, map_capacities, map_runs, run_one
from ecosched.sim.workload import load_trace

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT.parent / "shared" / "data" / "traces" / "azure_llm_2023_conv.csv"
POLICIES = ("vllm", "vllm-priority", "sarathi", "sglang", "sjf", "ecoserve", "oracle")
# (label, overrides): ecoserve with one mechanism off at a time
ABLATIONS = (
    ("-decode-first", ("policies.ecoserve.decode_first=false",)),
    ("-time-synced", ("policies.ecoserve.time_synced=false",)),
    ("-reservation", ("policies.ecoserve.reserve_predicted=false",)),
    ("-pipelining", ("policies.ecoserve.pipelining=false",)),
    (
        "-priority",
        (
            "policies.ecoserve.kv_weight_s=0",
            "policies.ecoserve.slack_weight=0",
            "policies.ecoserve.length_weight_s_per_token=0",
        ),
    ),
    ("-demote-late", ("policies.ecoserve.demote_late=false",)),
    ("-padding", ("policies.ecoserve.padding=false",)),
    ("-topup", ("policies.ecoserve.proactive_topup=false",)),
    ("-bucketed-victims", ("policies.ecoserve.bucketed_victims=false",)),
    ("-dynamic-budget", ("policies.ecoserve.dynamic_budget=false",)),
    ("-slo-classes", ("policies.ecoserve.slo_classes_first=false",)),
)
SIGMAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", default=str(TRACE), help="Azure-format trace (default: the shared conversation trace)")
    p.add_argument("--profile", default="h100-llama-2-7b")
    p.add_argument("--out", default="benchmarks/results/azure-h100-7b")
    p.add_argument("--parts", default="capacity,curves,ablations,predictor,speed")
    p.add_argument("--sigma", type=float, default=0.9, help="noisy-oracle log-normal error (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--tol", type=float, default=0.03, help="relative width of capacity brackets")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    profile = load_profile(args.profile)
    workload = load_trace(args.trace, max_model_len=profile.model.max_model_len, max_output_tokens=1024)
    predictor = ("predictor.kind=noisy-oracle", f"predictor.noise_sigma={args.sigma}")
    setup = Setup(workload, profile, None, (*predictor, *args.set))
    info = {
        "trace": Path(args.trace).name,
        "num_requests": workload.num_requests,
        "num_skipped_too_long": workload.num_skipped_too_long,
        "native_rate_rps": workload.rate_rps,
        "profile": profile.name,
        "kv_blocks": profile.num_gpu_blocks(16),
        "overrides": list(setup.overrides),
    }
    print(json.dumps(info), file=sys.stderr)
    parts = set(args.parts.split(","))
    base = [Variant.of(name) for name in POLICIES]
    if "capacity" in parts:
        caps = _capacities(base, setup, args, "capacity")
        _dump(out / "capacity.json", info, caps)
    if "curves" in parts:
        caps = json.loads((out / "capacity.json").read_text())["capacity"]
        rates = _grid(caps)
        tasks = [(v, r) for r in rates for v in base]
        kv_rate = caps["vllm"]
        with tqdm(total=len(tasks), desc="curves", disable=None) as bar:
            runs = map_runs(
                tasks,
                setup,
                jobs=args.jobs,
                keep_timeline_for=lambda v, r: r == kv_rate,
                on_done=lambda r: bar.update(),
            )
        (out / "curves.json").write_text(
            json.dumps({"setup": info, "rates": rates, "runs": [r.metrics.as_dict() for r in runs]}, indent=1)
        )
        timelines = {r.metrics.policy: (r.metrics.rate, r.kv_timeline) for r in runs if r.kv_timeline}
        title = f"{workload.name} on {profile.name}, noisy-oracle sigma {args.sigma}"
        plot_all(out, [r.metrics for r in runs], capacity=caps, target=0.9, timelines=timelines, title=title)
        _jct_at(runs, kv_rate)
    if "ablations" in parts:
        variants = [Variant.of("ecoserve")] + [Variant("ecoserve" + label, "ecoserve", ov) for label, ov in ABLATIONS]
        _dump(out / "ablations.json", info, _capacities(variants, setup, args, "ablations"))
    if "predictor" in parts:
        variants = [
            Variant(f"ecoserve-sigma{s:g}", "ecoserve", ("predictor.kind=noisy-oracle", f"predictor.noise_sigma={s}"))
            for s in SIGMAS
        ]
        variants.append(Variant("ecoserve-constant256", "ecoserve", ("predictor.kind=constant",)))
        variants += [Variant("oracle", "oracle")]
        _dump(out / "predictor.json", info, _capacities(variants, setup, args, "predictor"))
    if "speed" in parts:
        _speed(setup, out, info)
    return 0


def _capacities(variants: list[Variant], setup: Setup, args: argparse.Namespace, desc: str) -> list[Capacity]:
    with tqdm(total=len(variants), desc=desc, disable=None) as bar:

        def done(c: Capacity) -> None:
            bar.update()
            bar.write(f"{c.label:28s} capacity {c.rate:7.2f} req/s ({len(c.runs)} runs)")

        return map_capacities(
            variants,
            setup,
            jobs=args.jobs,
            target=0.9,
            start_rate=setup.workload.rate_rps,
            rel_tol=args.tol,
            on_done=done,
        )


def _dump(path: Path, info: dict[str, object], caps: list[Capacity]) -> None:
    path.write_text(
        json.dumps(
            {
                "setup": info,
                "capacity": {c.label: c.rate for c in caps},
                "runs": [m.as_dict() for c in caps for m in c.runs],
            },
            indent=1,
        )
    )


def _grid(caps: dict[str, float]) -> list[float]:
    """Rates from half the lowest capacity to 1.3x the highest, geometric, plus vLLM's capacity."""
    positive = [c for c in caps.values() if c > 0]
    lo, hi = 0.5 * min(positive), 1.3 * max(positive)
    n = 8
    grid = [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]
    return sorted({round(r, 3) for r in grid} | {caps["vllm"]})


def _jct_at(runs: list[Run], rate: float) -> None:
    at = {r.metrics.policy: r.metrics for r in runs if r.metrics.rate == rate}
    base = at["vllm"].mean_jct_s
    for name, m in at.items():
        print(
            f"mean JCT at vllm capacity {rate:.2f}: {name:14s} {m.mean_jct_s:8.2f} s  ({m.mean_jct_s / base:.2f}x vllm)"
        )


def _speed(setup: Setup, out: Path, info: dict[str, object]) -> None:
    """The whole trace at its own rate, one process, each policy three times, alternating."""
    walls: dict[str, list[float]] = {"ecoserve": [], "vllm": []}
    steps: dict[str, int] = {}
    n = setup.workload.num_requests
    for _ in range(3):
        for name in walls:
            t0 = time.perf_counter()
            steps[name] = run_one(setup, Variant.of(name), None).metrics.num_steps
            walls[name].append(time.perf_counter() - t0)
    result = {
        name: {
            "num_requests": n,
            "num_steps": steps[name],
            "wall_s": w,
            "min_s": min(w),
            "median_s": statistics.median(w),
            "requests_per_s_best": n / min(w),
        }
        for name, w in walls.items()
    }
    (out / "speed.json").write_text(json.dumps({"setup": info, "speed": result}, indent=1))
    for name, r in result.items():
        print(
            f"speed {name}: {n} requests, {r['num_steps']} steps, min {r['min_s']:.1f} s, median {r['median_s']:.1f} s"
        )


if __name__ == "__main__":
    sys.exit(main())
