"""`ecosched simulate` and `ecosched profile`: the simulator's command line."""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from ecosched.errors import ConfigError

DEFAULT_POLICIES = "vllm,vllm-priority,sarathi,sglang,sjf,ecoserve,oracle"
DEFAULT_PROFILE = "h100-llama-2-7b"


def add_workload_args(
    p: argparse.ArgumentParser, *, num_requests_help: str, num_requests_default: int | None = None
) -> None:
    """The workload options `simulate` and `bench` share (read by `load_workload`)."""
    p.add_argument(
        "--trace",
        default="synthetic",
        help="a trace file (Azure CSV, Mooncake JSONL, ShareGPT JSON) or 'synthetic' (default: %(default)s)",
    )
    p.add_argument("--format", choices=("azure", "mooncake", "sharegpt"), help="trace format (default: detected)")
    p.add_argument("--num-requests", type=int, default=num_requests_default, help=num_requests_help)
    p.add_argument(
        "--synthetic-rate", type=float, default=5.0, help="synthetic: native arrival rate (default: %(default)s)"
    )
    p.add_argument("--arrival", choices=("poisson", "gamma"), default="poisson", help="synthetic arrival process")
    p.add_argument(
        "--burstiness", type=float, default=1.0, help="synthetic gamma: CV of inter-arrival gaps (default: %(default)s)"
    )
    p.add_argument("--slo-mix", help="SLO classes drawn per request, e.g. interactive=0.7,batch=0.3 (default: none)")
    p.add_argument("--max-output-tokens", type=int, default=1024, help="per-request output cap (default: %(default)s)")
    p.add_argument(
        "--on-too-long",
        choices=("skip", "error"),
        default="skip",
        help="requests longer than the model's context: skip and count, or fail (default: %(default)s)",
    )


def add_simulate_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "simulate",
        help="compare policies on a trace with a calibrated engine model (virtual time)",
        description=(
            "Run each policy on a workload re-timed to each rate (or search each policy's capacity: the "
            "highest rate at which --target of requests meet both TTFT and TBT SLOs) with an engine model "
            "calibrated on GPU measurements. Writes DIR/results.json, DIR/results.csv and PNG plots."
        ),
    )
    add_workload_args(p, num_requests_help="synthetic: requests to draw (default 1000); trace: first N")
    p.add_argument(
        "--profile",
        default=DEFAULT_PROFILE,
        help="engine profile: a name from `ecosched profile list` or a YAML path (default: %(default)s)",
    )
    p.add_argument("--policies", default=DEFAULT_POLICIES, help="comma-separated policies (default: %(default)s)")
    p.add_argument("--rates", help="comma-separated arrival rates (requests/s) to run every policy at")
    p.add_argument("--find-capacity", action="store_true", help="search each policy's capacity")
    p.add_argument(
        "--target", type=float, default=0.9, help="SLO attainment that defines capacity (default: %(default)s)"
    )
    p.add_argument(
        "--capacity-tol", type=float, default=0.03, help="relative width of the capacity bracket (default: %(default)s)"
    )
    p.add_argument("--config", help="YAML config (default: built-in defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--seed", type=int, default=0, help="seed of synthetic draws and the predictor (default: 0)")
    p.add_argument("--jobs", type=int, help="worker processes (default: cores, at most 4)")
    p.add_argument("--out", default="results/simulate", help="output directory (default: %(default)s)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--json", action="store_true", help="print results.json to stdout instead of the table")
    p.add_argument(
        "--log-outputs",
        metavar="FILE",
        help="append {prompt, output_tokens} of finished requests that carry prompt text (JSONL) for "
        "`ecosched predictor train --from-log`",
    )
    p.set_defaults(func=simulate_command)


def add_profile_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("profile", help="engine profiles of the simulator: list, show, fit from measurements")
    psub = p.add_subparsers(required=True, metavar="ACTION")
    ls = psub.add_parser("list", help="list the shipped profiles with their KV capacity")
    ls.set_defaults(func=_profile_list)
    show = psub.add_parser("show", help="print a profile and sample step times")
    show.add_argument("name", help="profile name or YAML path")
    show.set_defaults(func=_profile_show)
    from ecosched.sim import fit

    fitp = psub.add_parser("fit", help="fit a profile's layer cost to per-operation GPU measurements")
    fit.add_arguments(fitp)
    fitp.set_defaults(func=fit.run)


