"""``benchmarks/bench_evaluate_parts.py`` and ``benchmarks/bench_memory.py`` run end to end on tiny inputs.

As in ``test_benchmarks.py``: the sizes are far too small for the numbers to mean anything (12x12 inputs, so
a 64-D penultimate layer, and a few hundred samples); only that the scripts run and print finite ratios is
checked.
"""

from __future__ import annotations

import re

import pytest
from test_benchmarks import run

TINY = ("--n-fit", "300", "--n-id", "150", "--n-ood", "150", "--side", "12")


def ratio(out: str, name: str) -> float:
    """The number printed after ``ratio <name>:``; a nan or inf would not match."""
    found = re.findall(rf"^ratio {re.escape(name)}: (-?\d+\.\d+)", out, flags=re.MULTILINE)
    assert len(found) == 1, out
    return float(found[0])


@pytest.mark.slow
def test_bench_evaluate_parts_prints_the_ratio_and_where_the_time_goes():
    pytest.importorskip("torch")
    out = run("bench_evaluate_parts.py", *TINY, "--repeats", "1")
    assert ratio(out, "evaluate / sum of parts") > 0
    for part in ("forward (bare torch loop", "ODIN fwd+bwd+fwd", "KNN GEMM float32", "scatter GEMM float64"):
        assert re.search(rf"^  {re.escape(part)}.* \d+\.\d{{3}}$", out, flags=re.MULTILINE), out
    for phase in ("passes (plain + ODIN)", "fit + score KNN()", "fit + score Mahalanobis, RMDS, ViM"):
        assert re.search(rf"^  {re.escape(phase)} +\d+\.\d{{3}}", out, flags=re.MULTILINE), out


@pytest.mark.slow
def test_bench_memory_prints_the_growth_ratios():
    pytest.importorskip("torch")
    out = run("bench_memory.py", *TINY, "--no-odin")
    for name in ("growth / one dataset", "growth / all datasets", "extra for the second set"):
        ratio(out, name)
    assert ratio(out, "growth / one dataset") == pytest.approx(
        2 * ratio(out, "growth / all datasets"), abs=2e-3
    )
    for run_name in ("1x", "4x one", "4x"):
        assert re.search(rf"^  {re.escape(run_name)} +[\d,]+ +[\d,]+ +[\d,.]+ MB", out, flags=re.MULTILINE), (
            out
        )
