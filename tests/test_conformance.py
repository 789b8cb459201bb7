"""The detector contract, checked for every detector the package defines (discovered, not listed)."""

from __future__ import annotations

import functools
import inspect
import re

import numpy as np
import pytest

from oodscope import Features, NotFittedError, ScoreResult, auroc, clone
from oodscope.detectors import REQUIREMENTS, Detector

from conftest import all_detector_classes, make_toy

DETECTORS = all_detector_classes()

#: Methods whose premise the default toy problem does not meet get one that does (the contract tested is the
#: same): Residual assumes ID features near a subspace (with the default toy's isotropic noise, OOD's residual
#: is only slightly larger: AUROC 0.72, while ViM adds the energy of the logits); OpenMax fits a Weibull to
#: the 20 largest distances of each class, not a tail of 80 samples per class.
TOYS = {"Residual": {"off_class_noise": 0.3}, "OpenMax": {"n_per_class": 200}}
#: hyperparameters for the toy problem, where a default is calibrated to a real network's scale: NAC's
#: alpha=100 is the official value for a CIFAR ResNet's avgpool layer, whose o·g products are about 0.01;
#: the toy's are about 3, so every neuron state saturates at 0 or 1
PARAMS = {"NAC": {"alpha": 1.0, "saturation": 10.0}}


@functools.cache
def _toy(**options) -> dict:
    return make_toy(**options)


@pytest.fixture
def toy(request):
    """The shared toy problem, or the one in ``TOYS`` for the class under test."""
    klass = getattr(getattr(request.node, "callspec", None), "params", {}).get("cls")
    return _toy(**TOYS.get(getattr(klass, "__name__", ""), {}))


def test_discovery_finds_the_logit_detectors():
    names = {cls.__name__ for cls in DETECTORS}
    assert {"MSP", "MLS", "Energy", "Entropy", "GEN", "ODIN", "ReAct", "ASH", "SCALE"} <= names


@pytest.fixture(params=DETECTORS, ids=lambda cls: cls.__name__)
def cls(request):
    """The detector class, with defaults replaced by its Features-level settings (ODIN: eps=0) and those of
    ``PARAMS``."""
    klass = request.param
    params = {**klass._features_only_params, **PARAMS.get(klass.__name__, {})}
    if not params:
        return klass
    init = _init_with(klass, params)
    return type(klass.__name__, (klass,), {"__init__": init, "__module__": klass.__module__})


def _init_with(klass, params):
    signature = inspect.signature(klass.__init__)
    defaults = {name: p.default for name, p in signature.parameters.items() if name != "self"}
    defaults.update(params)
    parameters = [signature.parameters["self"]] + [
        p.replace(default=defaults[name]) for name, p in signature.parameters.items() if name != "self"
    ]

    @functools.wraps(klass.__init__)
    def __init__(self, **kwargs):
        klass.__init__(self, **{**defaults, **kwargs})

    __init__.__signature__ = signature.replace(parameters=parameters)
    return __init__


def learned_state(det) -> dict:
    return {k: v for k, v in vars(det).items() if k.endswith("_") and not k.startswith("_")}


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], Detector):  # a fitted sub-detector: same type, params and state
            assert type(a[key]) is type(b[key]) and a[key].get_params() == b[key].get_params()
            assert_same_state(learned_state(a[key]), learned_state(b[key]))
        elif isinstance(a[key], list) and any(isinstance(part, Detector) for part in a[key]):
            assert len(a[key]) == len(b[key])  # fitted sub-detectors, one per layer
            assert_same_state(dict(enumerate(a[key])), dict(enumerate(b[key])))
        else:
            np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


def test_init_takes_explicit_keywords_and_stores_them(cls):
    signature = inspect.signature(cls.__init__)
    for name, parameter in signature.parameters.items():
        if name == "self":
            continue
        assert parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        assert parameter.default is not inspect.Parameter.empty, f"{name} needs a default"
    det = cls()
    for name in det.get_params(deep=False):
        assert getattr(det, name) is signature.parameters[name].default


