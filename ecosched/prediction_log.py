"""The prediction log: what a served model really answered, for online learning.

Format: JSON Lines, one object per finished request, `{"prompt": str, "output_tokens": int}` (other keys
are ignored). `prompt` is the prompt as the predictor saw it (`Request.prompt`), `output_tokens` the
number of tokens the served model generated, in its own tokenizer. Engines and the simulator
(`ecosched simulate --log-outputs FILE`) append records with `PredictionLog`; `ecosched predictor
train --from-log FILE` refits a model on them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ecosched.errors import PredictorError


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One finished request: its prompt and the output tokens the served model produced."""

    prompt: str
    output_tokens: int


class PredictionLog:
    """Appends records to a JSONL file (created with its parent folders on first use)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def extend(self, records: list[tuple[str, int]]) -> None:
        """Write several (prompt, output tokens) records in one go."""
        for _, tokens in records:
            self._check(tokens)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(
            json.dumps({"prompt": prompt, "output_tokens": tokens}, ensure_ascii=False) + "\n"
            for prompt, tokens in records
        )
        with self.path.open("a", encoding="utf-8") as f:
            f.write(lines)  # one write: runs in parallel processes may share a log

    @staticmethod
    def _check(output_tokens: int) -> None:
        if isinstance(output_tokens, bool) or not isinstance(output_tokens, int) or output_tokens < 1:
            raise PredictorError(f"output_tokens must be a positive integer, got {output_tokens!r}")

    def append(self, prompt: str, output_tokens: int) -> None:
        """Write one record; `output_tokens` must be a positive integer."""
        self.extend([(prompt, output_tokens)])


def read_records(path: Path) -> list[LogRecord]:
    """Every record of a log; a missing file or a malformed line raises PredictorError (file and line)."""
    if not path.is_file():
        raise PredictorError(f"prediction log not found: {path}")
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                prompt, tokens = obj["prompt"], obj["output_tokens"]
            except (ValueError, KeyError, TypeError) as exc:
                raise PredictorError(
                    f'{path}:{lineno}: expected {{"prompt": ..., "output_tokens": ...}}: {exc!r}'
                ) from exc
            if not isinstance(prompt, str) or isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
                raise PredictorError(f"{path}:{lineno}: prompt must be a string and output_tokens a positive integer")
            records.append(LogRecord(prompt, tokens))
    if not records:
        raise PredictorError(f"prediction log {path} has no records")
    return records
