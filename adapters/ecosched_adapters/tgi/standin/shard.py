"""A protocol-faithful stand-in for TGI's shards: serves generate.v3 on unix sockets, checks everything.

Each rank listens on `unix://{uds_path}-{rank}` (its own grpc.aio server; all ranks share one
process, one event loop and one `ShardEngine`). A router talks to it exactly as to real shards;
every assumption a real shard makes silently becomes a hard failure here: gRPC INTERNAL with a
message saying what was expected, counted in `violations`. The checks (`checks`, `kv`, `engine`,
`ranks`):

- Prefill: Warmup happened; batch id not cached; `size == len(requests)`; request ids unique in the
  batch and across cached batches; one text chunk; blocks in [1, num_blocks) (block 0 only for the
  health probe, id 2**64-1), no repeats; `slots[i] == blocks[i // bs] * bs + i % bs`;
  `len(slots) >= prompt_len + max_new_tokens + speculate - 1` (prompt after truncation);
  `cache_len < prompt_len`, and > 0 only with prefix caching; chunk_len only with chunking,
  `0 < chunk_len <= prompt_len - cache_len`; cached_batch (chunking only) is cached and holds no
  finished request; new tokens within the router's prefill budget (`checks.prefill_budget_error`).
- Shadow KV: every position below `cache_len` holds this prompt's token, at that position, after
  the same prefix; writes stay inside the request's reservation.
- Live write-sets (positions >= cache_len up to the reservation) are pairwise disjoint and never
  cover another live request's read-only prefix (identical prompt KV excepted).
- Decode: a non-empty list of distinct cached batch ids, none holding a finished request.
- FilterBatch: the batch is cached; a non-empty subset of its ids without repeats; same id after.
- Multi-rank: each state-changing call reaches every rank identically and in the same order.

Outputs follow `outputs` (prompt markers `[[len:P,eos:K]]`, TGI's stopping rules).

Chosen behaviours:
- A violating call changes nothing (the checks run before any state changes). A real shard would
  have gone on silently, so the state after a violation is not meaningful for further checks.
- `inject_error(rpc, message, count)`: the next `count` calls of `rpc` fail with INTERNAL on every
  rank. Like a real shard that raised mid-call, the batches the call names (Decode's batches,
  Prefill's cached_batch with chunking, FilterBatch's batch) are popped and lost; nothing else
  changes. Injected failures are not violations.
- Timings: `forward_ns` is the modelled forward (`latency_profile`, scaled by `time_scale`, really
  slept; 0 without a profile), `decode_ns` the stand-in's own bookkeeping, `total_ns` the whole call.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
from pydantic import ValidationError

from ecosched_adapters.tgi.proto import generate_v3_pb2 as pb
from ecosched_adapters.tgi.proto import generate_v3_pb2_grpc as pb_grpc
from ecosched_adapters.tgi.standin.checks import ShardViolation
from ecosched_adapters.tgi.standin.config import StandinConfig
from ecosched_adapters.tgi.standin.engine import ShardEngine, StepOutput, TimedStep
from ecosched_adapters.tgi.standin.kv import ShadowKV
from ecosched_adapters.tgi.standin.outputs import TokenSource
from ecosched_adapters.tgi.standin.ranks import RankSync
from ecosched_adapters.tgi.standin.record import Recorder, summary
from ecosched_adapters.tgi.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

RPCS = ("Info", "ServiceDiscovery", "ClearCache", "FilterBatch", "Warmup", "Prefill", "Decode", "Health")
SEQUENCED = frozenset({"Warmup", "Prefill", "Decode", "FilterBatch", "ClearCache"})  # change state
MAX_MESSAGE_BYTES = 2**31 - 1  # TGI shards accept i32::MAX-byte messages
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
MAX_UDS_PATH_BYTES = 107  # sun_path is 108 bytes with the terminating NUL
_add_servicer = cast(Callable[[Any, Any], None], pb_grpc.add_TextGenerationServiceServicer_to_server)  # untyped
EXIT_GRACE_S = 1.0  # on exit_on_violation: time for the failing answer to reach the router


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken assumption: the rank-agreed call number (None outside that sequence), RPC, message."""

    call: int | None
    rpc: str
    message: str


@dataclass(frozen=True, slots=True)
class ShardStats:
    """Counters for tests and logs."""

    rpc_counts: Mapping[str, int]  # logical calls (as rank 0 received them)
    live_requests: int  # in cached batches and not finished
    cached_batches: int
    blocks_referenced: int  # distinct blocks of the live requests
    violations: int
    injected_errors: int


