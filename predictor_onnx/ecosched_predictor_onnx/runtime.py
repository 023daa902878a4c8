"""Inference: a model directory loaded into an onnxruntime session, and the `onnx` predictor of the core.

A model directory holds `model.onnx`, `tokenizer.json` and `meta.json` (feature settings, length
classes, calibrated quantile levels). `load_model` raises `PredictorError` naming the file that is
missing or unreadable. The scheduler-facing `OnnxPredictor` never raises: a failing batch gets
`fallback_tokens` with a rate-limited warning, and the registry factory returns a `FallbackPredictor`
when the model cannot be loaded at all.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ecosched.config import EcoschedConfig
from ecosched.core.predictor import LengthPredictor, Prediction
from ecosched.core.request import Request
from ecosched.errors import PredictorError
from ecosched_predictor_onnx.calibrate import bounds, quantile_tokens
from ecosched_predictor_onnx.features import FeatureConfig, Featurizer
from ecosched_predictor_onnx.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "meta.json"
FORMAT_VERSION = 2  # 2: hashed-word features (1 hashed BPE ids)
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def default_model_dir() -> Path:
    """The model shipped inside this package."""
    return Path(str(resources.files("ecosched_predictor_onnx").joinpath("model")))


@dataclass(frozen=True)
class Estimates:
    """Predictions for a batch, as arrays: point [N], quantile tokens [N, Q] at `levels`, bucket [N]."""

    point: np.ndarray
    levels: tuple[float, ...]
    quantiles: np.ndarray
    bucket: np.ndarray
    report_edges: tuple[int, ...]

    def bucket_range(self, i: int) -> tuple[int, int | None]:
        """[low, high) tokens of row i's bucket; high is None for the last, open bucket."""
        b = int(self.bucket[i])
        low = self.report_edges[b - 1] if b > 0 else 0
        return low, (self.report_edges[b] if b < len(self.report_edges) else None)


