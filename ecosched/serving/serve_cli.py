"""`ecosched serve --backend vllm|sglang|tgi`: start an engine's server with ecosched in charge.

The command builds the server's command line and environment, then replaces itself with the server
process (so signals and exit codes are the server's own).

vLLM:

- `--scheduler-cls ecosched_adapters.vllm.scheduler.EcoschedScheduler`, with the resolved ecosched
  configuration in `ECOSCHED_CONFIG_JSON` (see `ecosched_adapters/settings.py`);
- `--no-ecosched` (or `--policy vllm`): stock vLLM, for comparison. With `--stats`, its scheduler is
  `TimedAsyncScheduler`, vLLM's own scheduler timed the same way as ecosched's;
- 127.0.0.1 unless `--host` says otherwise; `--no-enable-prefix-caching` (the ecosched scheduler does
  not use prefix-cache hits; stock vLLM gets the same flag so the two compare on equal terms);
- on the CPU build of vLLM: `VLLM_TARGET_DEVICE=cpu`, `VLLM_CPU_KVCACHE_SPACE` (GiB, required by vLLM
  on CPU; `--kv-cache-gib`) and `--enforce-eager` (starts about 25 s faster).
Arguments after `--` go to vLLM unchanged (for example `--max-model-len 512 --num-gpu-blocks-override 64`).

SGLang (`python -m sglang.launch_server`):
- the ecosched plugin (entry point `sglang.srt.plugins`, see `ecosched_adapters/sglang/`) is switched
  on with `ECOSCHED_SGLANG_MODE=ecosched` and the configuration in `ECOSCHED_CONFIG_JSON`;
  `SGLANG_PLUGINS=ecosched` keeps other installed SGLang plugins out;
- `--no-ecosched` (or `--policy sglang`): stock SGLang; with `--stats`, its scheduler is timed the
  same way (`ECOSCHED_SGLANG_MODE=timed`), otherwise the plugin stays inert;
- `--enable-mixed-chunk` for both (decodes ride along with prefill chunks, as in the core's step
  model; `--no-mixed-chunk` leaves it off);
- without a GPU: SGLang's CPU recipe (torch-native attention and sampling, no CUDA graphs, no grammar
  backend, `SGLANG_USE_CPU_ENGINE=0`) and a KV cap (`--max-total-tokens`, default 65536 tokens;
  uncapped, SGLang takes most of the host's memory).

TGI (ecosched's `text-generation-router`, `ecosched_adapters/tgi/launcher_cli.py`, run as
`python -m ecosched_adapters.tgi.launcher_cli` so that PATH does not matter):
- the shards are started separately (TGI's `text-generation-server serve ... --uds-path BASE`, or
  `ecosched standin tgi-shard --uds-path BASE`); `--shard-uds-path BASE` is the launcher's flag, and
  the router connects to rank 0 at `BASE-0`;
- ecosched's settings travel as the router's `--ecosched-*` flags; `--model` (optional) is its
  `--tokenizer-name`; /metrics is served on `--port` only (`--prometheus-port` = `--port`);
- there is no stock router to fall back to: `--no-ecosched` (or `--policy tgi`) runs the `tgi-fifo`
  policy, ecosched's reproduction of TGI's batching, so the comparison is one flag apart;
- the command runs in place of `ecosched serve`, like the others; TGI's launcher can run the same
  program unchanged (see the router's `--help`).
Arguments after `--` go to the router unchanged (for example `--max-batch-prefill-tokens 2048`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from ecosched.config import load_config
from ecosched.errors import ConfigError

VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
SGLANG_SERVER_MODULE = "sglang.launch_server"
TGI_ROUTER_MODULE = "ecosched_adapters.tgi.launcher_cli"
TGI_DEFAULT_SHARD_UDS_PATH = "/tmp/text-generation-server"  # TGI's launcher default
TGI_STOCK_POLICY = "tgi-fifo"  # TGI's router is replaced, so its stock behaviour is this core policy
# per backend, the --policy names that mean "the engine's own scheduler", not the core's baseline
STOCK_POLICIES = {"vllm": ("vllm",), "sglang": ("sglang",), "tgi": ("tgi",)}
BACKENDS = tuple(STOCK_POLICIES)
# SGLang on a machine without a GPU (../shared/ENGINES.md)
SGLANG_CPU_OPTIONS = {
    "--device": "cpu",
    "--attention-backend": "torch_native",
    "--sampling-backend": "pytorch",
    "--grammar-backend": "none",
}
SGLANG_CPU_FLAGS = ("--disable-cuda-graph",)


def add_serve_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "serve",
        help="start an engine's OpenAI-compatible server with the ecosched scheduler in charge",
        description=(
            "Start an OpenAI-compatible server whose scheduling is done by the ecosched core. "
            "Backends: vllm (the core runs inside vLLM's engine as its scheduler class), sglang (inside "
            "SGLang's scheduler process, through SGLang's plugin entry points), tgi (ecosched's "
            "text-generation-router drives TGI's shards, started separately, over TGI's gRPC protocol). "
            "Arguments after `--` are passed to the engine (tgi: the router) unchanged."
        ),
        epilog=(
            "examples:\n"
            "  ecosched serve --backend vllm --model ./tiny-llama\n"
            "  ecosched serve --backend vllm --model ./tiny-llama --policy sarathi --set slo.default_class=batch\n"
            "  ecosched serve --backend vllm --model ./tiny-llama --no-ecosched -- --max-model-len 512\n"
            "  ecosched serve --backend sglang --model ./tiny-llama --max-total-tokens 4096\n"
            "  ecosched serve --backend tgi --shard-uds-path /tmp/tgi-shard --model ./tiny-llama --no-ecosched\n"
            "per-request fields (completions `vllm_xargs` on vLLM, `custom_params` on SGLang): ecosched_slo_class, "
            "ecosched_max_tokens (the limit the client declares), ecosched_true_output_tokens (oracle predictors only)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--backend", choices=BACKENDS, default="vllm", help="engine to run (default: vllm)")
    p.add_argument(
        "--model",
        help="local model directory (Hugging Face layout); required for vllm and sglang; tgi: the tokenizer "
        "(a directory with tokenizer.json, or the file; default: the router's built-in byte tokenizer)",
    )
    p.add_argument("--policy", help="ecosched policy (see `ecosched policies`; default: the config's, ecoserve)")
    p.add_argument(
        "--no-ecosched",
        action="store_true",
        help="run the engine's own scheduler (stock vLLM or SGLang), for comparison; same as --policy vllm "
        "(vLLM) or --policy sglang (SGLang); tgi: the tgi-fifo policy (TGI's batching), same as --policy tgi",
    )
    p.add_argument("--config", help="ecosched YAML config (default: built-in defaults)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (repeatable)"
    )
    p.add_argument(
        "--predictor",
        help="length predictor (see `ecosched predictors`; default: onnx when onnxruntime is installed, "
        "else the config's)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument(
        "--shard-uds-path",
        default=TGI_DEFAULT_SHARD_UDS_PATH,
        metavar="BASE",
        help="tgi: the shards' socket base path, as given to them with --uds-path; the router connects to "
        "BASE-0 (default: %(default)s)",
    )
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--kv-cache-gib",
        type=float,
        default=1.0,
        help="KV cache size on the CPU build of vLLM (VLLM_CPU_KVCACHE_SPACE, GiB; default 1; an existing "
        "environment value wins)",
    )
    p.add_argument(
        "--max-total-tokens",
        type=int,
        default=65536,
        help="SGLang without a GPU: KV cache size in tokens (default 65536; an engine argument after -- wins)",
    )
    p.add_argument(
        "--no-mixed-chunk",
        action="store_true",
        help="SGLang: leave --enable-mixed-chunk off (decodes then wait for prefill-only steps)",
    )
    p.add_argument(
        "--stats",
        metavar="PATH",
        help="record schedule() wall times and counters here (see `ecosched bench --sched-stats`)",
    )
    p.add_argument(
        "--check-ledger", action="store_true", help="compare the engine's KV with the core's ledger every step"
    )
    p.add_argument("--dry-run", action="store_true", help="print the command and environment instead of starting")
    p.add_argument("engine_args", nargs=argparse.REMAINDER, help="after `--`: arguments for the engine")
    p.set_defaults(func=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    commands = {"vllm": vllm_command, "sglang": sglang_command, "tgi": tgi_command}
    argv, env = commands[args.backend](args)
    if args.dry_run:
        shown = {k: v for k, v in env.items() if k.startswith(("ECOSCHED_", "VLLM_", "SGLANG_"))}
        print(json.dumps({"argv": argv, "env": shown}, indent=1))
        return 0
    print("ecosched serve: " + shlex.join(argv), file=sys.stderr, flush=True)
    os.execve(argv[0], argv, env)
    return 0  # not reached


def vllm_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The vLLM server's argv and environment for `args` (nothing is started)."""
    from ecosched_adapters.settings import CHECK_LEDGER_ENV, STATS_ENV, config_env
    from ecosched_adapters.vllm import SCHEDULER_CLS, TIMED_STOCK_CLS
    from ecosched_adapters.vllm.version import check_vllm_version, installed_vllm_version

    check_vllm_version(installed_vllm_version())
    model, extra = _model_and_extra(args)
    stock = _is_stock(args)
    env = dict(os.environ)
    argv = [
        sys.executable,
        "-m",
        VLLM_SERVER_MODULE,
        "--model",
        str(model),
        "--host",
        args.host,
        "--port",
        str(args.port),
    ]
    if not _has_flag(extra, "--enable-prefix-caching", "--no-enable-prefix-caching"):
        argv.append("--no-enable-prefix-caching")
    if stock:
        if args.stats:
            argv += ["--scheduler-cls", TIMED_STOCK_CLS]
    else:
        env.update(config_env(_config(args)))
        argv += ["--scheduler-cls", SCHEDULER_CLS]
        if args.check_ledger:
            env[CHECK_LEDGER_ENV] = "1"
    if args.stats:
        env[STATS_ENV] = str(Path(args.stats).resolve())
    if _is_cpu_build():
        env.setdefault("VLLM_TARGET_DEVICE", "cpu")
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{args.kv_cache_gib:g}")
        if not _has_flag(extra, "--enforce-eager", "--no-enforce-eager"):
            argv.append("--enforce-eager")
    return argv + extra, env


