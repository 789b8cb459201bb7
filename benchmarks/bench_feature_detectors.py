"""Fit and score times of the feature detectors, KNN / Mahalanobis against their BLAS bounds, KNN's IVF index.

Fits every feature detector on 60,000 x 512 float32 features of 10 classes and scores 20,000, then prints
each one's fit and score time. For KNN (its exact search) and Mahalanobis it also prints the ratio of the
score time to a BLAS bound measured side by side in the same run (interleaved, best of ``--repeats``):

- KNN: the float32 product of all query and fit features, 20,000 x 512 x 60,000 (computed in row blocks
  into one reused, pre-touched output buffer; the whole 20,000 x 60,000 result would be 4.8 GB);
- Mahalanobis: one 20,000 x 512 x 512 float32 product per class (10 of them), into a reused buffer.

Gram is timed on the same 512 columns taken as its statistics (what a Gram post-processing would produce).

Then, when faiss is installed, KNN(index="ivf") against the exact search, on the same features and on a
clustered set (``--clusters`` Gaussian clusters of ``--clustered-dim`` columns, ``--clustered-n-fit`` fit
rows, the same number of queries as above): fit and score times for each n_probe of ``--n-probe`` (and the
default), the recall (share of queries whose k-th neighbour distance equals the exact one within 1e-9
relative) and the mean relative error of the distance.

Run: python benchmarks/bench_feature_detectors.py [--n-fit 60000] [--n-test 20000] [--dim 512] [--repeats 3]
         [--n-probe 1,4,16,64] [--clustered-n-fit N] [--clustered-dim 64] [--clusters 100]
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
from oodscope.neighbors import default_n_probe, ivf_kth_neighbor_distance, load_ivf_index

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


def clustered_features(n_fit: int, n_test: int, dim: int, n_clusters: int) -> tuple[Features, Features]:
    """Gaussian clusters (centres N(0, 1), spread 0.5 per coordinate), fit and test drawn alike."""
    rng = np.random.default_rng(1)
    centres = rng.normal(0.0, 1.0, (n_clusters, dim))

    def sample(n: int) -> Features:
        h = centres[rng.integers(0, n_clusters, n)] + rng.normal(0.0, 0.5, (n, dim))
        return Features(layers={"penultimate": h.astype(np.float32)})

    return sample(n_fit), sample(n_test)


def ivf_rows(
    name: str, fit: Features, test: Features, probes: list[int], repeats: int
) -> list[tuple[object, ...]]:
    """KNN(index="ivf") against the exact search: one row per n_probe."""
    exact = KNN()
    exact_fit = timed(lambda: exact.fit(fit))
    exact_time, exact_scores = np.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        exact_scores = exact.score(test).scores
        exact_time = min(exact_time, time.perf_counter() - start)
    ivf = KNN(index="ivf")
    ivf_fit = timed(lambda: ivf.fit(fit))
    index, queries = load_ivf_index(ivf.ivf_index_), test.layer("penultimate")
    default = default_n_probe(ivf.n_lists_)
    rows = []
    for n_probe in sorted({p for p in probes if p <= ivf.n_lists_} | {default}):
        score_time, scores = np.inf, None
        for _ in range(repeats):
            start = time.perf_counter()
            scores = ivf_kth_neighbor_distance(
                queries, ivf.fit_vectors_, index, ivf.k, n_probe, normalize_queries=True
            )
            score_time = min(score_time, time.perf_counter() - start)
        recall = np.mean(np.abs(scores - exact_scores) <= 1e-9 * exact_scores)
        error = np.mean((scores - exact_scores) / exact_scores)
        label = f"{n_probe}{'*' if n_probe == default else ''}/{ivf.n_lists_}"
        rows.append((name, label, ivf_fit, score_time, exact_fit, exact_time, recall, error))
    return rows


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
    parser.add_argument("--n-probe", default="1,4,16,64", help="n_probe values of the IVF table")
    parser.add_argument("--clustered-n-fit", type=int, default=None, help="default: --n-fit")
    parser.add_argument("--clustered-dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=100)
    args = parser.parse_args()

    fit, test = make_features(args.n_fit, args.n_test, args.dim)
    h_fit, h_test = fit.layer("penultimate"), test.layer("penultimate")
    print(
        f"fit {h_fit.shape[0]} x {h_fit.shape[1]} float32 ({N_CLASSES} classes), score {h_test.shape[0]}; "
        f"best of {args.repeats}"
    )

    detectors: dict[str, object] = {
        "KNN": KNN(),
        "Mahalanobis": Mahalanobis(),
        "RMDS": RMDS(),
        "ViM": ViM(),
        "SHE": SHE(),
        "Gram": Gram(orders=None),
    }
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

    try:
        import faiss  # noqa: F401
    except ImportError:
        print("(faiss is not installed: no IVF table)")
        return
    probes = [int(p) for p in args.n_probe.split(",")]
    n_clustered = args.clustered_n_fit or args.n_fit
    sets = {
        f"features {args.n_fit}x{args.dim}": (fit, test),
        f"clustered {n_clustered}x{args.clustered_dim}": clustered_features(
            n_clustered, args.n_test, args.clustered_dim, args.clusters
        ),
    }
    ivf = [row for name, (f, t) in sets.items() for row in ivf_rows(name, f, t, probes, min(args.repeats, 2))]
    print(
        f"\nKNN(k=50, index='ivf') against the exact search, {args.n_test} queries (*: the default n_probe; "
        "recall: share of exact k-th distances; speed-up: of fit + score, and of score alone)"
    )
    print(
        f"{'set':<26} {'n_probe':>10} {'fit s':>8} {'score s':>8} {'exact fit':>9} {'exact s':>8} "
        f"{'speed-up':>8} {'score':>6} {'recall':>7} {'rel err':>9}"
    )
    for name, label, fit_time, score_time, exact_fit, exact_time, recall, error in ivf:
        total_speed_up = (exact_fit + exact_time) / (fit_time + score_time)
        print(
            f"{name:<26} {label:>10} {fit_time:8.3f} {score_time:8.3f} {exact_fit:9.3f} {exact_time:8.3f} "
            f"{total_speed_up:8.2f} {exact_time / score_time:6.2f} {recall:7.3f} {error:9.2e}"
        )


if __name__ == "__main__":
    main()
