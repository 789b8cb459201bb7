"""Bad input gets a clear error that names the problem and the fix, never a silent wrong answer and never a
traceback from deep inside numpy.

One table per entry point: each row is a call on tiny inputs, the error type it must raise and a pattern its
message must match (the argument or field it names and, where there is one, what to do). A few rows check a
right answer instead, where the bad-looking input has a sensible meaning.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import warnings
import zipfile

import numpy as np
import pytest

from oodscope import (
    ASH,
    GEN,
    KNN,
    ODIN,
    RMDS,
    SCALE,
    SHE,
    Energy,
    Features,
    FisherAggregator,
    Gram,
    Mahalanobis,
    MeanNormalizedAggregator,
    ModelMismatchError,
    NotFittedError,
    OODDataset,
    ReAct,
    StdNormalizedAggregator,
    ViM,
    bench_metrics,
    bind,
    conformal_pvalues,
    energy_score,
    evaluate,
    extract,
    fpr_at_tpr,
    load,
    odin_score,
    roc_curve,
    threshold_at_tpr,
    tune,
)
from oodscope.backends import LayerNotFoundError
from oodscope.cli import main
from oodscope.detectors.gram import gram_statistics
from oodscope.detectors.she import she_score
from oodscope.persistence import DetectorFileError, save
from oodscope.shaping import ash, react, scale
from oodscope.training import build_model, learning_rate_at

torch = pytest.importorskip("torch")


# --- shared tiny inputs -------------------------------------------------------------------------------------


class Ctx:
    """Tiny inputs every row can use; built once per module."""

    def __init__(self, tmp) -> None:
        rng = np.random.default_rng(0)
        self.tmp = tmp
        self.logits = rng.normal(size=(20, 3))
        self.h = np.abs(rng.normal(size=(20, 5)))
        self.w = rng.normal(size=(3, 5))
        self.y = np.arange(20) % 3
        self.feats = Features(
            logits=self.logits, layers={"penultimate": self.h}, labels=self.y, head_weight=self.w
        )
        self.id = self.feats.take(np.arange(10))
        self.ood = self.feats.take(np.arange(10, 20))
        self.narrow = Features(  # another model: 4 classes, 4 features
            logits=rng.normal(size=(6, 4)), layers={"penultimate": np.abs(rng.normal(size=(6, 4)))}
        )
        self.empty = self.feats.take(np.arange(0))
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
        self.x = torch.randn(12, 4)
        self.labels = torch.arange(12) % 3
        self.images = rng.integers(0, 255, (12, 4, 4, 1)).astype(np.uint8)
        self.dataset = OODDataset((self.images, self.y[:12]), backend="torch")
        self.knn_path = KNN(k=2).fit(self.feats).save(tmp / "knn.oodscope")


class _TwoOutputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x), self.fc(x)


class _DictOutput(_TwoOutputs):
    def forward(self, x):
        return {"logits": self.fc(x)}


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> Ctx:
    return Ctx(tmp_path_factory.mktemp("bad_inputs"))


def _check(ctx: Ctx, call, error: type[BaseException], pattern: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a class of the labels without samples; not what is checked
        with pytest.raises(error, match=pattern):
            call(ctx)


def _rows(*rows):
    """``(id, call, error, pattern[, mark])`` rows as pytest params."""
    params = []
    for row in rows:
        name, call, error, pattern, *marks = row
        params.append(pytest.param(call, error, pattern, id=name, marks=marks))
    return params


# --- Features -----------------------------------------------------------------------------------------------

FEATURES = _rows(
    ("empty", lambda c: Features(), ValueError, "needs logits or at least one layer"),
    (
        "logits-1d",
        lambda c: Features(logits=np.zeros(3)),
        ValueError,
        r"logits must be 2-D.*logits\[None, :\]",
    ),
    (
        "logits-strings",
        lambda c: Features(logits=np.array([["a"]])),
        TypeError,
        "logits must hold real numbers",
    ),
    (
        "logits-complex",
        lambda c: Features(logits=np.zeros((2, 2), complex)),
        TypeError,
        "logits must hold real",
    ),
    (
        "logits-nan",
        lambda c: Features(logits=np.array([[0.0, 1.0], [np.nan, 0.0]])),
        ValueError,
        r"logits has 1 row\(s\) of 2 holding NaN or inf \(first at row 1\)",
    ),
    (
        "labels-length",
        lambda c: Features(logits=c.logits, labels=c.y[:3]),
        ValueError,
        "labels has 3 rows but",
    ),
    (
        "labels-fractional",
        lambda c: Features(logits=c.logits, labels=c.y + 0.5),
        ValueError,
        "labels must be integer class indices.*np.unique",
    ),
    ("layers-list", lambda c: Features(layers=[c.h]), TypeError, "layers must be a mapping"),
    (
        "layer-3d",
        lambda c: Features(layers={"penultimate": np.zeros((2, 3, 4))}),
        ValueError,
        r"layers\['penultimate'\] must be 2-D.*Pool feature maps",
    ),
    (
        "head-transposed",
        lambda c: Features(logits=c.logits, layers={"penultimate": c.h}, head_weight=c.w.T),
        ValueError,
        "head_weight has 5 rows but logits have 3 classes.*transpose a Keras Dense kernel",
    ),
    (
        "bias-without-weight",
        lambda c: Features(logits=c.logits, head_bias=np.zeros(3)),
        ValueError,
        "without head_weight",
    ),
    (
        "bad-mask",
        lambda c: c.feats.take(np.ones(3, bool)),
        ValueError,
        r"boolean mask must have shape \(20,\)",
    ),
    ("missing-layer", lambda c: c.feats.layer("conv1"), KeyError, "no layer 'conv1'; available layers"),
    (
        "ragged-logits",
        lambda c: Features(logits=[[1.0, 2.0], [3.0]]),
        ValueError,
        "Features.logits",
    ),
)


@pytest.mark.parametrize(("call", "error", "pattern"), FEATURES)
def test_features(ctx, call, error, pattern):
    _check(ctx, call, error, pattern)


# --- detectors and their pure score functions ---------------------------------------------------------------


def _fit_failed_then_score(c: Ctx):
    knn = KNN(k=50)
    with pytest.raises(ValueError, match="needs at least k fit samples"):
        knn.fit(c.feats)
    return knn.score(c.feats)


def _one_class(c: Ctx) -> Features:
    return Features(layers={"penultimate": c.h}, labels=np.zeros(20, int))


DETECTORS = _rows(
    (
        "knn-k0",
        lambda c: KNN(k=0).fit(c.feats),
        ValueError,
        r"'k' parameter of KNN must be an int in \[1, inf\)",
    ),
    (
        "knn-k-too-big",
        lambda c: KNN(k=25).fit(c.feats),
        ValueError,
        "KNN with k=25 needs at least k fit samples",
    ),
    (
        "gen-gamma-inf",
        lambda c: GEN(gamma=np.inf).fit(c.feats),
        ValueError,
        r"'gamma' parameter of GEN.*Got inf",
    ),
    (
        "gen-gamma-float32-nan",
        lambda c: GEN(gamma=np.float32("nan")).fit(c.feats),
        ValueError,
        "'gamma' parameter of GEN",
    ),
    ("energy-temperature-inf", lambda c: Energy(temperature=1e400).fit(c.feats), ValueError, "'temperature'"),
    (
        "odin-needs-model",
        lambda c: ODIN(eps=0.01).score(c.feats),
        ValueError,
        r"reads a forward pass with inputs moved.*fit\(model\)",
    ),
    (
        "react-detector-string",
        lambda c: ReAct(detector="GEN").fit(c.feats),
        ValueError,
        "'detector' parameter of ReAct",
    ),
    ("react-wraps-odin", lambda c: ReAct(ODIN()).fit(c.feats), ValueError, "ReAct cannot wrap ODIN"),
    (
        "ash-negative",
        lambda c: ASH().score(Features(layers={"penultimate": -c.h}, head_weight=c.w)),
        ValueError,
        "non-negative .*post-ReLU.*Use a layer that follows a ReLU",
    ),
    (
        "ash-variant",
        lambda c: ASH(variant="x").fit(c.feats),
        ValueError,
        "'variant' parameter of ASH must be one of",
    ),
    (
        "scale-percentile",
        lambda c: SCALE(percentile=100).fit(c.feats),
        ValueError,
        r"'percentile'.*\[0, 100\)",
    ),
    (
        "react-no-head",
        lambda c: ReAct().fit(Features(layers={"penultimate": c.h})),
        ValueError,
        r"weights \(W, b\) of the classifier's final linear layer",
    ),
    ("knn-not-fitted", lambda c: KNN().score(c.feats), NotFittedError, r"not fitted yet. Call fit\(\)"),
    (
        "knn-other-width",
        lambda c: KNN(k=2).fit(c.feats).score(c.narrow),
        ValueError,
        r"layers\['penultimate'\] has 4 features instead of 5.*same model and layers",
    ),
    (
        "gen-other-classes",
        lambda c: GEN().fit(c.feats).score(c.narrow),
        ValueError,
        "logits have 4 classes instead of 3",
    ),
    (
        "mahalanobis-no-labels",
        lambda c: Mahalanobis().fit(Features(layers={"penultimate": c.h})),
        ValueError,
        "Mahalanobis needs class labels",
    ),
    (
        "she-labels-out-of-range",
        lambda c: SHE().fit(Features(logits=c.logits, layers={"penultimate": c.h}, labels=c.y + 3)),
        ValueError,
        r"SHE needs integer class labels in \[0, 3\)",
    ),
    ("gram-orders", lambda c: Gram(orders=0).fit(c.feats), ValueError, "'orders' parameter of Gram"),
    ("vim-dim", lambda c: ViM(dim=5).fit(c.feats), ValueError, "between 1 and D - 1 = 4"),
    (
        "two-layers-no-aggregator",
        lambda c: KNN(k=2, layers=["a", "b"]).fit(Features(layers={"a": c.h, "b": c.h})),
        ValueError,
        r"no aggregator.*aggregator=FisherAggregator\(\)",
    ),
    (
        "layers-string",
        lambda c: KNN(layers="penultimate").fit(c.feats),
        ValueError,
        "'layers' parameter of KNN",
    ),
    (
        "score-array-no-model",
        lambda c: GEN().score(c.logits),
        TypeError,
        r"no model is known.*oodscope.Features",
    ),
    ("fit-features-with-data", lambda c: GEN().fit(c.feats, c.feats), TypeError, "takes no fit_data"),
    ("set-params-typo", lambda c: GEN().set_params(gama=1), ValueError, "Invalid parameter 'gama' for GEN"),
    ("fit-none", lambda c: GEN().fit(None), TypeError, "cannot run a model of type builtins.NoneType"),
    (
        "energy-score-1d",
        lambda c: energy_score([1.0, 2.0]),
        ValueError,
        r"logits must be 2-D \[n_samples, n_classes\]",
    ),
    ("odin-score-strings", lambda c: odin_score([["a", "b"]]), TypeError, "logits must hold real numbers"),
    (
        "ash-percentile",
        lambda c: ash(c.h, percentile=200),
        ValueError,
        r"'percentile' parameter of ash.*\[0, 100\)",
    ),
    (
        "ash-1d",
        lambda c: ash(c.h[0]),
        ValueError,
        r"ash expects activations of shape \[n_samples, n_features\]",
    ),
    ("scale-strings", lambda c: scale(np.array([["a"]])), TypeError, "scale expects real-valued activations"),
    ("react-threshold-nan", lambda c: react(c.h, np.nan), ValueError, "'threshold' parameter of react"),
    (
        "she-score-patterns",
        lambda c: she_score(c.h, c.logits, np.zeros((3, 4))),
        ValueError,
        r"patterns have shape \(3, 4\).*3 classes and the features 5 dimensions",
    ),
    ("gram-statistics-orders", lambda c: gram_statistics(c.h, orders=0), ValueError, "'orders' parameter"),
    (
        "gram-statistics-overflow",
        lambda c: gram_statistics(c.h * 1e40, orders=10),
        ValueError,
        "overflow.*lower 'orders'",
    ),
    (
        "fit-failed-leaves-unfitted",
        _fit_failed_then_score,
        NotFittedError,
        "not fitted",
    ),
    (
        "rmds-one-class",
        lambda c: RMDS().fit(_one_class(c)),
        ValueError,
        "class",
    ),
    (
        "vim-one-sample",
        lambda c: ViM().fit(c.feats.take([0])),
        ValueError,
        "sample",
    ),
)


@pytest.mark.parametrize(("call", "error", "pattern"), DETECTORS)
def test_detectors(ctx, call, error, pattern):
    _check(ctx, call, error, pattern)


# --- aggregators --------------------------------------------------------------------------------------------

AGGREGATORS = _rows(
    (
        "not-fitted",
        lambda c: FisherAggregator().aggregate(np.zeros((2, 2))),
        NotFittedError,
        "not fitted yet",
    ),
    (
        "1d",
        lambda c: StdNormalizedAggregator().fit(np.zeros(3)),
        ValueError,
        r"shape \[n_samples, n_layers\]",
    ),
    (
        "strings",
        lambda c: FisherAggregator().fit([["a", "b"]]),
        TypeError,
        "FisherAggregator expects real-valued",
    ),
    ("complex", lambda c: MeanNormalizedAggregator().fit(np.ones((3, 2), complex)), TypeError, "complex128"),
    (
        "ragged",
        lambda c: StdNormalizedAggregator().fit([[1.0, 2.0], [3.0]]),
        ValueError,
        "rows of different lengths",
    ),
    (
        "nan",
        lambda c: FisherAggregator().fit([[np.nan, 1.0]]),
        ValueError,
        r"NaN or inf .*layer column\(s\) \[0\]",
    ),
    ("empty", lambda c: FisherAggregator().fit(np.zeros((0, 2))), ValueError, r"got shape \(0, 2\)"),
    (
        "layers-differ",
        lambda c: FisherAggregator().fit(np.random.default_rng(0).random((5, 2))).aggregate(np.zeros((1, 3))),
        ValueError,
        "fitted on 2 layers; got scores for 3",
    ),
    (
        "constant-std",
        lambda c: StdNormalizedAggregator().fit(np.ones((5, 2))),
        ValueError,
        "standard deviation of 0. Use FisherAggregator",
    ),
    ("zero-mean", lambda c: MeanNormalizedAggregator().fit(np.zeros((5, 2))), ValueError, "mean of 0"),
    (
        "brown-string",
        lambda c: FisherAggregator(brown="yes").fit(np.ones((5, 2))),
        ValueError,
        "'brown' parameter",
    ),
    (
        "aggregator-class",
        lambda c: KNN(k=2, aggregator=FisherAggregator).fit(c.feats),
        ValueError,
        "'aggregator' parameter of KNN must be an instance of Aggregator",
    ),
)


@pytest.mark.parametrize(("call", "error", "pattern"), AGGREGATORS)
def test_aggregators(ctx, call, error, pattern):
    _check(ctx, call, error, pattern)


def test_aggregating_no_samples_gives_no_scores():
    fit = np.random.default_rng(0).random((8, 2)) + 1
    for aggregator in (StdNormalizedAggregator(), MeanNormalizedAggregator(), FisherAggregator()):
        scores = aggregator.fit(fit).aggregate(np.zeros((0, 2)))
        assert scores.shape == (0,) and scores.dtype == np.float64


# --- metrics ------------------------------------------------------------------------------------------------

S_IN, S_OUT = np.linspace(0, 1, 10), np.linspace(0.5, 1.5, 10)

METRICS = _rows(
    (
        "metrics-int",
        lambda c: bench_metrics((S_IN, S_OUT), metrics=5),
        TypeError,
        "metrics must be a metric name",
    ),
    ("metrics-empty", lambda c: bench_metrics((S_IN, S_OUT), metrics=[]), ValueError, "at least one metric"),
    (
        "metric-case",
        lambda c: bench_metrics((S_IN, S_OUT), metrics=["AUROC"]),
        ValueError,
        "Unknown metric 'AUROC'",
    ),
    (
        "metric-fpr0",
        lambda c: bench_metrics((S_IN, S_OUT), metrics=["fpr0tpr"]),
        ValueError,
        r"XX must be in \(0, 100\]",
    ),
    (
        "scores-dict",
        lambda c: bench_metrics({"id": S_IN, "ood": S_OUT}),
        TypeError,
        r"got a dict.*as a tuple",
    ),
    ("scores-set", lambda c: bench_metrics({1.0, 2.0}), TypeError, "scores must be a pair"),
    (
        "pair-with-string",
        lambda c: bench_metrics(("abc", S_OUT)),
        TypeError,
        "scores_in must be a 1-D array of numeric",
    ),
    (
        "three-arrays",
        lambda c: bench_metrics((S_IN, S_OUT, S_IN)),
        ValueError,
        "must be a pair.*got 3 arrays",
    ),
    (
        "no-labels",
        lambda c: bench_metrics(S_IN),
        ValueError,
        "labels is required when scores is a single array",
    ),
    (
        "labels-with-pair",
        lambda c: bench_metrics((S_IN, S_OUT), labels=S_IN),
        ValueError,
        "labels must be None",
    ),
    (
        "equal-in-out-values",
        lambda c: bench_metrics(S_IN, labels=np.zeros(10), in_value=1, out_value=1),
        ValueError,
        "in_value and out_value must differ",
    ),
    (
        "set-in-value",
        lambda c: bench_metrics(S_IN, labels=np.arange(10) % 2, in_value={0}),
        ValueError,
        "in_value must be a single label value",
    ),
    (
        "unexpected-labels",
        lambda c: bench_metrics(S_IN, labels=np.arange(10) % 3),
        ValueError,
        r"unexpected value\(s\) \[2\].*Pass in_value",
    ),
    ("only-id", lambda c: bench_metrics(S_IN, labels=np.zeros(10)), ValueError, "got 0 OOD scores"),
    ("nan", lambda c: bench_metrics((np.r_[S_IN, np.nan], S_OUT)), ValueError, r"1 NaN.*np.nan_to_num"),
    (
        "2d",
        lambda c: bench_metrics((S_IN[:, None], S_OUT)),
        ValueError,
        "scores_in must be a 1-D array.*np.ravel",
    ),
    ("complex", lambda c: bench_metrics((S_IN.astype(complex), S_OUT)), TypeError, "scores_in is complex"),
    (
        "positive",
        lambda c: bench_metrics((S_IN, S_OUT), positive="OOD"),
        ValueError,
        "positive must be 'ood'",
    ),
    ("tpr-percent", lambda c: fpr_at_tpr(S_IN, S_OUT, tpr=95), ValueError, "use 0.95 for 95%"),
    ("tpr-string", lambda c: fpr_at_tpr(S_IN, S_OUT, tpr="0.95"), TypeError, "tpr must be a real number"),
    ("roc-positive", lambda c: roc_curve(S_IN, S_OUT, positive="in"), ValueError, "positive must be"),
    ("threshold-empty", lambda c: threshold_at_tpr([], 0.9), ValueError, "at least one ID score"),
    (
        "pvalues-no-calibration",
        lambda c: conformal_pvalues(S_IN, []),
        ValueError,
        "calibration_scores is empty",
    ),
    (
        "pvalues-nan",
        lambda c: conformal_pvalues([np.nan], S_IN),
        ValueError,
        r"scores holds 1 NaN value\(s\)",
    ),
    (
        "pvalues-2d",
        lambda c: conformal_pvalues(S_IN, np.c_[S_IN, S_IN]),
        ValueError,
        "calibration_scores must be a 1-D",
    ),
    (
        "pvalues-strings",
        lambda c: conformal_pvalues("abc", S_IN),
        TypeError,
        "scores must be a 1-D array of numeric",
    ),
)


@pytest.mark.parametrize(("call", "error", "pattern"), METRICS)
def test_metrics(ctx, call, error, pattern):
    _check(ctx, call, error, pattern)


# --- extract, evaluate, tune, calibrate / predict / pvalues, save / load ------------------------------------


def _tampered(c: Ctx):
    """The saved KNN with its fit vectors replaced by an array of another width."""
    with zipfile.ZipFile(c.knn_path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    state = dict(json.loads(entries["detector.json"])["detector"]["state"]["__items__"])
    entry = state["fit_vectors_"]["__array__"] + ".npy"
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((20, 7)))
    entries[entry] = buffer.getvalue()
    path = c.tmp / "tampered.oodscope"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return load(path)


def _junk(c: Ctx):
    (c.tmp / "junk.oodscope").write_bytes(b"not a zip")
    return load(c.tmp / "junk.oodscope")


def _another_model(c: Ctx):
    path = GEN().fit(c.model).save(c.tmp / "gen.oodscope")
    return load(path, model=torch.nn.Sequential(torch.nn.Linear(4, 3)))


PIPELINE = _rows(
    (
        "extract-unknown-layer",
        lambda c: extract(c.model, c.x, feature_layers_id=["nope"]),
        LayerNotFoundError,
        "no layer 'nope'. Available layers: '0', '1', '2'",
    ),
    (
        "extract-batch-0",
        lambda c: extract(c.model, c.x, batch_size=0),
        ValueError,
        "batch_size must be a positive int",
    ),
    (
        "extract-string-data",
        lambda c: extract(c.model, "data.npz"),
        TypeError,
        "Cannot iterate data of type str",
    ),
    ("extract-no-samples", lambda c: extract(c.model, torch.zeros(0, 4)), ValueError, "yielded no batches"),
    (
        "extract-fractional-labels",
        lambda c: extract(c.model, (c.x, torch.rand(12))),
        ValueError,
        "Labels must be integer class indices",
    ),
    (
        "extract-labels-length",
        lambda c: extract(c.model, (c.x, c.labels[:3])),
        ValueError,
        "different lengths: 12 and 3",
    ),
    (
        "extract-option-typo",
        lambda c: extract(c.model, c.x, batchsize=4),
        TypeError,
        r"Unknown pass option\(s\)",
    ),
    (
        "extract-tuple-output",
        lambda c: extract(_TwoOutputs(), c.x),
        ValueError,
        "tuple of 2 outputs.*head_layer_id",
    ),
    (
        "extract-dict-output",
        lambda c: extract(_DictOutput(), c.x),
        ValueError,
        "returns a dict.*head_layer_id",
    ),
    (
        "extract-postproc-not-callable",
        lambda c: extract(c.model, c.x, feature_layers_id=["penultimate"], postproc_fns={"penultimate": 3}),
        TypeError,
        "postproc_fns",
    ),
    ("bind-batch", lambda c: bind(c.model, batch_size=-1), ValueError, "batch_size must be a positive int"),
    ("knn-fit-model-no-data", lambda c: KNN().fit(c.model), ValueError, r"call fit\(model, fit_data\)"),
    (
        "evaluate-no-detectors",
        lambda c: evaluate(None, c.feats, c.id, {"o": c.ood}, detectors=[]),
        ValueError,
        "at least one detector",
    ),
    (
        "evaluate-detector-string",
        lambda c: evaluate(None, c.feats, c.id, {"o": c.ood}, detectors=["GEN()"]),
        TypeError,
        "is a str, not an oodscope Detector",
    ),
    (
        "evaluate-no-ood",
        lambda c: evaluate(None, c.feats, c.id, {}, detectors=[GEN()]),
        ValueError,
        "at least one OOD",
    ),
    (
        "evaluate-ood-named-id",
        lambda c: evaluate(None, c.feats, c.id, {"id": c.ood}, detectors=[GEN()]),
        ValueError,
        "cannot be named 'id'.*Rename it",
    ),
    (
        "evaluate-widths",
        lambda c: evaluate(None, c.feats, c.id, {"o": c.narrow}, detectors=[GEN()]),
        ValueError,
        "OOD 'o' data do not match the ID data: logits have 4 classes instead of 3",
    ),
    (
        "evaluate-errors-option",
        lambda c: evaluate(None, c.feats, c.id, {"o": c.ood}, detectors=[GEN()], errors="ignore"),
        ValueError,
        "errors must be 'record' or 'raise'",
    ),
    (
        "evaluate-group",
        lambda c: evaluate(None, c.feats, c.id, {"o": c.ood}, detectors=[GEN()], groups={"g": ["x"]}),
        ValueError,
        r"unknown: \['x'\]",
    ),
    (
        "evaluate-array-no-model",
        lambda c: evaluate(None, c.feats, c.logits, {"o": c.ood}, detectors=[GEN()]),
        TypeError,
        "no model was given",
    ),
    (
        "tune-typo",
        lambda c: tune(GEN(), {"gama": [0.1]}, c.feats, c.id, c.ood),
        ValueError,
        "Invalid parameter 'gama'",
    ),
    (
        "tune-no-candidates",
        lambda c: tune(GEN(), {"gamma": []}, c.feats, c.id, c.ood),
        ValueError,
        "empty list of candidates",
    ),
    (
        "tune-scalar",
        lambda c: tune(GEN(), {"gamma": 0.1}, c.feats, c.id, c.ood),
        TypeError,
        r"must be a list of candidates.*\{'gamma': \[0.1\]\}",
    ),
    (
        "tune-metric",
        lambda c: tune(GEN(), {"gamma": [0.1]}, c.feats, c.id, c.ood, metric="nope"),
        ValueError,
        "Unknown metric",
    ),
    (
        "tune-widths",
        lambda c: tune(GEN(), {"gamma": [0.1]}, c.feats, c.id, c.narrow),
        ValueError,
        "do not match",
    ),
    (
        "tune-class",
        lambda c: tune(GEN, {"gamma": [0.1]}, c.feats, c.id, c.ood),
        TypeError,
        "needs an oodscope Detector",
    ),
    (
        "tune-empty-grid-list",
        lambda c: tune(GEN(), [], c.feats, c.id, c.ood),
        ValueError,
        "param_grid",
    ),
    ("calibrate-tpr-0", lambda c: GEN().calibrate(c.id, tpr=0), ValueError, r"tpr must be in \(0, 1\]"),
    ("calibrate-tpr-percent", lambda c: GEN().calibrate(c.id, tpr=95), ValueError, "use 0.95 for 95%"),
    ("calibrate-empty", lambda c: GEN().calibrate(c.empty), ValueError, "got no samples in id_data"),
    ("calibrate-unfitted", lambda c: KNN().calibrate(c.id), NotFittedError, "not fitted yet"),
    (
        "predict-uncalibrated",
        lambda c: GEN().predict(c.id),
        NotFittedError,
        r"no threshold yet: call calibrate",
    ),
    (
        "pvalues-uncalibrated",
        lambda c: GEN().pvalues(c.id),
        NotFittedError,
        r"call calibrate\(held_out_id_data\)",
    ),
    (
        "predict-other-widths",
        lambda c: GEN().fit(c.feats).calibrate(c.id).predict(c.narrow),
        ValueError,
        "logits have 4 classes instead of 3",
    ),
    ("load-missing", lambda c: load(c.tmp / "missing.oodscope"), FileNotFoundError, "missing.oodscope"),
    ("load-junk", lambda c: _junk(c), DetectorFileError, r"not an oodscope detector file.*det.save\(\)"),
    ("load-tampered-shape", _tampered, DetectorFileError, r"fit_vectors_ has shape \(20, 7\).*must be 5"),
    ("load-another-model", _another_model, ModelMismatchError, "fitted on another model"),
    ("save-not-detector", lambda c: save(3, c.tmp / "x"), TypeError, "expects an oodscope detector"),
)


@pytest.mark.parametrize(("call", "error", "pattern"), PIPELINE)
def test_pipeline(ctx, call, error, pattern):
    _check(ctx, call, error, pattern)


# --- OODDataset ---------------------------------------------------------------------------------------------

DATA = _rows(
    ("name-typo", lambda c: OODDataset("mnsit"), ValueError, "Unknown dataset 'mnsit'.*Did you mean 'mnist'"),
    ("int", lambda c: OODDataset(123), TypeError, "Cannot make an OODDataset from int"),
    ("lengths", lambda c: OODDataset((c.images, c.y[:3])), ValueError, "different lengths: 12 and 3"),
    (
        "fractional-labels",
        lambda c: OODDataset((c.images, c.y[:12] + 0.5)),
        ValueError,
        "integer class indices",
    ),
    (
        "negative-labels",
        lambda c: OODDataset((c.images, c.y[:12] - 1)),
        ValueError,
        "class indices 0, 1, ...; got -1",
    ),
    (
        "three-arrays",
        lambda c: OODDataset((c.images, c.y[:12], c.y[:12])),
        TypeError,
        r"\(inputs, labels\); got 3 arrays",
    ),
    (
        "backend",
        lambda c: OODDataset(c.images, backend="jax"),
        ValueError,
        "backend must be 'tensorflow', 'torch'",
    ),
    (
        "load-kwargs-typo",
        lambda c: OODDataset("digits", load_kwargs={"spilt": "train"}),
        TypeError,
        r"Unknown load_kwargs \['spilt'\]",
    ),
    (
        "dict-input-key",
        lambda c: OODDataset({"x": c.images}, input_key="img"),
        KeyError,
        "input_key='img' is not in the batch",
    ),
    (
        "split-unlabelled",
        lambda c: OODDataset(c.images, backend="torch").split_by_class([0]),
        ValueError,
        "has no labels",
    ),
    (
        "split-overlap",
        lambda c: c.dataset.split_by_class([0, 1], [1, 2]),
        ValueError,
        r"share \[1\]: a class cannot be both",
    ),
    ("split-empty", lambda c: c.dataset.split_by_class([]), ValueError, "in_labels is empty"),
    (
        "split-dict",
        lambda c: c.dataset.split_by_class({0: "a"}),
        TypeError,
        "in_labels must be a class label or a collection",
    ),
    (
        "split-fractional",
        lambda c: c.dataset.split_by_class([0.5]),
        ValueError,
        "in_labels must be integer class indices",
    ),
    (
        "equal-ood-values",
        lambda c: c.dataset.add_out_data(c.dataset, in_value=1, out_value=1),
        ValueError,
        "in_value and out_value are both 1",
    ),
    (
        "out-shape",
        lambda c: c.dataset.add_out_data(OODDataset(np.zeros((3, 5, 5, 1), np.uint8))),
        ValueError,
        r"pass resize=True",
    ),
    (
        "resize-shape-zero",
        lambda c: c.dataset.add_out_data(c.dataset, resize=True, shape=(0, 0)),
        ValueError,
        "positive ints",
    ),
    (
        "resize-method",
        lambda c: c.dataset.add_out_data(c.dataset, resize=True, resize_method="cubic"),
        ValueError,
        "resize_method",
    ),
    ("prepare-batch", lambda c: c.dataset.prepare(0), ValueError, "batch_size must be a positive int"),
    (
        "prepare-fn",
        lambda c: c.dataset.prepare(4, preprocess_fn=3),
        TypeError,
        "preprocess_fn must be a function",
    ),
    (
        "prepare-seed",
        lambda c: c.dataset.prepare(4, shuffle=True, seed="a"),
        ValueError,
        "seed must be None or an int",
    ),
    (
        "prepare-buffer",
        lambda c: c.dataset.prepare(4, shuffle_buffer_size=0),
        ValueError,
        "shuffle_buffer_size",
    ),
    (
        "prepare-ood-labels",
        lambda c: c.dataset.prepare(4, with_ood_labels=True),
        ValueError,
        r"add_out_data\(\) first",
    ),
)


@pytest.mark.parametrize(("call", "error", "pattern"), DATA)
def test_data(ctx, call, error, pattern):
    _check(ctx, call, error, pattern)


def test_split_by_class_takes_sets_and_ranges(ctx):
    expected = len(ctx.dataset.split_by_class([0, 1])[0])
    assert (
        len(ctx.dataset.split_by_class({1, 0})[0])
        == len(ctx.dataset.split_by_class(range(2))[0])
        == expected
        == 8
    )


# --- training -----------------------------------------------------------------------------------------------


def _train(c: Ctx, **kwargs):
    from oodscope.training import train_torch_model

    options = dict(model="toy_mlp", epochs=1, batch_size=8)
    data = kwargs.pop("data", (c.images.transpose(0, 3, 1, 2) / 255.0, c.y[:12]))
    return train_torch_model(data, **{**options, **kwargs})


def _train_keras(c: Ctx):
    from oodscope.training import train_tf_model

    return train_tf_model(
        (c.images / 255.0, c.y[:12] + 5), model="toy_mlp", num_classes=3, epochs=1, verbose=0
    )


TRAINING = _rows(
    ("model-name", lambda c: _train(c, model="vgg"), ValueError, "Unknown model 'vgg'; built-in models are"),
    ("epochs", lambda c: _train(c, epochs=0), ValueError, "epochs must be a positive int"),
    (
        "learning-rate-nan",
        lambda c: _train(c, learning_rate=float("nan")),
        ValueError,
        "learning_rate must be a positive, finite",
    ),
    (
        "learning-rate-inf",
        lambda c: _train(c, learning_rate=float("inf")),
        ValueError,
        "learning_rate must be a positive, finite",
    ),
    ("weight-decay", lambda c: _train(c, weight_decay=-1), ValueError, "weight_decay must be a non-negative"),
    ("seed", lambda c: _train(c, seed="a"), ValueError, "seed must be None or an int"),
    ("num-classes", lambda c: _train(c, num_classes=0), ValueError, "num_classes must be a positive int"),
    (
        "labels-beyond-outputs",
        lambda c: _train(c, num_classes=2),
        ValueError,
        r"class indices 0 to 1 \(the model has 2 outputs\); got 2.*num_classes",
    ),
    (
        "negative-labels",
        lambda c: _train(c, data=(c.images.transpose(0, 3, 1, 2) / 255.0, c.y[:12] - 1)),
        ValueError,
        "class indices 0, 1, ...; got -1",
    ),
    (
        "input-shape",
        lambda c: _train(c, input_shape=(1, 5, 5)),
        ValueError,
        r"input_shape=\(1, 5, 5\) but the inputs have shape \(1, 4, 4\)",
    ),
    (
        "input-shape-negative",
        lambda c: _train(c, input_shape=(1, -4, 4)),
        ValueError,
        "input_shape must be .* positive ints",
    ),
    ("no-samples", lambda c: _train(c, data=(c.images[:0], c.y[:0])), ValueError, "holds no samples"),
    (
        "scheduler",
        lambda c: _train(c, lr_scheduler="linear"),
        ValueError,
        "lr_scheduler must be None, 'cosine' or 'steps'",
    ),
    ("optimizer", lambda c: _train(c, optimizer="adagrad"), ValueError, "Unknown optimizer 'adagrad'"),
    (
        "learning-rate-at-scheduler",
        lambda c: learning_rate_at(0, 5, 1e-3, "linear"),
        ValueError,
        "lr_scheduler must be",
    ),
    (
        "build-shape",
        lambda c: build_model("toy_mlp", "28x28", framework="torch"),
        ValueError,
        "input_shape must be",
    ),
    (
        "keras-labels-beyond-outputs",
        _train_keras,
        ValueError,
        r"class indices 0 to 2 \(the model has 3 outputs\); got 7",
        pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="needs Keras"),
    ),
)


@pytest.mark.parametrize(("call", "error", "pattern"), TRAINING)
def test_training(ctx, call, error, pattern):
    _check(ctx, call, error, pattern)


# --- plots --------------------------------------------------------------------------------------------------


def _plots():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from oodscope import plots

    return plots


def _plot(name: str, *args, **kwargs):
    def call(c: Ctx):
        import matplotlib.pyplot as plt

        try:
            return getattr(_plots(), name)(*args, **kwargs)
        finally:
            plt.close("all")

    return call


def _map(c: Ctx, layer="penultimate", **kwargs):
    return _plot("plot_2D_features", c.model, c.x, layer, proj_method="PCA", **kwargs)(c)


PLOTS = _rows(
    (
        "scores-empty",
        _plot("plot_ood_scores", [], S_OUT),
        ValueError,
        "scores_in must be a non-empty 1-D array",
    ),
    ("scores-nan", _plot("plot_ood_scores", [np.nan], S_OUT), ValueError, "scores_in contains NaN or inf"),
    (
        "scores-strings",
        _plot("plot_ood_scores", "abc", S_OUT),
        TypeError,
        "scores_in must be a 1-D array of numeric",
    ),
    (
        "scores-complex",
        _plot("plot_ood_scores", S_IN.astype(complex), S_OUT),
        TypeError,
        "scores_in is complex",
    ),
    (
        "bins-zero",
        _plot("plot_ood_scores", S_IN, S_OUT, bins=0),
        ValueError,
        "bins must be a positive number of bins",
    ),
    (
        "bins-rule",
        _plot("plot_ood_scores", S_IN, S_OUT, bins="nope"),
        ValueError,
        "bins='nope' is not usable",
    ),
    (
        "legend-string",
        _plot("plot_ood_scores", S_IN, S_OUT, labels="ID"),
        ValueError,
        r"labels must be a pair of legend",
    ),
    ("ax", _plot("plot_ood_scores", S_IN, S_OUT, ax="ax"), TypeError, "ax must be a matplotlib Axes"),
    ("roc-tpr", _plot("plot_roc_curve", S_IN, S_OUT, tpr=1.5), ValueError, r"tpr must be in \(0, 1\]"),
    ("map-max-samples", lambda c: _map(c, max_samples=1), ValueError, "max_samples must be an int >= 2"),
    ("map-seed", lambda c: _map(c, seed="a"), ValueError, "seed must be None or an int"),
    (
        "map-method",
        lambda c: _plot("plot_2D_features", c.model, c.x, 0, proj_method="umap")(c),
        ValueError,
        "proj_method must be",
    ),
    (
        "map-one-feature",
        lambda c: _plot("plot_2D_features", _one_unit_model(), c.x, 0, proj_method="PCA")(c),
        ValueError,
        "Layer 0 has 1 feature per sample; a 2-D map needs at least 2",
    ),
)


def _one_unit_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 1), torch.nn.ReLU(), torch.nn.Linear(1, 3))


@pytest.mark.parametrize(("call", "error", "pattern"), PLOTS)
def test_plots(ctx, call, error, pattern):
    _check(ctx, call, error, pattern)


# --- the command line ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    """A toy MLP for 8x8 images saved by oodscope, a GEN fitted on it, and data files with bad content."""
    from oodscope.training import save_torch_model, toy_mlp

    folder = tmp_path_factory.mktemp("cli_bad_inputs")
    torch.manual_seed(0)
    module = toy_mlp((1, 8, 8), 10, framework="torch")
    model = save_torch_model(module, folder / "mlp.pt")
    detector = GEN().fit(module).save(folder / "gen.oodscope")
    np.savez(folder / "fractional.npz", x=np.zeros((5, 8, 8, 1), np.uint8), y=np.arange(5) + 0.5)
    np.savez(folder / "strings.npz", x=np.array(["a"] * 5))
    np.save(folder / "empty.npy", np.zeros((0, 8, 8, 1), np.uint8))
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model": str(model),
                "id": "digits",
                "ood": {"o": "digits:train"},
                "detectors": ["GEN()"],
                "batch_size": 0,
            }
        )
    )
    return {"folder": folder, "model": str(model), "detector": str(detector)}


GRAMMAR = r"A data spec is NAME\[:SPLIT\[:CLASSES\]\]"


def _argv(f: dict, command: str, *extra: str) -> list[str]:
    out = str(f["folder"] / "out")
    base = {
        "score": [
            "score",
            "--detector",
            f["detector"],
            "--model",
            f["model"],
            "--inputs",
            "digits:test",
            "--out",
            f"{out}.csv",
        ],
        "fit": ["fit", "--model", f["model"], "--detector", "GEN()", "--out", f"{out}.oodscope"],
        "bench": [
            "bench",
            "--model",
            f["model"],
            "--id",
            "digits:test:0-4",
            "--ood",
            "o=digits:test:5-9",
            "--detectors",
            "GEN()",
            "--out",
            out,
        ],
        "train": ["train", "--data", "digits:train:0-4", "--out", f"{out}.pt", "--architecture", "toy_mlp"],
        "demo": ["demo", "--backend", "sklearn", "--data", "digits", "--out", out],
    }[command]
    return [*base, *extra]


def _file(name: str) -> str:
    return f"@{name}"  # replaced by the path of that file of cli_files


CLI = [
    (
        "score-batch-0",
        "score",
        ["--batch-size", "0"],
        r"argument --batch-size: must be an int in \[1, inf\); got '0'",
    ),
    (
        "score-batch-fraction",
        "score",
        ["--batch-size", "1.5"],
        r"argument --batch-size: must be an int in \[1, inf\)",
    ),
    ("score-scale-0", "score", ["--scale", "0"], r"argument --scale: must be a float in \(0, inf\); got '0'"),
    ("score-scale-inf", "score", ["--scale", "inf"], r"argument --scale: must be a float in \(0, inf\)"),
    (
        "score-inputs-typo",
        "score",
        ["--inputs", "mnsit:test"],
        "argument --inputs: unknown data set 'mnsit'.*Did you mean 'mnist'.*" + GRAMMAR,
    ),
    (
        "score-inputs-classes",
        "score",
        ["--inputs", "digits:test:3-1"],
        "argument --inputs: cannot read the classes.*" + GRAMMAR,
    ),
    (
        "score-inputs-parts",
        "score",
        ["--inputs", "digits:test:1:2"],
        "has 4 parts separated by ':'.*" + GRAMMAR,
    ),
    (
        "score-inputs-missing-file",
        "score",
        ["--inputs", "none.npz"],
        "argument --inputs: no data file at none.npz.*" + GRAMMAR,
    ),
    (
        "score-inputs-empty-file",
        "score",
        ["--inputs", _file("empty.npy")],
        r"argument --inputs: .*empty.npy holds no samples",
    ),
    (
        "score-inputs-strings",
        "score",
        ["--inputs", _file("strings.npz")],
        "argument --inputs: .*inputs of dtype <U1; they must be numbers",
    ),
    (
        "score-inputs-fractional-labels",
        "score",
        ["--inputs", _file("fractional.npz")],
        "argument --inputs: .*integer class indices",
    ),
    (
        "fit-tpr-0",
        "fit",
        ["--calibrate", "digits:test", "--tpr", "0"],
        r"argument --tpr: must be a float in \(0, 1\]; got '0'",
    ),
    (
        "fit-tpr-percent",
        "fit",
        ["--calibrate", "digits:test", "--tpr", "95"],
        r"argument --tpr: must be a float in \(0, 1\]",
    ),
    ("fit-tpr-alone", "fit", ["--tpr", "0.9"], "argument --tpr: sets the threshold of --calibrate"),
    (
        "fit-calibrate-split",
        "fit",
        ["--calibrate", "digits:tst"],
        "argument --calibrate: digits has the splits train, test",
    ),
    ("fit-data-classes", "fit", ["--data", "digits:test:0-20"], "argument --data: digits has classes 0 to 9"),
    (
        "fit-detector-inf",
        "fit",
        ["--detector", "GEN(gamma=1e999)"],
        r"argument --detector: .*'gamma' parameter of GEN.*Got inf",
    ),
    (
        "fit-detector-syntax",
        "fit",
        ["--detector", "GEN("],
        r"argument --detector: Cannot read the detector 'GEN\('",
    ),
    ("fit-detector-unknown", "fit", ["--detector", "Nope()"], "argument --detector: Unknown detector 'Nope'"),
    (
        "fit-needs-data",
        "fit",
        ["--detector", "KNN()"],
        r"KNN\(\) learns from in-distribution data: give --data",
    ),
    ("train-epochs-0", "train", ["--epochs", "0"], r"argument --epochs: must be an int in \[1, inf\)"),
    (
        "train-learning-rate-nan",
        "train",
        ["--learning-rate", "nan"],
        r"argument --learning-rate: must be a float in \(0, inf\)",
    ),
    (
        "train-seed-negative",
        "train",
        ["--seed", "-1"],
        r"argument --seed: must be an int in \[0, 4294967295\]",
    ),
    (
        "train-data-typo",
        "train",
        ["--data", "digts"],
        "argument --data: unknown data set 'digts'.*Did you mean 'digits'",
    ),
    (
        "train-labels-fractional",
        "train",
        ["--data", _file("fractional.npz")],
        "argument --data: .*integer class indices",
    ),
    (
        "train-architecture",
        "train",
        ["--architecture", "vgg"],
        "argument --architecture: invalid choice: 'vgg'",
    ),
    (
        "train-out-suffix",
        "train",
        ["--out", "model.onnx"],
        r"argument --out: .*\.keras \(or \.h5\) for Keras, \.pt for torch",
    ),
    ("demo-epochs-0", "demo", ["--epochs", "0"], r"argument --epochs: must be an int in \[1, inf\)"),
    ("demo-seed-negative", "demo", ["--seed", "-1"], r"argument --seed: must be an int in \[0, 4294967295\]"),
    ("bench-batch-0", "bench", ["--batch-size", "0"], r"argument --batch-size: must be an int in \[1, inf\)"),
    ("bench-scale-nan", "bench", ["--scale", "nan"], r"argument --scale: must be a float in \(0, inf\)"),
    ("bench-ood-no-name", "bench", ["--ood", "=digits"], "argument --ood: takes NAME=SPEC.*" + GRAMMAR),
    (
        "bench-ood-twice",
        "bench",
        ["--ood", "o=digits", "o=digits:train"],
        "argument --ood: the name 'o' is given twice",
    ),
    (
        "bench-ood-reserved",
        "bench",
        ["--ood", "id=digits"],
        "argument --ood: an OOD set cannot be named 'id'",
    ),
    ("bench-ood-spec", "bench", ["--ood", "far=none.npz"], "argument --ood far: no data file at none.npz"),
    (
        "bench-config-batch",
        "bench",
        ["--config", _file("config.json")],
        r"argument --batch-size: must be an int in \[1, inf\); got 0",
    ),
    (
        "bench-config-missing",
        "bench",
        ["--config", "none.json"],
        "argument --config: no config file at none.json",
    ),
    ("unknown-command", None, ["nope"], "argument COMMAND: invalid choice: 'nope'"),
]


@pytest.mark.parametrize(("command", "extra", "pattern"), [pytest.param(*row[1:], id=row[0]) for row in CLI])
def test_cli(cli_files, capsys, monkeypatch, command, extra, pattern):
    monkeypatch.chdir(cli_files["folder"])  # relative names (none.npz) are looked up there
    extra = [str(cli_files["folder"] / a[1:]) if a.startswith("@") else a for a in extra]
    if command == "bench" and "--config" in extra:
        argv = ["bench", *extra]
    elif command is None:
        argv = extra
    else:
        argv = _argv(cli_files, command, *extra)
        if command != "demo" and "--out" in extra:  # the row's --out replaces the default one
            index = argv.index("--out")
            del argv[index : index + 2]
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's own errors exit; the others return
        code = exit_info.code
    out, err = capsys.readouterr()
    assert code == 2, err
    assert re.search(pattern, err, re.S), err
    assert out == "" or command is None
