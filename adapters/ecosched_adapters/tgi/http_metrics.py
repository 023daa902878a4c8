"""The router's Prometheus metrics: TGI's `tgi_*` names, so TGI's dashboards keep working, plus
ecosched's own `ecosched_*` ones. Served by GET /metrics.

Who records what:
- the HTTP layer: every `tgi_request_*` metric (count, success, failure{err}, durations, lengths);
- the router: `tgi_queue_size`, `tgi_batch_*` (through `batch`, `batch_next`, `batch_max_total_tokens`)
  and every `ecosched_*` metric (`step`, `policy`, `preempted`, `paused`, `resumed`, `kv_blocks`).

NOTE: TGI's exporter writes counters under their bare names (`tgi_request_count 3`) and its Grafana
dashboard (`assets/tgi_grafana.json`) queries those names. prometheus_client always renames a
counter to `<name>_total`, so the `tgi_*` counters are exposed as untyped samples under TGI's exact
names instead. ecosched's own counters are ordinary prometheus_client counters (`*_total`).
Buckets are TGI's (`router/src/server.rs`, "Duration buckets" and the ones after it).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric, UntypedMetricFamily

DURATION_BUCKET_COUNT = 35  # TGI: 35 geometric duration buckets ...
DURATION_BUCKET_START_S = 0.0001  # ... from 0.0001 s ...
DURATION_BUCKET_FACTOR = 1.5  # ... each 1.5 times the previous one (the first is 0.00015 s)
LENGTH_BUCKET_COUNT = 100  # TGI: token-length histograms split their range in 100 equal buckets
MAX_BATCH_SIZE_BUCKET = 1024  # TGI: `tgi_batch_next_size` has one bucket per size 1..1024


def duration_buckets() -> list[float]:
    """TGI's buckets for every `*_duration` histogram, in seconds."""
    value, buckets = DURATION_BUCKET_START_S, []
    for _ in range(DURATION_BUCKET_COUNT):
        value *= DURATION_BUCKET_FACTOR
        buckets.append(value)
    return buckets


def length_buckets(limit: int) -> list[float]:
    """TGI's buckets for token lengths up to `limit`: `limit / 100 * k` for k = 1..100."""
    return [limit / LENGTH_BUCKET_COUNT * (k + 1) for k in range(LENGTH_BUCKET_COUNT)]


