"""Drive a vLLM 0.32 scheduler class on CPU without a model, the way vLLM's own scheduler unit tests
do (`tests/v1/core/test_scheduler.py`): build the scheduler from configs, add `Request`s, call
`schedule()`, feed back hand-made `ModelRunnerOutput`s with `update_from_output()`.

The model directory only needs a `config.json` (weights are never loaded). Used by
`test_vllm_scheduler.py`; needs vLLM installed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

import torch
from ecosched_adapters.settings import CHECK_LEDGER_ENV, CONFIG_ENV, STATS_ENV
from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig
from vllm.sampling_params import SamplingParams
from vllm.utils.hashing import sha256
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
from vllm.v1.outputs import ModelRunnerOutput
from vllm.v1.request import Request
from vllm.v1.structured_output import StructuredOutputManager

from ecosched.config import EcoschedConfig

EOS = 2
_hash_ready = False


def write_model_config(directory: Path) -> Path:
    """A Llama `config.json` small enough for any test; no weights, no tokenizer."""
    directory.mkdir(parents=True, exist_ok=True)
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "max_position_embeddings": 2048,
        "vocab_size": 2000,
        "bos_token_id": 1,
        "eos_token_id": EOS,
        "torch_dtype": "float32",
        "rms_norm_eps": 1e-6,
    }
    (directory / "config.json").write_text(json.dumps(cfg))
    return directory


def create_scheduler(
    cls: type,
    model_dir: Path,
    *,
    num_blocks: int = 40,
    block_size: int = 16,
    max_num_seqs: int = 16,
    max_num_batched_tokens: int = 128,
    max_model_len: int = 512,
    async_scheduling: bool = False,
    prefix_caching: bool = False,
    config: EcoschedConfig | None = None,
    check_ledger: bool = True,
    stats_path: str | None = None,
) -> Any:
    """A scheduler of class `cls` over `num_blocks` KV blocks (block 0 is vLLM's null block). The
    ecosched settings go through the environment, as in the engine-core process."""
    global _hash_ready
    if not _hash_ready:
        init_none_hash(sha256)
        _hash_ready = True
    os.environ[CONFIG_ENV] = (config or EcoschedConfig()).model_dump_json()
    os.environ[CHECK_LEDGER_ENV] = "1" if check_ledger else "0"
    if stats_path:
        os.environ[STATS_ENV] = stats_path
    else:
        os.environ.pop(STATS_ENV, None)
    scheduler_config = SchedulerConfig(
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        max_model_len=max_model_len,
        enable_chunked_prefill=True,
        async_scheduling=async_scheduling,
        is_encoder_decoder=False,
    )
    model_config = ModelConfig(
        model=str(model_dir),
        tokenizer=str(model_dir),
        dtype="float32",
        seed=0,
        max_model_len=max_model_len,
        skip_tokenizer_init=True,
    )
    cache_config = CacheConfig(block_size=block_size, cache_dtype="auto", enable_prefix_caching=prefix_caching)
    vllm_config = VllmConfig(scheduler_config=scheduler_config, model_config=model_config, cache_config=cache_config)
    kv_cache_config = KVCacheConfig(
        num_blocks=num_blocks,
        kv_cache_tensors=[],
        kv_cache_groups=[
            KVCacheGroupSpec(
                ["layer"], FullAttentionSpec(block_size=block_size, num_kv_heads=1, head_size=1, dtype=torch.float32)
            )
        ],
    )
    cache_config.num_gpu_blocks = num_blocks
    return cls(
        vllm_config=vllm_config,
        kv_cache_config=kv_cache_config,
        structured_output_manager=StructuredOutputManager(vllm_config),
        block_size=block_size,
        log_stats=True,
    )


def make_request(
    request_id: str,
    prompt_len: int,
    max_tokens: int,
    *,
    block_size: int = 16,
    extra_args: dict[str, Any] | None = None,
    stop_token_ids: list[int] | None = None,
    first_token: int = 100,
) -> Request:
    params = SamplingParams(
        max_tokens=max_tokens, ignore_eos=True, stop_token_ids=stop_token_ids, extra_args=extra_args
    )
    return Request(
        request_id=request_id,
        prompt_token_ids=[first_token + (k % 500) for k in range(prompt_len)],
        sampling_params=params,
        pooling_params=None,
        block_hasher=get_request_block_hasher(block_size, sha256),
    )


def model_output(sched: Any, so: SchedulerOutput, token: Callable[[str], int] = lambda rid: 7) -> ModelRunnerOutput:
    """What the model runner returns: one sampled token per request whose step completed its known
    tokens, nothing for a prefill chunk that is not the last. Call it right after `schedule()` (as
    the runner decides when it runs the step), not at update time, when with two steps in flight a
    request's prefill may already look complete."""
    ids = list(so.num_scheduled_tokens)
    sampled = []
    for rid in ids:
        r = sched.requests.get(rid)
        sampled.append([] if (r is not None and r.is_prefill_chunk) else [token(rid)])
    return ModelRunnerOutput(req_ids=ids, req_id_to_index={r: k for k, r in enumerate(ids)}, sampled_token_ids=sampled)


def vllm_blocks(sched: Any, request_id: str) -> int:
    return len(sched.kv_cache_manager.get_block_ids(request_id)[0])


@dataclass
class Trace:
    """What a driven run did."""

    steps: int = 0
    outputs: dict[str, list[int]] = field(default_factory=dict)
    finish_reasons: dict[str, str] = field(default_factory=dict)
    preempted: set[str] = field(default_factory=set)
    max_running: int = 0
    ledger_compared: int = 0


def drive(
    sched: Any,
    *,
    max_steps: int = 2000,
    depth: int = 1,
    token: Callable[[str], int] = lambda rid: 7,
    on_step: Callable[[int, SchedulerOutput], None] | None = None,
    arrivals: dict[int, Iterable[Request]] | None = None,
    compare_ledger: bool = True,
) -> Trace:
    """Run the scheduler until it has no requests: `depth` batches in flight (2 = vLLM's async
    engine loop), requests in `arrivals` added before the numbered step. After every schedule(),
    each running request's blocks in vLLM are compared with the core's ledger (when the scheduler
    has one), the check the issue asks for."""
    trace = Trace()
    in_flight: list[tuple[SchedulerOutput, ModelRunnerOutput]] = []
    arrivals = dict(arrivals or {})
    while sched.has_requests() or in_flight or arrivals:
        for r in arrivals.pop(trace.steps, ()):
            sched.add_request(r)
        if sched.has_requests() and len(in_flight) < depth:
            so = sched.schedule()
            trace.steps += 1
            trace.preempted |= set(so.preempted_req_ids or ())
            trace.max_running = max(trace.max_running, len(sched.running))
            if compare_ledger and hasattr(sched, "core"):
                compare(sched)
                trace.ledger_compared += 1
            if on_step is not None:
                on_step(trace.steps, so)
            in_flight.append((so, model_output(sched, so, token)))
            if len(in_flight) < depth and sched.has_requests():
                continue
        if not in_flight:
            trace.steps += 1  # an idle step: let the next arrival come
            continue
        so, result = in_flight.pop(0)
        outs = sched.update_from_output(so, result)
        for eco in outs.values():
            for o in eco.outputs:
                trace.outputs.setdefault(o.request_id, []).extend(o.new_token_ids)
                if o.finish_reason is not None:
                    trace.finish_reasons[o.request_id] = str(o.finish_reason)
        if trace.steps > max_steps:
            raise AssertionError(f"not done after {max_steps} steps: {len(sched.requests)} requests left")
    return trace


def compare(sched: Any) -> None:
    """Each running request holds as many blocks in vLLM as the core's ledger says it uses (the
    adapter's own check, `ledger_disagreements`), and the ledger's own equation holds."""
    sched.core.ledger.check_invariants()
    assert not sched.ledger_disagreements()


def assert_nothing_held(sched: Any) -> None:
    """Every block is back in vLLM's pool, and the core holds nothing."""
    pool = sched.kv_cache_manager.block_pool
    assert pool.get_num_free_blocks() == sched.kv_cache_config.num_blocks - 1
    if hasattr(sched, "core"):
        assert not sched.core.requests, sched.core.requests
        assert sched.core.ledger.num_free_blocks == sched.core.ledger.num_blocks
        sched.core.check_invariants()
    assert not sched.requests and not sched.running and not len(sched.waiting)
