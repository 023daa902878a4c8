"""`text-generation-router`: ecosched's TGI router under the name and command line of TGI's own.

TGI's launcher (`text-generation-launcher`) starts its router as the program `text-generation-router`
found on PATH, with a fixed argument list (`launcher/src/main.rs`, `spawn_webserver`). This console
script accepts exactly that list, plus the few router flags the launcher never passes
(`backends/v3/src/main.rs`), so an unmodified launcher or TGI image runs ecosched's router once
ecosched's bin directory comes first on PATH. The arguments become an `app.RouterOptions`; `app.run`
does the rest.

Deviations from TGI's router, each on purpose:

- An unknown argument is an error naming it (exit 2), never skipped: a flag a newer launcher adds
  must be looked at before anything drops it.
- Arguments accepted but not implemented (OpenTelemetry, ngrok, CORS, usage statistics, the
  tokenizer config, ...) are logged once, by name, at start (`IGNORED`).
- `--tokenizer-name` is never downloaded. It must be a tokenizer.json, a directory holding one, or a
  hub id already in the local Hugging Face cache (the shard puts it there when it loads the model).
  Unset, the built-in byte tokenizer is used (TGI's default would be `bigscience/bloom`).
- `--hostname` defaults to 127.0.0.1 (TGI: 0.0.0.0); the launcher always passes it.
- TGI's per-flag environment variables (MAX_BATCH_SIZE, PORT, HOSTNAME, ...) are not read. The
  launcher passes every value as a flag, and in Docker HOSTNAME is the container's id.
- Logs go to stdout, as TGI's do. The launcher reads the router's stdout to its end before it reads
  stderr, so a router that logged to stderr would block once that pipe filled (64 KiB).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

from ecosched.errors import EcoschedError
from ecosched_adapters.settings import CHECK_LEDGER_ENV, STATS_ENV

if TYPE_CHECKING:
    from ecosched_adapters.tgi.app import RouterOptions

logger = logging.getLogger(__name__)

PROG = "text-generation-router"
POLICY_ENV = "ECOSCHED_POLICY"
CONFIG_ENV = "ECOSCHED_CONFIG"
UNKNOWN_HINT = "ecosched's router accepts TGI's launcher arguments; see --help"
INSTALL_HINT = "pip install 'ecosched[tgi]'"
TGI_OTLP_SERVICE_NAME = "text-generation-inference.router"  # the launcher passes this when unset
HUB_CACHE_ENVS = ("HUGGINGFACE_HUB_CACHE", "HF_HUB_CACHE")
# values of ignored arguments that ask for nothing, so are not worth a log line
NO_OP_VALUES = {("otlp_service_name", TGI_OTLP_SERVICE_NAME), ("usage_stats", "off")}

# dest -> (flag, why it changes nothing here, whether TGI would behave differently with it)
IGNORED: dict[str, tuple[str, str, bool]] = {
    "trust_remote_code": ("--trust-remote-code", "no remote code runs: the tokenizer is a tokenizer.json", False),
    "otlp_endpoint": ("--otlp-endpoint", "no OpenTelemetry export", True),
    "otlp_service_name": ("--otlp-service-name", "no OpenTelemetry export", False),
    "cors_allow_origin": ("--cors-allow-origin", "no CORS headers are sent: browsers allow same-origin only", True),
    "ngrok": ("--ngrok", "no ngrok tunnel", True),
    "ngrok_authtoken": ("--ngrok-authtoken", "no ngrok tunnel", True),
    "ngrok_edge": ("--ngrok-edge", "no ngrok tunnel", True),
    "usage_stats": ("--usage-stats", "ecosched sends no usage statistics", False),
    "max_image_fetch_size": ("--max-image-fetch-size", "image inputs are not supported", False),
    "messages_api_enabled": ("--messages-api-enabled", "legacy; the messages API is always on", False),
    "disable_usage_stats": ("--disable-usage-stats", "legacy; ecosched sends no usage statistics", False),
    "disable_crash_reports": ("--disable-crash-reports", "legacy; ecosched sends no crash reports", False),
}

DESCRIPTION = """\
ecosched's router for TGI shards, a drop-in for TGI's `text-generation-router`: it speaks TGI's v3
gRPC protocol to unmodified `text-generation-server` shards and serves TGI's HTTP API, with an
ecosched policy deciding every batch."""

EPILOG = f"""\
drop-in use with TGI's launcher:
  The launcher starts the router as `text-generation-router` from PATH. Install ecosched into the
  TGI image with its tgi extra ({INSTALL_HINT}), put that environment's bin directory
  first on PATH (for example `ENV PATH=/opt/ecosched/bin:$PATH`), and run text-generation-launcher
  as usual. The launcher cannot pass ecosched's flags, so each has an environment variable:
    {POLICY_ENV}=NAME          the policy (`ecosched policies`; unset: the config's, ecoserve;
                                 tgi-fifo is ecosched's reproduction of TGI's own batching)
    {CONFIG_ENV}=PATH          an ecosched YAML config
    {STATS_ENV}=PATH      per-step timings and counters
    {CHECK_LEDGER_ENV}=1       check the KV ledger every step
  A flag wins over its variable.

