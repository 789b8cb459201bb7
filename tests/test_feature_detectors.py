"""KNN, Mahalanobis, RMDS, ViM, SHE and Gram against independent references on the same features."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import pinvh
from scipy.special import logsumexp
from sklearn.covariance import EmpiricalCovariance
from sklearn.neighbors import NearestNeighbors

from oodscope import Features, clone
from oodscope.detectors.gram import Gram, gram_bounds, gram_deviation, gram_postproc, gram_statistics
from oodscope.detectors.knn import DKNN, KNN, kth_neighbor_distance, l2_normalize
from oodscope.detectors.mahalanobis import Mahalanobis
from oodscope.detectors.rmds import RMDS
from oodscope.detectors.she import SHE
from oodscope.detectors.vim import ViM, vim_principal_dim

from conftest import linear_head_features

N_CLASSES, DIM = 4, 12


def labelled(n: int, seed: int, dim: int = DIM, dead: int = 0) -> Features:
    """Gaussian classes with a linear head whose logits classify them mostly right; ``dead`` zero columns."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(0, 2.0, (N_CLASSES, dim))
    labels = rng.integers(0, N_CLASSES, n)
    h = means[labels] + rng.normal(0, 1.0, (n, dim)) @ np.diag(np.linspace(0.5, 1.5, dim))
    if dead:
        h[:, :dead] = 0.0
    weight = means / 2.0
    bias = np.random.default_rng(98).normal(0, 0.1, N_CLASSES)
    return linear_head_features(h, weight, bias, labels)


FIT, TEST = labelled(400, 1), labelled(60, 2)


# --- KNN (its searches, the IVF index and saving: tests/test_knn.py) ----------------------------------------


def sklearn_kth_distance(fit: np.ndarray, test: np.ndarray, k: int) -> np.ndarray:
    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    # the detector keeps its fit vectors in float32: the reference searches the same points
    fit_vectors = unit(fit).astype(np.float32).astype(np.float64)
    distances, _ = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(fit_vectors).kneighbors(unit(test))
    return distances[:, -1]


@pytest.mark.parametrize("k", [1, 2, 7, 50])
def test_knn_matches_sklearn_nearest_neighbors(k):
    det = KNN(k=k).fit(FIT)
    expected = sklearn_kth_distance(FIT.layer("penultimate"), TEST.layer("penultimate"), k)
    np.testing.assert_allclose(det.score(TEST).scores, expected, rtol=1e-12, atol=1e-12)