class InjectedError(Exception):
    """A failure requested by `inject_error`."""


@dataclass(slots=True)
class _Injection:
    message: str
    remaining: int  # state-changing RPCs: logical calls still to fail
    per_rank: list[int]  # other RPCs: calls still to fail on each rank


class StandinShard:
    """All ranks of one stand-in shard. Use `async with StandinShard(config, "/tmp/es-x/shard"):`."""

    def __init__(self, config: StandinConfig, uds_path: str | os.PathLike[str]) -> None:
        self.config = config
        self.base_path = str(Path(uds_path).absolute())
        self.engine = ShardEngine(config, TokenSource(load_tokenizer(config.tokenizer)))
        self.violations: list[Violation] = []
        self.exited_on_violation = False
        self._sync = RankSync(config.ranks, config.rank_sync_timeout_s, self._record_violation)
        self._latency = _latency_model(config.latency_profile)
        self._counts: Counter[str] = Counter()
        self._injected: dict[str, _Injection] = {}
        self._num_injected = 0
        self._servers: list[Any] = []
        self._closed = asyncio.Event()
        self._recorder = Recorder(config.record_path)
        self._exit_task: asyncio.Task[None] | None = None
        too_long = [p for p in self.socket_paths if len(p.encode()) > MAX_UDS_PATH_BYTES]
        if too_long:
            raise ValueError(f"unix socket path {too_long[0]!r} is longer than {MAX_UDS_PATH_BYTES} bytes")

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def socket_paths(self) -> list[str]:
        return [f"{self.base_path}-{rank}" for rank in range(self.config.ranks)]

    @property
    def urls(self) -> list[str]:
        """What ServiceDiscovery returns, as TGI's shards do."""
        return [f"unix://{p}" for p in self.socket_paths]

    async def start(self) -> None:
        """Bind and start every rank; returns once every socket exists."""
        self._recorder.open()
        for rank, path in enumerate(self.socket_paths):
            if os.path.exists(path):
                os.unlink(path)  # a stale socket from a crashed run
            server = grpc.aio.server(options=GRPC_OPTIONS)
            _add_servicer(_RankServicer(self, rank), server)
            server.add_insecure_port(f"unix://{path}")
            await server.start()
            self._servers.append(server)
        logger.info("stand-in shard listening on %s", ", ".join(self.urls))

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop every rank (in-flight calls get `grace_s` to finish) and remove the sockets."""
        servers, self._servers = self._servers, []
        await asyncio.gather(*(s.stop(grace_s) for s in servers))
        for path in self.socket_paths:
            if os.path.exists(path):
                os.unlink(path)
        self._recorder.close()
        self._closed.set()

    async def kill(self) -> None:
        """Stop every rank abruptly, as a crashed shard: in-flight calls fail, sockets disappear."""
        await self.stop(None)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def __aenter__(self) -> StandinShard:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(None)

    # -- inspection and fault injection ---------------------------------------------------------
    @property
    def stats(self) -> ShardStats:
        e = self.engine
        return ShardStats(
            dict(self._counts),
            len(e.live_request_ids()),
            len(e.batches),
            e.registry.blocks_referenced(),
            len(self.violations),
            self._num_injected,
        )

    @property
    def shadow(self) -> ShadowKV:
        return self.engine.shadow

    def live_request_ids(self) -> set[int]:
        return self.engine.live_request_ids()

    def inject_error(self, rpc: str, message: str, count: int = 1) -> None:
        """Make the next `count` calls of `rpc` fail with INTERNAL `message` on every rank."""
        if rpc not in RPCS:
            raise ValueError(f"unknown RPC {rpc!r}; known: {', '.join(RPCS)}")
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self._injected[rpc] = _Injection(message, count, [count] * self.config.ranks)

    def _take_injection(self, rpc: str, rank: int | None) -> str | None:
        """The injected message if this call fails (rank None: once per state-changing call)."""
        inj = self._injected.get(rpc)
        if inj is None:
            return None
        if rank is None:
            if inj.remaining <= 0:
                return None
            inj.remaining -= 1
            exhausted = inj.remaining <= 0
        else:
            if inj.per_rank[rank] <= 0:
                return None
            inj.per_rank[rank] -= 1
            exhausted = max(inj.per_rank) <= 0
        if exhausted:
            del self._injected[rpc]
        if not rank:
            self._num_injected += 1  # logical calls: once per state-changing call, rank 0 otherwise
        return inj.message

    def _record_violation(self, call: int | None, rpc: str, message: str) -> None:
        self.violations.append(Violation(call, rpc, message))
        logger.error("protocol violation in %s (call %s): %s", rpc, call, message)
        if self.config.exit_on_violation and not self.exited_on_violation:
            self.exited_on_violation = True
            self._exit_task = asyncio.get_running_loop().create_task(self.stop(EXIT_GRACE_S))

    # -- serving -------------------------------------------------------------------------------
    async def handle(self, rank: int, rpc: str, request: Any, context: Any) -> Any:
        """One RPC on one rank: run it (once for all ranks when it changes state) and answer."""
        if rank == 0:
            self._counts[rpc] += 1
        try:
            if rpc in SEQUENCED:
                payload = request.SerializeToString(deterministic=True)
                outcome = await self._sync.run(rank, rpc, payload, lambda seq: self._execute(seq, rpc, request))
            else:
                message = self._take_injection(rpc, rank)
                if message is not None:
                    raise InjectedError(message)
                outcome = self._stateless(rpc)
        except (ShardViolation, InjectedError) as exc:
            text = f"protocol violation: {exc}" if isinstance(exc, ShardViolation) else str(exc)
            if rank == 0:
                self._recorder.write(rpc, request, {"error": text})
            await context.abort(grpc.StatusCode.INTERNAL, text)
        response = _response(rpc, outcome, rank, self.config.ranks)
        if rank == 0:
            self._recorder.write(rpc, request, summary(outcome))
        return response

    def _stateless(self, rpc: str) -> Any:
        if rpc == "Info":
            return self.engine.info()
        if rpc == "ServiceDiscovery":
            return pb.ServiceDiscoveryResponse(urls=self.urls)
        return pb.HealthResponse()

    async def _execute(self, seq: int, rpc: str, request: Any) -> Any:
        """Run a state-changing call once for all ranks (in call order; see `RankSync`)."""
        message = self._take_injection(rpc, None)
        if message is not None:
            self._lose_inputs(rpc, request)
            raise InjectedError(message)
        start = time.perf_counter_ns()
        try:
            outcome = self._dispatch(rpc, request)
        except ShardViolation as exc:
            self._record_violation(seq, rpc, str(exc))
            raise
        if not isinstance(outcome, StepOutput):
            return outcome
        bookkeeping_ns = time.perf_counter_ns() - start
        forward_ns = await self._sleep_forward(outcome)
        return TimedStep(outcome, forward_ns, bookkeeping_ns, time.perf_counter_ns() - start)

    def _dispatch(self, rpc: str, request: Any) -> Any:
        e = self.engine
        if rpc == "Prefill":
            return e.prefill(request)
        if rpc == "Decode":
            return e.decode(request)
        if rpc == "FilterBatch":
            return pb.FilterBatchResponse(batch=e.filter_batch(request))
        if rpc == "Warmup":
            return e.warmup(request)
        e.clear_cache(request.id if request.HasField("id") else None)
        return pb.ClearCacheResponse()

    def _lose_inputs(self, rpc: str, request: Any) -> None:
        """What a shard that fails mid-call has already popped from its cache."""
        if rpc == "Decode":
            for b in request.batches:
                self.engine.drop_batch(b.id)
        elif rpc == "Prefill" and self.config.chunking and request.HasField("cached_batch"):
            self.engine.drop_batch(request.cached_batch.id)
        elif rpc == "FilterBatch":
            self.engine.drop_batch(request.batch_id)

    async def _sleep_forward(self, out: StepOutput) -> int:
        if self._latency is None:
            return 0
        seconds = self._latency.iteration_time_s(out.num_tokens, out.num_context_tokens) * self.config.time_scale
        start = time.perf_counter_ns()
        await asyncio.sleep(seconds)
        return time.perf_counter_ns() - start


def _response(rpc: str, outcome: Any, rank: int, world: int) -> Any:
    """The rank's answer: Prefill/Decode carry only its generations (request id % world == rank)."""
    if not isinstance(outcome, TimedStep):
        return outcome
    cls = pb.PrefillResponse if rpc == "Prefill" else pb.DecodeResponse
    resp = cls(
        generations=[g for g in outcome.out.generations if g.request_id % world == rank],
        forward_ns=outcome.forward_ns,
        decode_ns=outcome.decode_ns,
        total_ns=outcome.total_ns,
    )
    if outcome.out.batch is not None:
        resp.batch.CopyFrom(outcome.out.batch)
    return resp


