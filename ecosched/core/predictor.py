"""Response-length prediction: the protocol every predictor follows, the study predictors (oracle,
noisy oracle, constant), and padding of a prediction to a confidence quantile.

A predictor maps a batch of requests to `Prediction`s. A prediction has a point estimate and, when
the predictor knows its own error distribution, quantiles. `Padder` turns a prediction into the
padded length the scheduler reserves for: the prediction's own quantile at q when it has one, or the
point estimate plus the q-quantile of recently observed errors (CacheOPT's bounded deviation), with a
relative margin until enough errors are observed. q itself falls as the arrival rate rises.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Protocol, runtime_checkable

from ecosched.config import PaddingConfig
from ecosched.core.request import Request
from ecosched.errors import PredictorError


@dataclass(frozen=True, slots=True)
class Prediction:
    """A predicted output length in tokens, with optional (quantile, tokens) pairs, q ascending."""

    num_tokens: int
    quantiles: tuple[tuple[float, int], ...] = ()

    def at_quantile(self, q: float) -> int | None:
        """Tokens at quantile q, interpolated between known quantiles; None if there are none."""
        if not self.quantiles:
            return None
        qs = [p for p, _ in self.quantiles]
        i = bisect.bisect_left(qs, q)
        if i == 0:
            return self.quantiles[0][1]
        if i == len(qs):
            return self.quantiles[-1][1]
        (q0, t0), (q1, t1) = self.quantiles[i - 1], self.quantiles[i]
        return round(t0 + (t1 - t0) * (q - q0) / (q1 - q0))


@runtime_checkable
class LengthPredictor(Protocol):
    """Predicts output lengths for a batch of requests (one Prediction per request, in order).

    A predictor that reads `Request.prompt` says so with a class attribute `reads_prompt = True`;
    adapters of engines that hold token ids only then decode the prompt for it (and skip that work
    for predictors that do not read it)."""

    name: str

    def predict(self, requests: Sequence[Request]) -> list[Prediction]: ...


class OraclePredictor:
    """Knows the true output length (simulation only): the upper bound of any predictor."""

    name = "oracle"

    def predict(self, requests: Sequence[Request]) -> list[Prediction]:
        out = []
        for r in requests:
            if r.true_output_tokens is None:
                raise PredictorError(f"oracle predictor: request {r.request_id!r} has no true_output_tokens")
            n = min(r.true_output_tokens, r.max_output_tokens)
            out.append(Prediction(n, ((0.5, n), (0.99, n))))
        return out


_QUANTILE_GRID = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


class NoisyOraclePredictor:
    """The true length times exp(N(0, sigma)): a predictor of known, configurable error.

    Its quantiles are those of the true length given the prediction, pred * exp(sigma * z_q).
    """

    name = "noisy-oracle"

    def __init__(self, sigma: float, rng: random.Random) -> None:
        self.sigma = sigma
        self.rng = rng
        self._z = [(q, NormalDist().inv_cdf(q)) for q in _QUANTILE_GRID]

    def predict(self, requests: Sequence[Request]) -> list[Prediction]:
        truths = OraclePredictor().predict(requests)
        out = []
        for r, truth in zip(requests, truths, strict=True):
            point = max(1, round(truth.num_tokens * math.exp(self.rng.gauss(0.0, self.sigma))))
            cap = r.max_output_tokens
            qs = tuple((q, min(cap, max(1, round(point * math.exp(self.sigma * z))))) for q, z in self._z)
            out.append(Prediction(min(point, cap), qs))
        return out


class ConstantPredictor:
    """Predicts the same length for every request (capped at its max_output_tokens)."""

    name = "constant"

    def __init__(self, num_tokens: int) -> None:
        self.num_tokens = num_tokens

    def predict(self, requests: Sequence[Request]) -> list[Prediction]:
        return [Prediction(min(self.num_tokens, r.max_output_tokens)) for r in requests]


class ArrivalRate:
    """Arrival rate over the last `window` arrivals (requests per second)."""

    def __init__(self, window: int) -> None:
        self._times: deque[float] = deque(maxlen=window)

    def observe(self, arrival_s: float) -> None:
        self._times.append(arrival_s)

    @property
    def rps(self) -> float:
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else math.inf


class Padder:
    """Pads predictions to a confidence quantile that falls as the arrival rate rises."""

    def __init__(self, config: PaddingConfig) -> None:
        self.config = config
        self.rate = ArrivalRate(config.rate_window)
        self._errors: deque[int] = deque(maxlen=config.error_window)
        self._sorted: list[int] | None = None

    def quantile(self) -> float:
        """q for the current arrival rate: `quantile` at low load down to `quantile_at_high_rate`.

        NOTE: CacheOPT says q is adjusted by arrival rate; the linear map between two rates is our guess.
        """
        c = self.config
        if not c.rate_adaptive:
            return c.quantile
        rps = self.rate.rps
        if rps <= c.low_rate_rps:
            return c.quantile
        if rps >= c.high_rate_rps:
            return c.quantile_at_high_rate
        frac = (rps - c.low_rate_rps) / (c.high_rate_rps - c.low_rate_rps)
        return c.quantile + frac * (c.quantile_at_high_rate - c.quantile)

    def pad(self, prediction: Prediction, max_output_tokens: int) -> int:
        """Padded output length, between the point prediction and max_output_tokens."""
        q = self.quantile()
        padded = prediction.at_quantile(q)
        if padded is None:
            padded = prediction.num_tokens + self._error_quantile(q, prediction.num_tokens)
        return max(1, min(max_output_tokens, max(padded, prediction.num_tokens)))

    def observe_error(self, predicted: int, actual: int) -> None:
        """Record the error of a finished request's prediction (actual - predicted tokens)."""
        self._errors.append(actual - predicted)
        self._sorted = None

    def _error_quantile(self, q: float, point: int) -> int:
        if len(self._errors) < self.config.min_error_samples:
            return math.ceil(point * self.config.fallback_margin)
        if self._sorted is None:
            self._sorted = sorted(self._errors)
        return max(0, self._sorted[min(len(self._sorted) - 1, int(q * len(self._sorted)))])