def large_search_problem(seed: int = 0):
    """Enough references (and clusters with near-duplicates) for the exact search's strip selection."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, 16))
    refs = centres[rng.integers(0, 30, 9_000)] + 0.05 * rng.normal(size=(9_000, 16))
    refs[100:110] = refs[99]  # exact duplicates: ties at the selection boundary
    queries = centres[rng.integers(0, 30, 300)] + 0.05 * rng.normal(size=(300, 16))
    return l2_normalize(refs), queries


@pytest.mark.parametrize("tile_bytes", [1 << 20, 1 << 23, 1 << 25])  # many small tiles, a few, one
@pytest.mark.parametrize("k", [1, 3, 50, 120])
def test_knn_exact_search_is_exact_on_large_reference_sets(k, tile_bytes, monkeypatch):
    monkeypatch.setattr("oodscope.neighbors.SIMILARITY_BLOCK_BYTES", tile_bytes)
    refs, queries = large_search_problem()
    got = kth_neighbor_distance(queries, refs, k, normalize_queries=True)
    unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    squared = ((unit[:, None, :] - refs[None].astype(np.float64)) ** 2).sum(axis=2)
    expected = np.sqrt(np.partition(squared, k - 1, axis=1)[:, k - 1])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_knn_keeps_one_normalised_float32_copy_of_the_fit_features():
    det = KNN(k=3).fit(FIT)
    assert det.fit_vectors_.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(det.fit_vectors_, axis=1), 1.0, rtol=1e-6)
    arrays = [value for value in vars(det).values() if isinstance(value, np.ndarray)]
    assert sum(a.nbytes for a in arrays) == det.fit_vectors_.nbytes


def test_knn_alias_and_errors():
    assert DKNN is KNN
    with pytest.raises(ValueError, match="needs at least k fit samples"):
        KNN(k=500).fit(FIT)
    zero = Features(layers={"penultimate": np.zeros((3, DIM))})
    scores = KNN(k=1).fit(FIT).score(zero).scores  # zero rows stay zero, no NaN
    np.testing.assert_allclose(scores, 1.0)


# --- Mahalanobis and RMDS -----------------------------------------------------------------------------------


def tied_reference(fit: Features):
    h, labels = fit.layer("penultimate"), fit.labels
    means = np.stack([h[labels == c].mean(axis=0) for c in range(N_CLASSES)])
    covariance = EmpiricalCovariance().fit(h - means[labels])
    return means, covariance


def test_mahalanobis_matches_sklearn_empirical_covariance():
    det = Mahalanobis().fit(FIT)
    means, covariance = tied_reference(FIT)
    h = TEST.layer("penultimate")
    expected = np.min([covariance.mahalanobis(h - mean) for mean in means], axis=0)  # squared distances
    np.testing.assert_allclose(det.score(TEST).scores, expected, rtol=1e-9)
    np.testing.assert_allclose(det.covariance_, covariance.covariance_, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(det.class_means_, means, rtol=1e-12)
    np.testing.assert_array_equal(det.classes_, np.arange(N_CLASSES))


def test_mahalanobis_pseudo_inverse_handles_dead_units():
    fit, test = labelled(300, 3, dead=3), labelled(40, 4)
    det = Mahalanobis().fit(fit)
    h, labels = fit.layer("penultimate"), fit.labels
    means = np.stack([h[labels == c].mean(axis=0) for c in range(N_CLASSES)])
    precision = pinvh((h - means[labels]).T @ (h - means[labels]) / len(h))
    diff = test.layer("penultimate")[:, None, :] - means[None]
    expected = np.einsum("nkd,de,nke->nk", diff, precision, diff).min(axis=1)
    np.testing.assert_allclose(det.score(test).scores, expected, rtol=1e-8)
    assert det.whitening_.shape == (DIM, DIM - 3)


def test_mahalanobis_with_arbitrary_labels():
    relabelled = Features(layers=FIT.layers, labels=np.array(["cat", "dog", "emu", "fox"])[FIT.labels])
    det = Mahalanobis().fit(relabelled)
    assert list(det.classes_) == ["cat", "dog", "emu", "fox"]
    np.testing.assert_allclose(det.score(TEST).scores, Mahalanobis().fit(FIT).score(TEST).scores)


def test_rmds_is_class_distance_minus_background_distance():
    det = RMDS().fit(FIT)
    means, covariance = tied_reference(FIT)
    h, fit_h = TEST.layer("penultimate"), FIT.layer("penultimate")
    background = EmpiricalCovariance().fit(fit_h)
    # sklearn's mahalanobis(X) measures squared distances from the fitted location_
    expected = np.min([covariance.mahalanobis(h - mean) for mean in means], axis=0) - background.mahalanobis(
        h
    )
    np.testing.assert_allclose(det.score(TEST).scores, expected, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(det.background_covariance_, background.covariance_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(det.background_mean_, fit_h.mean(axis=0), rtol=1e-12)


def test_mahalanobis_and_rmds_plus_plus_work_on_unit_feature_vectors():
    """normalize=True (Mahalanobis++, RMDS++): the plain methods on h / ‖h‖, fit and score alike."""

    def unit(features: Features) -> Features:
        h = features.layer("penultimate")
        return Features(
            layers={"penultimate": h / np.linalg.norm(h, axis=1, keepdims=True)}, labels=features.labels
        )

    fit_unit, test_unit = unit(FIT), unit(TEST)
    means, covariance = tied_reference(fit_unit)
    h = test_unit.layer("penultimate")
    expected = np.min([covariance.mahalanobis(h - mean) for mean in means], axis=0)
    np.testing.assert_allclose(Mahalanobis(normalize=True).fit(FIT).score(TEST).scores, expected, rtol=1e-8)
    background = EmpiricalCovariance().fit(fit_unit.layer("penultimate"))
    expected_rmds = expected - background.mahalanobis(h)
    scores = RMDS(normalize=True).fit(FIT).score(TEST).scores
    np.testing.assert_allclose(scores, expected_rmds, rtol=1e-7, atol=1e-7 * np.abs(expected_rmds).max())
    # the scale of a feature vector no longer matters
    scaled = Features(layers={"penultimate": TEST.layer("penultimate") * 7.0})
    np.testing.assert_allclose(
        RMDS(normalize=True).fit(FIT).score(scaled).scores, scores, rtol=1e-9, atol=1e-9
    )


@pytest.mark.parametrize("cls", [Mahalanobis, RMDS, SHE])
def test_label_needing_detectors_say_so(cls):
    with pytest.raises(ValueError, match=f"{cls.__name__} needs class labels of the fit data"):
        cls().fit(Features(logits=FIT.logits, layers=FIT.layers))


# --- ViM ----------------------------------------------------------------------------------------------------


def test_vim_matches_an_svd_reference():
    dim = 5
    det = ViM(dim=dim).fit(FIT)
    weight, bias = FIT.head_weight, FIT.head_bias
    origin = -np.linalg.pinv(weight) @ bias
    _, _, vt = np.linalg.svd(FIT.layer("penultimate") - origin, full_matrices=True)
    null_space = vt[dim:].T  # right singular vectors past the d largest
    np.testing.assert_allclose(det.origin_, origin, rtol=1e-10)
    np.testing.assert_allclose(det.null_space_ @ det.null_space_.T, null_space @ null_space.T, atol=1e-9)

    def residual(h):
        return np.linalg.norm((h - origin) @ null_space, axis=1)

    alpha = FIT.logits.max(axis=1).mean() / residual(FIT.layer("penultimate")).mean()
    assert det.alpha_ == pytest.approx(alpha, rel=1e-10)
    expected = alpha * residual(TEST.layer("penultimate")) - logsumexp(TEST.logits, axis=1)
    np.testing.assert_allclose(det.score(TEST).scores, expected, rtol=1e-9, atol=1e-9)


def test_vim_dimension_rules():
    assert [vim_principal_dim(d) for d in (12, 512, 767, 768, 1600, 2047, 2048, 4096)] == [
        6,
        256,
        383,
        512,
        512,
        512,
        1000,
        1000,
    ]
    assert ViM().fit(FIT).dim_ == DIM // 2
    about_origin = FIT.layer("penultimate") + np.linalg.pinv(FIT.head_weight) @ FIT.head_bias  # h - u
    eigenvalues = np.linalg.eigvalsh(about_origin.T @ about_origin / len(about_origin))[::-1]
    shares = np.cumsum(eigenvalues) / eigenvalues.sum()
    expected = int(np.argmax(shares >= 0.9)) + 1
    assert ViM(dim=0.9).fit(FIT).dim_ == expected
    assert ViM(dim=0.999999).fit(FIT).dim_ <= DIM - 1
    with pytest.raises(ValueError, match="between 1 and D - 1"):
        ViM(dim=DIM).fit(FIT)


# --- SHE ----------------------------------------------------------------------------------------------------


def test_she_matches_a_loop_over_classes():
    det = SHE().fit(FIT)
    h, labels, predicted = FIT.layer("penultimate"), FIT.labels, FIT.logits.argmax(axis=1)
    patterns = np.stack([h[(labels == c) & (predicted == c)].mean(axis=0) for c in range(N_CLASSES)])
    np.testing.assert_allclose(det.patterns_, patterns, rtol=1e-12)
    test_predicted = TEST.logits.argmax(axis=1)
    expected = [-row @ patterns[c] for row, c in zip(TEST.layer("penultimate"), test_predicted, strict=True)]
    np.testing.assert_allclose(det.score(TEST).scores, expected, rtol=1e-12)


def test_she_falls_back_for_classes_without_correct_samples():
    logits = np.zeros((len(FIT), N_CLASSES))
    logits[:, 0] = 1.0  # everything is predicted as class 0: classes 1.. have no correct sample
    fit = Features(logits=logits, layers=FIT.layers, labels=FIT.labels)
    with pytest.warns(UserWarning, match=r"class\(es\) \[1, 2, 3\] have no correctly classified"):
        det = SHE().fit(fit)
    h = FIT.layer("penultimate")
    np.testing.assert_allclose(det.patterns_[2], h[FIT.labels == 2].mean(axis=0))
    with pytest.raises(ValueError, match="integer class labels in"):
        SHE().fit(Features(logits=FIT.logits, layers=FIT.layers, labels=FIT.labels + 10))


# --- Gram ---------------------------------------------------------------------------------------------------


def gram_reference(map_chw: np.ndarray, orders: int) -> np.ndarray:
    """Row sums of the explicit C x C Gram matrices of one map, signed p-th roots, order-major."""
    flat = map_chw.reshape(map_chw.shape[0], -1)
    out = []
    for p in range(1, orders + 1):
        gram = (flat**p) @ (flat**p).T
        sums = gram.sum(axis=1)
        out.append(np.sign(sums) * np.abs(sums) ** (1.0 / p))
    return np.concatenate(out)


def test_gram_statistics_match_explicit_gram_matrices():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(5, 3, 4, 4))  # signed values: odd orders can give negative row sums
    stats = gram_statistics(maps, orders=4)
    expected = np.stack([gram_reference(m, 4) for m in maps])
    np.testing.assert_allclose(stats, expected, rtol=1e-10)
    channels_last = gram_statistics(np.moveaxis(maps, 1, -1), orders=4, channels_last=True)
    np.testing.assert_allclose(channels_last, stats, rtol=1e-12)
    dense = rng.normal(size=(5, 6))
    np.testing.assert_allclose(gram_statistics(dense, 3), gram_statistics(dense[:, :, None, None], 3))


def test_gram_bounds_and_deviations_match_plain_loops():
    rng = np.random.default_rng(1)
    stats = rng.normal(size=(60, 5))
    classes = rng.integers(0, 3, 60)
    for q in (0.0, 0.1):
        lower, upper = gram_bounds(stats, classes, 4, quantile=q)
        for c in range(4):
            rows = stats[classes == c] if c < 3 else stats  # class 3 is absent: global bounds
            if q == 0:
                expected_low = [min(rows[:, j]) for j in range(5)]
                expected_high = [max(rows[:, j]) for j in range(5)]
            else:
                expected_low = [np.quantile(rows[:, j], q) for j in range(5)]
                expected_high = [np.quantile(rows[:, j], 1 - q) for j in range(5)]
            np.testing.assert_allclose(lower[c], expected_low)
            np.testing.assert_allclose(upper[c], expected_high)
    lower, upper = gram_bounds(stats, classes, 3)
    test, test_classes = rng.normal(0, 2, (20, 5)), rng.integers(0, 3, 20)
    expected = []
    for row, c in zip(test, test_classes, strict=True):
        total = 0.0
        for j, v in enumerate(row):
            if v < lower[c, j]:
                total += (lower[c, j] - v) / (abs(lower[c, j]) + 1e-6)
            elif v > upper[c, j]:
                total += (v - upper[c, j]) / (abs(upper[c, j]) + 1e-6)
        expected.append(total)
    np.testing.assert_allclose(gram_deviation(test, test_classes, lower, upper), expected, rtol=1e-12)


def test_gram_detector_and_its_leave_one_out_fit_scores():
    det = Gram().fit(FIT)
    predicted = FIT.logits.argmax(axis=1)
    h = FIT.layer("penultimate")
    np.testing.assert_allclose(det.lower_[1], h[predicted == 1].min(axis=0))
    np.testing.assert_allclose(
        det.score(TEST).scores,
        gram_deviation(TEST.layer("penultimate"), TEST.logits.argmax(axis=1), det.lower_, det.upper_),
    )
    np.testing.assert_array_equal(det.score(FIT).scores, 0.0)  # min/max bounds contain every fit sample
    loo = det._fit_layer_scores(h, FIT)
    expected = []
    for i in range(len(h)):
        others = (predicted == predicted[i]) & (np.arange(len(h)) != i)
        low, high = h[others].min(axis=0), h[others].max(axis=0)
        expected.append(gram_deviation(h[i : i + 1], [0], low[None], high[None])[0])
    np.testing.assert_allclose(loo, expected, rtol=1e-12)
    assert loo.mean() > 0


# --- refit, model level -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [KNN, Mahalanobis, RMDS, ViM, SHE, Gram])
def test_refit_equals_a_fresh_fit(cls):
    first, second = labelled(200, 5), labelled(300, 6)
    refitted = cls().fit(first).fit(second)
    fresh = cls().fit(second)
    assert sorted(vars(refitted)) == sorted(vars(fresh))
    np.testing.assert_array_equal(refitted.score(TEST).scores, fresh.score(TEST).scores)
    twin = clone(fresh).fit(second)
    np.testing.assert_array_equal(twin.score(TEST).scores, fresh.score(TEST).scores)


def torch_setup():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3)
    )
    rng = np.random.default_rng(0)
    return (
        model,
        rng.normal(size=(40, 1, 8, 8)).astype(np.float32),
        rng.normal(size=(10, 1, 8, 8)).astype(np.float32),
    )


def test_gram_model_level_computes_the_statistics_at_extraction():
    from oodscope import extract

    model, fit_x, test_x = torch_setup()
    det = Gram(orders=3, layers=["1"]).fit(model, fit_x)  # "1": the ReLU after the convolution, a map
    postproc = gram_postproc(model, ["1"], orders=3)
    feats_fit = extract(model, fit_x, feature_layers_id=["1"], postproc_fns=postproc)
    assert feats_fit.layer("1").shape == (40, 4 * 3)
    expected = Gram(layers=["1"]).fit(feats_fit).score(extract(model, test_x, ["1"], postproc_fns=postproc))
    np.testing.assert_array_equal(det.score(test_x).scores, expected.scores)
    with pytest.raises(ValueError, match="'penultimate' at model level"):
        Gram().fit(model, fit_x, feature_layers_id=["penultimate"])
    assert set(gram_postproc(model, ["1", -2])) == {"1", -2}  # names and indices alike


def test_gram_model_level_saves_and_recreates_its_post_processing(tmp_path):
    from oodscope import MeanNormalizedAggregator, load

    model, fit_x, test_x = torch_setup()
    det = Gram(orders=2, layers=["0", "1"], aggregator=MeanNormalizedAggregator()).fit(model, fit_x)
    assert det._bound.postproc_fns is None, "its own post-processing is re-created, not stored"
    loaded = load(det.save(tmp_path / "gram.oodscope"), model=model)
    assert isinstance(loaded.aggregator_, MeanNormalizedAggregator)
    np.testing.assert_array_equal(loaded.score(test_x).scores, det.score(test_x).scores)


def test_layers_parameter_selects_what_the_model_level_fit_extracts():
    model, fit_x, test_x = torch_setup()
    det = KNN(k=3, layers=["1"]).fit(model, fit_x)
    assert det.layers_ == ["1"] and det.fit_vectors_.shape == (40, 4)  # the ReLU maps, average-pooled