def _latency_model(profile: str | None) -> Any:
    if profile is None:
        return None
    from ecosched.sim.profile import load_profile

    return load_profile(profile).latency_model()


class _RankServicer(pb_grpc.TextGenerationServiceServicer):
    """One rank's gRPC face; everything goes to the shared `StandinShard.handle`."""

    def __init__(self, shard: StandinShard, rank: int) -> None:
        self._shard, self._rank = shard, rank

    async def Info(self, request: Any, context: Any) -> Any:
        return await self._shard.handle(self._rank, "Info", request, context)

    async def ServiceDiscovery(self, request: Any, context: Any) -> Any:
        return await self._shard.handle(self._rank, "ServiceDiscovery", request, context)

    async def ClearCache(self, request: Any, context: Any) -> Any:
        return await self._shard.handle(self._rank, "ClearCache", request, context)

    async def FilterBatch(self, request: Any, context: Any) -> Any:
        return await self._shard.handle(self._rank, "FilterBatch", request, context)

    async def Warmup(self, request: Any, context: Any) -> Any:
        return await self._shard.handle(self._rank, "Warmup", request, context)

    async def Prefill(self, request: Any, context: Any) -> Any:
        return await self._shard.handle(self._rank, "Prefill", request, context)

    async def Decode(self, request: Any, context: Any) -> Any:
        return await self._shard.handle(self._rank, "Decode", request, context)

    async def Health(self, request: Any, context: Any) -> Any:
        return await self._shard.handle(self._rank, "Health", request, context)


