"""Property-based checks: over shapes (0 and 1 rows, one class, one feature), dtypes (float16, float32,
float64, integers, torch bfloat16 tensors), NaN, inf and empty inputs, every entry point gives either a right
result or a clear error naming the field.

- ``Features``: the arrays are kept (integers and half precision become floats) or refused with the field's
  name;
- the metrics: values in their ranges, the same for an array and its float64 copy, and the documented
  identities; empty or non-finite scores are refused;
- every registered detector: finite float64 scores of shape [N], the same (within float32 precision) for
  float32 inputs and their float64 copies.

The examples are derandomized and no example database is written, so a run is the same everywhere.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from oodscope import Features, bench_metrics, conformal_pvalues, threshold_at_tpr
from oodscope.detectors import available
from oodscope.metrics import auroc

from conftest import all_detector_classes

DETERMINISTIC = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

FLOAT_DTYPES = (np.float16, np.float32, np.float64)
DTYPES = (*FLOAT_DTYPES, np.int32, np.uint8, np.bool_)
ALL_METRICS = ("auroc", "aupr_in", "aupr_out", "detect_acc", "fpr95tpr", "tnr90tpr_id")


def _values(dtype, shape, finite: bool = True, low: float = -1e3, high: float = 1e3):
    """Arrays of ``dtype`` and ``shape``; floats within [low, high] (with NaN and inf unless ``finite``)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        elements = st.floats(
            min_value=None if not finite else max(low, float(np.finfo(dtype).min)),
            max_value=None if not finite else min(high, float(np.finfo(dtype).max)),
            allow_nan=not finite,
            allow_infinity=not finite,
            width=8 * dtype.itemsize,
        )
    elif dtype.kind == "b":
        elements = st.booleans()
    else:
        elements = st.integers(int(max(low, np.iinfo(dtype).min)), int(min(high, np.iinfo(dtype).max)))
    return arrays(dtype, shape, elements=elements)


# --- Features -----------------------------------------------------------------------------------------------


@st.composite
def _logits(draw):
    ndim = draw(st.sampled_from([2, 2, 2, 1, 3]))
    shape = tuple(draw(st.integers(0, 4)) for _ in range(ndim))
    dtype = draw(st.sampled_from(DTYPES))
    return draw(_values(dtype, shape, finite=draw(st.booleans())))


@DETERMINISTIC
@given(_logits())
def test_features_keep_logits_or_name_the_field(logits):
    if logits.ndim != 2:
        with pytest.raises(ValueError, match=r"Features.logits must be 2-D \[n_samples, n_classes\]"):
            Features(logits=logits)
        return
    finite = np.isfinite(logits.astype(np.float64)).all()
    if not finite:
        with pytest.raises(ValueError, match=r"Features.logits has \d+ row\(s\) of \d+ holding NaN or inf"):
            Features(logits=logits)
        return
    feats = Features(logits=logits)
    assert len(feats) == logits.shape[0] and feats.n_classes == logits.shape[1]
    assert feats.logits.dtype.kind == "f" and feats.logits.dtype.itemsize >= 4  # half precision is widened
    np.testing.assert_array_equal(feats.logits, logits.astype(feats.logits.dtype))


@DETERMINISTIC
@given(st.integers(1, 6), st.sampled_from(FLOAT_DTYPES + (np.int64, np.uint8)), st.booleans())
def test_features_labels_are_class_indices(n, dtype, fractional):
    logits = np.zeros((n, 3))
    labels = (np.arange(n) % 3).astype(dtype)
    if fractional and np.dtype(dtype).kind == "f":
        labels = labels + np.asarray(0.5, dtype)
        with pytest.raises(ValueError, match=r"Features.labels must be integer class indices.*np.unique"):
            Features(logits=logits, labels=labels)
        return
    feats = Features(logits=logits, labels=labels)
    assert feats.labels.dtype.kind in "iu"
    np.testing.assert_array_equal(feats.labels, np.arange(n) % 3)


