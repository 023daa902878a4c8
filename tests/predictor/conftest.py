"""Shared fixtures of the predictor tests: the shipped model, loaded once."""

from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
pytest.importorskip("tokenizers", reason="the onnx extra is not installed")


@pytest.fixture(scope="session")
def shipped_model():  # type: ignore[no-untyped-def]
    from ecosched_predictor_onnx.runtime import load_model

    return load_model()
