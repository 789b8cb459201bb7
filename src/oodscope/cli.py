"""The ``oodscope`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ._version import __version__


def _demo(args: argparse.Namespace) -> int:
    from .demo import format_demo, run_demo

    sys.stdout.write(format_demo(run_demo(seed=args.seed)) + "\n")
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
        help="offline demo on scikit-learn's digits (ID 0-4 vs OOD 5-9), prints the metric table",
        description="Train a small classifier on scikit-learn's 8x8 digits 0-4 and score digits 0-4 (ID) "
        "against 5-9 (OOD) with every logit detector. Needs no download.",
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the train/test split (default: 0)")
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
