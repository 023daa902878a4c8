"""Workloads: the requests a simulation replays, loaded from a trace file or drawn at random.

A `Workload` is a tuple of `Request`s sorted by arrival, the first at 0.0, with ids "<prefix>-<index>"
in arrival order, plus counters of what loading changed. The trace formats (Azure CSV, Mooncake JSON
lines, ShareGPT JSON), their fields and the form of their error messages are in
`ecosched.sim.trace_formats`, whose readers turn a file into rows; names it defines that callers use
(`TRACE_FORMATS`, `WorkloadError`, `approx_tokens`, ...) are re-exported here. Every source goes
through one path (`_build`), so the length rules below hold for traces and synthetic draws alike:

- A request is too long when its prompt leaves no room for one output token
  (`num_prompt_tokens + 1 > max_model_len`): no server can run it. `on_too_long="skip"` drops and
  counts it (`num_skipped_too_long`); `"error"` raises naming the file, line and lengths.
- A prompt that fits but whose true output would overrun the context (or the `max_output_tokens`
  argument) is kept, as a server with that cap keeps it: `max_output_tokens = min(argument,
  max_model_len - prompt)`, `true_output_tokens` stays the trace's length, and the simulated request
  ends at the cap (`FinishReason.LENGTH`). These are counted in `num_capped_output`.
- A trace output length of 0 becomes 1 (an engine always samples one token, even if it is EOS) and is
  counted in `num_zero_output`. A prompt length of 0 is malformed (a chat template or BOS token is
  always there): WorkloadError.

SLO classes: a row's own class (Azure column `SLOClass`, Mooncake or ShareGPT field `slo_class`) wins;
otherwise one is drawn from `slo_mix` with an RNG of its own, one draw per row in file order, so the
class of a row depends only on the seed and its position, never on lengths, arrivals or skipping.
Without a mix and without a class the request's `slo_class` is None (the scheduler's default class).
"""

from __future__ import annotations

import itertools
import math
import random
import re
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from ecosched.core.request import Request
from ecosched.sim.trace_formats import _READERS, _detect_format, _read_file, _Row, _Source
from ecosched.sim.trace_formats import AZURE_COLUMNS as AZURE_COLUMNS
from ecosched.sim.trace_formats import HUMAN_ROLES as HUMAN_ROLES
from ecosched.sim.trace_formats import MODEL_ROLES as MODEL_ROLES
from ecosched.sim.trace_formats import PROMPT_TEXT_MAX_CHARS as PROMPT_TEXT_MAX_CHARS
from ecosched.sim.trace_formats import TRACE_FORMATS as TRACE_FORMATS
from ecosched.sim.trace_formats import WorkloadError as WorkloadError
from ecosched.sim.trace_formats import approx_tokens as approx_tokens

# Lognormal lengths fitted to the Azure conversation trace (data/README.md): the medians are the
# trace's (1020, 129); sigma = ln(p99 / median) / z_0.99 with z_0.99 = 2.3263, so the p99s match
# (4142 and 601). The means come out 1222 and 160 (trace: 1155 and 211): the trace's output tail is
# heavier in the middle and capped at 1000, which a lognormal cannot match with one sigma.
AZURE_PROMPT_MEDIAN, AZURE_PROMPT_SIGMA = 1020.0, 0.602
AZURE_OUTPUT_MEDIAN, AZURE_OUTPUT_SIGMA = 129.0, 0.661
_MAX_REDRAWS = 1000


