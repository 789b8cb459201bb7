"""Time ``oodscope.metrics.bench_metrics`` against scikit-learn's ``roc_auc_score`` on the same data.

Run with ``python benchmarks/bench_metrics.py``. For each N, half of the scores are ID (standard normal) and
half OOD (normal shifted by +1); every timing is the best of 5 repeats.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

try:
    from oodscope.metrics import bench_metrics
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from oodscope.metrics import bench_metrics

REPEATS = 5
SIZES = (100_000, 1_000_000)
ALL_FOUR = ("auroc", "fpr95tpr", "aupr_in", "aupr_out")
TWO = ("auroc", "fpr95tpr")


def best_time(func: Callable[[], object], repeats: int = REPEATS) -> float:
    """Best wall-clock time of ``repeats`` calls, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for n in SIZES:
        n_in = n // 2
        scores = np.concatenate((rng.normal(size=n_in), rng.normal(loc=1.0, size=n - n_in)))
        labels = np.concatenate((np.zeros(n_in, dtype=np.int64), np.ones(n - n_in, dtype=np.int64)))

        ours = bench_metrics(scores, labels, metrics=ALL_FOUR)
        reference = roc_auc_score(labels, scores)
        assert abs(ours["auroc"] - reference) <= 1e-9, (ours["auroc"], reference)

        t_four = best_time(lambda s=scores, y=labels: bench_metrics(s, y, metrics=ALL_FOUR))
        t_two = best_time(lambda s=scores, y=labels: bench_metrics(s, y, metrics=TWO))
        t_sklearn = best_time(lambda s=scores, y=labels: roc_auc_score(y, s))
        rows.append((n, t_four, t_two, t_sklearn))

    header = (
        f"{'N':>10} | {'ours, 4 metrics':>16} | {'ours, auroc+fpr95':>18} | {'sklearn roc_auc_score':>21} "
        f"| {'ratio 4/sk':>10} | {'ratio 2/sk':>10}"
    )
    print(f"best of {REPEATS} repeats; 4 metrics = {', '.join(ALL_FOUR)}")
    print(header)
    print("-" * len(header))
    for n, t_four, t_two, t_sklearn in rows:
        print(
            f"{n:>10,} | {t_four * 1e3:>13.1f} ms | {t_two * 1e3:>15.1f} ms | {t_sklearn * 1e3:>18.1f} ms "
            f"| {t_four / t_sklearn:>10.2f} | {t_two / t_sklearn:>10.2f}"
        )
    print("auroc matches sklearn roc_auc_score to 1e-9 for every N")


if __name__ == "__main__":
    main()
