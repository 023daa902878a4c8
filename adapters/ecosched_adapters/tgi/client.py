"""The router's gRPC client for TGI's shards: every call goes to every rank (TGI's `ShardedClient`).

TGI's tensor-parallel ranks run each forward together, so the router sends each rank the same
message and merges the answers (research note tgi.md §2.7):

- `info`, `health`: every rank; the last rank's answer is used;
- `clear_cache`, `filter_batch`: every rank; the last rank's filtered batch is returned;
- `warmup`: every rank; the smallest answer wins;
- `prefill`, `decode`: every rank; generations are concatenated in rank order (each rank returns
  those of its requests, id % world == rank), the next batch comes from the last rank, and the
  timings are the largest over ranks.

Any gRPC failure raises `ShardError` whose text is the shard's own message (TGI shows it to clients
as "Request failed during generation: <message>"); a rank that cannot be reached raises
`ShardUnavailable`. Only the master socket is given; the others come from ServiceDiscovery.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc

from ecosched.errors import EcoschedError
from ecosched_adapters.tgi.proto import generate_v3_pb2 as pb
from ecosched_adapters.tgi.proto import generate_v3_pb2_grpc as pb_grpc

MAX_MESSAGE_BYTES = 2**31 - 1  # what TGI's shards accept (i32::MAX)
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
WARMUP_TEXT = "_test "  # TGI's warmup prompt unit, repeated `truncate` times
LIVENESS_ID = 2**64 - 1  # TGI's liveness probe: request and batch id u64::MAX, block 0, slot 0

_new_stub = cast(Callable[[Any], Any], pb_grpc.TextGenerationServiceStub)  # generated code is untyped


class ShardError(EcoschedError):
    """A shard answered a call with an error; `str()` is the shard's message."""

    def __init__(self, message: str, *, rank: int | None = None, rpc: str | None = None, code: str | None = None):
        super().__init__(message)
        self.rank, self.rpc, self.code = rank, rpc, code


class ShardUnavailable(ShardError):
    """A shard cannot be reached (not started, crashed or stopped)."""


@dataclass(frozen=True, slots=True)
class StepResult:
    """The merged answer to a Prefill or Decode."""

    generations: tuple[pb.Generation, ...]  # every rank's, in rank order
    batch: pb.CachedBatch | None  # the next cached batch (last rank); None when every request stopped
    forward_ns: int
    decode_ns: int
    total_ns: int


def _target(path_or_url: str) -> str:
    return path_or_url if path_or_url.startswith("unix:") else f"unix://{path_or_url}"


def _socket_path(target: str) -> str:
    return target.removeprefix("unix://").removeprefix("unix:")


def _to_shard_error(exc: BaseException, rank: int, rpc: str) -> BaseException:
    if not isinstance(exc, grpc.aio.AioRpcError):
        return exc
    code = exc.code()
    cls = ShardUnavailable if code == grpc.StatusCode.UNAVAILABLE else ShardError
    return cls(exc.details() or code.name, rank=rank, rpc=rpc, code=code.name)


async def _open_channel(target: str, timeout_s: float) -> Any:
    """A channel that is connected, or ShardUnavailable after `timeout_s`."""
    channel = grpc.aio.insecure_channel(target, options=GRPC_OPTIONS)
    try:
        await asyncio.wait_for(channel.channel_ready(), max(timeout_s, 0.0))
    except TimeoutError:
        await channel.close()
        path = _socket_path(target)
        why = "the socket file does not exist" if not os.path.exists(path) else "nothing answers on the socket"
        raise ShardUnavailable(f"cannot reach a TGI shard at {target} within {timeout_s:g} s: {why}") from None
    return channel


