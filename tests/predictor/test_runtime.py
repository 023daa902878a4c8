"""The shipped model under onnxruntime, the `onnx` predictor of the core, and its failure paths."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from ecosched_predictor_onnx.runtime import (
    META_FILE,
    ONNX_FILE,
    TOKENIZER_FILE,
    FallbackPredictor,
    OnnxPredictor,
    default_model_dir,
    load_model,
)

from ecosched.config import EcoschedConfig, PredictorConfig
from ecosched.core.predictor import LengthPredictor
from ecosched.core.request import Request
from ecosched.errors import PredictorError
from ecosched.factory import build_predictor

MAX_MODEL_BYTES = 4 * 1024 * 1024
PROMPTS = [
    "USER: Write a detailed essay on the causes of the First World War.",
    "USER: thanks!",
    "USER: Write a Python function that reverses a linked list, with tests.",
    "USER: What is 2+2?\n\nASSISTANT: 4\n\nUSER: and 3+3?",
]


def requests(prompts: list[str | None], cap: int = 4096, start_s: float = 0.0) -> list[Request]:
    return [Request(f"r{i}", 10, cap, start_s + i, prompt=p) for i, p in enumerate(prompts)]


def copy_model(tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    dst.mkdir()
    for name in (ONNX_FILE, TOKENIZER_FILE, META_FILE):
        shutil.copyfile(default_model_dir() / name, dst / name)
    return dst


def test_shipped_model_loads_is_small_and_reports_its_providers(shipped_model) -> None:  # type: ignore[no-untyped-def]
    files = [default_model_dir() / n for n in (ONNX_FILE, TOKENIZER_FILE, META_FILE, "MODEL_CARD.md")]
    assert all(f.is_file() for f in files)
    assert sum(f.stat().st_size for f in files) < MAX_MODEL_BYTES
    providers = shipped_model.providers  # session.get_providers(): what the session really uses
    print("onnxruntime providers:", providers)
    assert providers and providers[-1] == "CPUExecutionProvider"


@pytest.mark.parametrize("name", [ONNX_FILE, TOKENIZER_FILE, META_FILE])
def test_missing_file_is_a_clear_error_naming_it(tmp_path: Path, name: str) -> None:
    model_dir = copy_model(tmp_path)
    (model_dir / name).unlink()
    with pytest.raises(PredictorError, match=str(model_dir / name)):
        load_model(model_dir)


@pytest.mark.parametrize("name", [ONNX_FILE, TOKENIZER_FILE, META_FILE])
def test_corrupt_file_is_a_clear_error_naming_it(tmp_path: Path, name: str) -> None:
    model_dir = copy_model(tmp_path)
    (model_dir / name).write_bytes(b"\x00not a model{")
    with pytest.raises(PredictorError, match=str(model_dir / name)):
        load_model(model_dir)


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PredictorError, match=str(tmp_path / "nope")):
        load_model(tmp_path / "nope")


def test_registered_as_onnx_and_built_from_config() -> None:
    predictor = build_predictor(EcoschedConfig(predictor=PredictorConfig(kind="onnx")))
    assert isinstance(predictor, OnnxPredictor) and isinstance(predictor, LengthPredictor)


def test_factory_falls_back_with_a_rate_limited_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pc = PredictorConfig(kind="onnx", model_path=str(tmp_path / "missing"), fallback_tokens=123, warning_interval_s=10)
    with caplog.at_level(logging.WARNING):
        predictor = build_predictor(EcoschedConfig(predictor=pc))
    assert isinstance(predictor, FallbackPredictor)
    assert str(tmp_path / "missing") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        first = predictor.predict(requests(["a", "b"]))  # arrivals 0 and 1 s: one warning
        second = predictor.predict(requests(["c"], start_s=5.0))  # within the 10 s interval: none
        capped = predictor.predict(requests(["d"], cap=50, start_s=9.0))  # none
        later = predictor.predict(requests(["e"], start_s=12.0))  # 11 s after the first warning: one
    assert [p.num_tokens for p in first + second + later] == [123] * 4 and capped[0].num_tokens == 50
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2
    assert predictor.num_failures == 4


def test_batch_predictions_in_order_ascending_and_capped(shipped_model) -> None:  # type: ignore[no-untyped-def]
    predictor = OnnxPredictor(shipped_model, fallback_tokens=7, warning_interval_s=60)
    prompts: list[str | None] = [*PROMPTS, None, ""]
    full = predictor.predict(requests(prompts))
    assert len(full) == len(prompts)
    singles = [predictor.predict(requests([p]))[0] for p in prompts]
    assert full == singles  # in order: row i answers request i
    for p in full:
        qs = [q for q, _ in p.quantiles]
        toks = [t for _, t in p.quantiles]
        assert qs == sorted(qs) and qs == [0.5, 0.8, 0.9, 0.95, 0.99]
        assert toks == sorted(toks) and toks[0] >= 1 and p.num_tokens <= toks[0]
    capped = predictor.predict(requests(prompts, cap=20))
    assert all(p.num_tokens <= 20 and all(t <= 20 for _, t in p.quantiles) for p in capped)
    assert predictor.num_failures == 0


def test_dynamic_batch_axis_gives_the_same_rows(shipped_model) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    words = ["write", "code", "essay", "list", "explain", "short", "python", "story", "thanks", "table"]
    prompts = [" ".join(rng.choice(words, size=int(rng.integers(1, 40)))) for _ in range(64)]
    batch = shipped_model.probabilities(prompts)
    single = np.concatenate([shipped_model.probabilities([p]) for p in prompts])
    assert batch.shape == (64, single.shape[1])
    np.testing.assert_allclose(batch, single, atol=1e-5)


def test_a_failing_model_never_raises_in_predict(shipped_model, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    predictor = OnnxPredictor(shipped_model, fallback_tokens=99, warning_interval_s=60)

    def boom(prompts: object) -> object:
        raise RuntimeError("session lost")

    predictor.model = type("Broken", (), {"estimate": staticmethod(boom)})()  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING):
        out = predictor.predict(requests(["x", None]))
    assert [p.num_tokens for p in out] == [99, 99] and predictor.num_failures == 1
    assert "session lost" in caplog.text
