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
from ecosched.factory import PREDICTORS
from ecosched.policies import POLICIES


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

    from ecosched.sim.cli import add_demo_parser, add_profile_parser, add_simulate_parser

    add_demo_parser(sub)
    add_simulate_parser(sub)
    add_profile_parser(sub)
    from ecosched.serving.bench_cli import add_bench_parser
    from ecosched.serving.serve_cli import add_serve_parser

    add_serve_parser(sub)
    add_bench_parser(sub)

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
    _add_standin(sub)
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


def _add_standin(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`standin tgi-shard ...`: a protocol-checking stand-in engine; it parses its own arguments."""
    p = sub.add_parser("standin", help="run a protocol-checking stand-in for an engine (tgi-shard)")
    p.add_argument("engine", choices=["tgi-shard"], help="tgi-shard: TGI's shards over gRPC generate.v3")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its own arguments (ecosched standin tgi-shard --help)")
    p.set_defaults(func=_standin)


def _standin(args: argparse.Namespace) -> int:
    from ecosched_adapters.tgi.standin.shard import main as tgi_shard_main

    return tgi_shard_main(list(args.args))


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


if __name__ == "__main__":
    sys.exit(main())
