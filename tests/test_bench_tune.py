"""tune(): each tuned parameter must change the scores; nested parameters; direction."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from oodscope import ASH, GEN, MLS, MSP, ODIN, SCALE, Detector, Energy, Entropy, ReAct, clone, extract
from oodscope.bench import TuneResult, parameter_candidates, tune
from oodscope.detectors.gram import Gram

# Values that must give different scores on the toy problem (5 classes, 24 post-ReLU features).
GRIDS = {
    "GEN": (GEN(), {"gamma": [0.05, 0.5, 2.0], "k": [1, 2, 3]}),
    "Energy": (Energy(), {"temperature": [0.5, 1.0, 4.0]}),
    "ReAct(GEN)": (
        ReAct(GEN()),
        {
            "percentile": [60.0, 80.0, 95.0],
            "detector": [None, GEN(), MSP()],
            "detector__gamma": [0.05, 0.5, 2.0],
            "detector__k": [1, 2, 3],
        },
    ),
    "ReAct": (ReAct(), {"percentile": [60.0, 80.0, 95.0], "detector": [None, GEN(), MSP()]}),
    "ASH": (ASH(), {"percentile": [50.0, 70.0, 90.0], "variant": ["s", "p", "b"], "detector": [None, GEN()]}),
    "SCALE": (SCALE(), {"percentile": [50.0, 70.0, 90.0], "detector": [None, GEN()]}),
    "MSP": (MSP(), {}),
    "MLS": (MLS(), {}),
    "Entropy": (Entropy(), {}),
}


def test_the_grids_cover_every_hyperparameter():
    for name, (detector, grid) in GRIDS.items():
        assert set(grid) == set(detector.get_params(deep=True)), f"{name}: a hyperparameter is not tested"


@pytest.mark.parametrize(
    ("key", "param"),
    [(key, param) for key, (_, grid) in GRIDS.items() for param in grid],
    ids=lambda value: str(value),
)
def test_each_tuned_parameter_changes_the_scores(toy, key, param):
    detector, grid = GRIDS[key]
    values = grid[param]
    result = tune(detector, {param: values}, toy["fit"], toy["id"], toy["ood"], keep_scores=True)
    assert [row[param] for row in result.table] == values
    assert all(row["error"] is None for row in result.table)
    combined = [np.concatenate([scores["id"], scores["ood"]]) for scores in result.scores]
    for (i, a), (j, b) in itertools.combinations(enumerate(combined), 2):
        assert not np.array_equal(a, b), (
            f"{key}: {param}={values[i]!r} and {values[j]!r} give the same scores"
        )
    for value, scores in zip(values, result.scores, strict=True):  # each equals a detector set up by hand
        reference = clone(detector).set_params(
            **{param: clone(value) if isinstance(value, Detector) else value}
        )
        if reference._needs_fit():
            reference.fit(toy["fit"])
        np.testing.assert_array_equal(scores["ood"], reference.score(toy["ood"]).scores)
    assert detector.get_params(deep=True) == GRIDS[key][0].get_params(deep=True), "the detector is untouched"


def test_nested_parameters_reach_the_wrapped_detector(toy):
    grid = {"percentile": [70.0, 90.0], "detector__gamma": [0.2, 1.0], "detector__k": [2, 5]}
    result = tune(ReAct(GEN()), grid, toy["fit"], toy["id"], {"ood": toy["ood"]}, keep_scores=True)
    assert len(result.table) == 8
    for row, scores in zip(result.table, result.scores, strict=True):
        by_hand = ReAct(GEN(gamma=row["detector__gamma"], k=row["detector__k"]), percentile=row["percentile"])
        np.testing.assert_array_equal(scores["id"], by_hand.fit(toy["fit"]).score(toy["id"]).scores)
    assert len({row["auroc"] for row in result.table}) > 1
    best = result.best_detector
    assert best.detector.gamma == result.best_params["detector__gamma"]
    assert best.percentile == result.best_params["percentile"] and best.n_samples_fit_ == len(toy["fit"])


def test_the_best_candidate_follows_the_metric_direction(toy):
    grid = {"gamma": [0.01, 0.1, 0.5, 1.0, 5.0]}
    for metric, pick in (("auroc", max), ("aupr_out", max), ("fpr95tpr_ood", min), ("fpr95tpr_id", min)):
        result = tune(GEN(), grid, None, toy["id"], toy["ood"], metric=metric)
        values = [row[metric] for row in result.table]
        assert result.best_score == pick(values)
        assert result.best_params == {"gamma": grid["gamma"][values.index(pick(values))]}, "ties go first"
        assert result.higher_is_better is (pick is max)
        ranked = sorted(result.table, key=lambda row: row["rank"])
        assert ranked[0][metric] == result.best_score and ranked[0]["rank"] == 1


def test_several_ood_sets_are_averaged(toy):
    half = len(toy["ood"]) // 2
    oods = {"a": toy["ood"].take(np.arange(half)), "b": toy["ood"].take(np.arange(half, len(toy["ood"])))}
    result = tune(Energy(), {"temperature": [0.5, 2.0]}, None, toy["id"], oods, metric="fpr95tpr_id")
    for row in result.table:
        assert row["fpr95tpr_id"] == pytest.approx((row["fpr95tpr_id:a"] + row["fpr95tpr_id:b"]) / 2)
    text = result.to_markdown()
    assert text.splitlines()[0].split("|")[1].strip() == "temperature" and "fpr95tpr_id:b" in text
    assert "error" not in text.splitlines()[0] and repr(result).startswith("TuneResult(best_params=")


def test_grids():
    assert parameter_candidates({}) == [{}]
    assert parameter_candidates([{"a": [1, 2], "b": (3,)}, {"c": np.array([4])}]) == [
        {"a": 1, "b": 3},
        {"a": 2, "b": 3},
        {"c": 4},
    ]
    with pytest.raises(TypeError, match=r"Write \{'gamma': \[0.1\]\}"):
        parameter_candidates({"gamma": 0.1})
    with pytest.raises(TypeError, match="must be a list of candidates"):
        parameter_candidates({"variant": "s"})
    with pytest.raises(ValueError, match="empty list"):
        parameter_candidates({"gamma": []})
    with pytest.raises(ValueError, match="Invalid parameter 'gama' for GEN"):
        tune(GEN(), {"gama": [1.0]}, None, None, None)


def test_failing_candidates_are_recorded(toy):
    result = tune(GEN(), {"gamma": [-1.0, 0.5]}, None, toy["id"], toy["ood"])
    assert result.table[0]["auroc"] is None and result.table[0]["rank"] is None
    assert result.table[0]["error"].startswith("ValueError: The 'gamma' parameter of GEN must be")
    assert result.best_params == {"gamma": 0.5} and "ValueError" in result.to_markdown()
    with pytest.raises(ValueError, match="'gamma' parameter of GEN"):
        tune(GEN(), {"gamma": [-1.0, 0.5]}, None, toy["id"], toy["ood"], errors="raise")
    with pytest.raises(RuntimeError, match="Every candidate failed"):
        tune(GEN(), {"gamma": [-1.0]}, None, toy["id"], toy["ood"])
    with pytest.raises(ValueError, match="give fit_data"):
        tune(ReAct(), {"percentile": [50.0]}, None, toy["id"], toy["ood"])


class IgnoresParams(GEN):
    """A detector whose set_params silently does nothing: the bug a sweep must not hide."""

    def set_params(self, **params):
        return self


def test_a_parameter_that_does_not_take_effect_is_an_error(toy):
    with pytest.raises(RuntimeError, match=r"set_params\(gamma=0.5\) did not take effect"):
        tune(IgnoresParams(), {"gamma": [0.5]}, None, toy["id"], toy["ood"])


def test_model_and_raw_data_run_once_per_dataset():
    torch = pytest.importorskip("torch")
    from test_bench_evaluate import CountingModel

    rng = np.random.default_rng(0)
    fit = rng.normal(size=(30, 1, 8, 8)).astype(np.float32)
    ind = rng.normal(size=(20, 1, 8, 8)).astype(np.float32)
    ood = rng.normal(0.0, 3.0, (20, 1, 8, 8)).astype(np.float32)
    model = CountingModel()
    grid = {"percentile": [50.0, 80.0], "detector__gamma": [0.1, 1.0]}
    result = tune(
        ReAct(GEN()), grid, fit, ind, ood, model=model, batch_size=10, keep_scores=True, progress=False
    )
    assert model.calls == 3 + 2 + 2, "four candidates, one pass per dataset"
    feats = {
        name: extract(model, values, feature_layers_id=["penultimate"], batch_size=10)
        for name, values in {"fit": fit, "ood": ood}.items()
    }
    from_features = tune(ReAct(GEN()), grid, feats["fit"], ind, feats["ood"], model=model, keep_scores=True)
    for a, b in zip(result.scores, from_features.scores, strict=True):
        np.testing.assert_array_equal(a["ood"], b["ood"])
    with pytest.raises(TypeError, match="no model was given"):
        tune(GEN(), {"gamma": [0.1]}, None, ind, ood)

    gram_model = CountingModel()
    gram = tune(
        Gram(), {"orders": [1, 2, 3]}, fit, ind, ood, model=gram_model, batch_size=10, keep_scores=True
    )
    assert gram_model.calls == 3 + 2 + 2, "three post-processings of the layer, side by side in one pass"
    for orders, scores in zip([1, 2, 3], gram.scores, strict=True):
        by_hand = Gram(orders=orders).fit(model, fit, batch_size=10)
        np.testing.assert_array_equal(scores["ood"], by_hand.score(ood).scores)

    odin = tune(
        ODIN(), {"eps": [0.0, 0.05, 0.2]}, None, ind, ood, model=model, keep_scores=True, progress=False
    )
    assert all(row["error"] is None for row in odin.table)
    combined = [np.concatenate([s["id"], s["ood"]]) for s in odin.scores]
    assert not np.array_equal(combined[0], combined[1]) and not np.array_equal(combined[1], combined[2])
    expected = ODIN(eps=0.05).fit(model, batch_size=10).score(ood).scores
    np.testing.assert_allclose(odin.scores[1]["ood"], expected, rtol=1e-6)
    assert isinstance(odin, TuneResult) and torch is not None


def test_the_best_candidate_and_evaluates_detectors_score_raw_data_with_the_model(tmp_path):
    """The ship path: tune on raw data, then calibrate, save, load and predict on raw data."""
    torch = pytest.importorskip("torch")
    from oodscope import GEN, ReAct, evaluate, extract, load

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    rng = np.random.default_rng(0)
    fit, ind, ood = (rng.normal(0, s, (40, 6)).astype(np.float32) for s in (1.0, 1.0, 3.0))
    result = tune(ReAct(GEN()), {"percentile": [80, 90]}, fit, ind, ood, model=model)
    detector = result.best_detector.calibrate(ind, tpr=0.9)  # raw data: the model comes with it
    expected = detector.score(extract(model, ood, ["penultimate"])).scores
    np.testing.assert_array_equal(detector.score(ood).scores, expected)
    loaded = load(detector.save(tmp_path / "best.oodscope"), model=model)
    np.testing.assert_array_equal(loaded.predict(ood), detector.predict(ood))
    report = evaluate(model, fit, ind, {"ood": ood}, [GEN(), ReAct()])
    np.testing.assert_array_equal(
        report.detectors["ReAct()"].score(ood).scores, report.ood_scores["ReAct()"]["ood"]
    )
    # a detector fitted on Features, loaded with a model, scores raw data with the default pass options
    on_features = ReAct().fit(extract(model, fit, ["penultimate"])).save(tmp_path / "f.oodscope")
    np.testing.assert_array_equal(
        load(on_features, model=model).score(ood).scores, report.ood_scores["ReAct()"]["ood"]
    )
