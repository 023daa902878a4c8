"""Stock engine vs the same engine with ecosched in charge, on the real CPU engine, under KV pressure, in one run.

For each arm (the engine's own scheduler, timed but unchanged; ecosched `ecoserve`; any other policy
named with --arms) the script starts `ecosched serve --backend vllm|sglang` with the same engine
arguments (the tiny local model, a KV cache sized so the workload contends for it), replays the Azure
conversation trace with lengths scaled to the model's context at each rate of the sweep with
`ecosched bench`, and stops the server. Arms run one after another on the same machine, one server
at a time. Each run also records the engine's median decode-only step time in its window
(`decode_step_ms_p50`): a check that the machine itself was not slowed down. Everything lands in one
results.json (the `ecosched simulate` schema, one label per arm, plus `summary`: capacities, goodput
ratios at the highest rate where the stock engine still meets the attainment target, preemptions, and
scheduling overhead per call) with the usual plots.

    python benchmarks/bench_engine.py --backend vllm --out benchmarks/results/vllm-cpu-tiny
    python benchmarks/bench_engine.py --backend sglang --out benchmarks/results/sglang-cpu-tiny

Takes about arms x (60 s start + the runs); the defaults take about 30 minutes here.
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

from benchmarks.fit_engine_latency import load_steps  # noqa: E402
from integration.server import free_port, serve_command, start_server  # noqa: E402

# The engine, identical for every arm, per backend. The KV cache is small (--kv-tokens) so that
# admission, reservation and preemption decide the outcome: three or four requests of the scaled
# Azure mix at once.
BACKENDS: dict[str, dict[str, Any]] = {
    "vllm": {
        # 40 blocks of 32 tokens (1,248 usable: block 0 is vLLM's null block)
        "engine_args": ["--max-model-len", "1024", "--block-size", "32", "--max-num-seqs", "32",
                        "--max-num-batched-tokens", "512"],
        "kv_args": lambda tokens: ["--num-gpu-blocks-override", str(tokens // 32)],
        "kv_tokens": 1280,
        "arms": {
            "vllm (stock)": ["--no-ecosched"],
            "ecoserve": ["--policy", "ecoserve"],  # the config's predictor: the noisy oracle
            "ecoserve (oracle)": ["--policy", "ecoserve", "--predictor", "oracle"],  # exact lengths: the upper bound
        },
        "config": REPO / "configs" / "vllm-cpu-tiny.yaml",
        "bench_args": [],
        "title": "tiny Llama on vLLM 0.32 (CPU), KV-bound: stock vs ecosched",
    },
    "sglang": {
        # SGLang's defaults (overlap scheduling, radix cache) plus mixed chunks for both arms (ecosched
        # serve adds --enable-mixed-chunk); page size 1
        "engine_args": ["--context-length", "1024", "--max-running-requests", "32", "--chunked-prefill-size", "512"],
        "kv_args": lambda tokens: ["--max-total-tokens", str(tokens)],
        "kv_tokens": 1248,
        "arms": {
            "sglang (stock)": ["--no-ecosched"],
            "ecoserve": ["--policy", "ecoserve"],
            "ecoserve (oracle)": ["--policy", "ecoserve", "--predictor", "oracle"],
        },
        "config": REPO / "configs" / "sglang-cpu-tiny.yaml",
        "bench_args": ["--xargs-field", "custom_params"],
        "title": "tiny Llama on SGLang 0.5.23 (CPU), KV-bound: stock vs ecosched",
    },
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=list(BACKENDS), default="vllm", help="engine to compare on")
    p.add_argument("--model", help="model directory (default: build the tiny model into OUT/tiny-llama)")
    p.add_argument("--trace", default=str(REPO.parent / "shared" / "data" / "traces" / "azure_llm_2023_conv.csv"))
    p.add_argument("--rates", default="1,2,3,4,6,8", help="arrival rates (req/s) of the sweep")
    p.add_argument("--num-requests", type=int, default=150, help="requests per rate")
    p.add_argument("--length-scale", type=float, default=0.25, help="Azure lengths x this (context 1024)")
    p.add_argument("--kv-tokens", type=int, help="KV cache size in tokens (default: the backend's, about 1,250)")
    p.add_argument("--config", help="ecosched config (SLOs, predictor; default: configs/<backend>-cpu-tiny.yaml)")
    p.add_argument("--arms", help="arms to run, comma-separated (default: the backend's stock, ecoserve, oracle; "
                   "or any policy name)")
    p.add_argument(
        "--force-length",
        choices=("max-tokens", "stop"),
        default="max-tokens",
        help="how `ecosched bench` forces lengths (stop: without showing them to the engine; see its --help)",
    )
    p.add_argument("--target", type=float, default=0.9)
    p.add_argument("--max-duration-s", type=float, default=300.0, help="cut one rate's run off after this long")
    p.add_argument("--out", help="output directory (default: results/<backend>-cpu-tiny)")
    args = p.parse_args()
    backend = BACKENDS[args.backend]
    args.config = args.config or str(backend["config"])
    args.out = args.out or str(REPO / "results" / f"{args.backend}-cpu-tiny")
    arms: dict[str, list[str]] = backend["arms"]
    args.arms = args.arms or ",".join(arms)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = Path(args.model) if args.model else build_model(out / "tiny-llama")
    args.model_dir = str(model)
    labels = [label.strip() for label in args.arms.split(",")]
    engine_args = [*backend["engine_args"], *backend["kv_args"](args.kv_tokens or backend["kv_tokens"])]
    # One server at a time: with three vLLM servers up (two idle) on this 2-core machine, results
    # stopped being monotonic in the rate, while one server at a time gives smooth curves. Arms run
    # one after another; each arm's server is started fresh.
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    stats: dict[str, Path] = {}
    setup = None
    for label in labels:
        server, stats[label] = start_arm(label, arm_mode(arms, label), model, args, out, engine_args)
        try:
            for rate in (float(r) for r in args.rates.split(",")):
                res = bench_one(label, (server, stats[label]), rate, args, out)
                setup = setup or res["setup"]
                runs[label] += res["runs"]
        finally:
            server.stop()
    merged: dict[str, Any] = {
        "setup": {
            **(setup or {}),
            "backend": args.backend,
            "arms": {label: arm_mode(arms, label) for label in labels},
            "engine_args": engine_args,
        },
        "runs": [r for label in labels for r in runs[label]],
        "capacity": {label: capacity(runs[label], args.target) for label in labels},
        "sched_overhead": {label: sched_overhead(stats[label]) for label in labels},
    }
    merged["summary"] = summarize(merged, args.target)
    (out / "results.json").write_text(json.dumps(merged, indent=1) + "\n")
    plot(out, merged, backend["title"])
    print(json.dumps(merged["summary"], indent=1))
    return 0


def build_model(directory: Path) -> Path:
    subprocess.run([sys.executable, str(REPO / "scripts" / "build_tiny_model.py"), str(directory)], check=True)
    return directory


def arm_mode(arms: dict[str, list[str]], label: str) -> list[str]:
    return arms.get(label, ["--policy", label])


def slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label).strip("-").replace("--", "-")


def start_arm(
    label: str, arm: list[str], model: Path, args: argparse.Namespace, out: Path, engine_args: list[str]
) -> Any:
    stats = out / f"{slug(label)}.sched.bin"
    port = free_port()
    mode = [*arm, "--stats", str(stats)]
    if "--no-ecosched" not in mode:
        mode += ["--config", args.config]
    cmd = serve_command(model, port, [*mode, "--", *engine_args], backend=args.backend)
    print(f"[{label}] starting: {' '.join(cmd)}", file=sys.stderr, flush=True)
    return start_server(cmd, port, out / f"{slug(label)}.server.log"), stats


def bench_one(label: str, arm: Any, rate: float, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    server, stats = arm
    arm_out = out / slug(label) / f"rate-{rate:g}"
    bench = [
        sys.executable, "-m", "ecosched.cli", "bench", "--url", server.url,
        "--trace", args.trace, "--rate", str(rate), "--num-requests", str(args.num_requests),
        "--length-scale", str(args.length_scale), "--config", args.config, "--label", label,
        "--sched-stats", str(stats), "--max-duration-s", str(args.max_duration_s),
        "--target", str(args.target), "--out", str(arm_out), "--no-plots", "--quiet",
        *BACKENDS[args.backend]["bench_args"], *force_length_args(args),
    ]  # fmt: skip
    t0 = time.monotonic()
    subprocess.run(bench, check=True)
    t1 = time.monotonic()
    print(f"[{label}] rate {rate:g} took {t1 - t0:.0f} s", file=sys.stderr, flush=True)
    res: dict[str, Any] = json.loads((arm_out / "results.json").read_text())
    for run in res["runs"]:
        run["decode_step_ms_p50"] = decode_step_ms(stats, t0, t1)
    return res


def force_length_args(args: argparse.Namespace) -> list[str]:
    if args.force_length != "stop":
        return []
    vocab = json.loads((Path(args.model_dir) / "config.json").read_text())["vocab_size"]
    return ["--force-length", "stop", "--vocab-size", str(vocab)]


def decode_step_ms(stats: Path, t0: float, t1: float, max_gap_s: float = 0.5) -> float | None:
    """Median time of decode-only steps (at most 4 tokens) between monotonic times t0 and t1: the
    engine's own speed, which no policy changes much. This shared machine sometimes slows down 10x
    for tens of seconds; a run whose figure is far above the others' ran on a disturbed machine."""
    import numpy as np

    path = Path(str(stats) + ".steps")
    if not path.exists():
        return None
    steps = load_steps(str(path))
    gap = np.diff(steps[:, 0])
    start, tokens = steps[:-1, 0], steps[:-1, 2]
    keep = (start >= t0) & (start < t1) & (gap < max_gap_s) & (tokens > 0) & (tokens <= 4)
    return float(np.median(gap[keep]) * 1e3) if keep.any() else None


