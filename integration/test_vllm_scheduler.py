"""vLLM's expectations of a scheduler, asked of `EcoschedScheduler`: scenarios in the style of vLLM's
own scheduler unit tests (`tests/v1/core/test_scheduler.py`): build the scheduler on CPU, add
requests, drive `schedule()` / `update_from_output()` with hand-made model outputs.

Every driven step also checks that each running request's blocks in vLLM's block manager equal the
core ledger's `used` blocks (`vllm_sched_harness.compare`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from integration.conftest import VLLM_INSTALL_HINT, VLLM_MODULES, require_modules

require_modules("vLLM", VLLM_MODULES, VLLM_INSTALL_HINT, module_level=True)

from ecosched_adapters.request_fields import FIELD_MAX_TOKENS, FIELD_SLO_CLASS, FIELD_TRUE_OUTPUT  # noqa: E402
from ecosched_adapters.vllm.scheduler import AdapterStateError, EcoschedScheduler  # noqa: E402
from vllm.v1.core.sched.async_scheduler import AsyncScheduler  # noqa: E402
from vllm.v1.request import RequestStatus  # noqa: E402

from ecosched.config import load_config  # noqa: E402
from integration.vllm_sched_harness import (  # noqa: E402
    assert_nothing_held,
    compare,
    create_scheduler,
    drive,
    make_request,
    model_output,
    vllm_blocks,
    write_model_config,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model_config(tmp_path_factory.mktemp("model"))


def eco(model_dir: Path, *overrides: str, **kw: Any) -> Any:
    config = load_config(
        None, ["policy=ecoserve", "predictor.kind=constant", "predictor.constant_tokens=32", *overrides]
    )
    return create_scheduler(EcoschedScheduler, model_dir, config=config, **kw)


MIX = [(40, 30), (40, 30), (20, 30), (70, 5), (100, 60), (33, 80), (7, 1), (250, 12)]


def test_it_is_an_async_scheduler_and_the_core_has_vllms_geometry(model_dir: Path) -> None:
    s = eco(model_dir, num_blocks=50, block_size=16, max_num_seqs=8, max_num_batched_tokens=96, max_model_len=400)
    assert isinstance(s, AsyncScheduler)
    c = s.core.config
    assert (c.cache.block_size, c.cache.num_gpu_blocks, c.cache.max_model_len) == (16, 49, 400)
    assert (c.cache.num_cpu_blocks, c.scheduler.max_num_seqs, c.scheduler.max_num_batched_tokens) == (0, 8, 96)


def test_schedule_admits_and_chunks_within_the_budget(model_dir: Path) -> None:
    """vLLM's test_schedule / test_schedule_partial_requests: prompts fill the token budget, a prompt
    larger than what is left is chunked, every scheduled request is in vLLM's running list."""
    s = eco(model_dir, max_num_batched_tokens=128, num_blocks=60)
    for i, p in enumerate((50, 50, 60)):
        s.add_request(make_request(f"r{i}", p, 10))
    out = s.schedule()
    assert out.total_num_scheduled_tokens == 128
    assert out.num_scheduled_tokens == {"r0": 50, "r1": 50, "r2": 28}
    assert [r.req_id for r in out.scheduled_new_reqs] == ["r0", "r1", "r2"]
    assert {r.request_id for r in s.running} == {"r0", "r1", "r2"}
    assert all(r.status == RequestStatus.RUNNING for r in s.running)
    compare(s)
    s.update_from_output(out, model_output(s, out))
    out2 = s.schedule()
    # r0, r1 decode one token each; r2's remaining 32 prompt tokens complete
    assert out2.num_scheduled_tokens == {"r0": 1, "r1": 1, "r2": 32}
    assert set(out2.scheduled_cached_reqs.req_ids) == {"r0", "r1", "r2"}


@pytest.mark.parametrize("depth", [1, 2], ids=["sync", "async-2-in-flight"])
@pytest.mark.parametrize("policy", ["ecoserve", "vllm", "sarathi", "sjf"])
def test_every_request_gets_exactly_its_tokens_under_kv_pressure(model_dir: Path, policy: str, depth: int) -> None:
    s = eco(model_dir, f"policy={policy}", num_blocks=24, async_scheduling=depth == 2)
    for i, (p, m) in enumerate(MIX * 2):
        s.add_request(make_request(f"r{i}", p, m))
    trace = drive(s, depth=depth)
    want = {f"r{i}": m for i, (_, m) in enumerate(MIX * 2)}
    assert {rid: len(toks) for rid, toks in trace.outputs.items()} == want
    assert set(trace.finish_reasons.values()) == {"length"}
    assert trace.ledger_compared > 0
    assert s.ledger_mismatches == 0 and s.ledger_checks > 0
    assert_nothing_held(s)