@DETERMINISTIC
@given(
    arrays(
        np.float32, st.tuples(st.integers(0, 4), st.integers(1, 4)), elements=st.floats(-100, 100, width=32)
    )
)
def test_features_take_torch_bfloat16_tensors(values):
    torch = pytest.importorskip("torch")
    tensor = torch.from_numpy(values).to(torch.bfloat16)  # what a model run in bfloat16 hands back
    feats = Features(logits=tensor, layers={"penultimate": tensor})
    expected = tensor.float().numpy()  # how a user converts them: bfloat16 values are exact in float32
    assert feats.logits.dtype == np.float32
    np.testing.assert_array_equal(feats.logits, expected)
    np.testing.assert_array_equal(feats.layer("penultimate"), expected)


def test_the_data_layer_reads_torch_bfloat16_tensors():
    torch = pytest.importorskip("torch")
    from oodscope.data import OODDataset

    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4).to(torch.bfloat16)
    data = OODDataset((images, torch.tensor([0, 1])), backend="torch")
    assert data.inputs.dtype == np.float32 and data.input_shape == (4, 4, 3)  # channels-last, exact values
    np.testing.assert_array_equal(data.inputs, images.float().numpy().transpose(0, 2, 3, 1))


# --- metrics ------------------------------------------------------------------------------------------------


@st.composite
def _scores(draw, finite=None):
    dtype = draw(st.sampled_from(DTYPES))
    finite = draw(st.booleans()) if finite is None else finite
    return draw(_values(dtype, (draw(st.integers(0, 12)),), finite=finite))


@DETERMINISTIC
@given(_scores(), _scores())
def test_metrics_are_in_range_or_refused(scores_in, scores_out):
    if scores_in.size == 0 or scores_out.size == 0:
        with pytest.raises(ValueError, match="at least one ID and one OOD score"):
            bench_metrics((scores_in, scores_out), metrics=ALL_METRICS)
        return
    if not (np.isfinite(scores_in.astype(float)).all() and np.isfinite(scores_out.astype(float)).all()):
        with pytest.raises(ValueError, match=r"scores_(in|out) contains \d+ non-finite value"):
            bench_metrics((scores_in, scores_out), metrics=ALL_METRICS)
        return
    values = bench_metrics((scores_in, scores_out), metrics=ALL_METRICS)
    assert all(isinstance(value, float) for value in values.values())
    assert all(0.0 <= value <= 1.0 for value in values.values())
    assert values["detect_acc"] >= 0.5 and values["aupr_in"] > 0 and values["aupr_out"] > 0
    # the same numbers from float64 copies, and AUROC swaps to its complement with the roles
    as_float64 = (scores_in.astype(np.float64), scores_out.astype(np.float64))
    assert bench_metrics(as_float64, metrics=ALL_METRICS) == values
    assert auroc(scores_out, scores_in) == pytest.approx(1.0 - values["auroc"], abs=1e-12)


@DETERMINISTIC
@given(_scores(finite=True), _scores(), st.floats(0.01, 1.0))
def test_pvalues_and_thresholds(calibration, scores, tpr):
    if calibration.size == 0:
        with pytest.raises(ValueError, match="calibration_scores is empty"):
            conformal_pvalues(scores, calibration)
        with pytest.raises(ValueError, match="id_scores must hold at least one ID score"):
            threshold_at_tpr(calibration, tpr)
        return
    threshold = threshold_at_tpr(calibration, tpr)
    assert threshold in calibration.astype(np.float64)
    assert np.mean(calibration.astype(np.float64) <= threshold) >= tpr - 1e-12
    if np.isnan(scores.astype(np.float64)).any():
        with pytest.raises(ValueError, match=r"scores holds \d+ NaN value"):
            conformal_pvalues(scores, calibration)
        return
    p = conformal_pvalues(scores, calibration)
    assert p.shape == scores.shape and p.dtype == np.float64
    assert np.all((p > 0) & (p <= 1))
    order = np.argsort(scores.astype(np.float64), kind="stable")
    assert np.all(np.diff(p[order]) <= 0)  # a higher score is never less surprising


# --- every registered detector ------------------------------------------------------------------------------

#: hyperparameters under which a detector can be fitted on a handful of samples
SMALL = {"KNN": {"k": 2}, "DKNN": {"k": 2}, "GMM": {"n_components": 2}}


