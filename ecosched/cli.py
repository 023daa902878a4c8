"""The `ecosched` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

import yaml

from ecosched.config import EcoschedConfig, load_config
from ecosched.errors import EcoschedError
from ecosched.factory import PREDICTORS, build_scheduler
from ecosched.policies import POLICIES
from ecosched.scenario import demo_config, drive, summarize, synthetic_requests


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result: int = args.func(args)
        return result
    except EcoschedError as exc:
        print(f"ecosched: error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ecosched", description="EcoServe-style scheduling for LLM serving.")
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run a built-in scenario through every policy and compare them")
    demo.add_argument(
        "--policies",
        default="vllm,sarathi,sglang,sjf,ecoserve,oracle",
        help="comma-separated policies to compare (default: %(default)s)",
    )
    demo.add_argument("--num-requests", type=int, default=300, help="requests in the scenario (default: %(default)s)")
    demo.add_argument("--rate", type=float, default=10.0, help="arrival rate, requests/s (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="random seed of the scenario (default: %(default)s)")
    demo.add_argument("--json", action="store_true", help="print the summaries as JSON")
    demo.add_argument("--config", help="YAML config replacing the scenario's built-in engine settings")
    demo.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (repeatable)"
    )
    demo.set_defaults(func=_demo)

    pol = sub.add_parser("policies", help="list the registered scheduling policies")
    pol.set_defaults(func=lambda a: _list(POLICIES))
    pred = sub.add_parser("predictors", help="list the registered response-length predictors")
    pred.set_defaults(func=lambda a: _list(PREDICTORS))

    cfg = sub.add_parser("config", help="show the configuration (defaults, a file, and overrides)")
    cfg.add_argument("--config", help="YAML file (default: built-in defaults)")
    cfg.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field, e.g. --set scheduler.max_num_seqs=128 (repeatable)",
    )
    cfg.add_argument("--schema", action="store_true", help="print every field with its help text instead")
    cfg.set_defaults(func=_config)
    _add_predictor(sub)
    return p


def _add_predictor(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The `predictor` command lives in ecosched_predictor_onnx (its heavy imports are lazy)."""
    try:
        from ecosched_predictor_onnx.cli import add_parser
    except ImportError as exc:
        hint = f"the predictor package is not importable ({exc}): pip install -e '.[onnx]'"
        p = sub.add_parser("predictor", help="the ONNX response-length predictor (not installed)")
        p.set_defaults(func=lambda a: _fail(hint))
        return
    add_parser(sub)


def _fail(message: str) -> int:
    raise EcoschedError(message)


def _list(registry: object) -> int:
    for entry in registry:  # type: ignore[attr-defined]
        print(f"{entry.name:16s} {entry.description}")
    return 0


def _config(args: argparse.Namespace) -> int:
    if args.schema:
        for path, help_text in _schema_lines(EcoschedConfig, ""):
            print(f"{path:48s} {help_text}")
        return 0
    config = load_config(args.config, args.set)
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def _schema_lines(model: type, prefix: str) -> list[tuple[str, str]]:
    from pydantic import BaseModel
    from pydantic_core import to_jsonable_python

    lines = []
    for name, field in model.model_fields.items():  # type: ignore[attr-defined]
        path = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            lines += _schema_lines(ann, path + ".")
        else:
            default = to_jsonable_python(field.get_default(call_default_factory=True))
            lines.append((path, f"{field.description or ''} [default: {json.dumps(default)}]"))
    return lines


def _demo(args: argparse.Namespace) -> int:
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    configs = {name: demo_config(name, args.config, args.set) for name in policies}  # fail before running
    for name in policies:
        POLICIES.get(name)
    requests = synthetic_requests(args.num_requests, args.rate, args.seed)
    summaries = []
    for name, config in configs.items():
        result = drive(build_scheduler(config), requests)
        summaries.append(summarize(name, config, result))
    if args.json:
        print(json.dumps([s.__dict__ for s in summaries], indent=2))
        return 0
    print(
        f"built-in scenario: {args.num_requests} requests, Poisson {args.rate}/s, "
        f"{configs[policies[0]].cache.num_gpu_blocks} KV blocks; toy linear latency model"
    )
    cols = ("SLO met", "TTFT mean", "TTFT p99", "JCT mean", "JCT p99", "preempt", "tok/s")
    head = f"{'policy':10s} " + " ".join(f"{c:>9s}" for c in cols)
    print(head)
    for s in summaries:
        print(
            f"{s.policy:10s} {s.slo_attainment:9.1%} {s.mean_ttft_s:9.2f} {s.p99_ttft_s:9.2f} "
            f"{s.mean_jct_s:9.2f} {s.p99_jct_s:9.2f} {s.num_preemptions:9d} {s.throughput_tokens_s:9.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
