"""The figures of `bench_tgi.py` that do not come from the client: the router's stats files, the
profile's step time, this machine's CPU accounting, and the write-up's tables.

    python benchmarks/tgi_figures.py fit-latency                   # configs/tgi-h100-llama-2-7b.yaml's latency block
    python benchmarks/tgi_figures.py table benchmarks/results/tgi-standin-h100/results.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_engine import sched_overhead  # noqa: E402
from benchmarks.fit_engine_latency import load_steps  # noqa: E402

PROFILE = "h100-llama-2-7b"
CONFIG = REPO / "configs" / "tgi-h100-llama-2-7b.yaml"
KV_TOKENS = 40_960  # the benchmark's KV pool (see bench_tgi.py)
BUSY_GAP_S = 0.5  # a gap between step starts longer than this is idle time, not a step


# ------------------------------------------------------------------------------------------ machine


class CpuClock:
    """CPU seconds (user + system) used since construction by the named processes and by this
    script's finished children (the `ecosched bench` clients), beside the wall time."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self.children = _children_cpu_s()
        self.wall = time.monotonic()

    def used(self) -> dict[str, float]:
        out = {name: cpu_seconds(pid) - self.start[name] for name, pid in self.pids.items()}
        out["client"] = _children_cpu_s() - self.children
        out["wall"] = time.monotonic() - self.wall
        return out


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a live process (Linux /proc; its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_steal_s() -> float:
    """CPU seconds this VM has lost to others since boot, all CPUs (/proc/stat `steal`; 0 elsewhere)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return 0.0
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


def step_wall(stats: Path, t0: float, t1: float, forward_ms: float | None) -> dict[str, Any]:
    """The wall time of the router's busy steps (start to next start) between monotonic t0 and t1, and
    its excess over the modelled forward: what this machine adds to the H100's step (the router, the
    gRPC calls, the stand-in's bookkeeping, the HTTP streams and the client, on 2 shared cores). A run
    whose excess is far above its neighbours' ran on a disturbed machine."""
    import numpy as np

    path = Path(f"{stats}.steps")
    if not path.exists():
        return {}
    steps = load_steps(str(path))
    gaps = np.diff(steps[:, 0])
    start = steps[:-1, 0]
    busy = gaps[(start >= t0) & (start < t1) & (gaps > 0) & (gaps < BUSY_GAP_S)]
    if not busy.size:
        return {}
    mean = float(busy.mean() * 1e3)
    return {
        "step_ms_mean": mean,
        "step_ms_p50": float(np.median(busy) * 1e3),
        "step_excess_ms_mean": mean - forward_ms if forward_ms is not None else None,
    }


# --------------------------------------------------------------------------------------------- router


def router_figures(server: dict[str, float]) -> dict[str, Any]:
    """One run's router counters (growth over the run) as per-run columns."""
    forwards = server.get("forwards_prefill", 0) + server.get("forwards_decode", 0)
    forward_s = server.get("forward_s_prefill", 0) + server.get("forward_s_decode", 0)
    call_s = server.get("inference_s_prefill", 0) + server.get("inference_s_decode", 0)
    steps = server.get("steps", 0)
    return {
        "pauses": server.get("pauses"),
        "resumes": server.get("resumes"),
        "forwards": forwards,
        "forward_ms_mean": forward_s / forwards * 1e3 if forwards else None,  # the modelled step
        "shard_call_overhead_ms_mean": (call_s - forward_s) / forwards * 1e3 if forwards else None,
        "router_ms_per_step": server.get("step_s", 0) / steps * 1e3 if steps else None,
        "policy_ms_per_step": server.get("policy_s", 0) / steps * 1e3 if steps else None,
        "requests_failed": server.get("requests_failed"),
    }


# ---------------------------------------------------------------------------------------- overhead


def overhead(stats: Path, totals: dict[str, float]) -> dict[str, Any]:
    """The router's time per step (outside the shard call) and the core's decision in it, from the
    stats files, beside the modelled forward and the busy step's wall time."""
    import numpy as np

    out: dict[str, Any] = {"router": sched_overhead(stats)}
    steps_path = Path(f"{stats}.steps")
    if steps_path.exists():
        steps = load_steps(str(steps_path))
        gaps = np.diff(steps[:, 0])
        busy = gaps[(gaps > 0) & (gaps < BUSY_GAP_S)]
        if busy.size:
            ms = busy * 1e3
            out["busy_step_ms"] = {
                "mean": float(ms.mean()),
                "p50": float(np.median(ms)),
                "p99": float(np.quantile(ms, 0.99)),
                "steps": int(busy.size),
            }
        out["latency_fit_on_steps"] = fit_error_on_steps(steps)
    for method in ("prefill", "decode"):
        n = totals.get(f"forwards_{method}", 0)
        if n:
            forward, call = totals[f"forward_s_{method}"], totals[f"inference_s_{method}"]
            out[f"{method}_forward_ms_mean"] = forward / n * 1e3
            out[f"{method}_shard_call_overhead_ms_mean"] = (call - forward) / n * 1e3
            out[f"{method}_forwards"] = int(n)
    return out


def fit_error_on_steps(steps: Any) -> dict[str, float]:
    """The config's linear latency model against the profile on the steps the router really ran
    (tokens, and the context the core held after the step)."""
    import numpy as np

    from ecosched.config import load_config
    from ecosched.core.latency import LinearLatencyModel
    from ecosched.sim.profile import load_profile

    truth = load_profile(PROFILE).latency_model()
    linear = LinearLatencyModel.from_config(load_config(str(CONFIG)).latency)
    pairs = [(int(b), int(c)) for b, c in steps[:, 2:4] if b > 0]
    if not pairs:
        return {}
    rel = np.array([linear.iteration_time_s(b, c) / truth.iteration_time_s(b, c) - 1 for b, c in pairs])
    err = np.abs(rel)
    return {
        "steps": len(pairs),
        "mean_abs_rel": float(err.mean()),
        "p90_abs_rel": float(np.quantile(err, 0.9)),
        "min_rel": float(rel.min()),
        "max_rel": float(rel.max()),
    }


# ------------------------------------------------------------------------------------- latency fit


def fit_latency(kv_tokens: int) -> int:
    """Print the linear latency block fitted to the profile's step time (relative least squares)."""
    import numpy as np

    from ecosched.sim.profile import load_profile

    truth = load_profile(PROFILE).latency_model()
    tokens = np.array(sorted({1, 2, 4, 8, 16, 24, 32, 48, 64, 96, *range(128, 4097, 64)}), dtype=float)
    context = np.arange(0, kv_tokens + 1, 1024, dtype=float)
    b, c = (x.ravel() for x in np.meshgrid(tokens, context))
    step = np.array([truth.iteration_time_s(int(x), int(y)) for x, y in zip(b, c, strict=True)])
    design = np.stack([np.ones_like(b), b, c], axis=1)
    # relative error: a decode step of 8 ms counts as much as a 90 ms prefill step
    coef, *_ = np.linalg.lstsq(design / step[:, None], np.ones_like(step), rcond=None)
    rel = design @ coef / step - 1
    print(f"# {step.size} grid points: tokens 1-4096, context 0-{kv_tokens}; profile {PROFILE}")
    print(f"# relative error: mean {np.abs(rel).mean():.1%}, max {np.abs(rel).max():.1%}")
    for lo, hi in ((1, 64), (64, 512), (512, 2048), (2048, 4097)):
        sel = (b >= lo) & (b < hi)
        err = rel[sel]
        print(
            f"#   {lo:>4}-{hi - 1:<4} tokens: mean {np.abs(err).mean():.1%}, range {err.min():+.1%} to {err.max():+.1%}"
        )
    print(f"latency:\n  base_ms: {coef[0] * 1e3:.4f}\n  per_token_ms: {coef[1] * 1e3:.6f}")
    print(f"  per_context_token_us: {coef[2] * 1e6:.5f}")
    return 0


# ------------------------------------------------------------------------------------------- tables


def markdown_tables(merged: dict[str, Any]) -> str:
    """The write-up's tables: every run, then the router's overhead per arm."""
    runs, base = merged["runs"], merged["summary"]["reference_arm"]
    by_base = {r["rate"]: r for r in runs if r["policy"] == base}
    lines = [
        "| arm | rate | SLO met | TTFT met | TBT met | goodput (req/s) | vs " + base + " | TTFT p99 (s) | TBT p99 (ms) "
        "| pauses / resumes | preemptions | KV used / reserved | step / modelled (ms) | CPU stolen |",
        "|" + "---|" * 14,
    ]
    for r in sorted(runs, key=lambda r: (r["rate"], r["policy"] != base)):
        ref = by_base.get(r["rate"], {}).get("goodput_rps")
        ratio = f"{r['goodput_rps'] / ref:.2f}" if ref else "-"
        lines.append(
            f"| {r['policy']} | {r['rate']:g} | {r['slo_attainment']:.1%} | {r['ttft_attainment']:.1%} "
            f"| {r['tbt_attainment']:.1%} | {r['goodput_rps']:.2f} | {ratio} | {r['p99_ttft_s']:.2f} "
            f"| {r['p99_tbt_s'] * 1e3:.0f} | {_n(r.get('pauses'))} / {_n(r.get('resumes'))} | {_n(r['preemptions'])} "
            f"| {r['kv_used_frac']:.0%} / {r['kv_reserved_unused_frac']:.0%} "
            f"| {_f(r.get('step_ms_mean'))} / {_f(r.get('forward_ms_mean'))} | {r.get('cpu_steal_frac', 0):.1%} |"
        )
    lines += ["", overhead_table(merged)]
    return "\n".join(lines)


def overhead_table(merged: dict[str, Any]) -> str:
    lines = [
        "| arm | router loop per step, mean / p50 / p99 (ms) | core decision per step, mean / p99 (ms) "
        "| modelled forward, decode / prefill (ms) | shard call beyond it, decode / prefill (ms) "
        "| busy step wall, mean / p50 (ms) | CPU per step: router / shard / client (ms) |",
        "|" + "---|" * 7,
    ]
    for label, arm in merged["router"].items():
        o, r, cpu = arm["overhead"], arm["overhead"]["router"], arm["cpu_s"]
        steps = r.get("calls") or 1
        busy = o.get("busy_step_ms", {})
        lines.append(
            f"| {label} | {r['mean_us'] / 1e3:.2f} / {r['p50_us'] / 1e3:.2f} / {r['p99_us'] / 1e3:.2f} "
            f"| {r['policy_mean_us'] / 1e3:.2f} / {r['policy_p99_us'] / 1e3:.2f} "
            f"| {_f(o.get('decode_forward_ms_mean'))} / {_f(o.get('prefill_forward_ms_mean'))} "
            f"| {_f(o.get('decode_shard_call_overhead_ms_mean'))} / {_f(o.get('prefill_shard_call_overhead_ms_mean'))} "
            f"| {_f(busy.get('mean'))} / {_f(busy.get('p50'))} "
            f"| {' / '.join(f'{cpu[k] / steps * 1e3:.2f}' for k in ('router', 'shard', 'client'))} |"
        )
    return "\n".join(lines)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _n(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.0f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit-latency", help="print the config's latency block fitted to the profile")
    fit.add_argument("--kv-tokens", type=int, default=KV_TOKENS, help="the context range's upper end")
    table = sub.add_parser("table", help="print the write-up's tables from a results.json")
    table.add_argument("results")
    args = p.parse_args()
    if args.command == "fit-latency":
        return fit_latency(args.kv_tokens)
    print(markdown_tables(json.loads(Path(args.results).read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
