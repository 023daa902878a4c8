"""The network, in numpy: hashed n-gram embedding bag + dense features -> one hidden layer -> softmax
over length classes. Trained with Adam on cross-entropy; no deep-learning framework is needed.

    ids [N, L], weights [N, S, L]  --gather E, weighted sums-->  bags [N, S*D] --+
    dense [N, F]  --(x - mean) / std------------------------------------> concat -> relu(. W1 + b1) [N, H]
                                                                         -> . W2 + b2 -> softmax [N, K]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

PARAM_NAMES = ("E", "W1", "b1", "W2", "b2")


@dataclass
class Network:
    """Parameters of the network (float32) and the dense-feature scaling."""

    params: dict[str, np.ndarray]
    dense_mean: np.ndarray
    dense_std: np.ndarray

    @classmethod
    def init(
        cls, num_rows: int, dim: int, num_bags: int, num_dense: int, hidden: int, num_classes: int, seed: int
    ) -> Network:
        rng = np.random.default_rng(seed)
        fan_in = dim * num_bags + num_dense
        params = {
            "E": (rng.standard_normal((num_rows, dim)) * 0.1).astype(np.float32),
            "W1": (rng.standard_normal((fan_in, hidden)) * np.sqrt(2.0 / fan_in)).astype(np.float32),
            "b1": np.zeros(hidden, np.float32),
            "W2": (rng.standard_normal((hidden, num_classes)) * np.sqrt(1.0 / hidden)).astype(np.float32),
            "b2": np.zeros(num_classes, np.float32),
        }
        return cls(params, np.zeros(num_dense, np.float32), np.ones(num_dense, np.float32))

    def forward(self, ids: np.ndarray, weights: np.ndarray, dense: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """Class probabilities [N, K] and what backward needs."""
        p = self.params
        bag = np.einsum("nsl,nld->nsd", weights, p["E"][ids]).reshape(ids.shape[0], -1)
        x = np.concatenate([bag, (dense - self.dense_mean) / self.dense_std], axis=1)
        pre = x @ p["W1"] + p["b1"]
        h = np.maximum(pre, 0.0)
        logits = h @ p["W2"] + p["b2"]
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        probs = e / e.sum(axis=1, keepdims=True)
        return probs, {"ids": ids, "weights": weights, "x": x, "h": h}

    def backward(self, probs: np.ndarray, targets: np.ndarray, cache: dict[str, Any]) -> dict[str, np.ndarray]:
        """Gradients of the mean cross-entropy against soft `targets` [N, K]."""
        p = self.params
        n = probs.shape[0]
        dlogits = (probs - targets) / n
        dh = dlogits @ p["W2"].T
        dh[cache["h"] <= 0] = 0.0
        dx = dh @ p["W1"].T
        w = cache["weights"]
        dim = p["E"].shape[1]
        dbag = dx[:, : w.shape[1] * dim].reshape(n, w.shape[1], dim)
        dE = np.zeros_like(p["E"])
        contrib = np.einsum("nsl,nsd->nld", w, dbag).reshape(-1, dim)
        np.add.at(dE, cache["ids"].ravel(), contrib)
        return {
            "E": dE,
            "W1": cache["x"].T @ dh,
            "b1": dh.sum(axis=0),
            "W2": cache["h"].T @ dlogits,
            "b2": dlogits.sum(axis=0),
        }


@dataclass
class Adam:
    """Adam with decoupled weight decay (AdamW) over a dict of arrays."""

    lr: float
    weight_decay: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    step: int = 0
    m: dict[str, np.ndarray] = field(default_factory=dict)
    v: dict[str, np.ndarray] = field(default_factory=dict)

    def update(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        self.step += 1
        c1 = 1 - self.beta1**self.step
        c2 = 1 - self.beta2**self.step
        for k, g in grads.items():
            m = self.m.setdefault(k, np.zeros_like(g))
            v = self.v.setdefault(k, np.zeros_like(g))
            m *= self.beta1
            m += (1 - self.beta1) * g
            v *= self.beta2
            v += (1 - self.beta2) * g * g
            params[k] -= self.lr * ((m / c1) / (np.sqrt(v / c2) + self.eps) + self.weight_decay * params[k])