def sglang_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The SGLang server's argv and environment for `args` (nothing is started)."""
    from ecosched_adapters.settings import CHECK_LEDGER_ENV, STATS_ENV, config_env
    from ecosched_adapters.sglang import MODE_ENV, PLUGIN_NAME
    from ecosched_adapters.sglang.version import check_sglang_version

    check_sglang_version()
    model, extra = _model_and_extra(args)
    env = dict(os.environ)
    env["SGLANG_PLUGINS"] = PLUGIN_NAME
    env.pop(MODE_ENV, None)
    argv = [
        sys.executable,
        "-m",
        SGLANG_SERVER_MODULE,
        "--model-path",
        str(model),
        "--host",
        args.host,
        "--port",
        str(args.port),
    ]
    if _is_stock(args):
        if args.stats:
            env[MODE_ENV] = "timed"
    else:
        env.update(config_env(_config(args)))
        env[MODE_ENV] = "ecosched"
        if args.check_ledger:
            env[CHECK_LEDGER_ENV] = "1"
    if args.stats:
        env[STATS_ENV] = str(Path(args.stats).resolve())
    if not args.no_mixed_chunk and not _has_flag(extra, "--enable-mixed-chunk"):
        argv.append("--enable-mixed-chunk")
    if not _has_cuda():
        env.setdefault("SGLANG_USE_CPU_ENGINE", "0")
        for flag, value in SGLANG_CPU_OPTIONS.items():
            if not _has_flag(extra, flag):
                argv += [flag, value]
        argv += [flag for flag in SGLANG_CPU_FLAGS if not _has_flag(extra, flag)]
        if not _has_flag(extra, "--max-total-tokens"):
            argv += ["--max-total-tokens", str(args.max_total_tokens)]
    return argv + extra, env


