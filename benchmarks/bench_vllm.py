"""Stock vLLM vs vLLM with ecosched in charge, on the real CPU engine, under KV pressure, in one run.

For each arm (stock vLLM's own scheduler, timed but unchanged; ecosched `ecoserve`; any other policy
named with --arms) the script starts `ecosched serve --backend vllm` with the same engine arguments
(the tiny local model, a KV cache sized so the workload contends for it), replays the Azure
conversation trace with lengths scaled to the model's context at each rate of the sweep with
`ecosched bench`, and stops the server. Arms run one after another on the same machine, one server
at a time. Everything lands in one results.json (the `ecosched simulate` schema, one label per arm)
with the usual plots, plus `summary.json`: capacities, goodput ratios at the highest rate where
stock vLLM still meets the attainment target, preemptions, and schedule() overhead per call.

    python benchmarks/bench_vllm.py --out benchmarks/results/vllm-cpu-tiny

Takes about (arms x (60 s start + rates x run time)); the defaults take about 25 minutes here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from integration.server import free_port, serve_command, start_server  # noqa: E402

# The engine, identical for every arm. 64 blocks of 32 tokens = 2048 KV tokens: about seven requests
# of the scaled Azure mix at once, so admission, reservation and preemption decide the outcome.
ENGINE_ARGS = [
    "--max-model-len",
    "1024",
    "--block-size",
    "32",
    "--num-gpu-blocks-override",
    "64",
    "--max-num-seqs",
    "32",
    "--max-num-batched-tokens",
    "512",
]
ARMS = {
    "vllm (stock)": ["--no-ecosched"],
    "ecoserve": ["--policy", "ecoserve"],
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model directory (default: build the tiny model into OUT/tiny-llama)")
    p.add_argument("--trace", default=str(REPO.parent / "shared" / "data" / "traces" / "azure_llm_2023_conv.csv"))
    p.add_argument("--rates", default="1,2,3,4,6,8", help="arrival rates (req/s) of the sweep")
    p.add_argument("--num-requests", type=int, default=150, help="requests per rate")
    p.add_argument("--length-scale", type=float, default=0.25, help="Azure lengths x this (context 1024)")
    p.add_argument(
        "--config", default=str(REPO / "configs" / "vllm-cpu-tiny.yaml"), help="ecosched config (SLOs, predictor)"
    )
    p.add_argument("--arms", default=",".join(ARMS), help=f"arms to run (known: {', '.join(ARMS)}; or any policy name)")
    p.add_argument("--target", type=float, default=0.9)
    p.add_argument("--max-duration-s", type=float, default=240.0, help="cut one rate's run off after this long")
    p.add_argument("--out", default=str(REPO / "results" / "vllm-cpu-tiny"))
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = Path(args.model) if args.model else build_model(out / "tiny-llama")
    merged: dict[str, Any] = {"setup": None, "runs": [], "capacity": {}, "sched_overhead": {}}
    for label in args.arms.split(","):
        label = label.strip()
        mode = ARMS.get(label, ["--policy", label])
        res = run_arm(label, mode, model, args, out)
        merged["setup"] = merged["setup"] or res["setup"]
        merged["runs"] += res["runs"]
        merged["capacity"].update(res["capacity"])
        merged["sched_overhead"][label] = res["sched"]
    merged["setup"]["arms"] = {label: ARMS.get(label, ["--policy", label]) for label in args.arms.split(",")}
    merged["setup"]["engine_args"] = ENGINE_ARGS
    merged["summary"] = summarize(merged, args.target)
    (out / "results.json").write_text(json.dumps(merged, indent=1) + "\n")
    plot(out, merged)
    print(json.dumps(merged["summary"], indent=1))
    return 0


def build_model(directory: Path) -> Path:
    subprocess.run([sys.executable, str(REPO / "scripts" / "build_tiny_model.py"), str(directory)], check=True)
    return directory


def run_arm(label: str, mode: list[str], model: Path, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    slug = label.split()[0].replace("/", "-")
    stats = out / f"{slug}.sched.bin"
    port = free_port()
    serve = [*mode, "--stats", str(stats)]
    if "--no-ecosched" not in mode:
        serve += ["--config", args.config]
    cmd = serve_command(model, port, [*serve, "--", *ENGINE_ARGS])
    print(f"[{label}] starting: {' '.join(cmd)}", file=sys.stderr, flush=True)
    server = start_server(cmd, port, out / f"{slug}.server.log")
    try:
        arm_out = out / slug
        bench = [
            sys.executable,
            "-m",
            "ecosched.cli",
            "bench",
            "--url",
            server.url,
            "--trace",
            args.trace,
            "--rates",
            args.rates,
            "--num-requests",
            str(args.num_requests),
            "--length-scale",
            str(args.length_scale),
            "--config",
            args.config,
            "--label",
            label,
            "--sched-stats",
            str(stats),
            "--max-duration-s",
            str(args.max_duration_s),
            "--target",
            str(args.target),
            "--out",
            str(arm_out),
            "--no-plots",
        ]
        t0 = time.monotonic()
        subprocess.run(bench, check=True)
        print(f"[{label}] sweep took {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    finally:
        server.stop()
    res: dict[str, Any] = json.loads((arm_out / "results.json").read_text())
    res["sched"] = sched_overhead(stats)
    return res


def sched_overhead(stats: Path) -> dict[str, float]:
    """Wall time per schedule() call over the whole arm (every rate), from the server's stats file."""
    import numpy as np

    d = np.fromfile(stats, dtype="<f8") if stats.exists() else np.zeros(0)
    busy = d  # every call, idle ones included: the engine only steps when it has requests
    if not busy.size:
        return {"calls": 0}
    return {
        "calls": int(busy.size),
        "mean_us": float(busy.mean() * 1e6),
        "p50_us": float(np.quantile(busy, 0.5) * 1e6),
        "p99_us": float(np.quantile(busy, 0.99) * 1e6),
    }


