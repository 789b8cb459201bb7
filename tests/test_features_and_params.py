"""The Features container's validation, and the uniform hyperparameter messages."""

from __future__ import annotations

import numpy as np
import pytest

from oodscope import GEN, Energy, Features, clone


def test_valid_features_keep_the_arrays():
    logits = np.zeros((4, 3), dtype=np.float32)
    feats = Features(logits=logits, layers={"penultimate": np.ones((4, 8))}, labels=np.arange(4))
    assert feats.logits is logits  # no copy
    assert len(feats) == 4 and feats.n_classes == 3
    assert "n=4" in repr(feats)


def test_integer_arrays_become_float():
    feats = Features(logits=np.array([[1, 2], [3, 4]]))
    assert feats.logits.dtype == np.float64


def test_needs_logits_or_layers():
    with pytest.raises(ValueError, match="needs logits or at least one layer"):
        Features()


def test_logits_must_be_2d():
    with pytest.raises(ValueError, match=r"Features.logits must be 2-D .* got shape \(5,\)"):
        Features(logits=np.zeros(5))


def test_inconsistent_rows_are_named():
    with pytest.raises(
        ValueError, match=r"Features.layers\['penultimate'\] has 3 rows but the other fields have 4"
    ):
        Features(logits=np.zeros((4, 2)), layers={"penultimate": np.zeros((3, 5))})
    with pytest.raises(ValueError, match="Features.labels has 5 rows"):
        Features(logits=np.zeros((4, 2)), labels=np.zeros(5))


def test_layer_maps_must_be_pooled():
    with pytest.raises(ValueError, match="Pool feature maps first"):
        Features(layers={"conv": np.zeros((2, 3, 4, 4))})


def test_non_finite_rows_are_counted():
    logits = np.zeros((10, 3))
    logits[2, 1] = np.nan
    logits[7, 0] = np.inf
    logits[7, 2] = -np.inf
    with pytest.raises(
        ValueError, match=r"Features.logits has 2 row\(s\) of 10 holding NaN or inf \(first at row 2\)"
    ):
        Features(logits=logits)
    layer = np.zeros((10, 4))
    layer[9] = np.nan
    with pytest.raises(ValueError, match=r"layers\['x'\] has 1 row\(s\) of 10"):
        Features(logits=np.zeros((10, 3)), layers={"x": layer})


def test_head_shape_checks():
    logits, feats = np.zeros((4, 3)), np.zeros((4, 8))
    ok = Features(logits=logits, layers={"penultimate": feats}, head_weight=np.zeros((3, 8)))
    np.testing.assert_array_equal(ok.head_bias, np.zeros(3))
    with pytest.raises(ValueError, match="head_weight has 8 rows but logits have 3 classes"):
        Features(logits=logits, head_weight=np.zeros((8, 3)))
    with pytest.raises(ValueError, match="head_weight has 5 columns but layers\\['penultimate'\\] has 8"):
        Features(logits=logits, layers={"penultimate": feats}, head_weight=np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"head_bias must have shape \(3,\)"):
        Features(logits=logits, head_weight=np.zeros((3, 8)), head_bias=np.zeros(4))


def test_layer_lookup_lists_what_is_there():
    feats = Features(logits=np.zeros((2, 2)), layers={"a": np.zeros((2, 1))})
    with pytest.raises(KeyError, match=r"no layer 'b'; available layers: \['a'\]"):
        feats.layer("b")


def test_take_selects_rows():
    feats = Features(logits=np.arange(12.0).reshape(6, 2), labels=np.arange(6), head_weight=np.ones((2, 3)))
    sub = feats.take([4, 1])
    np.testing.assert_array_equal(sub.labels, [4, 1])
    np.testing.assert_array_equal(sub.logits, [[8, 9], [2, 3]])
    assert sub.head_weight is feats.head_weight
    assert len(feats.take(np.arange(6) % 2 == 0)) == 3


def test_uniform_parameter_message():
    feats = Features(logits=np.zeros((2, 2)))
    with pytest.raises(ValueError) as error:
        GEN(gamma=0).fit(feats)
    assert str(error.value) == "The 'gamma' parameter of GEN must be a float in (0, inf). Got 0 instead."
    with pytest.raises(ValueError) as error:
        GEN(k=2.5).fit(feats)
    assert str(error.value) == "The 'k' parameter of GEN must be an int in [1, inf). Got 2.5 instead."
    with pytest.raises(ValueError, match="'temperature' parameter of Energy"):
        Energy(temperature=True).fit(feats)


def test_numpy_integers_and_floats_are_valid_hyperparameters():
    feats = Features(logits=np.zeros((2, 2)))
    GEN(gamma=np.float32(0.5), k=np.int64(3)).fit(feats)


def test_set_params_then_clone_and_repr():
    det = GEN().set_params(gamma=0.5)
    assert repr(det) == "GEN(gamma=0.5)"
    twin = clone(det)
    assert twin.gamma == 0.5 and twin.k == 100


def test_sklearn_clone_works_on_detectors():
    from sklearn.base import clone as sk_clone

    twin = sk_clone(GEN(gamma=0.3, k=7))
    assert isinstance(twin, GEN) and (twin.gamma, twin.k) == (0.3, 7)