@dataclass(frozen=True)
class Workload:
    """Requests sorted by arrival (the loaders start them at 0.0), with the counts of what loading changed."""

    name: str
    requests: tuple[Request, ...]
    num_skipped_too_long: int = 0  # prompt + 1 > max_model_len (synthetic: prompts redrawn)
    num_capped_output: int = 0  # true output > max_output_tokens: kept, ends at the cap
    num_zero_output: int = 0  # trace output length 0, replayed as 1

    def __post_init__(self) -> None:
        if not isinstance(self.requests, tuple):
            object.__setattr__(self, "requests", tuple(self.requests))
        arrivals = [r.arrival_s for r in self.requests]
        if arrivals and (arrivals[0] < 0 or any(a > b for a, b in itertools.pairwise(arrivals))):
            raise WorkloadError(f"workload {self.name!r}: requests must be sorted by arrival_s >= 0")
        if len({r.request_id for r in self.requests}) != len(self.requests):
            raise WorkloadError(f"workload {self.name!r}: request ids are not unique")

    @property
    def num_requests(self) -> int:
        return len(self.requests)

    @property
    def duration_s(self) -> float:
        """Time from the first arrival to the last."""
        return self.requests[-1].arrival_s - self.requests[0].arrival_s if self.requests else 0.0

    @property
    def rate_rps(self) -> float:
        """Mean arrival rate, (n - 1) / duration; 0.0 when every request arrives at once."""
        return (self.num_requests - 1) / self.duration_s if self.duration_s > 0 else 0.0

    @cached_property
    def burstiness(self) -> float:
        """Coefficient of variation of the inter-arrival gaps (1 for Poisson); 0.0 with no spread."""
        gaps = [b.arrival_s - a.arrival_s for a, b in itertools.pairwise(self.requests)]
        mean = statistics.fmean(gaps) if gaps else 0.0
        return statistics.pstdev(gaps, mean) / mean if mean > 0 else 0.0


@dataclass(frozen=True)
class _Limits:
    max_model_len: int
    max_output_tokens: int
    on_too_long: Literal["skip", "error"] = "skip"
    limit: int | None = None

    def __post_init__(self) -> None:
        for key in ("max_model_len", "max_output_tokens"):
            _check_positive_int(key, getattr(self, key))
        if self.limit is not None:
            _check_positive_int("limit", self.limit)
        if self.on_too_long not in ("skip", "error"):
            raise WorkloadError(f"on_too_long must be 'skip' or 'error' ({self.on_too_long!r})")


# ---------------------------------------------------------------------------------------- public API


def load_trace(
    path: str | Path,
    *,
    fmt: str | None = None,
    max_model_len: int,
    max_output_tokens: int,
    on_too_long: Literal["skip", "error"] = "skip",
    slo_mix: Mapping[str, float] | None = None,
    seed: int = 0,
    limit: int | None = None,
    sharegpt_rate_rps: float = 1.0,
) -> Workload:
    """Load a trace file (`fmt` one of TRACE_FORMATS; None: from the extension, else the first bytes).

    `limit` keeps the first `limit` requests by arrival (too-long rows before them are counted).
    ShareGPT files carry no times: arrivals are Poisson at `sharegpt_rate_rps` (seeded); use `retime`.
    """
    limits = _Limits(max_model_len, max_output_tokens, on_too_long, limit)
    mix = _normalise_mix(slo_mix) if slo_mix is not None else None
    p = Path(path)
    fmt = fmt if fmt is not None else _detect_format(p)
    if fmt not in TRACE_FORMATS:
        raise WorkloadError(f"{p}: unknown trace format {fmt!r}; known: {', '.join(TRACE_FORMATS)}")
    if fmt == "sharegpt":
        _check_rate("sharegpt_rate_rps", sharegpt_rate_rps)
    src = _Source(str(p), "record" if fmt == "sharegpt" else "line")
    rows = _read_file(p, lambda f: _READERS[fmt](f, src))
    if fmt == "sharegpt":
        rows = _poisson_times(rows, sharegpt_rate_rps, seed)
    return _build(p.name, fmt, rows, src, limits, mix, seed)