def tgi_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """ecosched's TGI router's argv and environment for `args` (nothing is started). The ecosched
    settings are checked here (`load_config`) so that a mistake shows before anything starts."""
    extra = _extra(args)
    policy = TGI_STOCK_POLICY if _is_stock(args) else args.policy
    overrides = _config_overrides(args, None)
    load_config(args.config, overrides + ([f"policy={policy}"] if policy else []))
    argv = [sys.executable, "-m", TGI_ROUTER_MODULE]
    defaults = {
        "--master-shard-uds-path": f"{args.shard_uds_path}-0",
        "--tokenizer-name": args.model,
        "--hostname": args.host,
        "--port": str(args.port),
        "--prometheus-port": str(args.port),
    }
    for flag, value in defaults.items():
        if value is not None and not _has_flag(extra, flag):
            argv += [flag, value]
    if policy:
        argv += ["--ecosched-policy", policy]
    if args.config:
        argv += ["--ecosched-config", str(Path(args.config).resolve())]
    for override in overrides:
        argv += ["--ecosched-set", override]
    if args.stats:
        argv += ["--ecosched-stats", str(Path(args.stats).resolve())]
    if args.check_ledger:
        argv.append("--ecosched-check-ledger")
    return argv + extra, dict(os.environ)


def _model_and_extra(args: argparse.Namespace) -> tuple[Path, list[str]]:
    if args.model is None:
        raise ConfigError(f"--model is required for --backend {args.backend} (a local Hugging Face model directory)")
    model = Path(args.model)
    if not (model / "config.json").is_file():
        raise ConfigError(
            f"--model {args.model}: no config.json there (a local Hugging Face model directory is needed)"
        )
    return model, _extra(args)