# -- command line --------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ecosched standin tgi-shard",
        description="Serve a stand-in for TGI's shards (gRPC generate.v3 on unix sockets) that checks every "
        "call a router makes and answers protocol violations with gRPC INTERNAL. Each rank listens on "
        "unix://BASE-RANK. Prompts may script their output with [[eos:K]] or [[len:P,eos:K]]: EOS as the "
        "K-th token generated after an original prompt of P tokens. Runs until SIGINT/SIGTERM.",
    )
    p.add_argument("--uds-path", required=True, metavar="BASE", help="socket base path (rank r: BASE-r)")
    p.add_argument("--num-blocks", type=int, required=True, metavar="N", help="KV blocks in the pool, block 0 included")
    p.add_argument("--block-size", type=int, required=True, metavar="B", help="tokens per block (1, 16 or 256 typical)")
    p.add_argument("--ranks", type=int, default=1, metavar="R", help="tensor-parallel ranks (default 1)")
    p.add_argument("--prefix-caching", action="store_true", help="report use_prefix_caching (allows cache_len > 0)")
    p.add_argument("--chunking", action="store_true", help="report support_chunking (chunk_len, cached_batch)")
    p.add_argument(
        "--latency-profile",
        metavar="NAME",
        help="engine profile name or YAML path; forwards sleep as long as it predicts (default: no sleep)",
    )
    p.add_argument("--time-scale", type=float, default=1.0, metavar="X", help="factor on every modelled forward")
    p.add_argument("--output-len", type=int, metavar="N", help="without a prompt marker, EOS as the N-th token")
    p.add_argument("--record", metavar="PATH", help="append one JSON line per RPC (as rank 0 sees it) to PATH")
    p.add_argument("--tokenizer", metavar="PATH", help="tokenizer.json or a directory with one (default: built-in)")
    p.add_argument(
        "--exit-on-violation",
        action="store_true",
        help="stop all ranks after the first violation (exit status 1), as a crashed shard would",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the stand-in shard until SIGINT/SIGTERM; 1 if it stopped on a violation, 2 on bad arguments."""
    args = _parser().parse_args(argv)
    try:
        config = StandinConfig(
            num_blocks=args.num_blocks,
            block_size=args.block_size,
            ranks=args.ranks,
            prefix_caching=args.prefix_caching,
            chunking=args.chunking,
            latency_profile=args.latency_profile,
            time_scale=args.time_scale,
            output_len=args.output_len,
            record_path=args.record,
            tokenizer=args.tokenizer,
            exit_on_violation=args.exit_on_violation,
        )
    except ValidationError as exc:
        print(f"tgi-shard: error: {exc}", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(_serve(config, args.uds_path))


async def _serve(config: StandinConfig, uds_path: str) -> int:
    shard = StandinShard(config, uds_path)
    await shard.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(shard.wait_closed())]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()
    await shard.stop(EXIT_GRACE_S)
    return 1 if shard.exited_on_violation else 0
