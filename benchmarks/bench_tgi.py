"""TGI's router (ecosched's `tgi-fifo` policy) vs `ecoserve`, both behind ecosched's TGI router, driving
the stand-in shard at the speed of Llama-2-7B on one H100, in one run.

For each arm (tgi-fifo, ecoserve; any other policy named with --arms) the script starts a fresh
stand-in shard (`ecosched standin tgi-shard`: block size 1, prefix caching and chunking, as TGI 3 runs
Llama on an H100 by default, with flashinfer; each forward sleeps as long as the h100-llama-2-7b
profile says) with a KV pool small enough that requests contend for it, starts the router in front of
it (`ecosched serve --backend tgi --policy ARM --stats PATH`), replays the Azure conversation trace
(its real lengths; prompts over the 4,096-token context skipped, outputs clamped to it) at each rate
of the sweep with `ecosched bench --api tgi --force-length marker` (only the shard knows where an
output ends), then stops both. Arms run one after another, one shard and one router at a time.

Everything lands in one results.json (the `ecosched simulate` schema, one label per arm, each run
with the router's pauses, resumes, modelled forward time and overheads from its /metrics), with the
summary of `bench_engine.py` (capacities, goodput ratio at the highest rate where tgi-fifo meets the
attainment target) plus the router's overhead per step next to the modelled step time, and plots.

    python benchmarks/bench_tgi.py --out benchmarks/results/tgi-standin-h100
    python benchmarks/tgi_figures.py fit-latency     # the latency block of configs/tgi-h100-llama-2-7b.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_engine import capacity, plot, slug, summarize  # noqa: E402
from benchmarks.tgi_figures import (  # noqa: E402
    CONFIG,
    KV_TOKENS,
    PROFILE,
    CpuClock,
    cpu_steal_s,
    markdown_tables,
    overhead,
    router_figures,
    step_wall,
)
from integration.server import free_port, log_tail, start_server, stop_process_group  # noqa: E402

TRACE = REPO.parent / "shared" / "data" / "traces" / "azure_llm_2023_conv.csv"
# The KV pool (KV_TOKENS): 40,960 tokens, about 30 requests of the Azure conversation mix (mean prompt +
# output 1,366 tokens; the first 150 requests: 1,092), a third of what the profile's H100 holds (117,008
# at 90% memory), so that admission and reservation decide the outcome at rates this machine can drive.
BLOCK_SIZE = 1  # TGI 3's default for Llama on an H100: flashinfer, which prefix caching requires
# TGI's limits for Llama-2 (context 4,096): max_input_tokens = context - 1; max_batch_prefill_tokens =
# min(compute-optimal, context) = 4,096. max_concurrent_requests is raised from TGI's 128 so that the
# policies, not the HTTP permit count, decide who waits under overload (the same for every arm).
ROUTER_ARGS = ["--max-input-tokens", "4095", "--max-total-tokens", "4096", "--max-batch-prefill-tokens", "4096",
               "--max-concurrent-requests", "1024"]  # fmt: skip
SHARD_START_S = 30.0
IDLE_TIMEOUT_S = 60.0
# This machine is a VM whose CPUs are sometimes taken by others (steal time in /proc/stat). A rate's run
# during which more than this fraction of the CPU time was stolen is run once more (both runs are
# kept in results.json, the second is used).
MAX_STEAL_FRAC = 0.05


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="0.75,1,1.25,1.5,2,2.5,3", help="arrival rates (req/s) of the sweep")
    p.add_argument("--num-requests", type=int, default=150, help="requests per rate (the trace's first N)")
    p.add_argument("--arms", default="tgi-fifo,ecoserve", help="policies, comma-separated; the first is the baseline")
    p.add_argument("--kv-tokens", type=int, default=KV_TOKENS, help="KV pool of the shard, tokens")
    p.add_argument("--config", default=str(CONFIG), help="ecosched config of every arm (SLOs, predictor, latency)")
    p.add_argument("--trace", default=str(TRACE))
    p.add_argument("--target", type=float, default=0.9)
    p.add_argument("--max-duration-s", type=float, default=240.0, help="cut one rate's run off after this long")
    p.add_argument("--out", default=str(REPO / "results" / "tgi-standin-h100"), help="results.json and plots")
    p.add_argument("--work", help="logs, stats files and per-rate results (default: a new temporary directory)")
    args = p.parse_args()
    out, work = Path(args.out), Path(args.work or tempfile.mkdtemp(prefix="bench-tgi-"))
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    print(f"logs, stats and per-rate results in {work}", file=sys.stderr, flush=True)
    labels = [a.strip() for a in args.arms.split(",") if a.strip()]
    runs: dict[str, list[dict[str, Any]]] = {}
    arms: dict[str, dict[str, Any]] = {}
    setup: dict[str, Any] = {}
    for label in labels:
        runs[label], arms[label], first = run_arm(label, args, work)
        setup = setup or first
    merged = merge(args, labels, runs, arms, setup)
    (out / "results.json").write_text(json.dumps(sanitize(merged), indent=1) + "\n")
    plot(out, merged, "Llama-2-7B on H100 (stand-in shard) behind ecosched's TGI router, Azure conversations")
    print(json.dumps(merged["summary"], indent=1))
    print(markdown_tables(merged))
    return 0


# ------------------------------------------------------------------------------------------- one arm


def run_arm(label: str, args: argparse.Namespace, out: Path) -> tuple[list[dict[str, Any]], dict[str, Any], Any]:
    """Fresh shard and router, every rate, a final /metrics scrape, both stopped."""
    stats = out / f"{slug(label)}.stats.bin"
    tmp = tempfile.mkdtemp(prefix="es-tgi")  # short: unix socket paths are limited to 107 bytes
    shard = start_shard(f"{tmp}/shard", args.kv_tokens, out / f"{slug(label)}.shard.log")
    rows: list[dict[str, Any]] = []
    disturbed: list[dict[str, Any]] = []
    setup = None
    try:
        router = start_router(label, f"{tmp}/shard", stats, args, out)
        try:
            cpu = CpuClock({"router": router.proc.pid, "shard": shard.pid})
            for rate in (float(r) for r in args.rates.split(",")):
                res = bench_one(label, router.url, stats, rate, args, out)
                wait_idle(router.url)
                if res["runs"][0]["cpu_steal_frac"] > MAX_STEAL_FRAC:
                    print(f"[{label}] rate {rate:g}: CPU stolen, running it again", file=sys.stderr, flush=True)
                    disturbed.append(res["runs"][0])
                    res = bench_one(label, router.url, stats, rate, args, out)
                    wait_idle(router.url)
                setup = setup or res["setup"]
                rows += res["runs"]
            totals = scrape(router.url)
            used = cpu.used()
        finally:
            router.stop()
    finally:
        stop_process_group(shard)
    arm = {"policy": label, "totals": totals, "overhead": overhead(stats, totals), "cpu_s": used}
    return rows, {**arm, "disturbed_runs": disturbed}, setup


def start_shard(base: str, kv_tokens: int, log_path: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "ecosched.cli", "standin", "tgi-shard", "--uds-path", base,
           "--num-blocks", str(kv_tokens // BLOCK_SIZE + 1), "--block-size", str(BLOCK_SIZE),
           "--prefix-caching", "--chunking", "--latency-profile", PROFILE]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + SHARD_START_S
    while not os.path.exists(f"{base}-0"):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process_group(proc)
            raise RuntimeError(f"the stand-in shard did not start:\n{log_tail(log_path)}")
        time.sleep(0.2)
    return proc


def start_router(label: str, base: str, stats: Path, args: argparse.Namespace, out: Path) -> Any:
    port = free_port()
    cmd = [sys.executable, "-m", "ecosched.cli", "serve", "--backend", "tgi", "--shard-uds-path", base,
           "--policy", label, "--config", args.config, "--stats", str(stats), "--port", str(port),
           "--", *ROUTER_ARGS]  # fmt: skip
    print(f"[{label}] starting the router on port {port}", file=sys.stderr, flush=True)
    return start_server(cmd, port, out / f"{slug(label)}.router.log")


def bench_one(label: str, url: str, stats: Path, rate: float, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    arm_out = out / slug(label) / f"rate-{rate:g}"
    cmd = [sys.executable, "-m", "ecosched.cli", "bench", "--api", "tgi", "--force-length", "marker",
           "--url", url, "--trace", args.trace, "--rate", str(rate), "--num-requests", str(args.num_requests),
           "--config", args.config, "--label", label, "--sched-stats", str(stats),
           "--max-duration-s", str(args.max_duration_s), "--target", str(args.target),
           "--out", str(arm_out), "--no-plots", "--quiet"]  # fmt: skip
    t0, steal0 = time.monotonic(), cpu_steal_s()
    subprocess.run(cmd, check=True)
    t1, stolen = time.monotonic(), cpu_steal_s() - steal0
    print(f"[{label}] rate {rate:g} took {t1 - t0:.0f} s", file=sys.stderr, flush=True)
    res: dict[str, Any] = json.loads((arm_out / "results.json").read_text())
    for run, extras in zip(res["runs"], res["setup"]["bench"], strict=True):
        run.update(router_figures(extras["server"]))
        run.update(step_wall(stats, t0, t1, run["forward_ms_mean"]))
        run["cpu_steal_frac"] = stolen / ((t1 - t0) * (os.cpu_count() or 1))
    return res


def scrape(url: str) -> dict[str, float]:
    """The router's cumulative counters now (`bench_tgi.TgiMetrics`), plus the KV gauges."""
    from ecosched.serving.bench_tgi import KV_GAUGES, TgiMetrics, samples

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    totals = TgiMetrics().counters(text)
    totals.update({name: value for name, _, value in samples(text) if name in KV_GAUGES})
    return totals