def synthetic(
    num_requests: int,
    rate_rps: float,
    *,
    arrival: Literal["poisson", "gamma"] = "poisson",
    burstiness: float = 1.0,
    prompt_median: float = AZURE_PROMPT_MEDIAN,
    prompt_sigma: float = AZURE_PROMPT_SIGMA,
    output_median: float = AZURE_OUTPUT_MEDIAN,
    output_sigma: float = AZURE_OUTPUT_SIGMA,
    max_model_len: int,
    max_output_tokens: int,
    slo_mix: Mapping[str, float] | None = None,
    seed: int = 0,
) -> Workload:
    """`num_requests` requests: gaps exponential (poisson, CV 1) or gamma with shape 1/burstiness^2 (CV
    = burstiness), mean 1/rate_rps; lognormal prompt and output lengths (defaults: the Azure
    conversation trace). Arrivals, lengths and SLO classes use separate seeded RNGs. A prompt that
    could never run (prompt + 1 > max_model_len) is redrawn, so exactly `num_requests` come back;
    the redraws are counted in `num_skipped_too_long`."""
    _check_positive_int("num_requests", num_requests)
    _check_rate("rate_rps", rate_rps)
    limits = _Limits(max_model_len, max_output_tokens)
    mix = _normalise_mix(slo_mix) if slo_mix is not None else None
    gap = _gap_sampler(arrival, burstiness, rate_rps, random.Random(f"arrivals:{seed}"))
    for key, value in (("prompt_median", prompt_median), ("output_median", output_median)):
        _check_rate(key, value)
    if not (prompt_sigma >= 0 and output_sigma >= 0 and math.isfinite(prompt_sigma + output_sigma)):
        raise WorkloadError(f"sigmas must be finite and >= 0 ({prompt_sigma}, {output_sigma})")
    lengths = random.Random(f"lengths:{seed}")
    rows, t, redraws = [], 0.0, 0
    for i in range(num_requests):
        if i:
            t += gap()
        prompt, n = _draw_prompt(lengths, prompt_median, prompt_sigma, max_model_len)
        output = max(1, round(lengths.lognormvariate(math.log(output_median), output_sigma)))
        rows.append(_Row(t, i, prompt, output))
        redraws += n
    shape = "poisson" if arrival == "poisson" else f"gamma cv={burstiness:g}"
    name = f"synthetic({shape}, {num_requests} req, {float(rate_rps)}/s)"
    built = _build(name, "syn", rows, _Source(name, "record"), limits, mix, seed)
    return Workload(name, built.requests, redraws, built.num_capped_output, built.num_zero_output)


def retime(workload: Workload, rate_rps: float) -> Workload:
    """The same requests with every arrival time scaled by native rate / `rate_rps`: the mean rate
    becomes `rate_rps` and the shape (burstiness, per-minute pattern) is kept exactly."""
    _check_rate("rate_rps", rate_rps)
    native = workload.rate_rps
    if native <= 0:
        raise WorkloadError(f"workload {workload.name!r} has no arrival rate to scale (all arrive at once)")
    factor = native / rate_rps
    start = workload.requests[0].arrival_s
    requests = tuple(_with_arrival(r, (r.arrival_s - start) * factor) for r in workload.requests)
    name = f"{re.sub(r'@[^@]*/s$', '', workload.name)}@{float(rate_rps)}/s"
    return Workload(name, requests, workload.num_skipped_too_long, workload.num_capped_output, workload.num_zero_output)


def parse_slo_mix(text: str) -> dict[str, float]:
    """Weights from text: `interactive=0.7,batch=0.3` -> {"interactive": 0.7, "batch": 0.3}, normalised
    to sum 1. A bare name means weight 1 (`batch` -> every request batch)."""
    weights: dict[str, float] = {}
    for part in text.split(","):
        name, eq, value = (s.strip() for s in part.partition("="))
        if not name:
            raise WorkloadError(f"slo mix {text!r}: expected name=weight pairs separated by commas ({part!r})")
        if name in weights:
            raise WorkloadError(f"slo mix {text!r}: class {name!r} given twice")
        try:
            weights[name] = float(value) if eq else 1.0
        except ValueError:
            raise WorkloadError(f"slo mix {text!r}: weight of {name!r} is not a number ({value!r})") from None
    return _normalise_mix(weights)


# ------------------------------------------------------------------------------------------ building