def capacity(runs: list[dict[str, Any]], target: float) -> float | None:
    """The highest swept rate meeting the attainment target (None: none does)."""
    ok = [r["rate"] for r in runs if r["slo_attainment"] >= target]
    return max(ok) if ok else None


def sched_overhead(stats: Path) -> dict[str, float]:
    """Wall time per scheduling call over the whole arm (every rate), from the server's stats file; the
    core's decision time per step (`PATH.policy`) and the ledger check's (`PATH.check`) where recorded."""
    import numpy as np

    d = np.fromfile(stats, dtype="<f8") if stats.exists() else np.zeros(0)
    busy = d  # every call, idle ones included: the engine only steps when it has requests
    if not busy.size:
        return {"calls": 0}
    out = {
        "calls": int(busy.size),
        "mean_us": float(busy.mean() * 1e6),
        "p50_us": float(np.quantile(busy, 0.5) * 1e6),
        "p99_us": float(np.quantile(busy, 0.99) * 1e6),
    }
    check_path = Path(str(stats) + ".check")
    checks = np.fromfile(check_path, dtype="<f8") if check_path.exists() else np.zeros(0)
    if checks.size:
        out["check_mean_us"] = float(checks.mean() * 1e6)
        out["check_p50_us"] = float(np.quantile(checks, 0.5) * 1e6)
    policy_path = Path(str(stats) + ".policy")
    policy = np.fromfile(policy_path, dtype="<f8") if policy_path.exists() else np.zeros(0)
    if policy.size:
        out["policy_mean_us"] = float(policy.mean() * 1e6)
        out["policy_p50_us"] = float(np.quantile(policy, 0.5) * 1e6)
        out["policy_p99_us"] = float(np.quantile(policy, 0.99) * 1e6)
    return out


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
                "decode_step_ms_p50": r.get("decode_step_ms_p50"),
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


def plot(out: Path, merged: dict[str, Any], title: str) -> None:
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
        title=title,
    )


if __name__ == "__main__":
    raise SystemExit(main())
