"""Trace formats: read Azure, Mooncake and ShareGPT trace files into rows, one per request, in file order.

A reader turns an open file into `_Row`s (arrival in seconds, line or record number, prompt and output
token counts, optional SLO class and prompt text); `ecosched.sim.workload` then sorts them, applies the
length rules and numbers the requests. The format is `fmt` when given, else the extension (`.csv`
azure, `.jsonl` mooncake, `.json` sharegpt), else the first bytes (`[` sharegpt, `{` mooncake, a first
line naming the Azure columns azure). Files are read as UTF-8.

- azure, CSV with a header row: `TIMESTAMP` (ISO date and time, any number of fractional digits, naive
  times are UTC; arrivals are seconds since the first row), `ContextTokens` (prompt, integer >= 1),
  `GeneratedTokens` (output, integer >= 0), optional `SLOClass` (empty means none). Other columns are
  ignored, blank lines skipped.
- mooncake, JSON lines: `{"timestamp": ms, "input_length": n >= 1, "output_length": n >= 0}` with an
  optional `"slo_class": name`; other keys are ignored, blank lines skipped.
- sharegpt, one JSON list: `{"conversations": [{"from": role, "value": text}, ...]}` (OpenAI-style
  `{"role", "content"}` turns also work) with an optional `"slo_class"`. Each human turn (`HUMAN_ROLES`)
  answered by a model turn (`MODEL_ROLES`) is a request whose prompt is the whole conversation so far;
  token counts are `approx_tokens` estimates, and the prompt text keeps its last
  `PROMPT_TEXT_MAX_CHARS` characters. The file has no times: every row arrives at 0.0 and the loader
  draws arrivals.

Errors are `WorkloadError`s saying where and what, with the offending value in parentheses:
"PATH:LINE: what is wrong (value)" for azure and mooncake, "PATH: record N: what is wrong (value)" for
ShareGPT records (numbered from 0), and "PATH: what is wrong" for the whole file (cannot open, not
UTF-8, invalid JSON, format unknown).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple, NoReturn, TypeVar

from ecosched.errors import EcoschedError

TRACE_FORMATS: tuple[str, ...] = ("azure", "mooncake", "sharegpt")
_EXTENSIONS = {".csv": "azure", ".jsonl": "mooncake", ".json": "sharegpt"}
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
HUMAN_ROLES = frozenset({"human", "user"})
MODEL_ROLES = frozenset({"gpt", "chatgpt", "bard", "assistant", "model"})
# Request.prompt of a ShareGPT request keeps the last this-many characters of its conversation.
PROMPT_TEXT_MAX_CHARS = 8000
_T = TypeVar("_T")


class WorkloadError(EcoschedError):
    """A trace or workload parameter is wrong; the message reads "PATH:LINE: what is wrong (value)"."""


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


_READERS: dict[str, Callable[[IO[str], _Source], list[_Row]]] = {
    "azure": _read_azure,
    "mooncake": _read_mooncake,
    "sharegpt": _read_sharegpt,
}
