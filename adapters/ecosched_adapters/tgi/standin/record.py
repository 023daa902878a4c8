"""The stand-in's call log: one JSON line per RPC as rank 0 saw it, for golden and differential tests.

Each line is `{"t_s", "rpc", "request", "result"}`: seconds since the shard started, the RPC name, the
request as protobuf's JSON mapping (field names as in the .proto; 64-bit ids as strings) and a short
result: every rank's generations and the next batch for Prefill/Decode, the response otherwise, or
`{"error": message}` when the call failed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import IO, Any

from google.protobuf.json_format import MessageToDict

from ecosched_adapters.tgi.standin.engine import TimedStep


def _as_dict(message: Any) -> dict[str, Any]:
    return dict(MessageToDict(message, preserving_proto_field_name=True))


def summary(outcome: Any) -> dict[str, Any]:
    """A short record of a call's result."""
    if not isinstance(outcome, TimedStep):
        return {"response": _as_dict(outcome)}
    gens = []
    for g in outcome.out.generations:
        item: dict[str, Any] = {"id": str(g.request_id), "tokens": list(g.tokens.ids)}
        if g.HasField("generated_text"):
            item["finish"] = int(g.generated_text.finish_reason)
            item["generated_tokens"] = g.generated_text.generated_tokens
        gens.append(item)
    batch = outcome.out.batch
    return {
        "batch": None if batch is None else _as_dict(batch),
        "generations": gens,
        "forward_ns": outcome.forward_ns,
    }


class Recorder:
    """Appends call records to `path` (does nothing without one)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._t0 = time.monotonic()

    def open(self) -> None:
        if self.path and self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 -- closed in close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def write(self, rpc: str, request: Any, result: Mapping[str, Any]) -> None:
        if self._file is None:
            return
        line = {
            "t_s": round(time.monotonic() - self._t0, 6),
            "rpc": rpc,
            "request": _as_dict(request),
            "result": dict(result),
        }
        self._file.write(json.dumps(line, sort_keys=True) + "\n")
        self._file.flush()