def _build(
    name: str,
    prefix: str,
    rows: list[_Row],
    src: _Source,
    limits: _Limits,
    mix: dict[str, float] | None,
    seed: int,
) -> Workload:
    """Draw classes (file order), sort by arrival (stable), apply the length rules, number the requests."""
    if mix is not None:  # one draw per row, used or not, so a row's class depends only on seed and position
        drawn = random.Random(f"slo:{seed}").choices(list(mix), list(mix.values()), k=len(rows))
        rows = [r if r.slo_class is not None else r._replace(slo_class=c) for r, c in zip(rows, drawn, strict=True)]
    rows.sort(key=lambda r: r.arrival_s)
    requests: list[Request] = []
    skipped = capped = zero = 0
    start_s = 0.0  # the trace time of the first request kept: the workload's time 0
    for row in rows:
        if len(requests) == limits.limit:
            break
        prompt, output = row.num_prompt_tokens, max(1, row.num_output_tokens)
        if prompt + 1 > limits.max_model_len:
            if limits.on_too_long == "error":
                what = f"prompt {prompt} tokens + 1 output token > max_model_len {limits.max_model_len}"
                src.fail(row.line, f"request too long: {what}")
            skipped += 1
            continue
        zero += row.num_output_tokens == 0
        cap = min(limits.max_output_tokens, limits.max_model_len - prompt)
        capped += output > cap
        start_s = start_s if requests else row.arrival_s
        rid = f"{prefix}-{len(requests)}"
        requests.append(Request(rid, prompt, cap, row.arrival_s - start_s, row.slo_class, row.prompt, output))
    if not requests:
        what = f"{len(rows)} rows, {skipped} skipped as too long for max_model_len {limits.max_model_len}"
        raise WorkloadError(f"{src.path}: empty trace: no requests ({what})")
    return Workload(name, tuple(requests), skipped, capped, zero)


def _with_arrival(r: Request, arrival_s: float) -> Request:
    return Request(
        r.request_id, r.num_prompt_tokens, r.max_output_tokens, arrival_s, r.slo_class, r.prompt, r.true_output_tokens
    )


def _normalise_mix(mix: Mapping[str, float]) -> dict[str, float]:
    for name, weight in mix.items():
        if not isinstance(name, str) or not name:
            raise WorkloadError(f"slo mix: class names must be non-empty strings ({name!r})")
        if not (isinstance(weight, int | float) and math.isfinite(weight) and weight >= 0):
            raise WorkloadError(f"slo mix: weight of {name!r} must be a finite number >= 0 ({weight!r})")
    total = sum(mix.values())
    if total <= 0:
        raise WorkloadError(f"slo mix: weights must not all be zero ({dict(mix)})")
    return {name: weight / total for name, weight in mix.items()}


# ----------------------------------------------------------------------------------------- synthetic


def _gap_sampler(arrival: str, cv: float, rate_rps: float, rng: random.Random) -> Callable[[], float]:
    if not (math.isfinite(cv) and cv > 0):
        raise WorkloadError(f"burstiness must be a finite number > 0 ({cv!r})")
    if arrival == "poisson":
        if cv != 1.0:
            raise WorkloadError(f"poisson arrivals have burstiness 1.0; use arrival='gamma' for {cv!r}")
        return lambda: rng.expovariate(rate_rps)
    if arrival == "gamma":
        shape = 1.0 / (cv * cv)
        return lambda: rng.gammavariate(shape, 1.0 / (rate_rps * shape))
    raise WorkloadError(f"arrival must be 'poisson' or 'gamma' ({arrival!r})")


def _draw_prompt(rng: random.Random, median: float, sigma: float, max_model_len: int) -> tuple[int, int]:
    """A lognormal prompt length that leaves room for one output token, and how many draws were redrawn."""
    for n in range(_MAX_REDRAWS):
        prompt = max(1, round(rng.lognormvariate(math.log(median), sigma)))
        if prompt + 1 <= max_model_len:
            return prompt, n
    raise WorkloadError(f"prompt_median {median} and sigma {sigma} almost never fit max_model_len {max_model_len}")


def _poisson_times(rows: list[_Row], rate_rps: float, seed: int) -> list[_Row]:
    rng, t, out = random.Random(f"arrivals:{seed}"), 0.0, []
    for i, row in enumerate(rows):
        t += rng.expovariate(rate_rps) if i else 0.0
        out.append(row._replace(arrival_s=t))
    return out


# --------------------------------------------------------------------------------------------- checks


def _check_positive_int(key: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise WorkloadError(f"{key} must be an integer >= 1 ({value!r})")


def _check_rate(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value > 0):
        raise WorkloadError(f"{key} must be a finite number > 0 ({value!r})")
