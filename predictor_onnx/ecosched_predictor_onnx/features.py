"""Featurisation: a prompt string to hashed word n-gram ids (embedding bags) and a few dense numbers.

The prompt is read as a chat engine sees it: earlier turns, then the last user message (the markers of
`data.render_chat`; text without markers is one user message). Only capped slices of the text are
split into words, so the cost per prompt is bounded whatever the prompt's length:

    last user message:   first `head_chars` + last `tail_chars` characters  -> namespace 0
    previous assistant:  first `prev_chars` + last `prev_tail_chars`         -> namespace 1

Each slice gives hashed words and word bigrams (a regular expression and CRC-32: hashing BPE token
ids instead made the whole prediction about 2.5 times slower here), averaged into one embedding bag
per slice; all share one table of `num_buckets` rows. The BPE tokenizer defines the length unit
(labels), not the features.

Dense features (`DENSE_NAMES`) are log character counts of the turns, the number of earlier turns,
whether the previous answer stopped mid-sentence (ShareGPT answers cut off and then continued), and a
few shape counts of the user message.
"""

from __future__ import annotations

import itertools
import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ecosched_predictor_onnx.data import ASSISTANT_MARKER, TURN_SEPARATOR, USER_MARKER

_USER = TURN_SEPARATOR + USER_MARKER
_ASSISTANT = TURN_SEPARATOR + ASSISTANT_MARKER
_BIGRAM_MUL = 1_000_003
_SALT = 2_654_435_761
# Words: a CJK ideograph or kana alone (those scripts put no spaces between words), a run of letters,
# a run of digits, or one punctuation mark.
_WORD = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff]|[^\W\d_]+|\d+|[^\w\s]")
NUM_NAMESPACES = 2  # the last user message, the previous assistant turn: one bag each

DENSE_NAMES = (
    "log_user_chars",
    "log_prompt_chars",
    "log_prev_assistant_chars",
    "log_mean_assistant_chars",
    "num_assistant_turns",
    "has_prev_assistant",
    "user_newline_frac",
    "log_prev2_assistant_chars",
    "log_max_assistant_chars",
    "prev_ends_open",
    "user_question_marks",
)
_CLOSED_ENDINGS = tuple('.!?)]}"`*:')


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """How a prompt is featurised; stored in the model's metadata so inference matches training."""

    num_buckets: int = 65536
    head_chars: int = 320
    tail_chars: int = 160
    prev_chars: int = 160
    prev_tail_chars: int = 64
    max_ids: int = 384
    use_history: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Turns:
    """The parts of a prompt the features read."""

    user: str
    prev_assistant: str
    assistant_chars: tuple[int, ...]
    prompt_chars: int


def split_turns(prompt: str | None) -> Turns:
    """The last user message, the assistant turn before it, and the lengths of all assistant turns."""
    text = prompt or ""
    if text.startswith(USER_MARKER):
        text = TURN_SEPARATOR + text
    cut = text.rfind(_USER)
    user = text[cut + len(_USER) :] if cut >= 0 else text
    history = text[:cut] if cut >= 0 else ""
    pieces = history.split(_ASSISTANT)[1:]
    assistant = [p.split(_USER, 1)[0] for p in pieces]
    prev = assistant[-1] if assistant else ""
    return Turns(user, prev, tuple(len(a) for a in assistant), len(prompt or ""))


def dense_features(turns: Turns, config: FeatureConfig) -> list[float]:
    """The `DENSE_NAMES` numbers of one prompt (unscaled; the model's first layer holds the scaling)."""
    chars = turns.assistant_chars
    n = len(chars)
    hist = config.use_history and n > 0
    user_log = math.log1p(len(turns.user))
    return [
        user_log,
        math.log1p(turns.prompt_chars) if config.use_history else user_log,
        math.log1p(chars[-1]) if hist else 0.0,
        sum(math.log1p(c) for c in chars) / n if hist else 0.0,
        float(min(n, 16)) if config.use_history else 0.0,
        1.0 if hist else 0.0,
        turns.user.count("\n") / (len(turns.user) + 1.0),
        math.log1p(chars[-2]) if hist and n > 1 else 0.0,
        math.log1p(max(chars)) if hist else 0.0,
        1.0 if hist and not turns.prev_assistant.rstrip().endswith(_CLOSED_ENDINGS) else 0.0,
        float(min(turns.user.count("?"), 5)),
    ]


def text_slices(turns: Turns, config: FeatureConfig) -> tuple[str, str]:
    """The capped slices that are read: the user message's head and tail, the previous answer's head and tail."""
    u = turns.user
    user = (
        u if len(u) <= config.head_chars + config.tail_chars else u[: config.head_chars] + " " + u[-config.tail_chars :]
    )
    p = turns.prev_assistant if config.use_history else ""
    if len(p) > config.prev_chars + config.prev_tail_chars:
        tail = p[-config.prev_tail_chars :] if config.prev_tail_chars else ""
        p = p[: config.prev_chars] + " " + tail
    return user, p


def words(text: str) -> list[str]:
    """Lower-cased words: letter runs, digit runs, single CJK characters, single punctuation marks."""
    return _WORD.findall(text.lower())


def bag_ids(text: str, namespace: int, config: FeatureConfig) -> list[int]:
    """Table rows of one slice: hashed words (CRC-32, stable across processes), then hashed word bigrams,
    salted by namespace, at most `max_ids` in all."""
    hashes = [zlib.crc32(w.encode()) for w in words(text)]
    m = config.num_buckets
    salt = (namespace + 1) * _SALT
    rows = [(h + salt) % m for h in hashes]
    rows.extend((a * _BIGRAM_MUL + b + salt) % m for a, b in itertools.pairwise(hashes))
    return rows[: config.max_ids]


class Featurizer:
    """Prompts to (ids, weights, dense) arrays for the ONNX graph, in pure Python and numpy."""

    def __init__(self, config: FeatureConfig) -> None:
        self.config = config

    def featurize(self, prompts: Sequence[str | None]) -> tuple[list[list[list[int]]], Any]:
        """Row ids of each prompt's bags (one per namespace), and the dense features [N, F] (float32)."""
        import numpy as np

        turns = [split_turns(p) for p in prompts]
        rows = [[bag_ids(text, ns, self.config) for ns, text in enumerate(text_slices(t, self.config))] for t in turns]
        dense = np.array([dense_features(t, self.config) for t in turns], dtype=np.float32)
        return rows, dense.reshape(len(turns), len(DENSE_NAMES))

    @staticmethod
    def pack(bags: Sequence[Sequence[Sequence[int]]]) -> tuple[Any, Any]:
        """Bags side by side in one padded array: ids [N, L] (int64), and weights [N, namespaces, L] holding
        1/len at the positions of each namespace's ids (a mean per namespace) and 0 elsewhere."""
        import numpy as np

        width = max(1, max((sum(len(b) for b in bag) for bag in bags), default=1))
        ids = np.zeros((len(bags), width), dtype=np.int64)
        weights = np.zeros((len(bags), NUM_NAMESPACES, width), dtype=np.float32)
        for i, bag in enumerate(bags):
            pos = 0
            for ns, b in enumerate(bag):
                if b:
                    ids[i, pos : pos + len(b)] = b
                    weights[i, ns, pos : pos + len(b)] = 1.0 / len(b)
                    pos += len(b)
        return ids, weights

    def __call__(self, prompts: Sequence[str | None]) -> tuple[Any, Any, Any]:
        rows, dense = self.featurize(prompts)
        ids, weights = self.pack(rows)
        return ids, weights, dense
