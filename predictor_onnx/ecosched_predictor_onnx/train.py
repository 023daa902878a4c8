"""Training: fit the network to (prompt, output tokens) examples, with early stopping on a held-out set.

`fit` trains from scratch or fine-tunes a given network, with the constants of a `TrainConfig`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ecosched_predictor_onnx.calibrate import class_of, soft_targets
from ecosched_predictor_onnx.features import DENSE_NAMES, NUM_NAMESPACES, Featurizer
from ecosched_predictor_onnx.network import Adam, Network
from ecosched_predictor_onnx.settings import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class Encoded:
    """Featurised examples: bag rows, dense features and (when known) true output tokens."""

    rows: list[list[list[int]]]
    dense: np.ndarray
    tokens: np.ndarray

    def take(self, index: np.ndarray) -> Encoded:
        return Encoded([self.rows[i] for i in index], self.dense[index], self.tokens[index])


def encode(
    featurizer: Featurizer, prompts: Sequence[str | None], tokens: Sequence[int] | np.ndarray, chunk: int = 4096
) -> Encoded:
    """Featurise in chunks of `chunk` prompts."""
    rows: list[list[list[int]]] = []
    dense = []
    for start in range(0, len(prompts), chunk):
        r, d = featurizer.featurize(prompts[start : start + chunk])
        rows += r
        dense.append(d)
    dense_all = np.concatenate(dense) if dense else np.zeros((0, len(DENSE_NAMES)), np.float32)
    return Encoded(rows, dense_all, np.asarray(tokens, dtype=np.int64))


def mean_loss(net: Network, data: Encoded, config: TrainConfig, batch: int = 1024) -> float:
    """Mean cross-entropy (hard labels) of `net` on `data`."""
    total = 0.0
    classes = class_of(data.tokens, config.class_edges)
    for s in range(0, len(data.rows), batch):
        ids, w = Featurizer.pack(data.rows[s : s + batch])
        probs, _ = net.forward(ids, w, data.dense[s : s + batch])
        total += float(-np.log(probs[np.arange(len(probs)), classes[s : s + batch]] + 1e-12).sum())
    return total / max(1, len(data.rows))


def fit(net: Network, train: Encoded, held_out: Encoded, config: TrainConfig, epochs: int, lr: float) -> Network:
    """Train `net` in place for up to `epochs`; keep the parameters of the epoch with the lowest held-out loss."""
    rng = np.random.default_rng(config.seed)
    opt = Adam(lr=lr, weight_decay=config.weight_decay)
    num_classes = net.params["b2"].shape[0]
    targets = soft_targets(class_of(train.tokens, config.class_edges), num_classes, config.label_smoothing)
    best = (mean_loss(net, held_out, config), {k: v.copy() for k, v in net.params.items()})
    log.info("held-out loss before training: %.4f", best[0])
    for epoch in range(epochs):
        order = rng.permutation(len(train.rows))
        for s in range(0, len(order), config.batch_size):
            idx = order[s : s + config.batch_size]
            ids, w = Featurizer.pack([train.rows[i] for i in idx])
            if config.token_dropout > 0:
                w = drop_tokens(w, config.token_dropout, rng)
            probs, cache = net.forward(ids, w, train.dense[idx])
            opt.update(net.params, net.backward(probs, targets[idx], cache))
        loss = mean_loss(net, held_out, config)
        log.info("epoch %d: held-out loss %.4f", epoch + 1, loss)
        if loss < best[0]:
            best = (loss, {k: v.copy() for k, v in net.params.items()})
    net.params = best[1]
    return net


def drop_tokens(weights: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Drop each bag entry with probability `rate` and re-average the rest (regularises the table)."""
    kept = (weights > 0) & (rng.random(weights.shape) >= rate)
    counts = kept.sum(axis=2, keepdims=True)
    return np.where(kept, 1.0 / np.maximum(counts, 1), 0.0).astype(np.float32)


def new_network(train: Encoded, config: TrainConfig) -> Network:
    """A freshly initialised network whose dense scaling comes from the training data."""
    net = Network.init(
        config.features.num_buckets,
        config.embedding_dim,
        NUM_NAMESPACES,
        len(DENSE_NAMES),
        config.hidden,
        len(config.class_edges) + 1,
        config.seed,
    )
    net.dense_mean = train.dense.mean(axis=0).astype(np.float32)
    net.dense_std = np.maximum(train.dense.std(axis=0), 1e-3).astype(np.float32)
    return net
