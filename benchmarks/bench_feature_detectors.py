"""Fit and score times of the feature detectors, and KNN / Mahalanobis against their BLAS bounds.

Fits every feature detector on 60,000 x 512 float32 features of 10 classes and scores 20,000, then prints
each one's fit and score time. For KNN and Mahalanobis it also prints the ratio of the score time to a BLAS
bound measured side by side in the same run (interleaved, best of ``--repeats``):

- KNN: the float32 product of all query and fit features, 20,000 x 512 x 60,000 (computed in row blocks
  into one reused, pre-touched output buffer; the whole 20,000 x 60,000 result would be 4.8 GB);
- Mahalanobis: one 20,000 x 512 x 512 float32 product per class (10 of them), into a reused buffer.

Gram is timed on the same 512 columns taken as its statistics (what a Gram post-processing would produce).

Run: python benchmarks/bench_feature_detectors.py [--n-fit 60000] [--n-test 20000] [--dim 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from oodscope import Features
from oodscope.detectors.gram import Gram
from oodscope.detectors.knn import KNN
from oodscope.detectors.mahalanobis import Mahalanobis
from oodscope.detectors.rmds import RMDS
from oodscope.detectors.she import SHE
from oodscope.detectors.vim import ViM

N_CLASSES = 10


def make_features(n_fit: int, n_test: int, dim: int) -> tuple[Features, Features]:
    rng = np.random.default_rng(0)
    means = rng.normal(0.0, 1.0, (N_CLASSES, dim)).astype(np.float32)
    weight = (means / np.sqrt(dim)).astype(np.float32)
    bias = rng.normal(0.0, 0.1, N_CLASSES).astype(np.float32)

    def sample(n: int, labelled: bool) -> Features:
        labels = rng.integers(0, N_CLASSES, n)
        h = np.maximum(means[labels] + rng.normal(0.0, 1.0, (n, dim)).astype(np.float32), 0.0)
        return Features(
            logits=h @ weight.T + bias,
            layers={"penultimate": h},
            labels=labels if labelled else None,
            head_weight=weight,
            head_bias=bias,
        )

    return sample(n_fit, True), sample(n_test, False)


def timed(func: Callable[[], object]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def knn_bound(fit: np.ndarray, test: np.ndarray) -> Callable[[], None]:
    rows = 2048
    out = np.ones((rows, fit.shape[0]), dtype=np.float32)  # touched once, here, not in the timing

    def run() -> None:
        for start in range(0, test.shape[0], rows):
            block = test[start : start + rows]
            np.matmul(block, fit.T, out=out[: block.shape[0]])

    return run


def mahalanobis_bound(test: np.ndarray) -> Callable[[], None]:
    dim = test.shape[1]
    precision = np.eye(dim, dtype=np.float32)
    out = np.ones(test.shape, dtype=np.float32)

    def run() -> None:
        for _ in range(N_CLASSES):
            np.matmul(test, precision, out=out)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-fit", type=int, default=60_000)
    parser.add_argument("--n-test", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    fit, test = make_features(args.n_fit, args.n_test, args.dim)
    h_fit, h_test = fit.layer("penultimate"), test.layer("penultimate")
    print(
        f"fit {h_fit.shape[0]} x {h_fit.shape[1]} float32 ({N_CLASSES} classes), score {h_test.shape[0]}; "
        f"best of {args.repeats}"
    )

    detectors: dict[str, object] = {"KNN numpy": KNN(backend="numpy")}
    try:
        import faiss  # noqa: F401

        detectors["KNN faiss"] = KNN(backend="faiss")
    except ImportError:
        print("(faiss is not installed: KNN is timed with the numpy backend only)")
    detectors.update(
        {"Mahalanobis": Mahalanobis(), "RMDS": RMDS(), "ViM": ViM(), "SHE": SHE(), "Gram": Gram(orders=None)}
    )
    bounds = {
        "KNN": knn_bound(h_fit, h_test),
        "Mahalanobis": mahalanobis_bound(h_test),
    }

    rows = []
    for name, detector in detectors.items():
        fit_time = min(timed(lambda d=detector: d.fit(fit)) for _ in range(1 if "KNN" in name else 2))
        key = name.split()[0]
        score_time, bound_time = np.inf, np.inf
        for _ in range(args.repeats):  # interleaved: both see the same machine load
            if key in bounds:
                bound_time = min(bound_time, timed(bounds[key]))
            score_time = min(score_time, timed(lambda d=detector: d.score(test)))
        ratio = f"{score_time / bound_time:6.2f}" if key in bounds else "     -"
        bound = f"{bound_time:8.3f}" if key in bounds else "       -"
        rows.append((name, fit_time, score_time, bound, ratio))

    print(f"{'detector':<12} {'fit s':>8} {'score s':>8} {'bound s':>8} {'score/bound':>12}")
    for name, fit_time, score_time, bound, ratio in rows:
        print(f"{name:<12} {fit_time:8.3f} {score_time:8.3f} {bound} {ratio:>12}")


if __name__ == "__main__":
    main()