def test_metadata_is_declared(cls):
    assert isinstance(cls.requires, frozenset) and cls.requires
    assert cls.requires <= set(REQUIREMENTS)
    assert isinstance(cls.needs_fit, bool)
    assert set(cls._parameter_constraints) == set(cls._param_names())


def test_docstring_has_paper_formula_and_example(cls):
    doc = inspect.getdoc(cls)
    assert doc and "Examples" in doc and ">>>" in doc
    assert re.search(r"https?://", doc), "the docstring cites the paper with a link"
    assert "S(" in doc or "E(" in doc, "the docstring writes the score formula"


def test_fit_returns_self_and_score_contract(cls, toy):
    det = cls()
    assert det.fit(toy["fit"]) is det
    result = det.score(toy["id"])
    assert isinstance(result, ScoreResult)
    scores, info = result
    assert scores is result.scores
    assert isinstance(scores, np.ndarray) and scores.dtype == np.float64
    assert scores.shape == (len(toy["id"]),)
    assert np.isfinite(scores).all()
    np.testing.assert_array_equal(info["logits"], toy["id"].logits)
    np.testing.assert_array_equal(info["labels"], toy["id"].labels)
    assert "labels" not in det.score(toy["ood"]).info


def test_higher_score_means_more_ood(cls, toy):
    det = cls().fit(toy["fit"])
    scores_in = det.score(toy["id"]).scores
    scores_out = det.score(toy["ood"]).scores
    assert auroc(scores_in, scores_out) > 0.9


def test_clone_round_trip(cls, toy):
    det = cls().fit(toy["fit"])
    twin = clone(det)
    assert type(twin) is cls and twin is not det
    assert twin.get_params() == det.get_params()
    assert learned_state(twin) == {}
    np.testing.assert_array_equal(twin.fit(toy["fit"]).score(toy["ood"]).scores, det.score(toy["ood"]).scores)


def test_refit_replaces_state(cls):
    first, second = make_toy(seed=1), make_toy(seed=2)
    refitted = cls().fit(first["fit"]).fit(second["fit"])
    fresh = cls().fit(second["fit"])
    assert_same_state(learned_state(refitted), learned_state(fresh))
    np.testing.assert_array_equal(refitted.score(second["ood"]).scores, fresh.score(second["ood"]).scores)


def test_not_fitted(cls, toy):
    det = cls()
    if cls.needs_fit:
        with pytest.raises(NotFittedError, match=f"This {cls.__name__} is not fitted yet"):
            det.score(toy["id"])
    else:
        np.testing.assert_array_equal(
            det.score(toy["id"]).scores, cls().fit(toy["fit"]).score(toy["id"]).scores
        )


def test_invariant_to_sample_order(cls, toy):
    rng = np.random.default_rng(3)
    det = cls().fit(toy["fit"])
    perm = rng.permutation(len(toy["ood"]))
    np.testing.assert_allclose(det.score(toy["ood"].take(perm)).scores, det.score(toy["ood"]).scores[perm])
    shuffled = cls().fit(toy["fit"].take(rng.permutation(len(toy["fit"]))))
    np.testing.assert_allclose(shuffled.score(toy["ood"]).scores, det.score(toy["ood"]).scores, rtol=1e-9)


def test_scores_do_not_depend_on_batching(cls, toy):
    det = cls().fit(toy["fit"])
    whole = det.score(toy["ood"]).scores
    n = len(toy["ood"])
    parts = [
        det.score(toy["ood"].take(np.arange(start, min(start + 7, n)))).scores for start in range(0, n, 7)
    ]
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-12)


