"""Fit times of Mahalanobis, RMDS and ViM against one float64 scatter product, and the saving of sharing.

The covariance-based fits are bounded below by one float64 product of the centred [N, D] fit features with
themselves (the scatter GEMM, ``h64.T @ h64``; numpy computes it as a symmetric rank-k update). This script
times each fit and that product side by side in the same run (interleaved, best of ``--repeats``) and prints
their ratio. ViM also needs an eigendecomposition of a [D, D] matrix (its principal subspace), so its fit is
also compared with the product plus one float64 ``np.linalg.eigh`` of the [D, D] covariance. Last, the
three fits run one after the other, once plainly and once inside ``sharing()``, where they share
one pass of statistics. Each timed run follows a short pause, so that the BLAS threads of the run before
have gone idle (numpy's and scipy's OpenBLAS are separate libraries, whose threads spin for a while after a
call and slow down the other's). On a shared machine, run it when the machine is otherwise idle and use
enough repeats: the best of each is taken.

Features: ReLU of Gaussian class clusters, float32, with a linear head whose logits classify them (ViM
needs the head and the logits).

Run: python benchmarks/bench_covariance.py [--n 10000] [--dim 1600] [--classes 10] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from oodscope import Features
from oodscope._sharing import sharing
from oodscope.detectors.mahalanobis import Mahalanobis
from oodscope.detectors.rmds import RMDS
from oodscope.detectors.vim import ViM

PAUSE = 0.2  # seconds before each timed run


def make_features(n: int, dim: int, n_classes: int) -> Features:
    rng = np.random.default_rng(0)
    means = rng.normal(0.0, 1.0, (n_classes, dim)).astype(np.float32)
    weight = (means / np.sqrt(dim)).astype(np.float32)
    bias = rng.normal(0.0, 0.1, n_classes).astype(np.float32)
    labels = rng.integers(0, n_classes, n)
    h = np.maximum(means[labels] + rng.normal(0.0, 1.0, (n, dim)).astype(np.float32), 0.0)
    return Features(
        logits=h @ weight.T + bias,
        layers={"penultimate": h},
        labels=labels,
        head_weight=weight,
        head_bias=bias,
    )


def timed(func: Callable[[], object]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=1600)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    features = make_features(args.n, args.dim, args.classes)
    h = features.layer("penultimate")
    centred = h.astype(np.float64)
    centred -= centred.mean(axis=0)  # prepared once, outside the timing: the bound is the product alone
    covariance = centred.T @ centred / len(centred)
    detectors = {"Mahalanobis": Mahalanobis, "RMDS": RMDS, "ViM": ViM}

    def all_three() -> None:
        for cls in detectors.values():
            cls().fit(features)

    def all_three_shared() -> None:
        with sharing():
            all_three()

    runs: dict[str, Callable[[], object]] = {
        "gemm": lambda: centred.T @ centred,
        "eigh": lambda: np.linalg.eigh(covariance),
        **{name: (lambda cls=cls: cls().fit(features)) for name, cls in detectors.items()},
        "separately": all_three,
        "shared": all_three_shared,
    }
    best = dict.fromkeys(runs, np.inf)
    for _ in range(args.repeats):  # interleaved: every run sees the same machine load
        for name, run in runs.items():
            # numpy and scipy ship separate OpenBLAS builds whose threads keep spinning for a while after a
            # call; a pause lets the previous run's threads settle so that they do not slow this one down
            time.sleep(PAUSE)
            best[name] = min(best[name], timed(run))

    print(
        f"fit {args.n} x {args.dim} float32 ({args.classes} classes); best of {args.repeats}; "
        f"scatter GEMM {best['gemm']:.3f} s, eigh [D, D] {best['eigh']:.3f} s"
    )
    print(f"{'detector':<12} {'fit s':>8} {'GEMM s':>8} {'fit/GEMM':>9} {'fit/(GEMM+eigh)':>16}")
    for name in detectors:
        with_eigh = f"{best[name] / (best['gemm'] + best['eigh']):16.2f}" if name == "ViM" else f"{'-':>16}"
        print(
            f"{name:<12} {best[name]:8.3f} {best['gemm']:8.3f} {best[name] / best['gemm']:9.2f} {with_eigh}"
        )
    print(
        f"all three: separately {best['separately']:.3f} s, "
        f"inside sharing() {best['shared']:.3f} s, ratio {best['shared'] / best['separately']:.2f}"
    )


if __name__ == "__main__":
    main()