def test_kv_pressure_preempts_and_the_core_chooses_the_victim(model_dir: Path) -> None:
    """Under-predicted requests outgrow a tiny cache: vLLM carries out the core's preemptions
    (recompute), the victims are the ones the core named, and everything still completes."""
    s = eco(model_dir, "predictor.constant_tokens=2", "policy=vllm", num_blocks=12)
    for i in range(6):
        s.add_request(make_request(f"r{i}", 30, 60))
    preempted_by_core: set[str] = set()
    named: list[set[str]] = []

    def on_step(step: int, so: Any) -> None:
        named.append(set(so.preempted_req_ids or ()))

    core_schedule = s.core.schedule

    def spy(now: float, view: Any) -> Any:
        d = core_schedule(now, view)
        preempted_by_core.update(p.request_id for p in d.preempted)
        return d

    s.core.schedule = spy  # type: ignore[method-assign]
    trace = drive(s, on_step=on_step)
    assert trace.preempted, "a 12-block cache with six 90-token requests must preempt"
    assert trace.preempted == preempted_by_core
    assert {rid: len(t) for rid, t in trace.outputs.items()} == {f"r{i}": 60 for i in range(6)}
    assert s.core.stats.num_recomputes == sum(len(n) for n in named)
    assert_nothing_held(s)


def test_reservation_means_no_preemption_when_predictions_are_right(model_dir: Path) -> None:
    """With true lengths (oracle) the core reserves each request's whole output at admission, so a
    cache too small for everyone at once admits fewer requests instead of preempting later."""
    s = eco(model_dir, "policy=ecoserve", "predictor.kind=oracle", "policies.ecoserve.pipelining=false", num_blocks=16)
    for i in range(8):
        s.add_request(make_request(f"r{i}", 40, 50, extra_args={FIELD_TRUE_OUTPUT: 50}))
    trace = drive(s)
    assert not trace.preempted
    assert {rid: len(t) for rid, t in trace.outputs.items()} == {f"r{i}": 50 for i in range(8)}
    assert_nothing_held(s)
    stock = create_scheduler(AsyncScheduler, model_dir, num_blocks=16)
    for i in range(8):
        stock.add_request(make_request(f"r{i}", 40, 50))
    assert drive(stock).preempted, "stock vLLM admits greedily and must preempt here"


def test_stop_tokens_end_requests_early_in_both(model_dir: Path) -> None:
    """An over-prediction: vLLM stops a request on a stop token long before its predicted length;
    the core learns it from update_from_output and frees its reservation."""
    s = eco(model_dir, "predictor.constant_tokens=200", num_blocks=40)
    s.add_request(make_request("stopper", 20, 300, stop_token_ids=[9]))
    s.add_request(make_request("runner", 20, 40))
    tokens = iter([7, 7, 7, 9] + [7] * 100)
    trace = drive(s, token=lambda rid: next(tokens) if rid == "stopper" else 7)
    assert trace.finish_reasons == {"stopper": "stop", "runner": "length"}
    assert len(trace.outputs["stopper"]) == 4 and len(trace.outputs["runner"]) == 40
    assert_nothing_held(s)


def test_declared_limit_hides_max_tokens_from_the_core(model_dir: Path) -> None:
    """`ecosched_max_tokens` (the client's declared limit) is what the core plans with; vLLM still
    stops at max_tokens, which the core hears as a stop."""
    s = eco(model_dir, num_blocks=60, max_model_len=512)
    s.add_request(make_request("a", 20, 10, extra_args={FIELD_MAX_TOKENS: 400}))
    s.schedule()
    s._take_predictions()
    assert s.core.get("a").max_output_tokens == 400
    s2 = eco(model_dir, num_blocks=60, max_model_len=512)
    s2.add_request(make_request("a", 20, 10, extra_args={FIELD_MAX_TOKENS: 400}))
    trace = drive(s2)
    assert len(trace.outputs["a"]) == 10 and trace.finish_reasons["a"] == "length"
    assert_nothing_held(s2)


def test_abort_releases_blocks_in_vllm_and_the_core(model_dir: Path) -> None:
    """vLLM's test_finish_request / client disconnects: finish_requests(ABORTED) at any point of a
    request's life (waiting for its prediction, running, preempted) leaves nothing held."""
    s = eco(model_dir, num_blocks=30)
    for i in range(5):
        s.add_request(make_request(f"r{i}", 60, 100))
    out = s.schedule()
    s.update_from_output(out, model_output(s, out))
    out = s.schedule()
    running = [r.request_id for r in s.running]
    assert running and all(vllm_blocks(s, rid) > 0 for rid in running)
    s.finish_requests(running[0], RequestStatus.FINISHED_ABORTED)  # between schedule and update, as the engine does
    assert running[0] not in s.core.requests
    s.update_from_output(out, model_output(s, out))
    compare(s)
    s.finish_requests(None, RequestStatus.FINISHED_ABORTED)
    assert_nothing_held(s)


def test_abort_before_the_prediction_lands(model_dir: Path) -> None:
    s = eco(model_dir)
    s.add_request(make_request("x", 10, 10))
    s.finish_requests("x", RequestStatus.FINISHED_ABORTED)
    assert not s._pending and "x" not in s.core.requests
    assert_nothing_held(s)


