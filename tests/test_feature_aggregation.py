"""Multi-layer aggregation: the aggregators against their formulas, and the layer-wise detectors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2, combine_pvalues

from oodscope import Features, NotFittedError, auroc, clone
from oodscope.aggregation import FisherAggregator, MeanNormalizedAggregator, StdNormalizedAggregator
from oodscope.detectors.gram import Gram
from oodscope.detectors.knn import KNN
from oodscope.detectors.mahalanobis import Mahalanobis
from oodscope.detectors.rmds import RMDS
from oodscope.detectors.she import SHE

RNG = np.random.default_rng(0)
FIT_SCORES = RNG.normal(size=(300, 3)) @ np.array([[1.0, 0.6, 0.2], [0.0, 0.8, 0.3], [0.0, 0.0, 0.9]])
FIT_SCORES += [5.0, -2.0, 10.0]
TEST_SCORES = RNG.normal(size=(50, 3)) * 2 + [5.0, -2.0, 10.0]


def test_std_normalized_mean():
    agg = StdNormalizedAggregator().fit(FIT_SCORES)
    expected = ((TEST_SCORES - FIT_SCORES.mean(0)) / FIT_SCORES.std(0)).mean(axis=1)
    np.testing.assert_allclose(agg.aggregate(TEST_SCORES), expected, rtol=1e-12)


def test_mean_normalized_mean_keeps_the_direction_of_negative_scores():
    agg = MeanNormalizedAggregator().fit(FIT_SCORES)
    expected = (TEST_SCORES / np.abs(FIT_SCORES.mean(0))).mean(axis=1)
    np.testing.assert_allclose(agg.aggregate(TEST_SCORES), expected, rtol=1e-12)
    with pytest.raises(ValueError, match=r"layer\(s\) \[1\].*mean of 0"):
        MeanNormalizedAggregator().fit(np.array([[1.0, -1.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="standard deviation of 0"):
        StdNormalizedAggregator().fit(np.array([[1.0, 3.0], [2.0, 3.0]]))


def empirical_pvalues(fit, test):
    return np.stack(
        [
            (1 + (fit[:, None, j] >= test[None, :, j]).sum(axis=0)) / (len(fit) + 1)
            for j in range(fit.shape[1])
        ],
        axis=1,
    )


def test_fisher_without_brown_is_scipys_fisher_combination():
    agg = FisherAggregator(brown=False).fit(FIT_SCORES)
    p = empirical_pvalues(FIT_SCORES, TEST_SCORES)
    expected = [-np.log(combine_pvalues(row, method="fisher").pvalue) for row in p]
    np.testing.assert_allclose(agg.aggregate(TEST_SCORES), expected, rtol=1e-9)


def test_fisher_with_browns_correction():
    agg = FisherAggregator().fit(FIT_SCORES)
    n, n_layers = FIT_SCORES.shape
    loo = np.stack(
        [(FIT_SCORES[:, None, j] >= FIT_SCORES[None, :, j]).sum(0) / n for j in range(n_layers)], 1
    )
    cov = np.cov(-2 * np.log(loo), rowvar=False)
    variance = 4 * n_layers + 2 * sum(cov[i, j] for i in range(n_layers) for j in range(i + 1, n_layers))
    c, f = variance / (4 * n_layers), 8 * n_layers**2 / variance
    assert agg.scale_ == pytest.approx(c) and agg.dof_ == pytest.approx(f)
    assert c > 1  # the layers are positively correlated: fewer effective degrees of freedom
    statistic = -2 * np.log(empirical_pvalues(FIT_SCORES, TEST_SCORES)).sum(axis=1)
    np.testing.assert_allclose(agg.aggregate(TEST_SCORES), -chi2.logsf(statistic / c, f), rtol=1e-9)
    shifted = FIT_SCORES * [3.0, 0.1, 7.0] - 4  # ranks only: any increasing map per layer changes nothing
    np.testing.assert_allclose(
        FisherAggregator().fit(shifted).aggregate(TEST_SCORES * [3.0, 0.1, 7.0] - 4),
        agg.aggregate(TEST_SCORES),
        rtol=1e-12,
    )


def test_aggregator_conventions():
    agg = FisherAggregator()
    assert agg.get_params() == {"brown": True}
    assert agg.set_params(brown=False) is agg and agg.brown is False
    assert repr(agg) == "FisherAggregator(brown=False)"
    with pytest.raises(ValueError, match="Invalid parameter 'nope' for FisherAggregator"):
        agg.set_params(nope=1)
    with pytest.raises(ValueError, match="The 'brown' parameter of FisherAggregator must be one of True"):
        FisherAggregator(brown="yes").fit(FIT_SCORES)
    with pytest.raises(NotFittedError, match="This StdNormalizedAggregator is not fitted yet"):
        StdNormalizedAggregator().aggregate(TEST_SCORES)
    fitted = StdNormalizedAggregator().fit(FIT_SCORES)
    with pytest.raises(ValueError, match="fitted on 3 layers; got scores for 2"):
        fitted.aggregate(TEST_SCORES[:, :2])
    refitted = fitted.fit(FIT_SCORES[:, :2] * 2)
    assert refitted.n_layers_ == 2 and refitted.mean_.shape == (2,)


# --- layer-wise detectors -----------------------------------------------------------------------------------


def two_layer_problem(seed: int, n_per_class: int = 60):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n_per_class)
    fixed = np.random.default_rng(100)  # the same ID classes for every seed
    means_a, means_b = fixed.normal(0, 3, (3, 8)), fixed.normal(0, 3, (3, 5))
    a = means_a[labels] + rng.normal(size=(labels.size, 8))
    b = means_b[labels] + rng.normal(size=(labels.size, 5))
    logits = np.eye(3)[labels] * 4 + rng.normal(size=(labels.size, 3))
    fit = Features(logits=logits, layers={"a": a, "b": b}, labels=labels)
    ood_a, ood_b = rng.normal(0, 3, (40, 8)), rng.normal(0, 3, (40, 5))
    ood = Features(logits=rng.normal(size=(40, 3)), layers={"a": ood_a, "b": ood_b})
    return fit, ood


@pytest.mark.parametrize("cls", [KNN, Mahalanobis, RMDS, SHE, Gram])
@pytest.mark.parametrize("aggregator", [StdNormalizedAggregator(), FisherAggregator()])
def test_several_layers_combine_per_layer_detectors(cls, aggregator):
    fit, ood = two_layer_problem(0)
    params = {"k": 5} if cls is KNN else {}
    det = cls(aggregator=aggregator, **params).fit(fit)
    assert det.layers_ == ["a", "b"] and len(det.layer_detectors_) == 2
    singles = [cls(layers=[layer], **params).fit(fit) for layer in ("a", "b")]
    fit_scores = np.column_stack(
        [s._fit_layer_scores(fit.layer(layer), fit) for s, layer in zip(singles, "ab", strict=True)]
    )
    expected_agg = clone(aggregator).fit(fit_scores)
    per_layer = np.column_stack([s.score(ood).scores for s in singles])
    np.testing.assert_allclose(det.score(ood).scores, expected_agg.aggregate(per_layer), rtol=1e-12)
    assert aggregator.get_params() == det.aggregator_.get_params() and not hasattr(aggregator, "n_layers_")
    refitted = det.fit(two_layer_problem(1)[0]).fit(fit)
    np.testing.assert_array_equal(
        refitted.score(ood).scores, cls(aggregator=aggregator, **params).fit(fit).score(ood).scores
    )


def test_several_layers_without_an_aggregator_is_a_clear_error():
    fit, _ = two_layer_problem(0)
    with pytest.raises(ValueError, match=r"given 2 layers \['a', 'b'\] but no aggregator"):
        Mahalanobis().fit(fit)
    one = Mahalanobis(layers=["b"]).fit(fit)
    np.testing.assert_allclose(
        one.score(fit).scores,
        Mahalanobis().fit(Features(layers={"b": fit.layer("b")}, labels=fit.labels)).score(fit).scores,
    )
    with pytest.raises(KeyError, match="no layer 'c'"):
        Mahalanobis(layers=["c"]).fit(fit)


def test_knn_leave_one_out_fit_scores():
    fit, _ = two_layer_problem(0)
    det = KNN(k=4, layers=["a"]).fit(fit)
    unit = fit.layer("a") / np.linalg.norm(fit.layer("a"), axis=1, keepdims=True)
    unit = unit.astype(np.float32).astype(np.float64)
    distances = np.sqrt(((unit[:, None] - unit[None]) ** 2).sum(-1))
    np.fill_diagonal(distances, np.inf)  # a sample is not its own neighbour
    expected = np.sort(distances, axis=1)[:, 3]
    np.testing.assert_allclose(det._fit_layer_scores(fit.layer("a"), fit), expected, rtol=1e-12, atol=1e-15)


def test_gram_with_the_papers_normalisation_separates_ood():
    fit, ood = two_layer_problem(2)
    test, _ = two_layer_problem(3, n_per_class=20)
    det = Gram(aggregator=MeanNormalizedAggregator()).fit(fit)
    assert auroc(det.score(test).scores, det.score(ood).scores) > 0.9
