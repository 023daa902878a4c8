"""Tokenization shared by the router and the stand-in shard: both must agree token for token, as
TGI's shard re-tokenizes the text the router sends (and checks the count when chunking).

`load_tokenizer(path)` reads a `tokenizer.json` (or a model directory holding one), as TGI's router
does with `--tokenizer-name`. Without a path, `builtin_tokenizer()` is used: one token per byte
(a byte-level BPE with no merges) and `</s>` as EOS, so text round-trips exactly through
decode and encode, which the router relies on when it resumes a request from its text.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

BUILTIN_EOS = "</s>"
BUILTIN_SPECIALS = ("<unk>", "<s>", BUILTIN_EOS)


@lru_cache(maxsize=1)
def builtin_tokenizer() -> Any:
    """A byte-level tokenizer built in memory: specials 0-2, then the 256 byte symbols."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(BUILTIN_SPECIALS)}
    for sym in sorted(alphabet):
        vocab[sym] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(BUILTIN_SPECIALS))
    return tok


def load_tokenizer(path: str | None) -> Any:
    """The tokenizer at `path` (a tokenizer.json file or a directory holding one), or the built-in one."""
    if not path:
        return builtin_tokenizer()
    from tokenizers import Tokenizer

    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise FileNotFoundError(f"no tokenizer.json at {path!r} (give a tokenizer.json file or a directory with one)")
    return Tokenizer.from_file(str(p))


def eos_token_id(tokenizer: Any) -> int | None:
    """The id of the tokenizer's end-of-sequence token, when it has one of the usual names."""
    for name in (BUILTIN_EOS, "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<eos>"):
        tid = tokenizer.token_to_id(name)
        if tid is not None:
            return int(tid)
    return None


def encode(tokenizer: Any, text: str, add_special_tokens: bool = True, truncate: int | None = None) -> list[int]:
    """Token ids of `text`, keeping the last `truncate` tokens as TGI's shard does."""
    ids = list(tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)
    if truncate is not None and truncate > 0 and len(ids) > truncate:
        ids = ids[-truncate:]
    return ids


def decode(tokenizer: Any, ids: list[int], skip_special_tokens: bool = True) -> str:
    return str(tokenizer.decode(ids, skip_special_tokens=skip_special_tokens))