direct use (no launcher), with shards started by hand:
  text-generation-router --master-shard-uds-path /tmp/text-generation-server-0 \\
      --tokenizer-name /data/my-model --port 3000 --ecosched-policy ecoserve

not as in TGI:
  unknown arguments are errors; the tokenizer is never
  downloaded (a tokenizer.json, a directory with one, or a hub id in the local Hugging Face cache);
  --hostname defaults to 127.0.0.1; TGI's per-flag environment variables are not read; arguments
  marked "ignored" are accepted and named in the log at start. LOG_LEVEL (error, warn, info, debug)
  sets the log level, as in TGI."""


class UsageError(Exception):
    """A command line this router cannot accept (exit status 2, as for clap's errors)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _count(text: str) -> int:
    """TGI's `usize`/`u32` arguments: whole numbers >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return value


def _port(text: str) -> int:
    value = _count(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number (0-65535), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: clap takes no abbreviations, and a prefix must not stand for a flag
    p = _Parser(prog=PROG, usage="%(prog)s [TGI router arguments] [ecosched arguments]", description=DESCRIPTION,
                epilog=EPILOG, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_tgi_arguments(p.add_argument_group("TGI router arguments (what TGI's launcher passes; TGI's defaults)"))
    _add_ignored_arguments(p.add_argument_group("TGI router arguments accepted and ignored (named in the log)"))
    _add_ecosched_arguments(p.add_argument_group("ecosched arguments (the launcher cannot pass these: see below)"))
    return p


def _add_tgi_arguments(g: argparse._ArgumentGroup) -> None:
    a = g.add_argument
    d = " (default: %(default)s)"

    def n(flag: str, help_text: str, default: int | None = None) -> None:
        a(flag, type=_count, metavar="N", default=default, help=help_text + (d if default is not None else ""))

    a("--master-shard-uds-path", default="/tmp/text-generation-server-0", metavar="PATH",
      help="unix socket of shard rank 0; the others are found by ServiceDiscovery" + d)
    a("--tokenizer-name", metavar="PATH_OR_ID",
      help="tokenizer.json, a directory holding one, or a hub id in the local Hugging Face cache; also the "
      "model id /info reports (default: the built-in byte tokenizer)")
    a("--revision", help="hub revision to look up in the local cache (ignored for a local path)")
    a("--hostname", default="127.0.0.1", help="address to listen on (default: %(default)s; TGI: 0.0.0.0)")
    a("--port", type=_port, metavar="PORT", default=3000, help="HTTP port" + d)
    a("--prometheus-port", type=_port, metavar="PORT", default=9000, help="extra port serving /metrics" + d)
    n("--max-concurrent-requests", "requests served at once; beyond them, 429", 128)
    n("--max-best-of", "largest best_of", 2)
    n("--max-stop-sequences", "most stop sequences", 4)
    n("--max-top-n-tokens", "largest top_n_tokens", 5)
    n("--max-input-tokens", "most prompt tokens (default: the shard's, at warmup)")
    n("--max-input-length", "legacy name of --max-input-tokens (TGI < 2.0)")
    n("--max-total-tokens", "most prompt + generated tokens (default: the shard's, at warmup)")
    a("--waiting-served-ratio", type=float, default=1.2, metavar="X",
      help="tgi-fifo: waiting/running ratio that lets a prefill interrupt decoding" + d)
    n("--max-batch-prefill-tokens", "prompt tokens per forward, also sent to the shard at warmup", 4096)
    n("--max-batch-total-tokens", "KV pool in tokens when the shard reports none (flash shards always do)")
    n("--max-waiting-tokens", "tgi-fifo: decode steps before any prefill may join", 20)
    n("--max-batch-size", "most requests per batch (default: no limit)")
    n("--max-client-batch-size", "most prompts per request", 4)
    n("--validation-workers", "tokenizing threads", 2)
    n("--payload-limit", "largest request body in bytes", 2_000_000)
    a("--disable-grammar-support", action="store_true", help="refuse grammar / response_format")
    a("--json-output", action="store_true", help="log one JSON object per line (TGI's fields)")
    a("--api-key", help="POST routes need `Authorization: Bearer KEY` (401 otherwise); GET routes stay open")


def _add_ignored_arguments(g: argparse._ArgumentGroup) -> None:
    a = g.add_argument
    a("--trust-remote-code", action="store_true", help=IGNORED["trust_remote_code"][1])
    a("--tokenizer-config-path", metavar="PATH",
      help="tokenizer_config.json with the chat template (default: the one beside the tokenizer, if any)")
    a("--otlp-endpoint", metavar="URL", help=IGNORED["otlp_endpoint"][1])
    a("--otlp-service-name", metavar="NAME", help=IGNORED["otlp_service_name"][1])
    a("--cors-allow-origin", action="append", metavar="ORIGIN", help=IGNORED["cors_allow_origin"][1])
    a("--ngrok", action="store_true", help=IGNORED["ngrok"][1])
    a("--ngrok-authtoken", metavar="TOKEN", help=IGNORED["ngrok_authtoken"][1])
    a("--ngrok-edge", metavar="EDGE", help=IGNORED["ngrok_edge"][1])
    a("--usage-stats", choices=("on", "off", "no-stack"), help=IGNORED["usage_stats"][1])
    a("--max-image-fetch-size", type=_count, metavar="BYTES", help=IGNORED["max_image_fetch_size"][1])
    a("--messages-api-enabled", action="store_true", help=IGNORED["messages_api_enabled"][1])
    a("--disable-usage-stats", action="store_true", help=IGNORED["disable_usage_stats"][1])
    a("--disable-crash-reports", action="store_true", help=IGNORED["disable_crash_reports"][1])


def _add_ecosched_arguments(g: argparse._ArgumentGroup) -> None:
    a = g.add_argument
    a("--ecosched-policy", metavar="NAME", help=f"scheduling policy (`ecosched policies`; env {POLICY_ENV}; "
      "default: the config's)")
    a("--ecosched-config", metavar="PATH", help=f"ecosched YAML config (env {CONFIG_ENV}; default: built-in)")
    a("--ecosched-set", action="append", default=[], metavar="KEY=VALUE",
      help="override a config field, e.g. scheduler.max_num_seqs=64 (repeatable)")
    a("--ecosched-stats", metavar="PATH", help=f"record per-step timings and counters here (env {STATS_ENV})")
    a("--ecosched-check-ledger", action="store_true",
      help=f"check the core's KV ledger against the block table every step (env {CHECK_LEDGER_ENV}=1)")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The parsed command line; `UsageError` naming the first argument this router does not know."""
    args, rest = build_parser().parse_known_args(list(argv))
    if rest:
        first = next((r for r in rest if r.startswith("-")), rest[0])
        kind = "argument" if first.startswith("-") else "value"
        raise UsageError(f"unknown {kind} {first.split('=', 1)[0]} ({UNKNOWN_HINT})")
    return args


def router_options(args: argparse.Namespace, env: Mapping[str, str]) -> RouterOptions:
    """`RouterOptions` for `args`, ecosched's settings falling back to `env`. `UsageError` for
    arguments that cannot be served as asked."""
    from ecosched_adapters.tgi.app import RouterOptions

    if args.validation_workers == 0:
        raise UsageError("`validation_workers` must be > 0")
    if args.max_batch_size == 0:
        raise UsageError("`max_batch_size` must be > 0")
    extra: dict[str, Any] = {}
    if args.tokenizer_name:
        extra["model_id"] = args.tokenizer_name  # what TGI's /info reports as model_id
    return RouterOptions(
        master_shard_uds_path=args.master_shard_uds_path,
        tokenizer_name=resolve_tokenizer(args.tokenizer_name, args.revision, env),
        hostname=args.hostname,
        port=args.port,
        prometheus_port=args.prometheus_port,
        max_concurrent_requests=args.max_concurrent_requests,
        max_best_of=args.max_best_of,
        max_stop_sequences=args.max_stop_sequences,
        max_top_n_tokens=args.max_top_n_tokens,
        max_input_tokens=_max_input_tokens(args),
        max_total_tokens=args.max_total_tokens,
        waiting_served_ratio=args.waiting_served_ratio,
        max_batch_prefill_tokens=args.max_batch_prefill_tokens,
        max_batch_total_tokens=args.max_batch_total_tokens,
        max_waiting_tokens=args.max_waiting_tokens,
        max_batch_size=args.max_batch_size,
        max_client_batch_size=args.max_client_batch_size,
        validation_workers=args.validation_workers,
        payload_limit=args.payload_limit,
        disable_grammar_support=args.disable_grammar_support,
        api_key=args.api_key,
        tokenizer_config_path=args.tokenizer_config_path,
        policy=args.ecosched_policy or _env_policy(args, env),
        config_path=args.ecosched_config or env.get(CONFIG_ENV) or None,
        config_overrides=tuple(args.ecosched_set),
        stats_path=args.ecosched_stats or env.get(STATS_ENV) or None,
        check_ledger=args.ecosched_check_ledger or env.get(CHECK_LEDGER_ENV, "") not in ("", "0"),
        **extra,
    )


def _env_policy(args: argparse.Namespace, env: Mapping[str, str]) -> str | None:
    """ECOSCHED_POLICY, unless a flag (`--ecosched-set policy=...`) already names the policy."""
    if any(o.split("=", 1)[0].strip() == "policy" for o in args.ecosched_set):
        return None
    return env.get(POLICY_ENV) or None


def _max_input_tokens(args: argparse.Namespace) -> int | None:
    """`--max-input-tokens`, or its legacy name; both with different values is an error, as in TGI's
    launcher (`launcher/src/main.rs`, the `max_input_length` check)."""
    new: int | None = args.max_input_tokens
    old: int | None = args.max_input_length
    if new is not None and old is not None and new != old:
        raise UsageError(f"both --max-input-tokens ({new}) and --max-input-length ({old}) are set; give only "
                         "--max-input-tokens")
    return new if new is not None else old


def resolve_tokenizer(name: str | None, revision: str | None, env: Mapping[str, str]) -> str | None:
    """A local path for `--tokenizer-name`, without any download: the path itself when it exists (a
    directory must hold tokenizer.json), else the snapshot of hub id `name` at `revision` (default
    main) in the local Hugging Face cache. None when unset: the built-in tokenizer."""
    if not name:
        return None
    path = Path(name)
    if path.is_file():
        return name
    if path.is_dir():
        if not (path / "tokenizer.json").is_file():
            raise UsageError(f"--tokenizer-name {name}: the directory has no tokenizer.json")
        return name
    caches = _hub_caches(env)
    for cache in caches:
        snapshot = _cached_snapshot(cache, name, revision or "main")
        if snapshot is not None and (snapshot / "tokenizer.json").is_file():
            return str(snapshot)
    looked = ", ".join(str(c) for c in caches)
    raise UsageError(
        f"--tokenizer-name {name}: not a tokenizer.json, a directory holding one, or a hub id whose "
        f"tokenizer.json is in the local Hugging Face cache (looked in {looked}); ecosched's router never "
        "downloads"
    )


def _hub_caches(env: Mapping[str, str]) -> list[Path]:
    """Where huggingface_hub keeps its cache, in its own order of precedence (TGI's image sets
    HUGGINGFACE_HUB_CACHE=/data); the default last."""
    caches = [Path(env[k]) for k in HUB_CACHE_ENVS if env.get(k)]
    default_home = Path(env.get("HOME") or "~").expanduser() / ".cache" / "huggingface"
    hf_home = Path(env["HF_HOME"]) if env.get("HF_HOME") else default_home
    return [*caches, hf_home / "hub"]


def _cached_snapshot(cache: Path, repo_id: str, revision: str) -> Path | None:
    """huggingface_hub's layout: models--ORG--NAME/refs/REVISION holds the commit whose files are in
    snapshots/COMMIT; a revision that is already a commit names its snapshot directly."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    ref = repo / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = repo / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def ignored_arguments(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The ignored arguments given, as `--flag (why)`: those TGI would act on differently, and the
    harmless ones (defaults the launcher always passes, legacy switches)."""
    differs: list[str] = []
    harmless: list[str] = []
    for dest, (flag, why, changes) in IGNORED.items():
        value = getattr(args, dest)
        if value in (None, False) or (isinstance(value, str) and (dest, value) in NO_OP_VALUES):
            continue
        (differs if changes else harmless).append(f"{flag} ({why})")
    if args.revision and (not args.tokenizer_name or Path(args.tokenizer_name).exists()):
        differs.append("--revision (no hub id to look up: the tokenizer is a local path or the built-in one)")
    return differs, harmless


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the fields of TGI's `--json-output` (tracing's flattened JSON)."""

    LEVELS: ClassVar[dict[str, str]] = {"WARNING": "WARN", "CRITICAL": "ERROR"}

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="microseconds")
        line: dict[str, Any] = {
            "timestamp": stamp.replace("+00:00", "Z"),
            "level": self.LEVELS.get(record.levelname, record.levelname),
            "message": record.getMessage(),
            "target": record.name,
            "filename": record.pathname,
            "line_number": record.lineno,
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure_logging(json_output: bool, log_level: str | None) -> None:
    """Logs to stdout (see the module docstring), at TGI's LOG_LEVEL; a no-op when logging is
    already configured (as under pytest)."""
    level = {"trace": logging.DEBUG, "debug": logging.DEBUG, "warn": logging.WARNING, "warning": logging.WARNING,
             "error": logging.ERROR}.get((log_level or "info").strip().lower(), logging.INFO)
    handler = logging.StreamHandler(sys.stdout)
    formatter = JsonFormatter() if json_output else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=[handler])


def check_ecosched_settings(opts: RouterOptions) -> str:
    """The policy `opts` resolve to, after loading the config and looking the policy up, so that a
    typo fails before the shards are touched."""
    from ecosched.policies import POLICIES
    from ecosched_adapters.tgi.app import config_data

    policy = str(config_data(opts)["policy"])
    POLICIES.get(policy)
    return policy


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT: 0 after a clean stop, 1 when the router fails, 2 for a command
    line or ecosched setting it cannot accept."""
    env = os.environ
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        opts = router_options(args, env)
        policy = check_ecosched_settings(opts)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except EcoschedError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"{PROG}: error: the tgi extra is not installed ({exc}): {INSTALL_HINT}", file=sys.stderr)
        return 1
    configure_logging(args.json_output, env.get("LOG_LEVEL"))
    differs, harmless = ignored_arguments(args)
    if differs:
        logger.warning("ignored, not implemented by ecosched's router: %s", ", ".join(differs))
    if harmless:
        logger.info("ignored: %s", ", ".join(harmless))
    logger.info("ecosched policy %s, config %s", policy, opts.config_path or "built-in")
    return _run(opts)


def _run(opts: RouterOptions) -> int:
    from ecosched_adapters.tgi import app

    try:
        return app.run(opts)
    except (EcoschedError, OSError) as exc:  # OSError: the port is taken, a socket vanished, ...
        logger.error("router stopped: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
