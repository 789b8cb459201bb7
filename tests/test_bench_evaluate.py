"""evaluate(): one pass per dataset, exact metrics, groups, failures, and every report format."""

from __future__ import annotations

import base64
import csv
import json
import re
import sys

import numpy as np
import pytest

from oodscope import (
    ASH,
    GEN,
    KNN,
    MLS,
    MSP,
    ODIN,
    SCALE,
    Detector,
    Energy,
    Entropy,
    Features,
    ReAct,
    bench_metrics,
    extract,
)
from oodscope.bench import DEFAULT_METRICS, Report, evaluate
from oodscope.needs import Needs

from conftest import all_detector_classes

torch = pytest.importorskip("torch")
nn = torch.nn

BATCH = 10


def ten_detectors() -> list[Detector]:
    return [
        GEN(),
        MSP(),
        MLS(),
        Energy(),
        Entropy(),
        GEN(gamma=0.5),
        ReAct(),
        ASH(),
        SCALE(),
        ReAct(GEN()),
    ]


class CountingModel(nn.Module):
    """A small convnet with a linear head after a ReLU; counts its forward calls."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(1, 4, 3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 6 * 6, 16),
            nn.ReLU(),
            nn.Linear(16, 3),
        )
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.body(x)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    fit = rng.normal(size=(40, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 40)
    ind = rng.normal(size=(30, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 30)
    oods = {
        "shifted": rng.normal(1.5, 1.0, (20, 1, 8, 8)).astype(np.float32),
        "wide": rng.normal(0.0, 3.0, (20, 1, 8, 8)).astype(np.float32),
        "flat": np.full((20, 1, 8, 8), 0.3, dtype=np.float32)
        + rng.normal(0, 0.01, (20, 1, 8, 8)).astype(np.float32),
    }
    return fit, ind, oods


@pytest.fixture(scope="module")
def run(data):
    fit, ind, oods = data
    model = CountingModel()
    detectors = ten_detectors()
    report = evaluate(
        model,
        fit,
        ind,
        oods,
        detectors,
        groups={"near": ["shifted"], "far": ["wide", "flat"]},
        batch_size=BATCH,
        progress=False,
    )
    return model, detectors, report


def test_ten_detectors_cost_one_pass_per_dataset(run):
    model, detectors, report = run
    assert model.calls == 4 + 3 + 2 + 2 + 2, "fit, ID and each OOD set are each run through the model once"
    assert len(report.detectors) == 10 and not report.errors
    assert not hasattr(detectors[6], "n_samples_fit_"), "the detectors given are cloned, not fitted in place"
    assert report.detectors["ReAct()"].n_samples_fit_ == 40
    assert report.n_samples == {"fit": 40, "id": 30, "shifted": 20, "wide": 20, "flat": 20}


def test_scores_equal_the_detectors_own_array_level_results(run, data):
    model, _, report = run
    fit, ind, oods = data
    feats = {
        name: extract(model, values, feature_layers_id=["penultimate"], batch_size=BATCH, progress=False)
        for name, values in {"fit": fit, "id": ind, **oods}.items()
    }
    assert sorted(report.id_scores) == sorted(repr(detector) for detector in ten_detectors())
    for detector in ten_detectors():
        name = repr(detector)
        detector.fit(feats["fit"])
        np.testing.assert_array_equal(report.id_scores[name], detector.score(feats["id"]).scores)
        for ood in oods:
            np.testing.assert_array_equal(report.ood_scores[name][ood], detector.score(feats[ood]).scores)


def test_table_values_are_bench_metrics_of_the_scores(run):
    _, _, report = run
    per_set = [row for row in report.rows if row["ood"] in report.ood_names]
    assert len(per_set) == 10 * 3
    assert (
        report.metrics == DEFAULT_METRICS == ("auroc", "fpr95tpr_ood", "fpr95tpr_id", "aupr_in", "aupr_out")
    )
    for row in per_set:
        expected = bench_metrics(report.score_pair(row["detector"], row["ood"]), metrics=DEFAULT_METRICS)
        assert {metric: row[metric] for metric in DEFAULT_METRICS} == expected
    some = per_set[0]
    s_in, s_out = report.score_pair(some["detector"], some["ood"])
    assert (
        some["fpr95tpr_ood"] == bench_metrics((s_in, s_out), metrics=["fpr95tpr"], positive="ood")["fpr95tpr"]
    )
    assert (
        some["fpr95tpr_id"] == bench_metrics((s_in, s_out), metrics=["fpr95tpr"], positive="id")["fpr95tpr"]
    )


def test_group_and_overall_means(run):
    _, _, report = run
    for name in report.id_scores:
        for metric in DEFAULT_METRICS:
            values = {ood: report.value(name, ood, metric) for ood in report.ood_names}
            assert report.value(name, "near", metric) == values["shifted"], "a group of one reads its set"
            assert report.value(name, "far", metric) == pytest.approx((values["wide"] + values["flat"]) / 2)
            assert report.value(name, None, metric) == pytest.approx(np.mean(list(values.values())))
    labels = [row["ood"] for row in report.rows if row["detector"] == "GEN()"]
    assert labels == ["shifted", "wide", "flat", "far (mean)", "all (mean)"], "no mean of a single set"
    assert report.groups == {"near": ["shifted"], "far": ["wide", "flat"]}
    pivot = report.pivot("fpr95tpr_id")
    assert [row["detector"] for row in pivot] == list(report.id_scores) == report.order
    energy = next(row for row in pivot if row["detector"] == "Energy()")
    assert energy == {"detector": "Energy()"} | {
        label: report.value("Energy()", label, "fpr95tpr_id") for label in labels
    }


def test_id_accuracy_and_timings(run, data):
    model, _, report = run
    x, y = data[1]
    with torch.no_grad():
        predictions = model.body(torch.as_tensor(x)).argmax(1).numpy()
    assert report.id_accuracy == pytest.approx(np.mean(predictions == y))
    assert set(report.timings["extract"]) == {"fit", "id", "ood:shifted", "ood:wide", "ood:flat"}
    assert set(report.timings["fit"]) == set(report.timings["score"]) == set(report.id_scores)
    assert report.timings["total"] >= sum(report.timings["extract"].values())


def test_best_follows_the_metric_direction(run):
    _, _, report = run
    best = report.best("auroc")
    means = {row["detector"]: row for row in report.rows if row["ood"] == "all (mean)"}
    assert best.value == max(row["auroc"] for row in means.values())
    assert best.detector is report.detectors[best.name]
    lowest = report.best("fpr95tpr_id", ood="wide")
    assert lowest.value == min(report.value(name, "wide", "fpr95tpr_id") for name in report.id_scores)
    with pytest.raises(ValueError, match="no metric 'detect_acc'"):
        report.best("detect_acc")
    with pytest.raises(KeyError, match="No OOD set or group 'nope'"):
        report.best(ood="nope")


def test_logit_detectors_skip_the_fit_pass(data):
    fit, ind, oods = data
    model = CountingModel()
    report = evaluate(
        model, fit, ind, {"wide": oods["wide"]}, [GEN(), MSP()], batch_size=BATCH, progress=False
    )
    assert model.calls == 3 + 2, "stateless detectors need no fit data, so it is not run"
    assert report.n_samples["fit"] is None
    assert [row["ood"] for row in report.rows] == ["wide", "wide"], "one OOD set: no mean rows"
    assert evaluate(model, None, ind, oods["wide"], [Energy()], progress=False).ood_names == ["ood"]


def test_perturbed_passes_are_shared_by_detectors_with_the_same_perturbation(data):
    fit, ind, oods = data
    oods = {"wide": oods["wide"], "flat": oods["flat"]}
    reference = CountingModel()
    odin = ODIN(eps=0.01).fit(reference, batch_size=BATCH)
    expected = {name: odin.score(values).scores for name, values in {"id": ind, **oods}.items()}
    odin_calls = reference.calls

    model = CountingModel()
    report = evaluate(
        model, fit, ind, oods, [GEN(), ODIN(eps=0.01), ReAct()], batch_size=BATCH, progress=False
    )
    assert model.calls == (4 + 3 + 2 + 2) + odin_calls
    name = "ODIN(eps=0.01)"
    np.testing.assert_array_equal(report.id_scores[name], expected["id"])
    for ood in oods:
        np.testing.assert_array_equal(report.ood_scores[name][ood], expected[ood])

    # detectors with the same perturbation share one gradient pass per dataset; another eps adds one
    model = CountingModel()
    detectors = {"a": ODIN(eps=0.01), "b": ODIN(eps=0.01), "c": ODIN(eps=0.02), "gen": GEN()}
    report = evaluate(model, fit, ind, oods, detectors, batch_size=BATCH, progress=False)
    assert model.calls == (3 + 2 + 2) + 2 * odin_calls
    np.testing.assert_array_equal(report.id_scores["b"], expected["id"])


@pytest.mark.filterwarnings("ignore::UserWarning")  # SHE on an untrained toy model: classes never right
def test_every_detector_scores_as_its_own_model_level_run():
    """Each detector sees, in the shared pass, what its own fit(model) / score(data) would extract: its
    layers, post-processed its way (Gram's statistics beside the pooled features the others read)."""
    rng = np.random.default_rng(2)
    fit = rng.normal(size=(80, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 80)
    ind = rng.normal(size=(30, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 30)
    ood = rng.normal(0.0, 3.0, (20, 1, 8, 8)).astype(np.float32)
    classes = all_detector_classes()
    model = CountingModel()
    # RankFeat's default names ResNet blocks; BLOOD has no default
    params = {
        "RankFeat": {"layers": 0},
        "BLOOD": {"layers": ["body.1", "body.3"], "token": None, "n_projections": 2},
    }

    def make(cls):
        return cls(**params.get(cls.__name__, {}))

    report = evaluate(
        model, fit, ind, {"wide": ood}, [make(cls) for cls in classes], batch_size=BATCH, progress=False
    )
    assert not report.errors and len(report.id_scores) == len(classes)
    for cls in classes:
        alone = CountingModel()
        detector = make(cls).fit(alone, fit, batch_size=BATCH, progress=False)
        before = alone.calls
        np.testing.assert_array_equal(report.id_scores[repr(detector)], detector.score(ind).scores)
        np.testing.assert_array_equal(report.ood_scores[repr(detector)]["wide"], detector.score(ood).scores)
        # a perturbed pass (ODIN) runs two forwards per batch; a detector reading other passes runs those too
        needs = detector.needs()
        forwards = sum(2 if need.perturbation is not None else 1 for need in (needs, *needs.also.values()))
        assert alone.calls - before == (3 + 2) * forwards

    # evaluate runs each kind of pass once per dataset: the fit data only for the kinds learning detectors
    # read there, every other set for the kinds any detector scores with (and the plain pass, for accuracy)
    def kinds(needs_list):
        return {need.kind() for needs in needs_list for need in (needs, *needs.also.values())}

    def forwards(kind_set):
        return sum(2 if kind.perturbation is not None else 1 for kind in kind_set)

    detectors = [make(cls) for cls in classes]
    fit_kinds = kinds(d.fit_needs() for d in detectors if d._needs_fit())
    score_kinds = kinds(d.needs() for d in detectors) | {Needs().kind()}
    assert model.calls == 8 * forwards(fit_kinds) + (3 + 2) * forwards(score_kinds)


class NeedsLabels(Detector):
    """Class-mean distance of the logits: needs labels at fit time (a stand-in for Mahalanobis)."""

    requires = frozenset({"logits", "labels"})

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def _fit(self, features: Features) -> None:
        self.means_ = np.stack(
            [features.logits[features.labels == c].mean(0) for c in np.unique(features.labels)]
        )

    def _score(self, features: Features) -> np.ndarray:
        distances = ((features.logits[:, None, :] - self.means_[None]) ** 2).sum(-1)
        return self.scale * distances.min(1)


def test_a_failing_detector_is_recorded_and_the_others_run(data, caplog):
    fit, ind, oods = data
    x_fit = fit[0]  # no labels
    negative = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Linear(8, 3))  # penultimate goes negative
    with caplog.at_level("WARNING", logger="oodscope.bench"):
        report = evaluate(
            negative, x_fit, ind, {"wide": oods["wide"]}, [NeedsLabels(), GEN(), ASH()], progress=False
        )
    assert list(report.id_scores) == ["GEN()"]
    failures = {(e["detector"], e["stage"], e["dataset"]) for e in report.errors}
    assert failures == {("NeedsLabels()", "fit", None), ("ASH()", "score", "id")}
    messages = {e["detector"]: e["error"] for e in report.errors}
    assert "class labels of the fit data" in messages["NeedsLabels()"]
    assert messages["ASH()"].startswith("ValueError: ASH assumes non-negative")
    assert "NeedsLabels() failed to fit" in caplog.text
    assert "FAILED NeedsLabels() (fit)" in report.to_markdown()
    with pytest.raises(ValueError, match="class labels of the fit data"):
        evaluate(negative, x_fit, ind, {"wide": oods["wide"]}, [GEN(), NeedsLabels()], errors="raise")


class NaNOnWide(Detector):
    """Stateless; gives NaN scores to inputs of large magnitude (a broken detector)."""

    needs_fit = False

    def __init__(self) -> None:
        pass

    def _score(self, features: Features) -> np.ndarray:
        spread = np.abs(features.logits).max(1)
        return np.where(spread > np.abs(features.logits).max() * 0.99, np.nan, spread)


def test_non_finite_scores_are_recorded_at_the_metrics_stage(data):
    fit, ind, oods = data
    report = evaluate(
        CountingModel(), None, ind, {"wide": oods["wide"]}, [NaNOnWide(), GEN()], progress=False
    )
    assert [(e["detector"], e["stage"], e["dataset"]) for e in report.errors] == [
        ("NaNOnWide()", "metrics", "wide")
    ]
    assert "non-finite" in report.errors[0]["error"] and [row["detector"] for row in report.rows] == ["GEN()"]


def test_the_same_data_given_twice_is_run_once(data):
    fit, ind, oods = data
    model = CountingModel()
    report = evaluate(
        model, ind, ind, {"wide": oods["wide"]}, [ReAct(), GEN()], batch_size=BATCH, progress=False
    )
    assert model.calls == 3 + 2 and report.n_samples["fit"] == report.n_samples["id"] == 30
    assert report.timings["extract"]["fit"] > 0 and report.timings["extract"]["id"] == 0.0


def test_each_datasets_activations_are_released_before_the_next_pass(data, monkeypatch):
    import gc
    import weakref

    from oodscope.plan import Plan

    fit, ind, oods = data
    extract_features, alive = Plan.features, []

    def watched(plan, given, label, timings, names):
        gc.collect()
        alive.append([key for key, ref in refs if ref() is not None])
        views = extract_features(plan, given, label, timings, names)
        layers = next(view.layers["penultimate"] for view in views.values() if view.layers)
        refs.append((label, weakref.ref(layers)))
        return views

    refs: list = []
    monkeypatch.setattr(Plan, "features", watched)
    evaluate(CountingModel(), fit, ind, oods, [ReAct(), KNN(k=3)], batch_size=BATCH, progress=False)
    assert [name for name, _ in refs] == ["fit", "id", "ood:shifted", "ood:wide", "ood:flat"]
    assert alive == [[]] * 5, "no earlier dataset's activations are held when the next pass starts"
    refs.clear()
    evaluate(CountingModel(), ind, ind, {"wide": oods["wide"]}, [ReAct()], batch_size=BATCH, progress=False)
    assert alive[-2:] == [["fit"], []], "the same data as fit and ID data is kept until its second use"


def test_missing_fit_data_and_unknown_layers_are_recorded(data):
    fit, ind, oods = data
    model = CountingModel()
    report = evaluate(
        model,
        None,
        ind,
        {"wide": oods["wide"]},
        {"react": ReAct(), "ash": ASH(), "ash_conv": ASH(), "mls": MLS()},
        feature_layers_id={"ash_conv": ["body.99"]},
        batch_size=BATCH,
        progress=False,
    )
    assert list(report.id_scores) == ["ash", "mls"]
    errors = {e["detector"]: (e["stage"], e["error"]) for e in report.errors}
    assert errors["react"] == (
        "fit",
        "ValueError: react (ReAct()) learns from in-distribution data: give fit_data.",
    )
    assert errors["ash_conv"][0] == "extract" and "no layer 'body.99'" in errors["ash_conv"][1]
    assert model.calls == 3 + 2


def test_features_in_and_a_detector_dict(toy):
    report = evaluate(None, toy["fit"], toy["id"], {"toy": toy["ood"]}, {"gen": GEN(), "react": ReAct(GEN())})
    expected = ReAct(GEN()).fit(toy["fit"]).score(toy["ood"]).scores
    np.testing.assert_array_equal(report.ood_scores["react"]["toy"], expected)
    assert report.value("gen", "toy") > 0.9 and report.id_accuracy == 1.0


def test_bad_arguments_fail_before_any_pass(toy):
    args = (None, toy["fit"], toy["id"], {"a": toy["ood"]})
    with pytest.raises(ValueError, match="Group 'near' must list OOD dataset names"):
        evaluate(*args, [GEN()], groups={"near": ["b"]})
    with pytest.raises(ValueError, match="errors must be 'record' or 'raise'"):
        evaluate(*args, [GEN()], errors="ignore")
    with pytest.raises(ValueError, match="Valid names are"):
        evaluate(*args, [GEN()], metrics=["auc"])
    with pytest.raises(TypeError, match="not an oodscope Detector"):
        evaluate(*args, [GEN, MSP()])
    with pytest.raises(TypeError, match="no model was given"):
        evaluate(None, None, np.zeros((3, 1, 8, 8)), {"a": toy["ood"]}, [GEN()])


# --- formats --------------------------------------------------------------------------------------------


def test_markdown_csv_json_round_trip(run, tmp_path):
    model, _, report = run
    n_parameters = sum(parameter.numel() for parameter in model.parameters())
    text = report.to_markdown()
    header = next(line for line in text.splitlines() if re.match(r"\| detector +\| ood ", line))
    assert [cell.strip() for cell in header.split("|")[1:-1]] == report.columns
    assert str(report) == repr(report) == text and "fpr95tpr_id: FPR at 95% TPR with ID positive" in text
    assert re.search(r"\| ReAct\(detector=GEN\(\)\) +\| all \(mean\)", text)
    assert re.search(r"Model accuracy on the ID data: \d\.\d{4}\.", text)
    assert f"CountingModel (torch, {n_parameters:,} parameters)" in text.splitlines()[0]

    with (report.to_csv(tmp_path / "report.csv")).open() as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["rank", "detector", "ood", *DEFAULT_METRICS, "best"]
    assert len(rows) == len(report.rows) == 10 * 5
    assert float(rows[0]["auroc"]) == report.rows[0]["auroc"]
    assert [row["detector"] for row in rows] == [row["detector"] for row in report.rows]

    text = report.to_json(tmp_path / "r.json")
    loaded = json.loads((tmp_path / "r.json").read_text())
    assert json.loads(text) == loaded
    assert [{key: row[key] for key in report.columns} for row in loaded["rows"]] == report.rows
    assert loaded["id_accuracy"] == report.id_accuracy
    assert [entry["detector"] for entry in loaded["ranking"]] == report.order == list(loaded["detectors"])
    assert loaded["groups"] == {"near": ["shifted"], "far": ["wide", "flat"]}
    assert "scores" not in loaded
    with_scores = json.loads(report.to_json(include_scores=True))
    assert with_scores["scores"]["GEN()"]["wide"] == report.ood_scores["GEN()"]["wide"].tolist()


def test_dataframe(run, monkeypatch):
    pd = pytest.importorskip("pandas")
    _, _, report = run
    frame = report.to_dataframe()
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == ["rank", *report.columns, "best"]
    assert frame["auroc"].tolist() == [row["auroc"] for row in report.rows]
    assert frame["rank"].tolist() == [report.ranks()[row["detector"]] for row in report.rows]
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"pip install 'oodscope\[pandas\]'"):
        report.to_dataframe()


def test_html_is_one_self_contained_file(run, tmp_path):
    pytest.importorskip("matplotlib")
    _, _, report = run
    path = report.to_html(tmp_path / "report.html", title="Toy <run>")
    assert list(tmp_path.iterdir()) == [path]
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<title>Toy &lt;run&gt;</title>" in page
    images = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 10, "one figure per detector"
    assert all(base64.b64decode(image).startswith(b"\x89PNG\r\n\x1a\n") for image in images)
    without_images = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert "http" not in without_images and "<script" not in without_images and "<link" not in without_images
    assert re.findall(r'(?:src|href)="([^"]*)"', without_images) == [""] * 10
    assert "<h2>All metrics</h2>" in page and page.count("<tr") > len(report.rows)
    for row in report.rows[:6]:
        assert f"{row['auroc']:.4f}" in page
    assert "ReAct(detector=GEN())" in page and "fpr95tpr_id" in page
    notebook = report._repr_html_()
    assert notebook.count("<table") == 2 and "<img" not in notebook


def test_html_without_matplotlib(run, tmp_path, monkeypatch):
    _, _, report = run
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match=r"pip install 'oodscope\[plots\]'"):
        report.to_html(tmp_path / "a.html")
    page = report.to_html(tmp_path / "b.html", figures=False).read_text()
    assert "<img" not in page and "<table" in page


