"""`ecosched predictor ...`: predict output, eval JSON, export, and online refit from a log."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ecosched_predictor_onnx.log import PredictionLog
from ecosched_predictor_onnx.runtime import load_model

from ecosched.cli import main

TOPICS = ["the sea", "a python parser", "tax law", "black holes", "a birthday party", "sql joins", "roman history"]
ASKS = ["Write an essay about", "Explain", "Give me a list of facts on", "Write code for", "Summarise", "Tell me about"]


def synthetic_prompts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"USER: {rng.choice(ASKS)} {rng.choice(TOPICS)} (request {i})." for i in range(n)]


def test_predict_json_prints_one_object_per_text_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    texts = ["USER: Write a long essay about the history of Rome.", "USER: hi", "USER: Write a Python web server."]
    assert main(["predictor", "predict", *texts, "--json", "--quantile", "0.9", "--max-output-tokens", "2048"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert isinstance(out, list) and len(out) == len(texts)
    for obj in out:
        assert set(obj) == {"predicted_tokens", "bucket", "padded_tokens"}
        low, high = obj["bucket"]
        assert low <= obj["predicted_tokens"] and (high is None or obj["predicted_tokens"] < high)
        assert obj["predicted_tokens"] <= obj["padded_tokens"] <= 2048
    # In input order: each text alone gives its own row.
    assert main(["predictor", "predict", texts[1], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["predicted_tokens"] == out[1]["predicted_tokens"]


def test_predict_plain_output_and_missing_model_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predictor", "predict", "USER: hello", "USER: write a poem"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("bucket" in line and "padded@0.9" in line for line in lines)
    assert main(["predictor", "predict", "x", "--model", str(tmp_path / "none")]) == 2
    assert str(tmp_path / "none") in capsys.readouterr().err


def test_eval_from_log_prints_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = PredictionLog(tmp_path / "log.jsonl")
    for i, p in enumerate(synthetic_prompts(40, seed=1)):
        log.append(p, 50 + 10 * i)
    out = tmp_path / "eval.json"
    assert main(["predictor", "eval", "--from-log", str(log.path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "onnx model" in printed and str(out) in printed
    result = json.loads(out.read_text())
    assert result["num_examples"] == 40
    assert set(result["model"]) >= {"bucket_accuracy", "mae_tokens", "kendall_tau", "coverage"}
    assert set(result["model"]["coverage"]) == {"0.5", "0.8", "0.9", "0.95"}


def test_export_writes_a_model_that_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predictor", "export", "--out", str(tmp_path / "exported")]) == 0
    assert "dynamic batch axis checked" in capsys.readouterr().out
    assert load_model(tmp_path / "exported").estimate(["USER: hi"]).point.shape == (1,)


def test_refit_from_a_log_of_longer_answers_moves_predictions_up(tmp_path: Path) -> None:
    shipped = load_model()
    train_prompts = synthetic_prompts(300, seed=2)
    fresh_prompts = synthetic_prompts(100, seed=3)
    log = PredictionLog(tmp_path / "served.jsonl")
    # The served model answers 4x longer than the shipped model expects for the same prompts.
    for p, t in zip(train_prompts, shipped.estimate(train_prompts).point, strict=True):
        log.append(p, int(4 * t))
    out = tmp_path / "refit"
    assert main(["predictor", "train", "--from-log", str(log.path), "--out", str(out)]) == 0
    before = np.median(shipped.estimate(fresh_prompts).point)
    after = np.median(load_model(out).estimate(fresh_prompts).point)
    assert after > 2.5 * before, (before, after)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["provenance"]["log_records"] == 300
