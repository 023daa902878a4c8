"""ShareGPT recovery, conversation splits, the prediction log and featurisation (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ecosched_predictor_onnx import data
from ecosched_predictor_onnx.calibrate import bounds, calibrate_levels, coverage, quantile_tokens
from ecosched_predictor_onnx.features import FeatureConfig, split_turns, text_slices
from ecosched_predictor_onnx.log import PredictionLog, read_records

from ecosched.errors import PredictorError


def record(rid: str, *turns: tuple[str, str]) -> dict[str, object]:
    return {"id": rid, "conversations": [{"from": f, "value": v} for f, v in turns]}


def test_truncated_json_keeps_every_complete_record() -> None:
    recs = [record("a_0", ("human", "hi"), ("gpt", "hello")), record("b_0", ("human", "x"), ("gpt", "y"))]
    text = json.dumps(recs, indent=2)
    cut = text[: text.rindex('"y"')]  # the second record is cut in the middle
    assert [r["id"] for r in data.iter_complete_records(cut)] == ["a_0"]
    assert [r["id"] for r in data.iter_complete_records(text)] == ["a_0", "b_0"]


def test_parts_of_a_conversation_are_joined_and_give_history() -> None:
    recs = [
        record("c_1", ("human", "second question"), ("gpt", "second answer")),
        record("c_0", ("human", "first question"), ("gpt", "first answer")),
    ]
    merged = data.merge_parts(recs)
    assert len(merged) == 1
    examples = list(data.examples_of(merged[0], max_history_turns=8))
    assert [e.response for e in examples] == ["first answer", "second answer"]
    assert examples[1].prompt == "USER: first question\n\nASSISTANT: first answer\n\nUSER: second question"


def test_split_is_by_conversation_and_seeded() -> None:
    recs = [record(f"conv{i}_{p}", ("human", f"q{p}"), ("gpt", "a")) for i in range(200) for p in range(2)]
    a = data.split_examples(recs, seed=0, fractions=(0.1, 0.1), max_history_turns=8)
    b = data.split_examples(recs, seed=0, fractions=(0.1, 0.1), max_history_turns=8)
    c = data.split_examples(recs, seed=1, fractions=(0.1, 0.1), max_history_turns=8)
    assert a == b and a != c
    owners = {}
    for name, exs in a.items():
        for e in exs:
            assert owners.setdefault(e.conversation_id, name) == name
    assert all(len(a[name]) > 0 for name in data.SPLITS)


def test_split_turns_reads_the_rendered_chat_back() -> None:
    prompt = data.render_chat([("user", "q1"), ("assistant", "a long answer"), ("user", "q2")])
    turns = split_turns(prompt)
    assert turns.user == "q2" and turns.prev_assistant == "a long answer"
    assert turns.assistant_chars == (len("a long answer"),)
    assert split_turns("plain text").user == "plain text"
    assert split_turns(None).user == ""


def test_only_capped_slices_are_tokenised() -> None:
    config = FeatureConfig(head_chars=10, tail_chars=5, prev_chars=4, prev_tail_chars=2)
    turns = split_turns(data.render_chat([("user", "u"), ("assistant", "abcdefgh"), ("user", "x" * 1000)]))
    user, prev = text_slices(turns, config)
    assert len(user) == 10 + 1 + 5 and prev == "abcd gh"


def test_quantiles_are_monotone_and_calibration_reaches_its_target() -> None:
    rng = np.random.default_rng(0)
    edges = (16, 32, 64, 128, 256, 512)
    lb = bounds(edges, 1024)
    probs = rng.dirichlet(np.ones(len(edges) + 1), size=400)
    q = quantile_tokens(probs, lb, np.array([0.1, 0.5, 0.9]))
    assert np.all(np.diff(q, axis=1) >= 0)
    truth = rng.integers(1, 1024, size=400)
    levels = calibrate_levels(probs, truth, lb, (0.5, 0.9))
    for target, level in levels.items():
        padded = np.ceil(quantile_tokens(probs, lb, np.array([level]))[:, 0])
        assert abs(coverage(padded, truth) - target) <= 0.01


def test_log_round_trip_and_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "log.jsonl"
    log = PredictionLog(path)
    log.append("USER: hi", 12)
    log.append("USER: tell me more", 400)
    assert [(r.prompt, r.output_tokens) for r in read_records(path)] == [("USER: hi", 12), ("USER: tell me more", 400)]
    with pytest.raises(PredictorError):
        log.append("x", 0)
    path.write_text('{"prompt": "a", "output_tokens": 3}\n{"prompt": "b"}\n')
    with pytest.raises(PredictorError, match=f"{path}:2"):
        read_records(path)
    with pytest.raises(PredictorError, match="not found"):
        read_records(tmp_path / "missing.jsonl")