def test_html_lists_failures(data, tmp_path):
    fit, ind, oods = data
    report = evaluate(
        CountingModel(), fit[0], ind, {"wide": oods["wide"]}, [NeedsLabels(), GEN()], progress=False
    )
    page = report.to_html(tmp_path / "r.html", figures=False).read_text()
    assert "<h2>Failures</h2>" in page and "class labels of the fit data" in page
    assert isinstance(report, Report)


def test_keras_model():
    keras = pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    rng = np.random.default_rng(1)
    fit = rng.normal(size=(32, 8, 8, 1)).astype(np.float32), rng.integers(0, 3, 32)
    ind = rng.normal(size=(24, 8, 8, 1)).astype(np.float32), rng.integers(0, 3, 24)
    ood = rng.normal(2.0, 2.0, (16, 8, 8, 1)).astype(np.float32)
    report = evaluate(model, fit, ind, {"far": ood}, [GEN(), ReAct(), MSP()], batch_size=16, progress=False)
    assert not report.errors
    for detector in (GEN(), ReAct(), MSP()):
        detector.fit(model, fit, batch_size=16, progress=False)
        np.testing.assert_allclose(report.id_scores[repr(detector)], detector.score(ind).scores, rtol=1e-12)
        np.testing.assert_allclose(
            report.ood_scores[repr(detector)]["far"], detector.score(ood).scores, rtol=1e-12
        )
    predictions = keras.ops.convert_to_numpy(model(ind[0])).argmax(1)
    assert report.id_accuracy == pytest.approx(np.mean(predictions == ind[1]))


def test_an_ood_set_cannot_take_the_name_of_the_fit_or_id_data(data):
    fit, ind, oods = data
    for name in ("id", "fit"):
        with pytest.raises(ValueError, match=f"cannot be named '{name}'"):
            evaluate(CountingModel(), fit, ind, {name: oods["wide"]}, [GEN()], progress=False)