def _profile_list(args: argparse.Namespace) -> int:
    from ecosched.sim.profile import list_profiles, load_profile

    for name in list_profiles():
        p = load_profile(name)
        print(
            f"{name:24s} {p.gpu.name} x{p.tensor_parallel}, {p.model.name}: {p.num_gpu_blocks(16)} KV blocks of 16, "
            f"held-out fit error {p.layer_cost.heldout_mape_pct:.1f}% MAPE"
        )
    return 0


def _profile_show(args: argparse.Namespace) -> int:
    import yaml

    from ecosched.sim.profile import load_profile

    p = load_profile(args.name)
    print(yaml.safe_dump(p.model_dump(mode="json"), sort_keys=False), end="")
    m = p.latency_model()
    print("# sample step times (ms)")
    for label, b, c in (
        ("decode, 32 requests at 1k context", 32, 32 * 1024),
        ("decode, 128 requests at 1k context", 128, 128 * 1024),
        ("prefill chunk of 512 tokens", 512, 0),
        ("prefill chunk of 2048 tokens", 2048, 0),
    ):
        print(f"#   {label:40s} {m.iteration_time_s(b, c) * 1e3:8.2f}")
    return 0


def _rates(text: str | None) -> list[float]:
    if not text:
        return []
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--rates: expected comma-separated numbers, got {text!r}") from None
    bad = [r for r in rates if not (r > 0 and math.isfinite(r))]
    if bad:
        raise ConfigError(f"--rates: every rate must be a positive number, got {bad}")
    return rates


def load_workload(args: argparse.Namespace, max_model_len: int):  # type: ignore[no-untyped-def]
    from ecosched.sim.workload import load_trace, parse_slo_mix, synthetic

    mix = parse_slo_mix(args.slo_mix) if args.slo_mix else None
    if args.trace == "synthetic":
        return synthetic(
            args.num_requests or 1000,
            args.synthetic_rate,
            arrival=args.arrival,
            burstiness=args.burstiness,
            max_model_len=max_model_len,
            max_output_tokens=args.max_output_tokens,
            slo_mix=mix,
            seed=args.seed,
        )
    return load_trace(
        args.trace,
        fmt=args.format,
        max_model_len=max_model_len,
        max_output_tokens=args.max_output_tokens,
        on_too_long=args.on_too_long,
        slo_mix=mix,
        seed=args.seed,
        limit=args.num_requests,
    )