def wait_idle(url: str) -> None:
    """Until the router holds no KV and queues nothing (requests cut off by --max-duration-s drain)."""
    deadline = time.monotonic() + IDLE_TIMEOUT_S
    while time.monotonic() < deadline:
        t = scrape(url)
        if t.get("ecosched_kv_blocks_used", 0) + t.get("ecosched_kv_blocks_reserved_unused", 0) == 0:
            return
        time.sleep(0.5)
    print(f"warning: {url} still held KV after {IDLE_TIMEOUT_S:.0f} s", file=sys.stderr)


# ------------------------------------------------------------------------------------------ merging


def merge(
    args: argparse.Namespace,
    labels: list[str],
    runs: dict[str, list[dict[str, Any]]],
    arms: dict[str, dict[str, Any]],
    setup: dict[str, Any],
) -> dict[str, Any]:
    merged: dict[str, Any] = {
        "setup": {
            **setup,
            "arms": {label: ["--policy", label] for label in labels},
            "shard": {
                "profile": PROFILE,
                "kv_tokens": args.kv_tokens,
                "block_size": BLOCK_SIZE,
                "prefix_caching": True,
                "chunking": True,
            },
            "router_args": ROUTER_ARGS,
            "rates": args.rates,
        },
        "runs": [r for label in labels for r in runs[label]],
        "capacity": {label: capacity(runs[label], args.target) for label in labels},
        "sched_overhead": {label: arms[label]["overhead"]["router"] for label in labels},
        "router": {label: arms[label] for label in labels},
    }
    summary = summarize(merged, args.target)
    for label in labels:
        for rate, row in summary["arms"][label]["per_rate"].items():
            run = next(r for r in runs[label] if r["rate"] == rate)
            row.pop("decode_step_ms_p50", None)  # a real engine's figure; the stand-in's is modelled
            keys = (
                "pauses",
                "resumes",
                "forward_ms_mean",
                "step_ms_mean",
                "step_excess_ms_mean",
                "router_ms_per_step",
                "cpu_steal_frac",
            )
            row.update({k: run.get(k) for k in keys})
    merged["summary"] = summary
    return merged


def sanitize(value: Any) -> Any:
    """`value` with machine paths made relative: the repository's to it, the shared data's to
    `../shared`, anything else (temporary sockets) to its file name."""
    if isinstance(value, dict):
        return {k: sanitize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [sanitize(v) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        path = Path(value)
        for root, prefix in ((REPO, ""), (REPO.parent, "../")):
            if path.is_relative_to(root):
                return prefix + str(path.relative_to(root))
        return path.name
    return value


if __name__ == "__main__":
    raise SystemExit(main())