class ShardedClient:
    """Connections to every rank of one TGI model (one master socket plus ServiceDiscovery)."""

    def __init__(self, channels: Sequence[Any], urls: Sequence[str]) -> None:
        self._channels = list(channels)
        self._stubs = [_new_stub(c) for c in self._channels]
        self.urls = list(urls)

    @classmethod
    async def connect_uds(cls, master_path: str, timeout_s: float = 30) -> ShardedClient:
        """Connect to the master shard's socket, discover every rank and connect to each."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        master = await _open_channel(_target(master_path), timeout_s)
        channels: list[Any] = []
        try:
            stub = _new_stub(master)
            try:
                found = await stub.ServiceDiscovery(pb.ServiceDiscoveryRequest(), timeout=timeout_s)
            except grpc.aio.AioRpcError as exc:
                raise ShardError(
                    f"ServiceDiscovery failed at {_target(master_path)} ({exc.code().name}: {exc.details()}); "
                    "is this a TGI v3 shard?",
                    rpc="ServiceDiscovery",
                    code=exc.code().name,
                ) from None
            urls = [_target(u) for u in found.urls]
            if not urls:
                raise ShardError(f"ServiceDiscovery at {_target(master_path)} returned no shard URLs")
            for url in urls:
                channels.append(await _open_channel(url, deadline - loop.time()))
        except BaseException:
            await asyncio.gather(*(c.close() for c in channels))
            raise
        finally:
            await master.close()
        return cls(channels, urls)

    @property
    def world_size(self) -> int:
        return len(self._stubs)

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._channels))

    async def __aenter__(self) -> ShardedClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _all(self, rpc: str, request: Any) -> list[Any]:
        """`request` to every rank at once; their answers in rank order, or the first error.

        A rank that is unreachable wins over other errors: a dead shard is the thing to report.
        """
        answers = await asyncio.gather(*(getattr(s, rpc)(request) for s in self._stubs), return_exceptions=True)
        errors = [(rank, a) for rank, a in enumerate(answers) if isinstance(a, BaseException)]
        if errors:
            converted = [_to_shard_error(exc, rank, rpc) for rank, exc in errors]
            dead = [e for e in converted if isinstance(e, ShardUnavailable)]
            raise (dead or converted)[0]
        return list(answers)

    async def info(self) -> pb.InfoResponse:
        info: pb.InfoResponse = (await self._all("Info", pb.InfoRequest()))[-1]
        return info

    async def health(self) -> None:
        """The cheap device check (TGI's Health RPC on every rank)."""
        await self._all("Health", pb.HealthRequest())

    async def clear_cache(self, batch_id: int | None) -> None:
        """Drop one cached batch, or every batch when `batch_id` is None."""
        request = pb.ClearCacheRequest() if batch_id is None else pb.ClearCacheRequest(id=batch_id)
        await self._all("ClearCache", request)

    async def filter_batch(self, batch_id: int, request_ids: list[int]) -> pb.CachedBatch:
        """Keep only `request_ids` in cached batch `batch_id` (same id); the filtered batch."""
        answers = await self._all("FilterBatch", pb.FilterBatchRequest(batch_id=batch_id, request_ids=request_ids))
        batch: pb.CachedBatch = answers[-1].batch
        return batch

    async def warmup(
        self,
        max_input_tokens: int | None,
        max_prefill_tokens: int,
        max_total_tokens: int | None,
        max_batch_size: int | None,
    ) -> tuple[int | None, int, int]:
        """Run TGI's warmup batch; (max_supported_total_tokens, max_input_tokens, max_total_tokens).

        The smallest answer over ranks wins, compared as TGI's tuples are: first by the supported
        total where an absent one (None) counts as smallest, then the other two.
        """
        request = pb.WarmupRequest(
            batch=warmup_batch(max_input_tokens, max_prefill_tokens, max_total_tokens, max_batch_size),
            max_prefill_tokens=max_prefill_tokens,
        )
        if max_input_tokens is not None:
            request.max_input_tokens = max_input_tokens
        if max_total_tokens is not None:
            request.max_total_tokens = max_total_tokens
        answers = await self._all("Warmup", request)
        results = [
            (
                a.max_supported_total_tokens if a.HasField("max_supported_total_tokens") else None,
                a.max_input_tokens,
                a.max_total_tokens,
            )
            for a in answers
        ]
        return min(results, key=lambda r: (r[0] is not None, r[0] or 0, r[1], r[2]))

    async def prefill(self, batch: pb.Batch, cached: pb.CachedBatch | None) -> StepResult:
        """Prefill `batch`; with a chunking shard, `cached` is concatenated in front of it."""
        request = pb.PrefillRequest(batch=batch)
        if cached is not None:
            request.cached_batch.CopyFrom(cached)
        return _merge(await self._all("Prefill", request))

    async def decode(self, batches: list[pb.CachedBatch]) -> StepResult:
        """One decode step over `batches`, concatenated by the shard under the first batch's id."""
        return _merge(await self._all("Decode", pb.DecodeRequest(batches=batches)))

    async def model_health(self) -> None:
        """TGI's liveness check after a failed generation: a one-token prefill in block 0."""
        await self.prefill(liveness_batch(), None)


def _merge(answers: list[Any]) -> StepResult:
    last = answers[-1]
    return StepResult(
        generations=tuple(g for a in answers for g in a.generations),
        batch=last.batch if last.HasField("batch") else None,
        forward_ns=max(a.forward_ns for a in answers),
        decode_ns=max(a.decode_ns for a in answers),
        total_ns=max(a.total_ns for a in answers),
    )


def warmup_batch(
    max_input_tokens: int | None, max_prefill_tokens: int, max_total_tokens: int | None, max_batch_size: int | None
) -> pb.Batch:
    """TGI's warmup batch: prompts of `"_test " * truncate` filling `max_prefill_tokens`, empty block
    tables (the shard allocates), sampling options switched on so that their memory is counted.

    NOTE: TGI adds an image chunk (and a markdown image in `inputs`) to the first request for vision
    models; ecosched serves text models and leaves it out.
    """
    requests = []
    n_tokens = 0
    while n_tokens < max_prefill_tokens:
        truncate = max_prefill_tokens - n_tokens
        if max_input_tokens is not None:
            truncate = min(max_input_tokens, truncate)
        text = WARMUP_TEXT * truncate
        max_new = max(max_total_tokens - truncate, 0) if max_total_tokens is not None else 1
        requests.append(
            pb.Request(
                id=0,
                inputs=text,
                input_chunks=pb.Input(chunks=[pb.InputChunk(text=text)]),
                truncate=truncate,
                add_special_tokens=True,
                parameters=pb.NextTokenChooserParameters(
                    temperature=0.9,
                    top_k=10,
                    top_p=0.9,
                    typical_p=0.9,
                    do_sample=False,
                    seed=0,
                    repetition_penalty=1.2,
                    frequency_penalty=0.1,
                    watermark=True,
                ),
                stopping_parameters=pb.StoppingCriteriaParameters(max_new_tokens=max_new, ignore_eos_token=True),
                prefill_logprobs=True,
                top_n_tokens=20,
            )
        )
        n_tokens += truncate
        if max_batch_size is not None and len(requests) >= max_batch_size:
            break
    return pb.Batch(id=0, requests=requests, size=len(requests), max_tokens=max_input_tokens or 0, max_blocks=0)


def liveness_batch() -> pb.Batch:
    """TGI's liveness probe: one token of "liveness", one new token, block 0 and slot 0."""
    request = pb.Request(
        id=LIVENESS_ID,
        inputs="liveness",
        input_chunks=pb.Input(chunks=[pb.InputChunk(text="liveness")]),
        truncate=1,
        add_special_tokens=False,
        parameters=pb.NextTokenChooserParameters(temperature=1.0, top_p=1.0, typical_p=1.0, repetition_penalty=1.0),
        stopping_parameters=pb.StoppingCriteriaParameters(max_new_tokens=1),
        blocks=[0],
        slots=[0],
    )
    return pb.Batch(id=LIVENESS_ID, requests=[request], size=1, max_tokens=2, max_blocks=1)
