"""`ecosched predictor train|eval|export|predict`: the command line of the ONNX length predictor.

Registered by `ecosched.cli` through `add_parser`. Heavy modules (numpy, onnxruntime, tokenizers, onnx)
load inside the handlers; a missing one becomes an EcoschedError that names the extra to install.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ecosched.errors import EcoschedError

# Refit defaults: a log of a few hundred records takes a few seconds on two CPU cores.
REFIT_EPOCHS = 30
REFIT_LEARNING_RATE = 3e-3
REFIT_BATCH_SIZE = 32
INSTALL_HINT = "pip install 'ecosched[onnx]' (and 'ecosched[predictor-train]' to train or evaluate)"


def add_parser(sub: Any) -> None:
    """Add the `predictor` command and its subcommands to the `ecosched` subparsers `sub`."""
    p = sub.add_parser("predictor", help="the ONNX response-length predictor: train, eval, export, predict")
    cmds = p.add_subparsers(required=True, metavar="SUBCOMMAND")
    _train_parser(cmds)
    _eval_parser(cmds)
    _export_parser(cmds)
    _predict_parser(cmds)


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model directory (default: the model shipped with the package)")


def _train_parser(cmds: Any) -> None:
    from ecosched_predictor_onnx.settings import TrainConfig

    d = TrainConfig()
    p = cmds.add_parser("train", help="train on ShareGPT, or refit on a prediction log (--from-log)")
    p.add_argument("--out", required=True, help="directory to write the model to")
    p.add_argument("--from-log", help='JSONL log of {"prompt", "output_tokens"} records to refit on')
    p.add_argument("--init-from", help="with --from-log: model to start from (default: the shipped model)")
    p.add_argument("--epochs", type=int, help=f"training epochs (default: {d.epochs}; {REFIT_EPOCHS} with --from-log)")
    p.add_argument(
        "--learning-rate",
        type=float,
        help=f"Adam step size (default: {d.learning_rate}; {REFIT_LEARNING_RATE} with --from-log)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        help=f"examples per step (default: {d.batch_size}; {REFIT_BATCH_SIZE} with --from-log)",
    )
    p.add_argument(
        "--calibration-fraction",
        type=float,
        default=0.2,
        help="with --from-log: share of the log held out for early stopping and calibration (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="seed of splits and initialisation (default: %(default)s)")
    p.add_argument("--vocab-size", type=int, default=d.vocab_size, help="BPE vocabulary (default: %(default)s)")
    p.add_argument("--embedding-dim", type=int, default=d.embedding_dim, help="bag width (default: %(default)s)")
    p.add_argument("--hidden", type=int, default=d.hidden, help="hidden units (default: %(default)s)")
    p.add_argument("--no-history", action="store_true", help="ignore earlier turns of the conversation (ablation)")
    p.set_defaults(func=_guard(_train))


def _eval_parser(cmds: Any) -> None:
    p = cmds.add_parser("eval", help="metrics on the ShareGPT test split (or a log) against baselines; writes JSON")
    _model_arg(p)
    p.add_argument("--from-log", help="evaluate on a prediction log instead of the ShareGPT test split")
    p.add_argument("--out", default="predictor_eval.json", help="JSON file to write (default: %(default)s)")
    p.set_defaults(func=_guard(_eval))


def _export_parser(cmds: Any) -> None:
    p = cmds.add_parser("export", help="re-export a model directory to ONNX and check it under onnxruntime")
    _model_arg(p)
    p.add_argument("--out", required=True, help="directory to write the exported model to")
    p.set_defaults(func=_guard(_export))


def _predict_parser(cmds: Any) -> None:
    p = cmds.add_parser("predict", help="point prediction, bucket and padded length of each TEXT")
    p.add_argument("texts", nargs="+", metavar="TEXT", help="prompt text (a chat: 'USER: ...' turns)")
    _model_arg(p)
    p.add_argument(
        "--quantile", type=float, default=0.9, help="confidence q of the padded length (default: %(default)s)"
    )
    p.add_argument(
        "--max-output-tokens", type=int, default=4096, help="cap of every length, as a request's (default: %(default)s)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON list of objects, in input order")
    p.set_defaults(func=_guard(_predict))


def _guard(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn a missing optional dependency into a clear EcoschedError."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except ModuleNotFoundError as exc:
            raise EcoschedError(f"the predictor needs {exc.name!r}: {INSTALL_HINT}") from exc

    return run


def _train(args: argparse.Namespace) -> int:
    from ecosched_predictor_onnx import pipeline
    from ecosched_predictor_onnx.runtime import default_model_dir

    out = Path(args.out)
    if args.from_log:
        init = Path(args.init_from) if args.init_from else default_model_dir()
        meta = pipeline.refit_from_log(
            Path(args.from_log),
            init,
            out,
            args.epochs or REFIT_EPOCHS,
            args.learning_rate or REFIT_LEARNING_RATE,
            args.batch_size or REFIT_BATCH_SIZE,
            args.calibration_fraction,
        )
    else:
        meta = pipeline.train_sharegpt(out, _train_config(args))
    print(f"wrote {out} (calibrated levels: {meta['calibrated_levels']})")
    return 0


def _train_config(args: argparse.Namespace) -> Any:
    from ecosched_predictor_onnx.features import FeatureConfig
    from ecosched_predictor_onnx.settings import TrainConfig

    d = TrainConfig()
    return TrainConfig(
        seed=args.seed,
        vocab_size=args.vocab_size,
        embedding_dim=args.embedding_dim,
        hidden=args.hidden,
        epochs=args.epochs or d.epochs,
        batch_size=args.batch_size or d.batch_size,
        learning_rate=args.learning_rate or d.learning_rate,
        features=FeatureConfig(use_history=not args.no_history),
    )


def _eval(args: argparse.Namespace) -> int:
    import numpy as np

    from ecosched_predictor_onnx import evaluate
    from ecosched_predictor_onnx.log import read_records
    from ecosched_predictor_onnx.runtime import load_model

    model = load_model(args.model)
    if args.from_log:
        records = read_records(Path(args.from_log))
        tokens = np.array([r.output_tokens for r in records])
        result = evaluate.evaluate_log(model, [r.prompt for r in records], tokens)
    else:
        result = evaluate.evaluate_sharegpt(model)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    _print_eval(result)
    print(f"wrote {args.out}")
    return 0


def _print_eval(result: dict[str, Any]) -> None:
    rows = {"onnx model": result["model"], **result.get("baselines", {})}
    levels = list(result["model"]["coverage"])
    print(f"{result['split']}: {result['num_examples']} examples; providers {', '.join(result['providers'])}")
    print(f"{'predictor':26s} {'tau':>6s} {'MAE':>7s} {'bucket':>7s} " + " ".join(f"cov@{q:>4s}" for q in levels))
    for name, m in rows.items():
        cov = " ".join(f"{m['coverage'][q]:8.3f}" for q in levels)
        print(f"{name:26s} {m['kendall_tau']:6.3f} {m['mae_tokens']:7.1f} {m['bucket_accuracy']:7.3f} {cov}")


def _export(args: argparse.Namespace) -> int:
    import shutil

    import numpy as np

    from ecosched_predictor_onnx.export import from_onnx, to_onnx
    from ecosched_predictor_onnx.runtime import META_FILE, ONNX_FILE, TOKENIZER_FILE, load_model

    src = load_model(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    to_onnx(from_onnx(src.directory / ONNX_FILE), out / ONNX_FILE)
    for name in (TOKENIZER_FILE, META_FILE):
        shutil.copyfile(src.directory / name, out / name)
    dst = load_model(out)
    probe = ["USER: Write a poem about the sea.", "USER: hi", None]
    single = np.concatenate([dst.probabilities([t]) for t in probe])
    if not np.allclose(single, dst.probabilities(probe), atol=1e-5) or not np.allclose(
        single, src.probabilities(probe), atol=1e-5
    ):
        raise EcoschedError(f"exported model {out / ONNX_FILE} does not reproduce {src.directory / ONNX_FILE}")
    print(
        f"wrote {out}: dynamic batch axis checked (batch 1 == batch {len(probe)}); providers {', '.join(dst.providers)}"
    )
    return 0


def _predict(args: argparse.Namespace) -> int:
    from ecosched_predictor_onnx.runtime import load_model, to_prediction

    if not 0 < args.quantile < 1:
        raise EcoschedError(f"--quantile must be between 0 and 1, got {args.quantile}")
    model = load_model(args.model)
    est = model.estimate(args.texts)
    preds = [to_prediction(est, i, args.max_output_tokens) for i in range(len(args.texts))]
    edges = model.report_edges
    out: list[dict[str, Any]] = []
    for p in preds:
        padded = max(p.num_tokens, p.at_quantile(args.quantile) or p.num_tokens)
        b = sum(1 for e in edges if e <= p.num_tokens)
        bucket = [edges[b - 1] if b else 0, edges[b] if b < len(edges) else None]
        out.append({"predicted_tokens": p.num_tokens, "bucket": bucket, "padded_tokens": padded})
    if args.json:
        print(json.dumps(out))
        return 0
    for text, o in zip(args.texts, out, strict=True):
        hi = "inf" if o["bucket"][1] is None else o["bucket"][1]
        short = text if len(text) <= 40 else text[:37] + "..."
        print(
            f"{o['predicted_tokens']:6d} tokens  bucket [{o['bucket'][0]}, {hi})  padded@{args.quantile:g} "
            f"{o['padded_tokens']:6d}  {short!r}"
        )
    sys.stdout.flush()
    return 0
