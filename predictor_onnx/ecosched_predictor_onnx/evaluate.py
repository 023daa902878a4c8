"""Evaluation on held-out examples: the model against two baselines fitted on the same training split.

Metrics (true lengths y, point predictions p, padded lengths at confidence q):
- bucket accuracy: p falls in the same reported bucket as y (the model's `report_edges`);
- MAE: mean |p - y| in tokens;
- Kendall's tau (tau-b) between p and y;
- coverage at q: fraction of y at or below the padded length at q (should be close to q).
Baselines: the global median of the training lengths (padded with the training quantiles), and a
least-squares fit of log(y) on log(prompt tokens) (padded with the validation residual quantiles).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ecosched_predictor_onnx import data
from ecosched_predictor_onnx.runtime import LengthModel
from ecosched_predictor_onnx.tokenizer import count_tokens

COVERAGE_LEVELS = (0.5, 0.8, 0.9, 0.95)


def metrics(
    point: np.ndarray, padded: dict[float, np.ndarray], truth: np.ndarray, edges: Sequence[int]
) -> dict[str, Any]:
    """The metrics above for one predictor."""
    from scipy.stats import kendalltau

    e = np.asarray(edges)
    same = np.searchsorted(e, point, side="right") == np.searchsorted(e, truth, side="right")
    tau = kendalltau(point, truth).statistic if np.ptp(point) > 0 else 0.0
    return {
        "bucket_accuracy": float(np.mean(same)),
        "mae_tokens": float(np.mean(np.abs(point - truth))),
        "kendall_tau": float(tau),
        "coverage": {str(q): float(np.mean(truth <= padded[q])) for q in padded},
        "mean_padded_tokens": {str(q): float(np.mean(padded[q])) for q in padded},
    }


def model_metrics(model: LengthModel, prompts: Sequence[str], truth: np.ndarray, batch: int = 1024) -> dict[str, Any]:
    """Metrics of a loaded model (through onnxruntime, as served)."""
    points, quants = [], []
    for s in range(0, len(prompts), batch):
        est = model.estimate(prompts[s : s + batch])
        points.append(est.point)
        quants.append(est.quantiles)
    point, q = np.concatenate(points), np.concatenate(quants)
    padded = {lv: q[:, model.levels.index(lv)] for lv in COVERAGE_LEVELS if lv in model.levels}
    return metrics(point, padded, truth, model.report_edges)


def baseline_metrics(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    edges: Sequence[int],
) -> dict[str, dict[str, Any]]:
    """Both baselines; each pair is (prompt tokens, output tokens)."""
    _, y_tr = train
    n = len(test[1])
    median = np.full(n, float(np.median(y_tr)))
    global_padded = {q: np.full(n, float(np.ceil(np.quantile(y_tr, q)))) for q in COVERAGE_LEVELS}
    x_tr, ly_tr = np.log1p(train[0]), np.log(train[1])
    slope, intercept = np.polyfit(x_tr, ly_tr, 1)
    resid = np.log(val[1]) - (intercept + slope * np.log1p(val[0]))
    pred = intercept + slope * np.log1p(test[0])
    reg_padded = {q: np.ceil(np.exp(pred + np.quantile(resid, q))) for q in COVERAGE_LEVELS}
    reg_point = np.exp(pred + np.quantile(resid, 0.5))
    out = {
        "global_median": metrics(median, global_padded, test[1], edges),
        "prompt_length_regression": metrics(reg_point, reg_padded, test[1], edges),
    }
    out["prompt_length_regression"]["fit"] = {"slope": float(slope), "intercept": float(intercept)}
    return out


def evaluate_sharegpt(model: LengthModel) -> dict[str, Any]:
    """The model and the baselines on the ShareGPT test split that the model's training config defines."""
    tc = model.meta["train_config"]
    splits = data.split_examples(
        data.load_sharegpt(), tc["seed"], (tc["validation_fraction"], tc["test_fraction"]), tc["max_history_turns"]
    )
    tok = model.tokenizer

    def lengths(examples: list[data.Example]) -> tuple[np.ndarray, np.ndarray]:
        return (
            np.array(count_tokens(tok, [e.prompt for e in examples])),
            np.array(count_tokens(tok, [e.response for e in examples])),
        )

    test = splits["test"]
    test_pair = lengths(test)
    result = {
        "split": "test",
        "num_examples": len(test),
        "num_conversations": len({e.conversation_id for e in test}),
        "providers": model.providers,
        "model": model_metrics(model, [e.prompt for e in test], test_pair[1]),
    }
    result["baselines"] = baseline_metrics(
        lengths(splits["train"]), lengths(splits["validation"]), test_pair, model.report_edges
    )
    return result


def evaluate_log(model: LengthModel, prompts: Sequence[str], tokens: np.ndarray) -> dict[str, Any]:
    """The model on a prediction log (no baselines: a log has no training split)."""
    return {
        "split": "log",
        "num_examples": len(prompts),
        "providers": model.providers,
        "model": model_metrics(model, prompts, tokens),
    }