def test_inputs_are_not_modified(cls):
    toy = make_toy(seed=4)
    before = {
        key: [feats.logits.copy(), feats.layers["penultimate"].copy(), feats.head_weight.copy()]
        for key, feats in toy.items()
    }
    det = cls().fit(toy["fit"])
    det.score(toy["id"])
    det.score(toy["ood"])
    for key, feats in toy.items():
        for old, new in zip(
            before[key], [feats.logits, feats.layers["penultimate"], feats.head_weight], strict=True
        ):
            np.testing.assert_array_equal(old, new)


def test_get_and_set_params(cls):
    det = cls()
    params = det.get_params()
    assert det.set_params(**params) is det
    assert det.get_params() == params
    with pytest.raises(ValueError, match=f"Invalid parameter 'not_a_param' for {cls.__name__}"):
        det.set_params(not_a_param=1)
    assert repr(det) == f"{cls.__name__}()"


def test_bad_hyperparameters_rejected_at_fit_with_uniform_message(cls, toy):
    for name, constraint in cls._parameter_constraints.items():
        for bad in constraint.invalid_examples():
            det = cls(**{name: bad})  # __init__ never validates
            expected = (
                f"The '{name}' parameter of {cls.__name__} must be {re.escape(constraint.describe())}. Got "
            )
            with pytest.raises(ValueError, match=expected):
                det.fit(toy["fit"])


def test_missing_inputs_give_a_clear_error(cls, toy):
    full = toy["fit"]
    if "logits" in cls.requires:
        with pytest.raises(ValueError, match=f"{cls.__name__} needs the classifier's logits"):
            cls().fit(Features(layers=full.layers, labels=full.labels))
    if "labels" in cls.requires:
        with pytest.raises(ValueError, match="class labels"):
            cls().fit(Features(logits=full.logits, layers=full.layers))
    with pytest.raises(TypeError, match="expected a torch.nn.Module or a keras.Model"):
        cls().fit(full.logits)
    with pytest.raises(TypeError, match="no model is known"):
        cls().fit(full).score(full.logits)


def test_save_load_round_trip_is_bit_identical(cls, toy, tmp_path):
    from oodscope import load
    from oodscope.detectors import registry_name

    det = cls().fit(toy["fit"]).calibrate(toy["id"])
    path = det.save(tmp_path / "det.oodscope")
    loaded = load(path)
    # the fixture's class with Features-level defaults is saved as the registered class it derives from
    assert registry_name(type(loaded)) == registry_name(type(det)) and issubclass(type(det), type(loaded))
    assert loaded.get_params(deep=False) == det.get_params(deep=False)
    np.testing.assert_array_equal(loaded.score(toy["ood"]).scores, det.score(toy["ood"]).scores)
    np.testing.assert_array_equal(loaded.predict(toy["ood"]), det.predict(toy["ood"]))
    assert loaded.threshold_ == det.threshold_


def test_threshold_keeps_the_requested_share_of_id(cls, toy):
    det = cls().fit(toy["fit"]).calibrate(toy["id"], tpr=0.9)
    id_scores = det.score(toy["id"]).scores
    assert (id_scores <= det.threshold_).mean() >= 0.9
    assert (id_scores < det.threshold_).mean() < 0.9 or det.threshold_ == id_scores.min()
    assert det.predict(toy["ood"]).mean() > 0.5
    p = det.pvalues(toy["ood"])
    assert ((p > 0) & (p <= 1)).all() and np.median(p) < np.median(det.pvalues(toy["id"]))


def test_search_space_is_a_grid_of_valid_settings(cls):
    from oodscope.bench.tune import parameter_candidates

    space = cls.search_space
    assert isinstance(space, (dict, list))
    for candidate in parameter_candidates(space):
        assert set(candidate) <= set(cls._param_names())
        cls().set_params(**candidate)._validate_params()


def test_tune_runs_a_search_space(toy):
    from oodscope import GEN, tune

    result = tune(GEN(), GEN.search_space, None, toy["id"], toy["ood"], errors="raise")
    assert len(result.table) == 7 * 6