class _ExactCounters:
    """Counters exposed under exactly the given names (untyped samples; see the module NOTE)."""

    def __init__(self) -> None:
        self._help: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._values: dict[str, dict[tuple[str, ...], float]] = {}
        self._lock = threading.Lock()

    def declare(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        self._help[name] = (documentation, tuple(labelnames))
        self._values[name] = {}

    def inc(self, name: str, *labelvalues: str, amount: float = 1.0) -> None:
        key = tuple(labelvalues)
        if len(key) != len(self._help[name][1]):
            raise ValueError(f"{name} takes labels {self._help[name][1]}, got {key}")
        with self._lock:
            series = self._values[name]
            series[key] = series.get(key, 0.0) + amount

    def value(self, name: str, *labelvalues: str) -> float:
        return self._values[name].get(tuple(labelvalues), 0.0)

    def describe(self) -> Iterable[Metric]:
        return [UntypedMetricFamily(name, doc, labels=labels) for name, (doc, labels) in self._help.items()]

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            snapshot = {name: dict(series) for name, series in self._values.items()}
        for name, (doc, labels) in self._help.items():
            family = UntypedMetricFamily(name, doc, labels=labels)
            if labels:
                for key, value in sorted(snapshot[name].items()):
                    family.add_metric(list(key), value)
            else:
                family.add_metric([], snapshot[name].get((), 0.0))
            yield family


class RouterMetrics:
    """TGI's and ecosched's router metrics in a registry of their own (not prometheus_client's global
    one, so several apps can live in one process, as in tests)."""

    def __init__(self, max_input_tokens: int, max_total_tokens: int) -> None:
        self.registry = CollectorRegistry()
        self._counters = _ExactCounters()
        for name, doc, labels in (
            ("tgi_request_count", "Total number of requests", ()),
            ("tgi_request_success", "Number of successful requests", ()),
            ("tgi_request_failure", "Number of failed requests, by error type", ("err",)),
            ("tgi_batch_inference_count", "Inference calls per method (prefill or decode)", ("method",)),
            ("tgi_batch_inference_success", "Successful inference calls per method", ("method",)),
            ("tgi_batch_inference_failure", "Failed inference calls per method", ("method",)),
        ):
            self._counters.declare(name, doc, labels)
        self.registry.register(self._counters)
        self._build_histograms(max_input_tokens, max_total_tokens)
        self._build_gauges()
        self._build_ecosched()

    def _build_histograms(self, max_input_tokens: int, max_total_tokens: int) -> None:
        durations, reg = duration_buckets(), self.registry
        self._duration = {
            part: Histogram(f"tgi_request_{part}duration", doc, buckets=durations, registry=reg)
            for part, doc in (
                ("", "Total time spent processing the request"),
                ("validation_", "Time spent validating the request"),
                ("queue_", "Time spent in the queue per request"),
                ("inference_", "Request inference duration"),
                ("mean_time_per_token_", "Mean time per token per request"),
            )
        }
        self._input_length = Histogram(
            "tgi_request_input_length", "Input token length per request",
            buckets=length_buckets(max_input_tokens), registry=reg,
        )  # fmt: skip
        self._max_new_tokens = Histogram(
            "tgi_request_max_new_tokens", "Maximum new tokens per request",
            buckets=length_buckets(max_total_tokens), registry=reg,
        )  # fmt: skip
        self._generated_tokens = Histogram(
            "tgi_request_generated_tokens", "Generated tokens per request",
            buckets=length_buckets(max_total_tokens), registry=reg,
        )  # fmt: skip
        self._batch_next_size = Histogram(
            "tgi_batch_next_size", "Batch size of the next batch",
            buckets=[float(k) for k in range(1, MAX_BATCH_SIZE_BUCKET + 1)], registry=reg,
        )  # fmt: skip
        self._forward = Histogram(
            "tgi_batch_forward_duration", "Batch forward duration per method (prefill or decode)",
            ["method"], buckets=durations, registry=reg,
        )  # fmt: skip
        self._inference = Histogram(
            "tgi_batch_inference_duration", "Batch inference duration", ["method"], buckets=durations, registry=reg
        )

    def _build_gauges(self) -> None:
        reg = self.registry
        self._queue_size = Gauge("tgi_queue_size", "Current queue size", registry=reg)
        self._batch_size = Gauge("tgi_batch_current_size", "Current batch size", registry=reg)
        self._batch_max_tokens = Gauge(
            "tgi_batch_current_max_tokens", "Maximum tokens for the current batch", registry=reg
        )
        self._max_total_tokens = Gauge("tgi_batch_max_total_tokens", "Maximum amount of tokens in total", registry=reg)

    def _build_ecosched(self) -> None:
        reg, durations = self.registry, duration_buckets()
        self._step = Histogram(
            "ecosched_step_duration_seconds", "Wall time of one router step (schedule, forward, update)",
            buckets=durations, registry=reg,
        )  # fmt: skip
        self._policy = Histogram(
            "ecosched_policy_duration_seconds", "Wall time of the core's scheduling decision per step",
            buckets=durations, registry=reg,
        )  # fmt: skip
        self._preemptions = Counter("ecosched_preemptions", "Requests preempted (KV dropped)", registry=reg)
        self._pauses = Counter("ecosched_pauses", "Requests paused with their KV kept", registry=reg)
        self._resumes = Counter("ecosched_resumes", "Paused or preempted requests resumed", registry=reg)
        self._kv_used = Gauge("ecosched_kv_blocks_used", "KV blocks holding tokens", registry=reg)
        self._kv_reserved = Gauge(
            "ecosched_kv_blocks_reserved_unused", "KV blocks reserved for requests but not yet written", registry=reg
        )
        self._kv_free = Gauge("ecosched_kv_blocks_free", "KV blocks neither used nor reserved", registry=reg)

    # --- exposition -------------------------------------------------------------------------------

    content_type = CONTENT_TYPE_LATEST

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def counter_value(self, name: str, *labelvalues: str) -> float:
        """The current value of a `tgi_*` counter (for tests and logs)."""
        return self._counters.value(name, *labelvalues)

    # --- request level: recorded by the HTTP layer ------------------------------------------------

    def request_received(self) -> None:
        """A generation request arrived (before any check)."""
        self._counters.inc("tgi_request_count")

    def request_failed(self, err: str) -> None:
        """A request ended in error; `err` is TGI's label (validation, overloaded, generation, ...)."""
        self._counters.inc("tgi_request_failure", err)

    def request_validated(self, input_length: int, max_new_tokens: int) -> None:
        """A request passed validation with this prompt length and `max_new_tokens`."""
        self._input_length.observe(input_length)
        self._max_new_tokens.observe(max_new_tokens)

    def request_succeeded(
        self, *, total_s: float, validation_s: float, queue_s: float, inference_s: float, generated_tokens: int
    ) -> None:
        """A request ended with its whole output; durations are in seconds, as TGI records them."""
        self._counters.inc("tgi_request_success")
        self._duration[""].observe(total_s)
        self._duration["validation_"].observe(validation_s)
        self._duration["queue_"].observe(queue_s)
        self._duration["inference_"].observe(inference_s)
        self._duration["mean_time_per_token_"].observe(inference_s / generated_tokens if generated_tokens else 0.0)
        self._generated_tokens.observe(generated_tokens)

    # --- batch level: recorded by the router ------------------------------------------------------

    def queue_size(self, size: int) -> None:
        """Requests waiting in the router's queue."""
        self._queue_size.set(size)

    def batch(self, method: str, *, size: int, max_tokens: int, forward_s: float, inference_s: float, ok: bool) -> None:
        """One shard call (`method` is `prefill` or `decode`) on a batch of `size` requests holding
        up to `max_tokens` tokens. `forward_s` is the shard's forward time (its reply's timings),
        `inference_s` the router's wall time for the whole call. On failure only the counters move."""
        self._batch_size.set(size)
        self._batch_max_tokens.set(max_tokens)
        self._counters.inc("tgi_batch_inference_count", method)
        if not ok:
            self._counters.inc("tgi_batch_inference_failure", method)
            return
        self._counters.inc("tgi_batch_inference_success", method)
        self._forward.labels(method).observe(forward_s)
        self._inference.labels(method).observe(inference_s)

    def batch_idle(self) -> None:
        """No batch is running (TGI sets the current max tokens to 0 when its loop drains)."""
        self._batch_size.set(0)
        self._batch_max_tokens.set(0)

    def batch_next(self, size: int) -> None:
        """A new batch of `size` requests was formed from the queue."""
        self._batch_next_size.observe(size)

    def batch_max_total_tokens(self, tokens: int) -> None:
        """The KV capacity in tokens, set once after warmup."""
        self._max_total_tokens.set(tokens)

    def step(self, duration_s: float) -> None:
        """One router step took `duration_s` (schedule, shard call, update)."""
        self._step.observe(duration_s)

    def policy(self, duration_s: float) -> None:
        """The core's decision of one step took `duration_s`."""
        self._policy.observe(duration_s)

    def preempted(self, count: int = 1) -> None:
        """`count` requests lost their KV to preemption."""
        self._preemptions.inc(count)

    def paused(self, count: int = 1) -> None:
        """`count` requests left the batch with their KV kept."""
        self._pauses.inc(count)

    def resumed(self, count: int = 1) -> None:
        """`count` paused or preempted requests came back into the batch."""
        self._resumes.inc(count)

    def kv_blocks(self, *, used: int, reserved_unused: int, free: int) -> None:
        """The block table's split after a step: `used + reserved_unused + free` is the pool."""
        self._kv_used.set(used)
        self._kv_reserved.set(reserved_unused)
        self._kv_free.set(free)