def _extra(args: argparse.Namespace) -> list[str]:
    """The arguments after `--`, for the engine."""
    extra = list(args.engine_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    return extra


def _is_stock(args: argparse.Namespace) -> bool:
    return bool(args.no_ecosched or args.policy in STOCK_POLICIES[args.backend])


def _config(args: argparse.Namespace) -> Any:
    """The resolved ecosched configuration for the engine's scheduler."""
    return load_config(args.config, _config_overrides(args, args.policy))


def _config_overrides(args: argparse.Namespace, policy: str | None) -> list[str]:
    """`--set`, then `policy`, then the predictor: `--predictor`, or the default one (see
    `_default_predictor`)."""
    overrides = list(args.set)
    if policy:
        overrides.append(f"policy={policy}")
    predictor = args.predictor or _default_predictor(args.config, overrides)
    if predictor:
        overrides.append(f"predictor.kind={predictor}")
    return overrides


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _has_flag(args: list[str], *names: str) -> bool:
    return any(a.split("=", 1)[0] in names for a in args)


def _is_cpu_build() -> bool:
    from importlib import metadata

    try:
        metadata.version("vllm-cpu")
        return True
    except metadata.PackageNotFoundError:
        return False


def _default_predictor(config_path: str | None, overrides: list[str]) -> str | None:
    """`onnx` when neither the config nor the overrides name a predictor and onnxruntime is installed."""
    if any(o.split("=", 1)[0].strip() == "predictor.kind" for o in overrides):
        return None
    if config_path is not None and "kind" in _predictor_fields(config_path):
        return None
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    return "onnx"


def _predictor_fields(config_path: str) -> set[str]:
    from ecosched.config import read_yaml_mapping

    section = read_yaml_mapping(Path(config_path)).get("predictor") or {}
    return set(section) if isinstance(section, dict) else set()
