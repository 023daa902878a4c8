"""Build a tiny random-weight Llama, with its own tokenizer, that real engines can load.

Scheduling work needs a model the engines accept, not a good one: lengths are forced with
`max_tokens` and `ignore_eos`. Model hubs are unreachable here, so everything is made locally:

- a byte-level BPE tokenizer (about 2,000 tokens, specials `<s>` `</s>` `<pad>` first) trained with
  the `tokenizers` library on this interpreter's standard-library sources, wrapped in
  `PreTrainedTokenizerFast` with a plain chat template;
- a `LlamaForCausalLM` (hidden 128, intermediate 256, 2 layers, 2 heads of 64, about 0.9 M
  parameters) with weights drawn from a fixed seed.

The same interpreter and seed give the same files. Usage:

    python scripts/build_tiny_model.py OUT_DIR [--max-position-embeddings N] [--force]

It needs torch, transformers and tokenizers (the engine environment) and downloads nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
MANIFEST = "ecosched_tiny_model.json"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MANIFEST)
CORPUS_BYTES = 2_000_000  # enough text for a 2k vocabulary; training takes a couple of seconds


class MissingDependencyError(RuntimeError):
    """torch, transformers or tokenizers is not importable in this interpreter."""


@dataclass(frozen=True, slots=True)
class TinyModelSpec:
    """What the built model is; written to the manifest so a rebuild can tell if it matches."""

    vocab_size: int = 2000
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    head_dim: int = 64
    max_position_embeddings: int = 2048
    seed: int = 0


def build(out_dir: Path, max_position_embeddings: int = 2048, *, force: bool = False, seed: int = 0) -> Path:
    """Build the tiny model into `out_dir` (skipped when a matching one is there) and return it.

    The model is built in a sibling folder and renamed into place, so `out_dir` is either complete
    or absent. Raises `FileExistsError` when `out_dir` holds something else and `force` is false.
    """
    spec = TinyModelSpec(max_position_embeddings=max_position_embeddings, seed=seed)
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        _check_existing(out_dir, spec)
        return out_dir
    torch, tokenizers, transformers = _import_engine_libs()
    transformers.utils.logging.disable_progress_bar()
    staging = out_dir.with_name(out_dir.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    fast_tokenizer = _build_tokenizer(tokenizers, transformers, spec)
    fast_tokenizer.save_pretrained(staging)
    _build_model(torch, transformers, spec, fast_tokenizer).save_pretrained(staging)
    (staging / MANIFEST).write_text(json.dumps(asdict(spec), indent=2, sort_keys=True) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return out_dir


def is_complete(out_dir: Path) -> bool:
    """Whether `out_dir` holds every file of a finished build."""
    return all((out_dir / name).is_file() for name in REQUIRED_FILES)


def _check_existing(out_dir: Path, spec: TinyModelSpec) -> None:
    if not is_complete(out_dir):
        raise FileExistsError(f"{out_dir} exists but is not a complete tiny model; pass --force to rebuild it")
    found = json.loads((out_dir / MANIFEST).read_text())
    if found != asdict(spec):
        raise FileExistsError(f"{out_dir} holds a tiny model built as {found}, expected {asdict(spec)}; "
                              "pass --force to rebuild it")


def _import_engine_libs() -> tuple[Any, Any, Any]:
    try:
        import tokenizers
        import torch
        import transformers
    except ImportError as exc:
        raise MissingDependencyError(
            f"building the tiny model needs torch, transformers and tokenizers ({exc}); run this script "
            "with the engine environment's interpreter, e.g. one where `pip install -e '.[vllm]'` was done"
        ) from exc
    return torch, tokenizers, transformers


def corpus_files(budget_bytes: int = CORPUS_BYTES) -> list[str]:
    """The standard library's top-level sources, by name, up to `budget_bytes` of text."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files, total = [], 0
    for path in sorted(stdlib.glob("*.py")):
        if total >= budget_bytes:
            break
        files.append(str(path))
        total += path.stat().st_size
    if not files:
        raise FileNotFoundError(f"no Python sources under {stdlib} to train the tokenizer on")
    return files


def _build_tokenizer(tokenizers: Any, transformers: Any, spec: TinyModelSpec) -> Any:
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=spec.vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train(corpus_files(), trainer)
    bos, eos, pad = SPECIAL_TOKENS
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=bos, eos_token=eos,
                                                pad_token=pad, model_max_length=spec.max_position_embeddings)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _build_model(torch: Any, transformers: Any, spec: TinyModelSpec, fast_tokenizer: Any) -> Any:
    config = transformers.LlamaConfig(
        vocab_size=len(fast_tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_attention_heads, head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings, bos_token_id=fast_tokenizer.bos_token_id,
        eos_token_id=fast_tokenizer.eos_token_id, pad_token_id=fast_tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(spec.seed)
    return transformers.LlamaForCausalLM(config).eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="where the model is written")
    parser.add_argument("--max-position-embeddings", type=int, default=2048, metavar="N",
                        help="the model's context length (default 2048)")
    parser.add_argument("--force", action="store_true", help="rebuild even if OUT_DIR already holds a model")
    args = parser.parse_args(argv)
    try:
        out_dir = build(args.out_dir, args.max_position_embeddings, force=args.force)
    except (MissingDependencyError, FileExistsError, FileNotFoundError) as exc:
        print(f"build_tiny_model: {exc}", file=sys.stderr)
        return 1
    print(out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
