"""Bad input is rejected with a precise error, and nothing is lost: the scheduler's state is exactly as
before the error, and the requests it already had still run to completion."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from conftest import make_config, make_request, make_scheduler

from ecosched import Prediction, Request, RequestStatus, Scheduler, StepOutcome
from ecosched.errors import (
    CapacityError,
    ContextLengthError,
    DuplicateRequestError,
    EcoschedError,
    InvalidRequestError,
    OutcomeError,
    PredictorError,
    UnknownRequestError,
)
from ecosched.factory import build_scheduler
from ecosched.sim.engine import run as drive

POLICY_NAMES = ["ecoserve", "vllm", "vllm-priority", "sarathi", "sglang", "sjf", "oracle"]
# 32 blocks of 16 tokens = 512 KV tokens, but a context of 1024: a request can be within the context
# length and still larger than the whole cache.
CACHE = {"block_size": 16, "num_gpu_blocks": 32, "num_cpu_blocks": 16, "max_model_len": 1024}


def snapshot(s: Scheduler) -> dict[str, Any]:
    """Everything a failed call must leave untouched."""
    return {
        "requests": sorted(s.requests),
        "statuses": {rid: st.status for rid, st in s.requests.items()},
        "waiting": [st.request_id for st in s.waiting],
        "swapped": [st.request_id for st in s.swapped],
        "running": [st.request_id for st in s.running],
        "free_blocks": s.ledger.num_free_blocks,
        "cpu_free_blocks": s.ledger.num_cpu_free_blocks,
        "ledger_holders": sorted(s.ledger.request_ids()),
        "computed": {rid: st.num_computed_tokens for rid, st in s.requests.items()},
        "step_id": s.step_id,
        "in_flight": sorted(s._in_flight),
        "stats": dataclasses.asdict(s.stats),
        "arrivals_seen": len(s.padder.rate._times),
    }


def busy_scheduler(policy: str) -> tuple[Scheduler, list[str]]:
    """A scheduler with requests running (after one step) and more waiting behind them."""
    s = make_scheduler(policy, cache=CACHE)
    s.add_requests([make_request(f"run-{i}", prompt=40, max_output=20, true_output=12) for i in range(3)])
    decision = s.schedule(0.0)
    assert decision.num_scheduled_tokens > 0
    s.update(StepOutcome(decision.step_id, 0.01))
    s.add_requests([make_request(f"wait-{i}", prompt=60, max_output=16, arrival=0.01) for i in range(2)])
    ids = ["run-0", "run-1", "run-2", "wait-0", "wait-1"]
    assert sorted(s.requests) == ids
    assert s.running, "some requests should be running after the first step"
    assert len(s.waiting) >= 2
    return s, ids


def assert_all_finish(s: Scheduler, ids: Sequence[str]) -> None:
    """The queued requests run to completion: every id ends, none aborted, the ledger is empty."""
    result = drive(s, [])
    finished = sorted(r.request_id for r in result.records)
    assert finished == sorted(ids)
    assert all(r.finish_reason.value != "abort" for r in result.records)
    assert s.num_unfinished == 0
    assert s.ledger.request_ids() == []
    assert s.ledger.num_free_blocks == s.ledger.num_blocks
    s.check_invariants()


def rejects(s: Scheduler, exc_type: type[EcoschedError], call: Callable[[], object], match: str) -> None:
    before = snapshot(s)
    with pytest.raises(exc_type, match=match):
        call()
    assert snapshot(s) == before
    s.check_invariants()


# ---- invalid requests: each rejected, nothing lost ----

BAD_REQUESTS: list[tuple[str, Request, type[EcoschedError], str]] = [
    (
        "prompt-longer-than-context",
        make_request("bad", prompt=2000, max_output=10),
        ContextLengthError,
        "context length 1024",
    ),
    (
        "prompt-plus-output-over-context",
        make_request("bad", prompt=600, max_output=600),
        ContextLengthError,
        "1200 tokens exceeds the context length 1024",
    ),
    ("prompt-exactly-context", make_request("bad", prompt=1024, max_output=1), ContextLengthError, "1025"),
    ("zero-max-output", make_request("bad", prompt=10, max_output=0), InvalidRequestError, "max_output_tokens"),
    ("negative-max-output", make_request("bad", prompt=10, max_output=-5), InvalidRequestError, "max_output_tokens"),
    ("zero-prompt", make_request("bad", prompt=0, max_output=10), InvalidRequestError, "num_prompt_tokens"),
    ("negative-prompt", make_request("bad", prompt=-3, max_output=10), InvalidRequestError, "num_prompt_tokens"),
    ("larger-than-kv-cache", make_request("bad", prompt=600, max_output=100), CapacityError, "KV blocks"),
    ("prompt-larger-than-kv-cache", make_request("bad", prompt=900, max_output=1), CapacityError, "KV blocks"),
    ("unknown-slo-class", make_request("bad", slo="platinum"), InvalidRequestError, "platinum"),
    ("duplicate-of-running", make_request("run-0"), DuplicateRequestError, "run-0"),
    ("duplicate-of-waiting", make_request("wait-1"), DuplicateRequestError, "wait-1"),
]


@pytest.mark.parametrize("policy", POLICY_NAMES)
@pytest.mark.parametrize(("case", "request_", "exc_type", "match"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_is_rejected_and_nothing_is_lost(
    policy: str, case: str, request_: Request, exc_type: type[EcoschedError], match: str
) -> None:
    s, ids = busy_scheduler(policy)
    rejects(s, exc_type, lambda: s.add_request(request_), match)
    assert_all_finish(s, ids)


def test_error_classes() -> None:
    assert issubclass(ContextLengthError, InvalidRequestError)
    assert issubclass(CapacityError, InvalidRequestError)
    assert issubclass(DuplicateRequestError, InvalidRequestError)
    assert issubclass(InvalidRequestError, EcoschedError)
    assert issubclass(UnknownRequestError, EcoschedError)
    assert issubclass(OutcomeError, EcoschedError)


def test_bad_request_with_explicit_prediction_is_rejected() -> None:
    s, ids = busy_scheduler("ecoserve")
    rejects(
        s, ContextLengthError, lambda: s.add_request(make_request("bad", prompt=2000), Prediction(10)), "context length"
    )
    assert_all_finish(s, ids)


def test_largest_valid_request_is_accepted_and_runs() -> None:
    # The boundary of CapacityError: a request that needs the whole admittable cache still runs alone.
    s = make_scheduler("vllm", cache=CACHE)
    s.add_request(make_request("big", prompt=500, max_output=12, true_output=12))
    assert_all_finish(s, ["big"])


# ---- batches: all or nothing ----


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_duplicate_ids_within_one_batch(policy: str) -> None:
    s, ids = busy_scheduler(policy)
    batch = [make_request("new-a"), make_request("new-b"), make_request("new-a")]
    rejects(s, DuplicateRequestError, lambda: s.add_requests(batch), "new-a")
    assert "new-a" not in s.requests and "new-b" not in s.requests
    assert_all_finish(s, ids)


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_batch_with_one_bad_request_adds_none(policy: str) -> None:
    s, ids = busy_scheduler(policy)
    batch = [make_request("new-a"), make_request("new-b", prompt=0), make_request("new-c")]
    rejects(s, InvalidRequestError, lambda: s.add_requests(batch), "new-b")
    assert not {"new-a", "new-b", "new-c"} & set(s.requests)
    assert_all_finish(s, ids)


def test_batch_duplicating_a_queued_request_adds_none() -> None:
    s, ids = busy_scheduler("ecoserve")
    batch = [make_request("new-a"), make_request("wait-0")]
    rejects(s, DuplicateRequestError, lambda: s.add_requests(batch), "wait-0")
    assert "new-a" not in s.requests
    assert_all_finish(s, ids)


def test_batch_with_wrong_number_of_predictions_adds_none() -> None:
    s, ids = busy_scheduler("ecoserve")
    batch = [make_request("new-a"), make_request("new-b")]
    rejects(s, InvalidRequestError, lambda: s.add_requests(batch, [Prediction(5)]), "1 predictions for 2")
    assert_all_finish(s, ids)


def test_rejected_id_can_be_added_once_corrected() -> None:
    s, ids = busy_scheduler("ecoserve")
    rejects(s, InvalidRequestError, lambda: s.add_request(make_request("fixme", max_output=0)), "max_output")
    s.add_request(make_request("fixme", max_output=8, true_output=8))
    assert_all_finish(s, [*ids, "fixme"])


# ---- abort ----


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_abort_unknown_id(policy: str) -> None:
    s, ids = busy_scheduler(policy)
    rejects(s, UnknownRequestError, lambda: s.abort("never-added", 0.02), "never-added")
    assert_all_finish(s, ids)


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_abort_of_a_finished_request(policy: str) -> None:
    s = make_scheduler(policy, cache=CACHE)
    s.add_request(make_request("done", prompt=20, max_output=4, true_output=4))
    result = drive(s, [])
    assert [r.request_id for r in result.records] == ["done"]
    s.add_requests([make_request("later-a", true_output=5), make_request("later-b", true_output=7)])
    rejects(s, UnknownRequestError, lambda: s.abort("done", 1.0), "done")
    assert_all_finish(s, ["later-a", "later-b"])


def test_abort_twice() -> None:
    s, ids = busy_scheduler("ecoserve")
    record = s.abort("run-1", 0.02)
    assert record.request_id == "run-1" and record.finish_reason.value == "abort"
    rejects(s, UnknownRequestError, lambda: s.abort("run-1", 0.03), "run-1")
    assert_all_finish(s, [i for i in ids if i != "run-1"])


# ---- outcomes ----


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_update_with_unknown_step_id(policy: str) -> None:
    s, ids = busy_scheduler(policy)
    rejects(s, OutcomeError, lambda: s.update(StepOutcome(999, 0.02)), "999")
    assert_all_finish(s, ids)


def test_update_of_a_step_twice() -> None:
    s, ids = busy_scheduler("ecoserve")
    decision = s.schedule(0.02)
    s.update(StepOutcome(decision.step_id, 0.03))
    rejects(s, OutcomeError, lambda: s.update(StepOutcome(decision.step_id, 0.04)), str(decision.step_id))
    assert_all_finish(s, ids)


def test_update_of_a_step_not_yet_scheduled() -> None:
    s, ids = busy_scheduler("ecoserve")
    rejects(s, OutcomeError, lambda: s.update(StepOutcome(s.step_id + 1, 0.02)), "not in flight")
    assert_all_finish(s, ids)


# ---- a failing predictor ----


class BrokenPredictor:
    name = "broken"

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, requests: Sequence[Request]) -> list[Prediction]:
        self.calls += 1
        raise RuntimeError("model server unreachable")


class ShortPredictor:
    """Returns one prediction fewer than asked for."""

    name = "short"

    def predict(self, requests: Sequence[Request]) -> list[Prediction]:
        return [Prediction(5) for _ in requests][1:]


FALLBACK = 100


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_failing_predictor_falls_back(policy: str, caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(policy, cache=CACHE, predictor={"fallback_tokens": FALLBACK})
    predictor = BrokenPredictor()
    s = build_scheduler(config, predictor=predictor)
    requests = [make_request(f"r{i}", prompt=30, max_output=200, true_output=10 + i) for i in range(3)]
    requests.append(make_request("short", prompt=30, max_output=50, true_output=20))
    with caplog.at_level(logging.WARNING, logger="ecosched"):
        states = s.add_requests(requests)
    assert predictor.calls == 1
    assert [st.status for st in states] == [RequestStatus.WAITING] * 4
    assert [st.predicted_output_tokens for st in states] == [FALLBACK, FALLBACK, FALLBACK, 50]
    assert s.stats.num_predictor_failures == 4
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "broken" in warnings[0].getMessage() and "model server unreachable" in warnings[0].getMessage()
    assert str(FALLBACK) in warnings[0].getMessage()

    # One more failing batch later on: counted too; schedule() never raises and everything finishes.
    s.add_request(make_request("r-late", prompt=30, max_output=200, arrival=0.5, true_output=9))
    assert s.stats.num_predictor_failures == 5
    assert_all_finish(s, [r.request_id for r in requests] + ["r-late"])


def test_failing_predictor_warning_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    s = build_scheduler(make_config("ecoserve", cache=CACHE), predictor=BrokenPredictor())
    with caplog.at_level(logging.WARNING, logger="ecosched"):
        for i in range(5):
            s.add_request(make_request(f"r{i}", arrival=i * 0.1, true_output=3))
    assert s.stats.num_predictor_failures == 5
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert_all_finish(s, [f"r{i}" for i in range(5)])


def test_predictor_returning_too_few_predictions_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    s = build_scheduler(
        make_config("ecoserve", cache=CACHE, predictor={"fallback_tokens": 30}), predictor=ShortPredictor()
    )
    with caplog.at_level(logging.WARNING, logger="ecosched"):
        states = s.add_requests([make_request("a", true_output=4), make_request("b", true_output=6)])
    assert [st.predicted_output_tokens for st in states] == [30, 30]
    assert s.stats.num_predictor_failures == 2
    assert any("short" in r.getMessage() for r in caplog.records)
    assert_all_finish(s, ["a", "b"])


def test_oracle_without_true_length_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    # The oracle raises PredictorError for a request with no true length; the request is still queued.
    s = make_scheduler("oracle", cache=CACHE, predictor={"fallback_tokens": 24})
    request = Request("no-truth", 20, 64, 0.0)
    with pytest.raises(PredictorError):
        s.predictor.predict([request])
    with caplog.at_level(logging.WARNING, logger="ecosched"):
        state = s.add_request(request)
    assert state.predicted_output_tokens == 24
    assert s.stats.num_predictor_failures == 1
    assert caplog.records
    # Without a true length the driver never stops it early: it runs to max_output_tokens.
    result = drive(s, [])
    assert [(r.request_id, r.num_output_tokens) for r in result.records] == [("no-truth", 64)]


def test_invalid_request_is_rejected_before_the_predictor_runs() -> None:
    predictor = BrokenPredictor()
    s = build_scheduler(make_config("ecoserve", cache=CACHE), predictor=predictor)
    with pytest.raises(InvalidRequestError):
        s.add_requests([make_request("ok"), make_request("bad", max_output=0)])
    assert predictor.calls == 0
    assert s.stats.num_predictor_failures == 0
