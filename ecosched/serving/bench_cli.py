"""`ecosched bench`: replay a workload against a live OpenAI-compatible (or TGI) server and write the same
results.json, results.csv and plots as `ecosched simulate`, so real and simulated runs compare side by
side. The HTTP client (aiohttp) is imported only when the command runs."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from pathlib import Path
from typing import Any

from ecosched.errors import ConfigError
from ecosched.sim.cli import add_workload_args

FORCE_LENGTHS = {"openai": ("max-tokens", "stop"), "tgi": ("max-tokens", "marker")}  # by --api

DESCRIPTION = """\
Replay a trace (or a synthetic workload) against an OpenAI-compatible endpoint, open loop: each
request is sent at its arrival time (re-timed to each --rate) whatever the others are doing, as a
streaming POST /v1/completions with a prompt of exactly the trace's number of token ids and the
trace's output length forced with max_tokens and ignore_eos. TTFT and every token's arrival are timed
from the client. Writes DIR/results.json and DIR/results.csv (the schema of `ecosched simulate`),
DIR/requests.jsonl (one line per request) and PNG plots.

Lengths: --length-scale F multiplies prompt and output lengths (to fit Azure-like lengths into a small
model's context), then clamps them to 1 <= prompt, 1 <= output <= --max-output-tokens and
prompt + output <= --max-model-len (default: the max_model_len that GET /v1/models reports, as vLLM
does). Requests whose scaled prompt leaves no room for an output token are skipped and counted.

ecosched's in-engine scheduler receives per request vllm_xargs = {ecosched_slo_class,
ecosched_true_output_tokens, ecosched_max_tokens} (SGLang: the same in custom_params, with
--xargs-field custom_params). The engine is forced to stop at the trace's length
by max_tokens, but the scheduler is told the limit a real client would have declared
(--declared-max-tokens context: max_model_len - prompt; exact: the trace's length), so max_tokens is
not a free length oracle. --no-xargs sends a plain OpenAI body (no vllm_xargs, no
continuous_usage_stats) for endpoints that reject unknown fields.

--api tgi speaks TGI's API instead (ecosched's TGI router, or TGI itself): each request is a POST
/generate_stream with a text prompt, {inputs, parameters: {max_new_tokens, details: true,
ecosched_slo_class, ecosched_true_output_tokens}}; the model and its context come from GET /info
(max_total_tokens; prompts are clamped to max_input_tokens). Lengths are forced with --force-length
max-tokens (max_new_tokens = the length: the router sees it) or marker (the prompt text starts with
the stand-in shard's `[[len:P,eos:K]]` and is filled to exactly P one-byte tokens, max_new_tokens is
the declared limit, and only the "model", ecosched's stand-in shard, knows where the output ends).
Prompts shorter than their marker are lengthened to hold it (counted in setup.num_prompts_lengthened).
ecosched's TGI router reports pauses, resumes, preemptions and forward times on /metrics; each run's
growth of them is in setup.bench[].server.

Server-side columns come from GET /metrics (vLLM: preemptions, KV usage sampled every 0.5 s) and from
--sched-stats; what is missing is NaN and explained in setup.notes of results.json. Capacity is the
highest swept rate whose SLO attainment (TTFT and TBT, targets from --config/--set) is >= --target.
"""


def add_bench_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "bench",
        help="load-test a live OpenAI-compatible or TGI server with a trace; results comparable with `simulate`",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000 (a trailing /v1 is ok)")
    p.add_argument(
        "--api",
        choices=("openai", "tgi"),
        default="openai",
        help="openai: POST /v1/completions with token-id prompts (default); tgi: POST /generate_stream with "
        "text prompts",
    )
    p.add_argument("--model", help="model name to request (default: the first of GET /v1/models, tgi: GET /info)")
    add_workload_args(p, num_requests_help="requests per run (default: %(default)s)", num_requests_default=200)
    p.add_argument("--rate", type=float, help="arrival rate (requests/s) to re-time the workload to")
    p.add_argument("--rates", help="comma-separated rates: one run each, same workload (a sweep)")
    p.add_argument(
        "--max-model-len",
        type=int,
        help="context length (default: from GET /v1/models; tgi: max_total_tokens of GET /info)",
    )
    p.add_argument(
        "--length-scale", type=float, default=1.0, help="multiply prompt and output lengths (default: %(default)s)"
    )
    p.add_argument(
        "--vocab-range",
        default="10,1000",
        metavar="LO,HI",
        help="prompt token ids drawn from [LO, HI] (default: %(default)s)",
    )
    p.add_argument(
        "--declared-max-tokens",
        choices=("context", "exact"),
        default="context",
        help="ecosched_max_tokens told to the scheduler: max_model_len - prompt, or the forced length "
        "(default: context)",
    )
    p.add_argument(
        "--force-length",
        choices=("max-tokens", "stop", "marker"),
        default="max-tokens",
        help="how each request's length is forced: max-tokens (max_tokens = the length, ignore_eos; the "
        "engine sees the length) or stop (max_tokens = the declared limit, min_tokens = length - 1 and "
        "every other token id a stop id; needs --vocab-size; the engine does not see the length); --api tgi: "
        "max-tokens (max_new_tokens = the length) or marker (the stand-in shard's [[len:P,eos:K]] prompt "
        "marker, max_new_tokens = the declared limit; the router does not see the length)",
    )
    p.add_argument("--vocab-size", type=int, help="the model's vocabulary size (for --force-length stop)")
    p.add_argument("--no-xargs", action="store_true", help="plain OpenAI body: no vllm_xargs, no continuous usage")
    p.add_argument(
        "--xargs-field",
        default="vllm_xargs",
        help="body field carrying the ecosched_* per-request fields: vllm_xargs (vLLM, default) or "
        "custom_params (SGLang)",
    )
    p.add_argument(
        "--max-duration-s", type=float, default=600.0, help="cut a run off after this long (default: %(default)s)"
    )
    p.add_argument("--sched-stats", metavar="PATH", help="float64 schedule() durations the server appends to")
    p.add_argument("--target", type=float, default=0.9, help="SLO attainment that defines capacity (default: 0.9)")
    p.add_argument("--label", default="bench", help="the 'policy' column of the results (default: %(default)s)")
    p.add_argument("--config", help="YAML config whose slo section sets the targets (default: built-in)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--seed", type=int, default=0, help="seed of the workload and prompt ids (default: 0)")
    p.add_argument("--out", default="results/bench", help="output directory (default: %(default)s)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--json", action="store_true", help="print results.json to stdout instead of the table")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=bench_command)


def bench_command(args: argparse.Namespace) -> int:
    from ecosched.config import load_config
    from ecosched.serving.bench import FREE_IDS, stop_token_ids
    from ecosched.serving.bench_runner import BenchPlan, run_bench
    from ecosched.sim.cli import _rates, print_table, write_results

    if args.rate is not None and args.rates:
        raise ConfigError("bench: give --rate or --rates, not both")
    rates = _rates(args.rates) if args.rates else _rates(str(args.rate)) if args.rate is not None else []
    _check_args(args)
    config = load_config(args.config, args.set)
    stop_ids = None
    if args.force_length not in FORCE_LENGTHS[args.api]:
        raise ConfigError(
            f"--force-length {args.force_length} does not work with --api {args.api} (it takes "
            f"{' or '.join(FORCE_LENGTHS[args.api])})"
        )
    if args.force_length == "stop":
        if not args.vocab_size or args.vocab_size <= FREE_IDS:
            raise ConfigError(f"--force-length stop needs --vocab-size N (N > {FREE_IDS}: the model's vocabulary)")
        stop_ids = stop_token_ids(args.vocab_size)
    plan = BenchPlan(args, config, rates, _vocab(args.vocab_range), stop_ids)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(run_bench(plan))
    capacity = _capacity(result.runs, args.label, args.target)
    paths = write_results(out, result.runs, capacity, result.setup)
    jsonl = out / "requests.jsonl"
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in result.request_lines))
    paths.append(jsonl)
    if not args.no_plots:
        from ecosched.sim.plots import plot_all

        title = f"{result.setup['workload']} against {result.setup['model']} at {args.url}"
        paths += plot_all(
            out, result.runs, capacity=capacity, target=args.target, timelines=result.timelines, title=title
        )
    if args.json:
        print(paths[0].read_text(), end="")
    else:
        print_table(result.runs, capacity, args.target)
    for path in paths:
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _check_args(args: argparse.Namespace) -> None:
    checks: list[tuple[str, Any, bool]] = [
        ("--num-requests", args.num_requests, args.num_requests >= 1),
        ("--length-scale", args.length_scale, args.length_scale > 0 and math.isfinite(args.length_scale)),
        ("--max-duration-s", args.max_duration_s, args.max_duration_s > 0),
        ("--target", args.target, 0 < args.target <= 1),
        ("--max-output-tokens", args.max_output_tokens, args.max_output_tokens >= 1),
    ]
    if args.max_model_len is not None:
        checks.append(("--max-model-len", args.max_model_len, args.max_model_len >= 2))
    for flag, value, ok in checks:
        if not ok:
            raise ConfigError(f"{flag}: out of range ({value})")


def _vocab(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"--vocab-range: expected LO,HI integers, got {text!r}") from None
    if not 0 <= lo <= hi:
        raise ConfigError(f"--vocab-range: expected 0 <= LO <= HI, got {text!r}")
    return lo, hi


def _capacity(runs: list[Any], label: str, target: float) -> dict[str, float]:
    """The highest swept rate meeting `target`; empty when none does."""
    met = [m.rate for m in runs if m.slo_attainment >= target]
    return {label: max(met)} if met else {}