def _detector(cls):
    return cls(**{**cls._features_only_params, **SMALL.get(cls.__name__, {})})


def _problem(rng, n_classes: int, dim: int, n: int, dtype) -> tuple[Features, Features]:
    """Fit Features (8 samples, every class) and N samples to score, with post-ReLU features and a head, all
    cast to ``dtype`` (an integer dtype truncates them: ties and zero rows)."""
    weight = rng.normal(size=(n_classes, dim))
    bias = rng.normal(size=n_classes)

    def make(rows: int, labels: np.ndarray | None) -> Features:
        h = np.maximum(rng.normal(1.0, 1.0, (rows, dim)), 0.0).astype(dtype)
        logits = (h.astype(np.float64) @ weight.T + bias).astype(dtype)
        return Features(
            logits=logits,
            layers={"penultimate": h},
            labels=labels,
            head_weight=weight.astype(dtype),
            head_bias=bias.astype(dtype),
        )

    return make(8, np.arange(8) % n_classes), make(n, None)


def _as_float64(feats: Features) -> Features:
    return Features(
        logits=feats.logits.astype(np.float64),
        layers={key: value.astype(np.float64) for key, value in feats.layers.items()},
        labels=feats.labels,
        head_weight=feats.head_weight.astype(np.float64),
        head_bias=feats.head_bias.astype(np.float64),
    )


def _fit_and_score(cls, fit: Features, test: Features) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. SHE: a class without a correctly classified fit sample
        return _detector(cls).fit(fit).score(test).scores


DETECTOR_NAMES = [name for name in available() if ":" not in name]


@pytest.mark.parametrize("name", DETECTOR_NAMES)
@settings(DETERMINISTIC, max_examples=12)
@given(
    n_classes=st.integers(1, 4),
    dim=st.integers(1, 5),
    n=st.integers(1, 6),
    dtype=st.sampled_from((*FLOAT_DTYPES, np.int32)),
    seed=st.integers(0, 2**16),
)
def test_detectors_score_finite_float64_or_name_the_problem(name, n_classes, dim, n, dtype, seed):
    cls = available()[name]
    fit, test = _problem(np.random.default_rng(seed), n_classes, dim, n, dtype)
    if name in ("ViM", "Residual", "NECO") and dim < 2:  # no residual space is left
        with pytest.raises(ValueError, match=re.escape("principal subspace must have between 1 and D - 1")):
            _fit_and_score(cls, fit, test)
        return
    if name == "RMDS" and np.unique(fit.labels).size < 2:  # class and background Gaussians coincide
        with pytest.raises(ValueError, match="RMDS needs at least two classes"):
            _fit_and_score(cls, fit, test)
        return
    scores = _fit_and_score(cls, fit, test)
    assert scores.shape == (n,) and scores.dtype == np.float64
    assert np.isfinite(scores).all(), scores
    # the same values in float64 give the same scores, up to float32 rounding inside the detector
    reference = _fit_and_score(cls, _as_float64(fit), _as_float64(test))
    scale = 1.0 + np.abs(reference).max()
    np.testing.assert_allclose(scores, reference, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("cls", all_detector_classes(), ids=lambda cls: cls.__name__)
def test_detectors_score_no_samples(cls):
    fit, test = _problem(np.random.default_rng(0), 3, 4, 0, np.float32)
    scores = _fit_and_score(cls, fit, test)
    assert scores.shape == (0,) and scores.dtype == np.float64


@pytest.mark.parametrize(
    "cls", [cls for cls in all_detector_classes() if "logits" in cls.requires], ids=lambda cls: cls.__name__
)
def test_detectors_refuse_logits_without_classes(cls):
    """Features of zero classes (an empty head) cannot be scored: an error that names the logits."""
    fit = Features(logits=np.zeros((8, 0)), layers={"penultimate": np.ones((8, 2))}, labels=np.zeros(8, int))
    with warnings.catch_warnings(), pytest.raises(ValueError, match="logits|class"):
        warnings.simplefilter("ignore")
        _detector(cls).fit(fit).score(fit)
