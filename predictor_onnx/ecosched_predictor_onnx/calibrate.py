"""From class probabilities to lengths: quantiles of the predicted distribution, and their calibration.

Length classes are intervals of tokens, `[1, e0), [e0, e1), ..., [e_last, upper]`. Within a class the
distribution is taken as uniform in log(tokens), so a quantile interpolates log-linearly inside the
class where the cumulative probability crosses it.

Calibration (on the validation split, never the test split): for each confidence q, the level q' whose
model quantile covers a fraction q of the validation lengths. q' is found by bisection, since coverage
grows with q'. The map q -> q' is stored in the model's metadata and applied at inference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def class_of(tokens: np.ndarray, edges: Sequence[int]) -> np.ndarray:
    """Class index of each length (class k holds edges[k-1] <= tokens < edges[k])."""
    return np.searchsorted(np.asarray(edges), tokens, side="right")


def soft_targets(classes: np.ndarray, num_classes: int, smoothing: float) -> np.ndarray:
    """One-hot targets, with `smoothing` of the mass spread to the two neighbouring classes (ordinal)."""
    t = np.zeros((len(classes), num_classes), np.float32)
    t[np.arange(len(classes)), classes] = 1.0 - smoothing
    lo = np.maximum(classes - 1, 0)
    hi = np.minimum(classes + 1, num_classes - 1)
    np.add.at(t, (np.arange(len(classes)), lo), smoothing / 2)
    np.add.at(t, (np.arange(len(classes)), hi), smoothing / 2)
    return t


def bounds(edges: Sequence[int], upper: int) -> np.ndarray:
    """log(tokens) at the class boundaries: [log 1, log e0, ..., log e_last, log upper]."""
    return np.log(np.array([1, *edges, upper], dtype=np.float64))


def quantile_tokens(probs: np.ndarray, log_bounds: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Tokens at each level of each row's distribution: [N, len(levels)], float."""
    cdf = np.cumsum(probs, axis=1)
    cdf[:, -1] = 1.0
    num_classes = probs.shape[1]
    k = (cdf[:, None, :] < levels[None, :, None]).sum(axis=2).clip(0, num_classes - 1)  # [N, Q]
    rows = np.arange(probs.shape[0])[:, None]
    below = np.where(k > 0, cdf[rows, np.maximum(k - 1, 0)], 0.0)
    mass = np.maximum(probs[rows, k], 1e-12)
    frac = np.clip((levels[None, :] - below) / mass, 0.0, 1.0)
    out: np.ndarray = np.exp(log_bounds[k] + frac * (log_bounds[k + 1] - log_bounds[k]))
    return out


def coverage(padded: np.ndarray, true_tokens: np.ndarray) -> float:
    """Fraction of true lengths at or below the padded length."""
    return float(np.mean(true_tokens <= padded))


def calibrate_levels(
    probs: np.ndarray, true_tokens: np.ndarray, log_bounds: np.ndarray, targets: Sequence[float], iterations: int = 40
) -> dict[float, float]:
    """For each target q, the level q' whose quantile covers a fraction q of `true_tokens` (bisection)."""
    out = {}
    for q in targets:
        lo, hi = 1e-4, 1.0 - 1e-6
        for _ in range(iterations):
            mid = (lo + hi) / 2
            cov = coverage(np.ceil(quantile_tokens(probs, log_bounds, np.array([mid]))[:, 0]), true_tokens)
            lo, hi = (mid, hi) if cov < q else (lo, mid)
        out[float(q)] = hi
    return out