def summarize(merged: dict[str, Any], target: float) -> dict[str, Any]:
    runs = merged["runs"]
    by = {}
    for r in runs:
        by.setdefault(r["policy"], {})[r["rate"]] = r
    labels = list(by)
    stock = labels[0]
    ok = [rate for rate, r in by[stock].items() if r["slo_attainment"] >= target]
    ref = max(ok) if ok else None
    summary: dict[str, Any] = {
        "target": target,
        "reference_arm": stock,
        "stock_highest_rate_meeting_target": ref,
        "arms": {},
    }
    for label in labels:
        row: dict[str, Any] = {"capacity": merged["capacity"].get(label), "sched": merged["sched_overhead"].get(label)}
        row["preemptions_total"] = sum(r["preemptions"] for r in by[label].values())
        if ref is not None and ref in by[label]:
            r, s = by[label][ref], by[stock][ref]
            row["at_reference_rate"] = {
                "goodput_rps": r["goodput_rps"],
                "goodput_ratio_vs_stock": r["goodput_rps"] / s["goodput_rps"] if s["goodput_rps"] else None,
                "slo_attainment": r["slo_attainment"],
                "preemptions": r["preemptions"],
            }
        row["per_rate"] = {
            rate: {
                "goodput_rps": r["goodput_rps"],
                "slo_attainment": r["slo_attainment"],
                "p99_ttft_s": r["p99_ttft_s"],
                "p99_tbt_s": r["p99_tbt_s"],
                "preemptions": r["preemptions"],
                "ratio_goodput_vs_stock": r["goodput_rps"] / by[stock][rate]["goodput_rps"]
                if rate in by[stock] and by[stock][rate]["goodput_rps"]
                else None,
            }
            for rate, r in sorted(by[label].items())
        }
        summary["arms"][label] = row
    caps = {k: v for k, v in merged["capacity"].items()}
    if caps.get(stock):
        summary["capacity_ratio_vs_stock"] = {k: (v / caps[stock] if v else None) for k, v in caps.items()}
    return summary


def plot(out: Path, merged: dict[str, Any]) -> None:
    from ecosched.sim.metrics import RunMetrics
    from ecosched.sim.plots import plot_all

    fields = set(RunMetrics.__dataclass_fields__)
    runs = [RunMetrics(**{k: v for k, v in r.items() if k in fields}) for r in merged["runs"]]
    plot_all(
        out,
        runs,
        capacity=merged["capacity"],
        target=merged["summary"].get("target", 0.9),
        timelines={},
        title="tiny Llama on vLLM 0.32 (CPU), KV-bound: stock vs ecosched",
    )


if __name__ == "__main__":
    raise SystemExit(main())
