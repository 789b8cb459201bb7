"""KNN's searches: the exact one against brute force, the IVF index's recall, parameters, saving."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from oodscope import Features, StdNormalizedAggregator, load
from oodscope.detectors.knn import KNN
from oodscope.neighbors import (
    default_n_lists,
    default_n_probe,
    ivf_kth_neighbor_distance,
    kth_neighbor_distance,
    l2_normalize,
)

try:
    import faiss  # noqa: F401

    HAVE_FAISS = True
except ImportError:
    HAVE_FAISS = False
needs_faiss = pytest.mark.skipif(
    not HAVE_FAISS, reason="faiss is not installed (pip install 'oodscope[faiss]')"
)


def brute_force(queries: np.ndarray, refs: np.ndarray, k: int, normalize: bool = False) -> np.ndarray:
    """The k-th smallest float64 distance to the references as stored (float32), from all pairs."""
    queries = np.asarray(queries, dtype=np.float64)
    if normalize:
        norms = np.linalg.norm(queries, axis=1, keepdims=True)
        queries = queries / np.where(norms > 0, norms, 1.0)
    refs = np.asarray(refs, dtype=np.float32).astype(np.float64)
    distances = np.linalg.norm(queries[:, None, :] - refs[None, :, :], axis=2)
    return np.sort(distances, axis=1)[:, k - 1]


def clustered(n_fit: int, n_test: int, dim: int, n_centres: int, spread: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_centres, dim))
    fit = centres[rng.integers(0, n_centres, n_fit)] + spread * rng.normal(size=(n_fit, dim))
    test = centres[rng.integers(0, n_centres, n_test)] + spread * rng.normal(size=(n_test, dim))
    return fit, test


def as_features(h: np.ndarray) -> Features:
    return Features(layers={"penultimate": h})


# --- the exact search ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("tile_bytes", [1 << 23, 1 << 25])  # 3 tiles of 4096 references, or one
@pytest.mark.parametrize("k", [1, 7, 50, 10_000])  # 10_000 = N
def test_exact_search_equals_brute_force_on_random_data(k, tile_bytes, monkeypatch):
    monkeypatch.setattr("oodscope.neighbors.SIMILARITY_BLOCK_BYTES", tile_bytes)
    rng = np.random.default_rng(0)
    refs = rng.normal(size=(10_000, 8)) * rng.uniform(0.5, 2.0, (10_000, 1))  # not unit: shifted ranking
    refs = refs[np.argsort(refs[:, 0])]  # sorted: the first tiles hold no near neighbours of many queries
    queries = rng.normal(size=(150, 8))
    np.testing.assert_allclose(
        kth_neighbor_distance(queries, refs, k), brute_force(queries, refs, k), rtol=1e-13, atol=1e-13
    )


@pytest.mark.parametrize("tile_bytes", [1 << 14, 1 << 25])  # many tiles of 8 columns, or one
@pytest.mark.parametrize("k", [1, 30, 100])
def test_exact_search_with_ties_and_duplicates(k, tile_bytes, monkeypatch):
    monkeypatch.setattr("oodscope.neighbors.SIMILARITY_BLOCK_BYTES", tile_bytes)
    rng = np.random.default_rng(1)
    refs = rng.integers(0, 3, (4000, 4)).astype(np.float64)  # 81 distinct points: heavy ties everywhere
    queries = rng.integers(0, 3, (120, 4)).astype(np.float64)
    queries = queries[queries.any(axis=1)]
    unit = l2_normalize(refs)
    for stored, normalize in ((refs, False), (unit, False), (unit, True)):
        np.testing.assert_allclose(
            kth_neighbor_distance(queries, stored, k, normalize),
            brute_force(queries, stored, k, normalize),
            rtol=1e-13,
            atol=1e-13,
        )
    # a zero query is equally similar (0) to every unit reference in float32: its distance is 1 up to
    # the float32 rounding of the references' norms (the ranks beyond k +- 2 are not re-measured)
    zero = kth_neighbor_distance(np.zeros((3, 4)), unit, k, normalize_queries=True)
    np.testing.assert_allclose(zero, brute_force(np.zeros((3, 4)), unit, k), rtol=1e-7)


def test_exact_search_small_and_degenerate_inputs():
    refs = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_array_equal(kth_neighbor_distance([[0.0, 0.0]], refs, 3), [2.0])  # k = N
    np.testing.assert_array_equal(kth_neighbor_distance([[0.0, 0.0]], refs, 1), [0.0])
    assert kth_neighbor_distance(np.zeros((0, 2)), refs, 1).shape == (0,)
    with pytest.raises(ValueError, match=r"1 <= k <= 3"):
        kth_neighbor_distance([[0.0, 0.0]], refs, 4)
    with pytest.raises(ValueError, match="must share D"):
        kth_neighbor_distance([[0.0, 0.0, 0.0]], refs, 1)
    with pytest.raises(ValueError, match="NaN or inf"):
        kth_neighbor_distance([[np.nan, 0.0]], refs, 1)


def test_exact_search_needs_no_faiss_and_ivf_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError, installed or not
    fit, test = clustered(500, 40, 6, 5, 0.3)
    scores = KNN(k=5).fit(as_features(fit)).score(as_features(test)).scores
    np.testing.assert_allclose(scores, brute_force(test, l2_normalize(fit), 5, normalize=True), rtol=1e-13)
    with pytest.raises(ImportError, match=r"pip install 'oodscope\[faiss\]'"):
        KNN(k=5, index="ivf").fit(as_features(fit))


# --- the IVF index ------------------------------------------------------------------------------------------


@needs_faiss
def test_ivf_recall_on_a_clustered_set():
    fit, test = clustered(6000, 400, 16, 60, 0.35, seed=2)
    k = 20
    exact = KNN(k=k).fit(as_features(fit)).score(as_features(test)).scores
    det = KNN(k=k, index="ivf").fit(as_features(fit))
    assert det.n_lists_ == default_n_lists(6000) == 153 and det.n_probe_ == default_n_probe(153) == 32
    approx = det.score(as_features(test)).scores
    recall = np.mean(np.abs(approx - exact) <= 1e-9 * exact)
    assert recall >= 0.99, recall  # 1.0 with this seed
    # true distances to neighbours that were found: never below the exact k-th distance
    assert np.all(approx >= exact * (1 - 1e-12))
    assert np.mean((approx - exact) / exact) < 0.01

    two_lists = KNN(k=k, index="ivf", n_probe=2).fit(as_features(fit)).score(as_features(test)).scores
    assert np.mean(np.abs(two_lists - exact) <= 1e-9 * exact) < 0.8  # fewer clusters scanned: lower recall


@needs_faiss
def test_ivf_scanning_every_list_is_exact():
    rng = np.random.default_rng(3)
    fit, test = rng.normal(size=(2000, 12)), rng.normal(size=(100, 12))
    for k in (1, 10):
        exact = KNN(k=k).fit(as_features(fit)).score(as_features(test)).scores
        full = KNN(k=k, index="ivf", n_lists=16, n_probe=16).fit(as_features(fit))
        np.testing.assert_array_equal(full.score(as_features(test)).scores, exact)
    # lists too small to hold k neighbours: those queries are searched exactly
    sparse = KNN(k=40, index="ivf", n_lists=200, n_probe=1).fit(as_features(fit))
    exact = KNN(k=40).fit(as_features(fit)).score(as_features(test)).scores
    np.testing.assert_array_equal(sparse.score(as_features(test)).scores, exact)


@needs_faiss
def test_ivf_search_function_checks_its_index():
    refs = l2_normalize(np.random.default_rng(4).normal(size=(300, 5)))
    index = KNN(k=3, index="ivf", n_lists=4).fit(as_features(refs))._ivf()
    np.testing.assert_array_equal(
        ivf_kth_neighbor_distance(refs[:10], refs, index, 3, n_probe=4),
        kth_neighbor_distance(refs[:10], refs, 3),
    )
    with pytest.raises(ValueError, match="Build it from the same references"):
        ivf_kth_neighbor_distance(refs[:10], refs[:200], index, 3, n_probe=4)


def test_bad_hyperparameters_name_the_argument():
    fit = as_features(np.random.default_rng(5).normal(size=(100, 4)))
    cases = [
        (dict(index="hnsw"), r"The 'index' parameter of KNN must be one of 'exact', 'ivf'"),
        (dict(index="ivf", n_lists=0), r"The 'n_lists' parameter of KNN must be an int in \[1, inf\)"),
        (dict(index="ivf", n_probe=0), r"The 'n_probe' parameter of KNN must be an int in \[1, inf\)"),
        (
            dict(index="ivf", n_lists=101),
            r"'n_lists' parameter of KNN must be at most the number of fit samples",
        ),
        (
            dict(index="ivf", n_lists=4, n_probe=5),
            r"'n_probe' parameter of KNN must be at most n_lists \(4\)",
        ),
        (dict(k=101), r"k=101 needs at least k fit samples"),
    ]
    for params, message in cases:
        with pytest.raises(ValueError, match=message):
            KNN(**params).fit(fit)
    with pytest.raises(ValueError, match=r"Pass n_probe <= 4 .*a larger n_lists"):
        KNN(index="ivf", n_lists=4, n_probe=5).fit(fit)


def test_default_ivf_sizes():
    assert default_n_lists(10_000) == 256  # 10000 // 39 caps round(4 * 100) = 400
    assert default_n_lists(1_000_000) == 4000
    assert default_n_lists(10) == 1
    assert default_n_probe(4000) == 126 and default_n_probe(256) == 32 and default_n_probe(20) == 20


# --- leave-one-out fit scores and saving --------------------------------------------------------------------


@pytest.mark.parametrize("index", ["exact", pytest.param("ivf", marks=needs_faiss)])
def test_leave_one_out_fit_scores_with_an_aggregator(index):
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(300, 6)), rng.normal(size=(300, 9))
    a[1] = a[0]  # a duplicate: its own copy is its nearest other sample
    fit = Features(layers={"a": a, "b": b})
    det = KNN(k=4, index=index, aggregator=StdNormalizedAggregator()).fit(fit)
    for layer, h in zip(det.aggregator_.mean_, (a, b), strict=True):
        unit = l2_normalize(h)
        distances = np.linalg.norm(unit[:, None].astype(np.float64) - unit[None], axis=2)
        np.fill_diagonal(distances, np.inf)  # leave each sample out of its own neighbours
        np.testing.assert_allclose(layer, np.sort(distances, axis=1)[:, 3].mean(), rtol=1e-12)
    test = Features(layers={"a": rng.normal(size=(20, 6)), "b": rng.normal(size=(20, 9))})
    assert np.isfinite(det.score(test).scores).all()


@pytest.mark.parametrize("index", ["exact", pytest.param("ivf", marks=needs_faiss)])
def test_save_load_round_trip_is_bit_identical(index, tmp_path):
    fit, test = clustered(3000, 200, 10, 20, 0.4, seed=7)
    det = KNN(k=10, index=index, n_probe=2 if index == "ivf" else None).fit(as_features(fit))
    scores = det.score(as_features(test)).scores
    loaded = load(det.save(tmp_path / "knn.oodscope"))
    assert loaded.get_params() == det.get_params()
    np.testing.assert_array_equal(loaded.score(as_features(test)).scores, scores)
    if index == "ivf":
        assert loaded.ivf_index_.dtype == np.uint8 and (loaded.n_lists_, loaded.n_probe_) == (76, 2)
        np.testing.assert_array_equal(loaded.ivf_index_, det.ivf_index_)