def read_meta(path: Path) -> dict[str, Any]:
    """The metadata of a model directory; missing, unreadable or of another format: PredictorError."""
    if not path.is_file():
        raise PredictorError(f"model metadata file not found: {path}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        version = meta["format_version"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PredictorError(f"model metadata file {path} is not valid: {exc!r}") from exc
    if version != FORMAT_VERSION:
        raise PredictorError(f"model metadata file {path} has format {version!r}, expected {FORMAT_VERSION}")
    return dict(meta)


class LengthModel:
    """A loaded model: tokenizer, featuriser, onnxruntime session and calibrated quantile levels."""

    def __init__(self, directory: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        self.directory = directory
        self.meta = read_meta(directory / META_FILE)
        try:
            self.features = FeatureConfig(**self.meta["features"])
            self.class_edges = tuple(int(e) for e in self.meta["class_edges"])
            self.report_edges = tuple(int(e) for e in self.meta["report_edges"])
            self.log_bounds = bounds(self.class_edges, int(self.meta["upper_tokens"]))
            cal = {float(q): float(lv) for q, lv in self.meta["calibrated_levels"].items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise PredictorError(f"model metadata file {directory / META_FILE} lacks a field: {exc!r}") from exc
        self.levels = tuple(sorted(cal))
        self.model_levels = np.array([cal[q] for q in self.levels])
        self.tokenizer = load_tokenizer(directory / TOKENIZER_FILE)  # the length unit (eval, refit)
        self.featurizer = Featurizer(self.features)
        onnx_path = directory / ONNX_FILE
        if not onnx_path.is_file():
            raise PredictorError(f"ONNX model file not found: {onnx_path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        available = set(ort.get_available_providers())
        providers = [p for p in PREFERRED_PROVIDERS if p in available]
        try:
            self.session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise PredictorError(f"ONNX model file {onnx_path} cannot be loaded: {exc}") from exc

    @property
    def providers(self) -> list[str]:
        """Execution providers the session really uses (`session.get_providers()`)."""
        return list(self.session.get_providers())

    def probabilities(self, prompts: Sequence[str | None]) -> np.ndarray:
        """Class probabilities [N, K] for a batch of prompts."""
        ids, weights, dense = self.featurizer(prompts)
        out = self.session.run(None, {"ids": ids, "weights": weights, "dense": dense})
        return np.asarray(out[0])

    def estimate(self, prompts: Sequence[str | None]) -> Estimates:
        """Point prediction (the calibrated median), calibrated quantiles and bucket of each prompt."""
        if not prompts:
            empty = np.zeros(0, np.int64)
            return Estimates(empty, self.levels, np.zeros((0, len(self.levels)), np.int64), empty, self.report_edges)
        q = np.ceil(quantile_tokens(self.probabilities(prompts), self.log_bounds, self.model_levels))
        q = np.maximum.accumulate(np.maximum(q, 1.0), axis=1).astype(np.int64)
        point = q[:, self.levels.index(0.5)] if 0.5 in self.levels else q[:, 0]
        bucket = np.searchsorted(np.asarray(self.report_edges), point, side="right")
        return Estimates(point, self.levels, q, bucket, self.report_edges)


def load_model(path: str | Path | None = None, threads: int = 1) -> LengthModel:
    """The model in directory `path` (default: the shipped one). Raises PredictorError naming a missing
    or corrupt file."""
    directory = Path(path) if path is not None else default_model_dir()
    if not directory.is_dir():
        raise PredictorError(f"model directory not found: {directory}")
    return LengthModel(directory, threads)


class _RateLimitedWarning:
    """At most one warning per `interval_s` of request arrival time; counts every failure."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.num_failures = 0
        self._last_s: float | None = None

    def __call__(self, now_s: float, message: str, *args: object) -> None:
        self.num_failures += 1
        if self._last_s is None or now_s - self._last_s >= self.interval_s or now_s < self._last_s:
            self._last_s = now_s
            log.warning(message + " (%d failures so far)", *args, self.num_failures)


def to_prediction(est: Estimates, i: int, cap: int) -> Prediction:
    """Row i as the core's Prediction: point and quantiles capped at `cap` (the request's max_output_tokens)."""
    cap = max(1, cap)
    point = min(int(est.point[i]), cap)
    qs = tuple((lv, min(cap, max(point, int(t)))) for lv, t in zip(est.levels, est.quantiles[i], strict=True))
    return Prediction(point, qs)


class _FallsBack:
    """What both `onnx` predictors share: `fallback_tokens` (capped per request) with a rate-limited
    warning when the model cannot answer."""

    name = "onnx"
    reads_prompt = True  # engines that see token ids only decode the prompt for it (see the vLLM adapter)

    def __init__(self, fallback_tokens: int, warning_interval_s: float) -> None:
        self.fallback_tokens = fallback_tokens
        self._warn = _RateLimitedWarning(warning_interval_s)

    @property
    def num_failures(self) -> int:
        return self._warn.num_failures

    def _fall_back(self, requests: Sequence[Request], message: str, *args: object) -> list[Prediction]:
        if requests:
            self._warn(requests[-1].arrival_s, message, *args)
        return [Prediction(min(self.fallback_tokens, max(1, r.max_output_tokens))) for r in requests]


class OnnxPredictor(_FallsBack):
    """The `onnx` predictor: one batched model call per `predict`; never raises (falls back instead)."""

    def __init__(self, model: LengthModel, fallback_tokens: int, warning_interval_s: float) -> None:
        super().__init__(fallback_tokens, warning_interval_s)
        self.model = model

    def predict(self, requests: Sequence[Request]) -> list[Prediction]:
        if not requests:
            return []
        try:
            prompts = [r.prompt if isinstance(r.prompt, str) else None for r in requests]
            est = self.model.estimate(prompts)
            return [to_prediction(est, i, r.max_output_tokens) for i, r in enumerate(requests)]
        except Exception as exc:  # NOTE: a predictor failure must never stop a scheduling step
            return self._fall_back(
                requests, "onnx predictor failed, predicting %d tokens: %r", self.fallback_tokens, exc
            )


class FallbackPredictor(_FallsBack):
    """Stands in for the `onnx` predictor when its model cannot be loaded: `fallback_tokens` for every
    request, with a rate-limited warning."""

    def __init__(self, reason: str, fallback_tokens: int, warning_interval_s: float) -> None:
        super().__init__(fallback_tokens, warning_interval_s)
        self.reason = reason

    def predict(self, requests: Sequence[Request]) -> list[Prediction]:
        return self._fall_back(
            requests, "onnx predictor unavailable (%s); predicting %d tokens", self.reason, self.fallback_tokens
        )


def factory(config: EcoschedConfig) -> LengthPredictor:
    """The `onnx` predictor of `config` (model: `predictor.model_path`, or the shipped one); a model that
    cannot be loaded gives a FallbackPredictor and a warning, never an exception."""
    pc = config.predictor
    try:
        model = load_model(pc.model_path)
    except (PredictorError, ImportError) as exc:
        log.warning("onnx predictor: cannot load the model, falling back to %d tokens: %s", pc.fallback_tokens, exc)
        return FallbackPredictor(str(exc), pc.fallback_tokens, pc.warning_interval_s)
    log.info("onnx predictor: %s on %s", model.directory, ", ".join(model.providers))
    return OnnxPredictor(model, pc.fallback_tokens, pc.warning_interval_s)


def register(registry: Any) -> None:
    """Entry point of the group `ecosched.predictors`: adds the `onnx` predictor to the registry."""
    registry.add("onnx", "ONNX model reading the prompt text (ecosched_predictor_onnx)", factory)
