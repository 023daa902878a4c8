"""Start ecosched's TGI router: connect to the shards, build the core, serve TGI's HTTP API.

`RouterOptions` holds what TGI's router takes on its command line (plus ecosched's policy and
config); `serve` runs until cancelled; `start` returns the running pieces for tests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from ecosched.config import load_config
from ecosched_adapters.stats import StepStats
from ecosched_adapters.tgi.http import make_app
from ecosched_adapters.tgi.http_metrics import RouterMetrics
from ecosched_adapters.tgi.http_settings import HttpSettings
from ecosched_adapters.tgi.router import Router
from ecosched_adapters.tgi.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

DEFAULT_MASTER_UDS = "/tmp/text-generation-server-0"  # TGI's default master shard socket


@dataclass(frozen=True, kw_only=True)
class RouterOptions:
    """TGI router flags (TGI's defaults, except the host: 127.0.0.1 unless told otherwise) and
    ecosched's own."""

    master_shard_uds_path: str = DEFAULT_MASTER_UDS
    tokenizer_name: str | None = None  # a tokenizer.json or a directory with one; None: built-in
    tokenizer_config_path: str | None = None  # chat template; None: tokenizer_config.json beside the tokenizer
    model_id: str = "ecosched-tgi"
    hostname: str = "127.0.0.1"
    port: int = 3000
    prometheus_port: int | None = 9000  # None: /metrics on the main port only
    max_concurrent_requests: int = 128
    max_best_of: int = 2
    max_stop_sequences: int = 4
    max_top_n_tokens: int = 5
    max_input_tokens: int | None = None
    max_total_tokens: int | None = None
    waiting_served_ratio: float = 1.2
    max_batch_prefill_tokens: int = 4096
    max_batch_total_tokens: int | None = None
    max_waiting_tokens: int = 20
    max_batch_size: int | None = None
    max_client_batch_size: int = 4
    validation_workers: int = 2
    payload_limit: int = 2_000_000
    disable_grammar_support: bool = False
    api_key: str | None = None
    # ecosched
    policy: str | None = None  # None: the config's policy
    config_path: str | None = None
    config_overrides: tuple[str, ...] = ()
    stats_path: str | None = None
    check_ledger: bool = False


def config_data(opts: RouterOptions) -> dict[str, Any]:
    """The ecosched configuration, with TGI's batching flags in the tgi-fifo policy's section."""
    overrides = list(opts.config_overrides)
    if opts.policy:
        overrides.append(f"policy={opts.policy}")
    overrides += [
        f"policies.tgi.waiting_served_ratio={opts.waiting_served_ratio}",
        f"policies.tgi.max_waiting_tokens={opts.max_waiting_tokens}",
    ]
    return load_config(opts.config_path, overrides).model_dump()


@dataclass
class RunningRouter:
    router: Router
    runner: web.AppRunner
    metrics_runner: web.AppRunner | None
    port: int  # the bound port (useful with port 0)

    async def close(self) -> None:
        await self.runner.cleanup()
        if self.metrics_runner is not None:
            await self.metrics_runner.cleanup()
        await self.router.close()


async def start(opts: RouterOptions, *, record_forwards: bool = False) -> RunningRouter:
    """Connect, warm up, and serve; returns once the HTTP port is bound."""
    tokenizer = load_tokenizer(opts.tokenizer_name)
    router = await Router.connect(
        opts.master_shard_uds_path,
        config_data(opts),
        tokenizer,
        max_input_tokens=opts.max_input_tokens,
        max_total_tokens=opts.max_total_tokens,
        max_batch_prefill_tokens=opts.max_batch_prefill_tokens,
        max_batch_total_tokens=opts.max_batch_total_tokens,
        max_batch_size=opts.max_batch_size,
        check_ledger=opts.check_ledger,
        stats=StepStats(opts.stats_path),
        record_forwards=record_forwards,
    )
    limits = router.limits
    settings = HttpSettings(
        model_id=opts.model_id,
        max_input_tokens=limits.max_input_tokens,
        max_total_tokens=limits.max_total_tokens,
        max_concurrent_requests=opts.max_concurrent_requests,
        max_best_of=opts.max_best_of,
        max_stop_sequences=opts.max_stop_sequences,
        max_top_n_tokens=opts.max_top_n_tokens,
        max_client_batch_size=opts.max_client_batch_size,
        validation_workers=opts.validation_workers,
        payload_limit=opts.payload_limit,
        disable_grammar_support=opts.disable_grammar_support,
        api_key=opts.api_key,
        info_extra={
            "ecosched_policy": router.core.policy.name,
            "ecosched_block_size": limits.block_size,
            "ecosched_num_blocks": limits.num_blocks,
            "ecosched_world_size": limits.world_size,
        },
    )
    chat = chat_template(opts.tokenizer_name, opts.tokenizer_config_path)
    if chat:
        settings = replace(
            settings,
            chat_template=chat["chat_template"],
            bos_token=chat.get("bos_token"),
            eos_token=chat.get("eos_token"),
        )
    metrics = RouterMetrics(limits.max_input_tokens, limits.max_total_tokens)
    metrics.batch_max_total_tokens(limits.num_blocks * limits.block_size)
    router.metrics = metrics
    app = make_app(router, settings, tokenizer, metrics)
    router.start()
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, opts.hostname, opts.port)
    await site.start()
    port = _bound_port(runner, opts.port)
    metrics_runner = None
    if opts.prometheus_port is not None and opts.prometheus_port != opts.port:
        metrics_app = web.Application()

        async def render(_: web.Request) -> web.Response:
            return web.Response(body=metrics.render(), content_type="text/plain")

        metrics_app.router.add_get("/metrics", render)
        metrics_runner = web.AppRunner(metrics_app, handle_signals=False)
        await metrics_runner.setup()
        await web.TCPSite(metrics_runner, opts.hostname, opts.prometheus_port).start()
    logger.info(
        "ecosched TGI router on http://%s:%d, policy %s, %d shard(s), %d blocks of %d tokens",
        opts.hostname, port, router.core.policy.name, limits.world_size, limits.num_blocks, limits.block_size,
    )
    return RunningRouter(router, runner, metrics_runner, port)


def chat_template(tokenizer_name: str | None, config_path: str | None) -> dict[str, str]:
    """The model's chat template and its bos/eos tokens from tokenizer_config.json (the given file,
    or the one beside the tokenizer), as TGI's router reads them; empty when there is none."""
    path = Path(config_path) if config_path else None
    if path is None and tokenizer_name:
        base = Path(tokenizer_name)
        path = (base if base.is_dir() else base.parent) / "tokenizer_config.json"
    if path is None or not path.is_file():
        if config_path:
            raise FileNotFoundError(f"no tokenizer config at {config_path!r}")
        return {}
    data = json.loads(path.read_text())
    template = data.get("chat_template")
    if isinstance(template, list):  # named templates: TGI uses "default"
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if not isinstance(template, str):
        return {}
    out = {"chat_template": template}
    for key in ("bos_token", "eos_token"):
        value = data.get(key)
        if isinstance(value, dict):  # an AddedToken object
            value = value.get("content")
        if isinstance(value, str):
            out[key] = value
    return out


def _bound_port(runner: web.AppRunner, asked: int) -> int:
    for site in runner.sites:
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        for sock in sockets:
            return int(sock.getsockname()[1])
    return asked


async def serve(opts: RouterOptions) -> None:
    """Serve until SIGINT or SIGTERM."""
    running = await start(opts)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await running.close()


def run(opts: RouterOptions) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(opts))
    return 0