def simulate_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ecosched.policies import POLICIES
    from ecosched.sim.profile import load_profile
    from ecosched.sim.runner import Run, Setup, Variant, default_jobs, map_capacities, map_runs

    rates = _rates(args.rates)
    if not rates and not args.find_capacity:
        raise ConfigError("simulate: give --rates R1,R2,... and/or --find-capacity")
    if not 0 < args.target <= 1:
        raise ConfigError(f"--target must be in (0, 1], got {args.target}")
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    for name in policies:
        POLICIES.get(name)  # unknown names fail before any work
    profile = load_profile(args.profile)
    workload = load_workload(args, profile.model.max_model_len)
    setup = Setup(
        workload, profile, args.config, (f"predictor.seed={args.seed}", *args.set), output_log=args.log_outputs
    )
    variants = [Variant.of(p) for p in policies]
    for v in variants:
        setup.config_for(v)  # bad config fails before any work
    jobs = args.jobs or default_jobs()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"workload: {workload.name}: {workload.num_requests} requests, {workload.rate_rps:.2f} req/s native "
        f"(CV {workload.burstiness:.2f}), {workload.num_skipped_too_long} skipped as too long",
        file=sys.stderr,
    )
    print(
        f"engine: {profile.name}: {profile.num_gpu_blocks(setup.config_for(variants[0]).cache.block_size)} KV blocks",
        file=sys.stderr,
    )
    all_runs = []
    capacity: dict[str, float] = {}
    if args.find_capacity:
        with tqdm(total=len(variants), desc="capacity", unit="policy", disable=None) as bar:

            def done(c):  # type: ignore[no-untyped-def]
                bar.update(1)
                bar.set_postfix_str(f"{c.label}: {c.rate:.2f} req/s")

            caps = map_capacities(
                variants,
                setup,
                jobs=jobs,
                target=args.target,
                start_rate=workload.rate_rps,
                rel_tol=args.capacity_tol,
                on_done=done,
            )
        for c in caps:
            capacity[c.label] = c.rate
            all_runs += c.runs
    timelines = {}
    if rates:
        kv_rate = rates[len(rates) // 2]
        tasks = [(v, r) for r in rates for v in variants]
        with tqdm(total=len(tasks), desc="runs", unit="run", disable=None) as bar:

            def run_done(r: Run) -> None:
                bar.update(1)
                m = r.metrics
                bar.set_postfix_str(f"{m.policy}@{m.rate:g}: {m.slo_attainment:.0%} met")

            runs = map_runs(tasks, setup, jobs=jobs, keep_timeline_for=lambda v, r: r == kv_rate, on_done=run_done)
        for r in runs:
            all_runs.append(r.metrics)
            if r.kv_timeline:
                timelines[r.metrics.policy] = (r.metrics.rate, r.kv_timeline)
    title = f"{workload.name} on {profile.name}"
    paths = write_results(out, all_runs, capacity, setup_info(args, workload, profile))
    if not args.no_plots:
        from ecosched.sim.plots import plot_all

        paths += plot_all(out, all_runs, capacity=capacity, target=args.target, timelines=timelines, title=title)
    if args.json:
        print(paths[0].read_text(), end="")
    else:
        print_table(all_runs, capacity, args.target)
    for path in paths:
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def setup_info(args: argparse.Namespace, workload, profile) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {
        "trace": args.trace,
        "workload": workload.name,
        "num_requests": workload.num_requests,
        "native_rate_rps": workload.rate_rps,
        "burstiness_cv": workload.burstiness,
        "num_skipped_too_long": workload.num_skipped_too_long,
        "profile": profile.name if profile is not None else None,
        "seed": args.seed,
        "target": args.target,
        "overrides": list(args.set),
        "config": args.config,
    }


def write_results(out: Path, runs: Sequence, capacity: dict[str, float], info: dict[str, object]) -> list[Path]:  # type: ignore[type-arg]
    """DIR/results.json ({"setup", "runs", "capacity"}) and DIR/results.csv (one row per run)."""
    rows = [m.as_dict() for m in runs]
    jpath = out / "results.json"
    jpath.write_text(json.dumps({"setup": info, "runs": rows, "capacity": capacity}, indent=1) + "\n")
    cpath = out / "results.csv"
    with cpath.open("w", newline="") as f:
        if rows:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return [jpath, cpath]


def print_table(runs: Sequence, capacity: dict[str, float], target: float) -> None:  # type: ignore[type-arg]
    full = [m for m in runs if not m.stopped_early]
    if capacity:
        print(f"capacity (highest rate with >= {target:.0%} of requests meeting both SLOs):")
        for label, rate in capacity.items():
            print(f"  {label:24s} {rate:8.2f} req/s")
    if not full:
        return
    cols = ("rate", "SLO met", "goodput", "TTFT p99", "TBT p99", "JCT mean", "JCT p99", "preempt", "KV used")
    print(f"{'policy':24s} " + " ".join(f"{c:>9s}" for c in cols))
    order = {label: i for i, label in enumerate(dict.fromkeys(m.policy for m in runs))}
    for m in sorted(full, key=lambda m: (m.rate, order[m.policy])):
        print(
            f"{m.policy:24s} {m.rate:9.2f} {m.slo_attainment:9.1%} {m.goodput_rps:9.2f} {m.p99_ttft_s:9.2f} "
            f"{m.p99_tbt_s * 1e3:8.0f}m {m.mean_jct_s:9.2f} {m.p99_jct_s:9.2f} {m.preemptions:9.0f} "
            f"{m.kv_used_frac:9.1%}"
        )


DEMO_POLICIES = "vllm,sarathi,sglang,ecoserve,oracle"
DEMO_RATES = "4,8,12,16"


def add_demo_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "demo",
        help="a small policy comparison on the built-in synthetic workload, with plots",
        description=(
            "Shorthand for `ecosched simulate --trace synthetic` with a small workload: every policy at a few "
            "rates on the default engine profile. Prints a table and writes results and plots to --out."
        ),
    )
    p.add_argument("--policies", default=DEMO_POLICIES, help="comma-separated policies (default: %(default)s)")
    p.add_argument("--rates", default=DEMO_RATES, help="arrival rates, requests/s (default: %(default)s)")
    p.add_argument("--num-requests", type=int, default=600, help="requests per run (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the workload and predictor (default: %(default)s)")
    p.add_argument("--out", default="results/demo", help="output directory (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--json", action="store_true", help="print results.json to stdout instead of the table")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from ecosched.cli import main

    argv = ["simulate", "--trace", "synthetic", "--policies", args.policies, "--rates", args.rates]
    argv += ["--num-requests", str(args.num_requests), "--seed", str(args.seed), "--out", args.out]
    for item in args.set:
        argv += ["--set", item]
    if args.json:
        argv.append("--json")
    return main(argv)
