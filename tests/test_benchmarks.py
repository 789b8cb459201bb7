"""The scripts in ``benchmarks/`` run end to end on tiny inputs and print finite ratios.

They are not run anywhere else, so without this an API change could leave them broken until someone needs a
measurement. Sizes here are far too small for the ratios to mean anything; only that they are printed is
checked.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def ratios(line: str) -> list[float]:
    """The ratios of a bench_overhead row: the numbers printed before an interquartile range."""
    return [float(value) for value in re.findall(r"(\d+\.\d+) \[\d", line)]


def rows(out: str, framework: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(framework + " ")]


#: both ways of keeping glibc's state out of the ratios: fixed thresholds, and each pass in a fresh process
ALLOCATOR_MODES = pytest.mark.parametrize(
    "mode", [[], ["--default-allocator", "--passes", "1"]], ids=["fixed", "fresh"]
)


@pytest.mark.slow
@ALLOCATOR_MODES
def test_bench_overhead_prints_both_ratios(mode):
    pytest.importorskip("torch")
    out = run("bench_overhead.py", "--n", "256", "--repeats", "1", "--frameworks", "torch", *mode)
    (row,) = rows(out, "torch")
    found = ratios(row)  # a nan or inf would not match, so the count checks finiteness too
    assert len(found) == 2 and all(r > 0 for r in found), row
    assert re.search(r"torch: bare [\d,]+, gen [\d,]+, eight [\d,]+", out), out


@pytest.mark.slow
def test_bench_overhead_on_keras():
    pytest.importorskip("keras")
    out = run("bench_overhead.py", "--n", "256", "--repeats", "1", "--frameworks", "keras")
    (row,) = rows(out, "keras")
    assert len(ratios(row)) == 2, row


@pytest.mark.slow
@ALLOCATOR_MODES
def test_bench_evaluate_runs(mode):
    pytest.importorskip("torch")
    out = run("bench_evaluate.py", "--n", "200", "--repeats", "1", "--frameworks", "torch", *mode)
    (row,) = rows(out, "torch")
    # extract time, evaluate time, ratio, inside: four finite numbers (a nan or inf would not match)
    assert len(re.findall(r"\d+\.\d+", row)) == 4, row


def test_bench_feature_detectors_runs():
    out = run(
        "bench_feature_detectors.py", "--n-fit", "1000", "--n-test", "300", "--dim", "16", "--repeats", "1"
    )
    for name in ("KNN", "Mahalanobis", "ViM", "Gram"):
        assert any(line.startswith(name) for line in out.splitlines()), out


def test_bench_metrics_checks_against_scikit_learn():
    out = run("bench_metrics.py")
    assert "auroc matches sklearn roc_auc_score" in out, out


@pytest.mark.slow
def test_bench_covariance_prints_the_ratios():
    out = run("bench_covariance.py", "--n", "400", "--dim", "24", "--classes", "3", "--repeats", "1")
    for name in ("Mahalanobis", "RMDS", "ViM"):
        (row,) = [line for line in out.splitlines() if line.startswith(name + " ")]
        assert len(re.findall(r"\d+\.\d+", row)) == (4 if name == "ViM" else 3), row  # finite numbers only
    assert re.search(r"separately \d+\.\d+ s, inside sharing\(\) \d+\.\d+ s, ratio \d+\.\d+", out), out


@pytest.mark.slow
def test_bench_gradient_methods_prints_a_ratio_per_method():
    pytest.importorskip("torch")
    out = run("bench_gradient_methods.py", "--n", "256", "--repeats", "1")
    methods = ["ODIN", "IODIN", "AdaSCALE-A", "AdaSCALE-L", "NAC", "RankFeat", "MDSEns", "BLOOD"]
    for method in methods:
        (row,) = [line for line in out.splitlines() if line.startswith(method + " ")]
        assert re.search(r"\d+\.\d+ \[\d", row), row
