"""Every constant of training, with the defaults that produced the shipped model (no numpy needed, so
the CLI can show them). Stored in each model's metadata; `ecosched predictor train` exposes the main ones."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ecosched_predictor_onnx.features import FeatureConfig

# Half-octave classes: 16, 23, 32, 45, 64, ... 4096 tokens.
DEFAULT_CLASS_EDGES = (16, 23, 32, 45, 64, 91, 128, 181, 256, 362, 512, 724, 1024, 1448, 2048, 2896, 4096)
# Reported buckets (the `bucket` of `predict`, bucket accuracy): doubling, as the core's RL buckets.
DEFAULT_REPORT_EDGES = (32, 64, 128, 256, 512, 1024, 2048)


@dataclass(frozen=True)
class TrainConfig:
    """Every constant of training; stored in the model's metadata."""

    seed: int = 0
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    max_history_turns: int = 8
    vocab_size: int = 8192
    tokenizer_min_frequency: int = 2
    class_edges: tuple[int, ...] = DEFAULT_CLASS_EDGES
    report_edges: tuple[int, ...] = DEFAULT_REPORT_EDGES
    upper_tokens: int = 8192
    embedding_dim: int = 16
    hidden: int = 64
    epochs: int = 4
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 0.1
    label_smoothing: float = 0.2
    token_dropout: float = 0.3
    levels: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95, 0.99)
    features: FeatureConfig = field(default_factory=FeatureConfig)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["features"] = self.features.to_dict()
        return d
