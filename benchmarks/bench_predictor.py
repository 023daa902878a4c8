"""Speed of the ONNX length predictor: text in, prediction out (featurisation included).

- single: one prompt per call to `OnnxPredictor.predict`, over real ShareGPT test-split prompts;
  p50 and p99 latency per repeat.
- batch: batches of `--batch` prompts per call; prompts per second per repeat.
Each repeat walks the same prompts; the median and the minimum over repeats are reported (the
machine is noisy), with the time of a plain Python loop of 1M additions per repeat as a gauge of how
loaded the machine was. Writes JSON to `--out`.

    python benchmarks/bench_predictor.py --prompts 2000 --repeats 7 --out results/bench_predictor.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from ecosched_predictor_onnx import data
from ecosched_predictor_onnx.runtime import OnnxPredictor, load_model

from ecosched.core.request import Request


def test_prompts(model_meta: dict[str, object], n: int, seed: int) -> list[str]:
    """`n` prompts drawn (seeded) from the test split defined by the model's training config."""
    tc = model_meta["train_config"]
    assert isinstance(tc, dict)
    splits = data.split_examples(
        data.load_sharegpt(), tc["seed"], (tc["validation_fraction"], tc["test_fraction"]), tc["max_history_turns"]
    )
    test = [e.prompt for e in splits["test"]]
    rng = np.random.default_rng(seed)
    return [test[i] for i in rng.choice(len(test), size=min(n, len(test)), replace=False)]


def time_single(predictor: OnnxPredictor, reqs: list[Request]) -> tuple[float, float]:
    """p50 and p99 seconds of one-prompt calls."""
    times = []
    for r in reqs:
        t0 = time.perf_counter()
        predictor.predict([r])
        times.append(time.perf_counter() - t0)
    p50, p99 = np.percentile(times, [50, 99])
    return float(p50), float(p99)


def time_batches(predictor: OnnxPredictor, reqs: list[Request], batch: int) -> float:
    """Prompts per second over calls of `batch` prompts."""
    t0 = time.perf_counter()
    for s in range(0, len(reqs) - batch + 1, batch):
        predictor.predict(reqs[s : s + batch])
    done = (len(reqs) // batch) * batch
    return done / (time.perf_counter() - t0)


def loop_seconds(n: int = 1_000_000) -> float:
    """Seconds of a plain Python loop of n additions: how fast (or how loaded) the machine is right now."""
    t0 = time.perf_counter()
    x = 0
    for i in range(n):
        x += i
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory (default: the shipped model)")
    ap.add_argument("--prompts", type=int, default=2000, help="test-split prompts per repeat (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=7, help="repeats (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=64, help="batch size of the throughput run (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the prompt sample (default: %(default)s)")
    ap.add_argument("--out", default="results/bench_predictor.json", help="JSON output (default: %(default)s)")
    args = ap.parse_args()

    model = load_model(args.model, threads=args.threads)
    predictor = OnnxPredictor(model, fallback_tokens=256, warning_interval_s=60.0)
    prompts = test_prompts(model.meta, args.prompts, args.seed)
    reqs = [Request(f"b{i}", 1, 4096, 0.0, prompt=p) for i, p in enumerate(prompts)]
    time_single(predictor, reqs[:200])  # warm-up
    singles, rates, loops = [], [], []
    for _ in range(args.repeats):
        loops.append(loop_seconds())
        singles.append(time_single(predictor, reqs))
        rates.append(time_batches(predictor, reqs, args.batch))
    p50s, p99s = [s[0] * 1e3 for s in singles], [s[1] * 1e3 for s in singles]
    result = {
        "machine": {"processor": platform.processor() or platform.machine(), "python": platform.python_version()},
        "providers": model.providers,
        "threads": args.threads,
        "prompts": len(prompts),
        "mean_prompt_chars": float(np.mean([len(p) for p in prompts])),
        "repeats": args.repeats,
        "single_p50_ms": {"median": statistics.median(p50s), "min": min(p50s)},
        "single_p99_ms": {"median": statistics.median(p99s), "min": min(p99s)},
        f"batch{args.batch}_prompts_per_s": {"median": statistics.median(rates), "max": max(rates)},
        "failures": predictor.num_failures,
        "python_loop_1m_s": {"median": statistics.median(loops), "min": min(loops)},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
