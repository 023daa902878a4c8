"""The length unit: tokens of a byte-level BPE tokenizer trained offline on the training split.

The tokenizer counts response tokens for the training labels and splits prompt text into the ids that
the features hash, so training and inference use one unit. It ships as `tokenizer.json` beside the model
(HF `tokenizers` format). Responses of a served model are counted in that model's own tokens when they
are logged for online learning (`train --from-log`), so a refit model predicts in the served unit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ecosched.errors import PredictorError


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int) -> Any:
    """A byte-level BPE tokenizer (no special tokens) trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: Path) -> Any:
    """The tokenizer stored at `path`; a missing or unreadable file raises PredictorError naming it."""
    from tokenizers import Tokenizer

    if not path.is_file():
        raise PredictorError(f"tokenizer file not found: {path}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises plain Exception subclasses
        raise PredictorError(f"tokenizer file {path} is not a valid tokenizers JSON file: {exc}") from exc


def count_tokens(tokenizer: Any, texts: Sequence[str], chunk: int = 2048) -> list[int]:
    """Tokens of each text (the length unit), batched in the tokenizer's native code, `chunk` texts at a
    time (encodings hold offsets too, so memory stays bounded)."""
    counts: list[int] = []
    for start in range(0, len(texts), chunk):
        encs = tokenizer.encode_batch(list(texts[start : start + chunk]), add_special_tokens=False)
        counts += [len(enc.ids) for enc in encs]
    return counts
