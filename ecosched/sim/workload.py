"""Workloads: the requests a simulation replays, loaded from a trace file or drawn at random.

A `Workload` is a tuple of `Request`s sorted by arrival, the first at 0.0, with ids "<prefix>-<index>"
in arrival order, plus counters of what loading changed. Every source goes through one path
(`_build`), so the length rules below hold for traces and synthetic draws alike:

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

import csv
import itertools
import json
import math
import random
import re
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple, NoReturn, TypeVar

from ecosched.core.request import Request
from ecosched.errors import EcoschedError

TRACE_FORMATS: tuple[str, ...] = ("azure", "mooncake", "sharegpt")
_EXTENSIONS = {".csv": "azure", ".jsonl": "mooncake", ".json": "sharegpt"}
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
HUMAN_ROLES = frozenset({"human", "user"})
MODEL_ROLES = frozenset({"gpt", "chatgpt", "bard", "assistant", "model"})
# Request.prompt of a ShareGPT request keeps the last this-many characters of its conversation.
PROMPT_TEXT_MAX_CHARS = 8000
# Lognormal lengths fitted to the Azure conversation trace (data/README.md): the medians are the
# trace's (1020, 129); sigma = ln(p99 / median) / z_0.99 with z_0.99 = 2.3263, so the p99s match
# (4142 and 601). The means come out 1222 and 160 (trace: 1155 and 211): the trace's output tail is
# heavier in the middle and capped at 1000, which a lognormal cannot match with one sigma.
AZURE_PROMPT_MEDIAN, AZURE_PROMPT_SIGMA = 1020.0, 0.602
AZURE_OUTPUT_MEDIAN, AZURE_OUTPUT_SIGMA = 129.0, 0.661
_MAX_REDRAWS = 1000
_T = TypeVar("_T")


class WorkloadError(EcoschedError):
    """A trace or workload parameter is wrong; the message reads "PATH:LINE: what is wrong (value)"."""


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


class _Row(NamedTuple):
    """One request as read from a source, before sorting, length rules and ids."""

    arrival_s: float
    line: int  # line number, or record index for ShareGPT
    num_prompt_tokens: int
    num_output_tokens: int
    slo_class: str | None = None
    prompt: str | None = None


@dataclass(frozen=True)
class _Source:
    """Where rows come from, to name in errors: "PATH:LINE: ..." or "PATH: record N: ..."."""

    path: str
    unit: Literal["line", "record"] = "line"

    def where(self, line: int) -> str:
        return f"{self.path}:{line}" if self.unit == "line" else f"{self.path}: record {line}"

    def fail(self, line: int, what: str) -> NoReturn:
        raise WorkloadError(f"{self.where(line)}: {what}")


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


# ------------------------------------------------------------------------------------------- readers


def _detect_format(path: Path) -> str:
    fmt = _EXTENSIONS.get(path.suffix.lower())
    if fmt is not None:
        return fmt
    head = _read_file(path, lambda f: f.read(4096)).lstrip()
    if head.startswith("["):
        return "sharegpt"
    if head.startswith("{"):
        return "mooncake"
    if all(c in head.partition("\n")[0] for c in AZURE_COLUMNS):
        return "azure"
    known = ", ".join(TRACE_FORMATS)
    raise WorkloadError(f"{path}: cannot tell the trace format from the name or first line; pass fmt= one of {known}")


def _read_file(path: Path, read: Callable[[IO[str]], _T]) -> _T:
    try:
        with path.open(encoding="utf-8", newline="") as f:
            return read(f)
    except OSError as exc:
        raise WorkloadError(f"{path}: cannot open trace ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise WorkloadError(f"{path}: not UTF-8 text ({exc.reason})") from None


def _read_azure(f: IO[str], src: _Source) -> list[_Row]:
    """TIMESTAMP (ISO date and time, up to 7 fractional digits), ContextTokens, GeneratedTokens[, SLOClass]."""
    reader = csv.reader(f)
    header = [h.strip() for h in next(reader, [])]
    if not header:
        src.fail(1, f"empty trace: no header row (expected {','.join(AZURE_COLUMNS)})")
    missing = [c for c in AZURE_COLUMNS if c not in header]
    if missing:
        src.fail(1, f"missing column(s) {', '.join(missing)} (header: {','.join(header)!r})")
    its, iin, iout = (header.index(c) for c in AZURE_COLUMNS)
    islo = header.index("SLOClass") if "SLOClass" in header else None
    clock, rows = _Clock(src), []
    for fields in reader:
        if not fields:
            continue
        line = reader.line_num
        if len(fields) != len(header):
            src.fail(line, f"expected {len(header)} fields, found {len(fields)} ({','.join(fields)[:200]!r})")
        try:
            prompt, output = int(fields[iin]), int(fields[iout])
        except ValueError:
            prompt = output = -1
        if prompt < 1 or output < 0:
            for i in (iin, iout):
                _check_length(fields[i], header[i], src, line)
        cls = (fields[islo].strip() or None) if islo is not None else None
        rows.append(_Row(clock.seconds(fields[its], line), line, prompt, output, cls))
    return rows


class _Clock:
    """Seconds since the first TIMESTAMP read. The whole seconds are parsed once per distinct second
    (cached) and the fraction apart, in any number of digits (`datetime.fromisoformat` on Python 3.11
    takes at most 6, the Azure traces have 7). Naive times are UTC."""

    def __init__(self, src: _Source) -> None:
        self.src = src
        self.whole: dict[str, float] = {}
        self.origin: tuple[float, float] | None = None  # (whole, fraction) of the first row

    def seconds(self, text: str, line: int) -> float:
        head, dot, rest = text.partition(".")
        if rest.isascii() and rest.isdigit():  # the common case: a fraction and no zone after it
            digits, key = rest, head
        else:
            digits = rest[: len(rest) - len(rest.lstrip("0123456789"))]
            key = head + rest[len(digits) :]
            if dot and not digits:
                self.src.fail(line, f"TIMESTAMP is not an ISO date and time ({text!r})")
        whole = self.whole.get(key)
        if whole is None:
            whole = self.whole[key] = self._parse(key, text, line)
        frac = int(digits) / 10 ** len(digits) if digits else 0.0
        if self.origin is None:
            self.origin = (whole, frac)
        return (whole - self.origin[0]) + (frac - self.origin[1])

    def _parse(self, key: str, text: str, line: int) -> float:
        try:
            dt = datetime.fromisoformat(key.strip())
        except ValueError:
            self.src.fail(line, f"TIMESTAMP is not an ISO date and time ({text!r})")
        return (dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)).timestamp()


def _check_length(value: Any, column: str, src: _Source, line: int) -> int:
    """A token count from a trace: an integer >= 0 (>= 1 for a prompt); CSV text is converted first."""
    number = int(value) if isinstance(value, str) and value.strip().lstrip("+-").isdigit() else value
    if not isinstance(number, int) or isinstance(number, bool) or number < 0:
        src.fail(line, f"{column} must be an integer >= 0 ({value!r})")
    if number == 0 and column in ("ContextTokens", "input_length"):
        src.fail(line, f"{column} must be >= 1: a prompt has at least one token ({value!r})")
    return number


def _read_mooncake(f: IO[str], src: _Source) -> list[_Row]:
    """JSON lines {"timestamp": ms, "input_length": n, "output_length": n[, "slo_class": name], ...}."""
    rows = []
    for line, text in enumerate(f, 1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            src.fail(line, f"invalid JSON ({exc.msg}: {text.strip()[:200]!r})")
        if not isinstance(obj, dict):
            src.fail(line, f"expected a JSON object ({text.strip()[:200]!r})")
        ts = obj.get("timestamp")
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
            src.fail(line, f"timestamp must be a number of milliseconds ({ts!r})")
        prompt = _check_length(obj.get("input_length"), "input_length", src, line)
        output = _check_length(obj.get("output_length"), "output_length", src, line)
        rows.append(_Row(ts / 1000.0, line, prompt, output, _class_field(obj, src, line)))
    return rows


def _class_field(obj: dict[str, Any], src: _Source, line: int) -> str | None:
    cls = obj.get("slo_class")
    if cls is not None and not (isinstance(cls, str) and cls):
        src.fail(line, f"slo_class must be a non-empty string ({cls!r})")
    return cls


def approx_tokens(text: str) -> int:
    """Approximate token count: word pieces of up to 8 characters and punctuation marks count one each
    (close to BPE tokenizers on English prose, which take most words and marks as one token; long
    words and scripts without spaces split into 8-character pieces). NOTE: an approximation; the
    exact tokenizer is the one the ONNX predictor package defines."""
    return len(_TOKEN_RE.findall(text))


_TOKEN_RE = re.compile(r"\w{1,8}|[^\w\s]")


def _read_sharegpt(f: IO[str], src: _Source) -> list[_Row]:
    """[{"id": ..., "conversations": [{"from": "human"|"gpt"|..., "value": text}, ...]}, ...]: each human
    turn answered by a model turn is a request. The prompt is the whole conversation so far (earlier
    turns, then the human turn), as a chat server sends it; its token count covers all of it, while
    `Request.prompt` keeps its last PROMPT_TEXT_MAX_CHARS characters. Records are numbered from 0."""
    try:
        data = json.load(f)
    except json.JSONDecodeError as exc:
        raise WorkloadError(f"{src.path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise WorkloadError(f"{src.path}: expected a JSON list of conversations (found {type(data).__name__})")
    rows: list[_Row] = []
    for n, record in enumerate(data):
        rows += _conversation_rows(record, n, src)
    return rows


def _conversation_rows(record: Any, n: int, src: _Source) -> list[_Row]:
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        src.fail(n, f"expected an object with a 'conversations' list ({str(record)[:200]!r})")
    cls = _class_field(record, src, n)
    rows: list[_Row] = []
    history: list[str] = []
    history_tokens = 0
    human: str | None = None
    for turn in record["conversations"]:
        role, text = _turn(turn, src, n)
        if human is not None:  # answered by a model turn: a request; else part of the context
            human_tokens = approx_tokens(human)
            if role in MODEL_ROLES:
                context = "\n".join([*history, human])[-PROMPT_TEXT_MAX_CHARS:]
                rows.append(_Row(0.0, n, max(1, history_tokens + human_tokens), approx_tokens(text), cls, context))
            history.append(human)
            history_tokens += human_tokens
            human = None
        if role in HUMAN_ROLES:
            human = text
        else:  # model, system and tool turns are context for what follows
            history.append(text)
            history_tokens += approx_tokens(text)
    return rows


def _turn(turn: Any, src: _Source, n: int) -> tuple[str, str]:
    """(role, text) of a {"from", "value"} turn (or OpenAI-style {"role", "content"})."""
    if isinstance(turn, dict):
        role, text = turn.get("from", turn.get("role")), turn.get("value", turn.get("content"))
        if isinstance(role, str) and isinstance(text, str):
            return role.lower(), text
    src.fail(n, f"a turn needs string 'from' and 'value' ({str(turn)[:200]!r})")


# --------------------------------------------------------------------------------------------- checks


def _check_positive_int(key: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise WorkloadError(f"{key} must be an integer >= 1 ({value!r})")


def _check_rate(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value > 0):
        raise WorkloadError(f"{key} must be a finite number > 0 ({value!r})")


_READERS: dict[str, Callable[[IO[str], _Source], list[_Row]]] = {
    "azure": _read_azure,
    "mooncake": _read_mooncake,
    "sharegpt": _read_sharegpt,
}