def test_unknown_slo_class_is_an_error_response_and_others_go_on(model_dir: Path) -> None:
    s = eco(model_dir)
    s.add_request(make_request("bad", 10, 5, extra_args={FIELD_SLO_CLASS: "platinum"}))
    s.add_request(make_request("good", 10, 5, extra_args={FIELD_SLO_CLASS: "batch"}))
    trace = drive(s)
    assert trace.finish_reasons == {"bad": "error", "good": "length"}
    assert len(trace.outputs["good"]) == 5
    assert_nothing_held(s)


def test_bad_xargs_are_rejected_not_crashing(model_dir: Path) -> None:
    s = eco(model_dir)
    s.add_request(make_request("a", 10, 5, extra_args={FIELD_MAX_TOKENS: "lots"}))
    s.add_request(make_request("b", 10, 5, extra_args={FIELD_TRUE_OUTPUT: 2.5}))
    s.add_request(make_request("c", 10, 5))
    trace = drive(s)
    assert trace.finish_reasons == {"a": "error", "b": "error", "c": "length"}
    assert_nothing_held(s)


def test_pipelining_lends_reserved_blocks_and_vllm_agrees(model_dir: Path) -> None:
    """A long host reserves far more than it uses for a while; short guests run in that share
    (CacheOPT's pipelining). Physically each guest's blocks are vLLM's free blocks, so vLLM's count
    per request still equals the core's `used`."""
    s = eco(
        model_dir,
        "predictor.kind=oracle",
        "policies.ecoserve.pipelining=true",
        num_blocks=28,
        max_model_len=512,
    )
    s.add_request(make_request("host", 16, 380, extra_args={FIELD_TRUE_OUTPUT: 380}))
    arrivals = {3 + k: [make_request(f"g{k}", 8, 6, extra_args={FIELD_TRUE_OUTPUT: 6})] for k in range(6)}
    trace = drive(s, arrivals=arrivals)
    assert s.core.stats.num_pipelined > 0
    assert len(trace.outputs["host"]) == 380 and all(len(trace.outputs[f"g{k}"]) == 6 for k in range(6))
    assert s.ledger_mismatches == 0
    assert_nothing_held(s)


def test_wrong_predictions_both_ways_complete(model_dir: Path) -> None:
    """Predictions 10x too short (top-ups, preemptions) and 10x too long (reservations wasted,
    stops early): every request completes with its tokens."""
    for factor in (0.1, 10.0):
        s = eco(model_dir, "predictor.kind=oracle", "policy=ecoserve", num_blocks=20)
        for i, (p, m) in enumerate(MIX):
            told = max(1, int(m * factor))
            s.add_request(make_request(f"r{i}", p, m, extra_args={FIELD_TRUE_OUTPUT: told}))
        trace = drive(s)
        assert {rid: len(t) for rid, t in trace.outputs.items()} == {f"r{i}": m for i, (_, m) in enumerate(MIX)}
        assert_nothing_held(s)


def test_predictor_failure_falls_back(model_dir: Path) -> None:
    """The oracle without a true length fails; the core falls back to a default length and serves."""
    s = eco(model_dir, "predictor.kind=oracle", num_blocks=30)
    s.add_request(make_request("a", 10, 20))
    trace = drive(s)
    assert len(trace.outputs["a"]) == 20
    assert s.core.stats.num_predictor_failures == 1


def test_core_disagreement_is_loud(model_dir: Path) -> None:
    """If vLLM had fewer tokens to compute than the core scheduled, the adapter refuses to carry the
    step out rather than corrupting the batch."""
    s = eco(model_dir, num_blocks=30)
    s.add_request(make_request("a", 10, 20))
    out = s.schedule()
    s.update_from_output(out, model_output(s, out))
    s.requests["a"].num_computed_tokens += 1  # vLLM now thinks the decode token is already computed
    with pytest.raises(AdapterStateError, match="the core scheduled 1 tokens of a"):
        s.schedule()


def test_stats_file_records_every_schedule_call(model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "sched.bin"
    s = eco(model_dir, num_blocks=30, stats_path=str(path))
    for i in range(4):
        s.add_request(make_request(f"r{i}", 20, 10))
    trace = drive(s)
    import numpy as np

    durations = np.fromfile(path, dtype="<f8")
    assert len(durations) == trace.steps and (durations > 0).all()
    counters = json.loads(Path(str(path) + ".json").read_text())
    assert counters["steps"] == trace.steps and counters["ledger_mismatches"] == 0
    assert counters["num_finished"] == 4 and counters["core_requests"] == 0


def test_the_onnx_predictor_reads_the_decoded_prompt(tiny_model: Path) -> None:
    """Predictors that read text get the prompt decoded with the model's tokenizer, off the step
    (in the prediction thread); the prediction is the one the ONNX model gives for that text."""
    import dataclasses

    s = eco(tiny_model, "predictor.kind=onnx", num_blocks=60)
    request = make_request("a", 40, 30)
    s.add_request(request)
    s.schedule()
    state = s.core.get("a")
    text = s._tokenizer.decode(request.prompt_token_ids, skip_special_tokens=True)
    assert text.strip()
    core_request = dataclasses.replace(state.request, prompt=text)
    assert state.predicted_output_tokens == s.core.predictor.predict([core_request])[0].num_tokens
    assert s.core.stats.num_predictor_failures == 0
