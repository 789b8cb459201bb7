"""The report: one order of detectors everywhere, the best values marked, group means only where they mean
something, what produced it, and histograms that stay readable for any score distribution."""

from __future__ import annotations

import csv
import datetime
import html
import json
import re
import subprocess
import sys

import numpy as np
import pytest

import oodscope
from oodscope import GEN, KNN, MSP, Detector, Features, ReAct, bench_metrics
from oodscope.bench import Report, evaluate
from oodscope.bench.report import draw_histograms, histogram_axis, params_text

from conftest import make_toy


class HeavyTail(Detector):
    """Gram-like: ID scores from 1 to about 10, OOD scores up to 1e8."""

    needs_fit = False

    def __init__(self, decades: float = 9.0) -> None:
        self.decades = decades

    def _score(self, features: Features) -> np.ndarray:
        spread = features.logits.max(1) - features.logits.min(1)  # large for ID, small for OOD
        return 10 ** (self.decades * np.exp(-spread / 4))


class Tied(Detector):
    """A few distinct scores only: the logits' spread rounded."""

    needs_fit = False

    def __init__(self, step: float = 8.0) -> None:
        self.step = step

    def _score(self, features: Features) -> np.ndarray:
        return -np.round((features.logits.max(1) - features.logits.min(1)) / self.step)


class NeedsLabels(Detector):
    """Learns class means of the logits: fails to fit on data without labels."""

    requires = frozenset({"logits", "labels"})

    def __init__(self) -> None:
        pass

    def _fit(self, features: Features) -> None:
        self.means_ = features.logits.mean(0)

    def _score(self, features: Features) -> np.ndarray:
        return np.abs(features.logits - self.means_).sum(1)


def _half(features: Features) -> Features:
    """Near OOD: ID features at half their size, logits from the same head."""
    layer = features.layers["penultimate"] * 0.5
    return Features(
        logits=layer @ features.head_weight.T + features.head_bias,
        layers={"penultimate": layer},
        head_weight=features.head_weight,
        head_bias=features.head_bias,
    )


DETECTORS = {
    "GEN()": GEN(),
    "GEN() again": GEN(),
    "MSP()": MSP(),
    "KNN(k=5)": KNN(k=5),
    "ReAct(GEN(gamma=0.5))": ReAct(GEN(gamma=0.5)),
    "heavy": HeavyTail(),
    "tied": Tied(),
}
GROUPS = {"near": ["half"], "far": ["noise", "noise2"]}


@pytest.fixture(scope="module")
def report() -> Report:
    toy, other = make_toy(), make_toy(seed=1)
    oods = {"half": _half(make_toy(seed=2)["id"]), "noise": toy["ood"], "noise2": other["ood"]}
    return evaluate(None, toy["fit"], toy["id"], oods, DETECTORS, groups=GROUPS)


@pytest.fixture(scope="module")
def page(report, tmp_path_factory) -> str:
    pytest.importorskip("matplotlib")
    return report.to_html(tmp_path_factory.mktemp("html") / "report.html").read_text()


def expected_order(report: Report) -> list[str]:
    """The detectors by mean AUROC over the OOD sets, recomputed from the scores; ties as given."""
    means = {
        name: np.mean(
            [bench_metrics(report.score_pair(name, ood), metrics=["auroc"])["auroc"] for ood in oods]
        )
        for name in DETECTORS
        if (oods := report.ood_names)
    }
    return sorted(DETECTORS, key=lambda name: -means[name])


def markdown_rows(text: str, first_column: str) -> list[list[str]]:
    """The body cells of the markdown table whose header starts with ``first_column``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"\| {re.escape(first_column)} +\|", line))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.split("|")[1:-1]])
    return rows


def html_table(page: str, css_class: str, index: int = 0) -> list[list[tuple[str, str]]]:
    """The body rows of the ``index``-th ``<table class="css_class">``: ``(class attribute, text)`` cells."""
    table = re.findall(rf'<table class="{css_class}">(.*?)</table>', page, re.S)[index]
    body = table.split("<tbody>")[1]
    return [
        [(classes, html.unescape(re.sub("<[^>]+>", "", text))) for classes, text in re.findall(
            r'<td(?: class="([^"]*)")?[^>]*>(.*?)</td>', row)]
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body)
    ]  # fmt: skip


# --- one order ------------------------------------------------------------------------------------------


def test_detectors_are_sorted_by_mean_auroc_in_every_format(report, page, tmp_path):
    order = expected_order(report)
    assert order != list(DETECTORS) and order[0] == "heavy", "the toy changes the order"
    assert report.order == order == list(report.id_scores) == list(report.detectors)
    assert list(dict.fromkeys(row["detector"] for row in report.rows)) == order
    assert [row["detector"] for row in report.pivot()] == order
    assert list(report.ood_scores) == order

    loaded = json.loads(report.to_json())
    assert [entry["detector"] for entry in loaded["ranking"]] == order
    assert list(dict.fromkeys(row["detector"] for row in loaded["rows"])) == order
    assert list(loaded["provenance"]["detectors"]) == order == list(loaded["detectors"])

    with report.to_csv(tmp_path / "r.csv").open() as file:
        assert list(dict.fromkeys(row["detector"] for row in csv.DictReader(file))) == order
    assert [row[1] for row in markdown_rows(report.to_markdown(), "rank")] == order
    assert list(dict.fromkeys(row[0] for row in markdown_rows(report.to_markdown(), "detector"))) == order

    assert [row[1][1] for row in html_table(page, "pivot")] == order
    figures = re.findall(r'<section class="detector">\s*<h3>(.*?)</h3>', page)
    assert [html.unescape(name) for name in figures] == order
    assert [row[1][1] for row in html_table(page, "provenance", index=1)] == order


def test_ranks_follow_the_mean_auroc_and_ties_share_a_rank(report):
    ranks = report.ranks()
    means = {name: report.value(name) for name in report.order}
    assert report.value("GEN()") == report.value("GEN() again"), "the same detector twice"
    assert ranks["GEN()"] == ranks["GEN() again"]
    for name, rank in ranks.items():
        assert rank == 1 + sum(other > means[name] for other in means.values())
    assert ranks[report.order[0]] == 1 and report.primary_metric == "auroc"
    assert report.primary_label == "all (mean)"


def test_a_failed_detector_comes_last_without_a_rank():
    toy = make_toy()
    unlabelled = Features(logits=toy["fit"].logits)
    report = evaluate(None, unlabelled, toy["id"], {"noise": toy["ood"]}, [NeedsLabels(), MSP(), Tied()])
    assert report.order == ["MSP()", "Tied()", "NeedsLabels()"]
    assert report.ranks() == {"MSP()": 1, "Tied()": 2, "NeedsLabels()": None}
    ranking = report.to_dict()["ranking"]
    assert ranking[-1] == {
        "rank": None,
        "detector": "NeedsLabels()",
        "auroc": None,
        "status": "failed to fit",
    }
    assert list(report.provenance["detectors"]) == report.order


# --- the best value of each column ---------------------------------------------------------------------


def test_the_best_value_of_each_column_is_marked_in_every_format(report, page, tmp_path):
    labels = list(dict.fromkeys(row["ood"] for row in report.rows))
    best = {}
    for label in labels:
        for metric in report.metrics:
            values = [row[metric] for row in report.rows if row["ood"] == label]
            if len(set(values)) > 1:
                best[label, metric] = min(values) if metric.startswith("fpr") else max(values)
    assert best == report.best_cells()
    assert best["all (mean)", "auroc"] == report.value(report.order[0])

    def is_best(row, metric):
        return best.get((row["ood"], metric)) == row[metric]

    with report.to_csv(tmp_path / "r.csv").open() as file:
        for row, written in zip(report.rows, csv.DictReader(file), strict=True):
            assert written["best"].split() == [m for m in report.metrics if is_best(row, m)]
            assert int(written["rank"]) == report.ranks()[row["detector"]]
    for row, exported in zip(report.rows, report.to_dict()["rows"], strict=True):
        assert exported["best"] == [m for m in report.metrics if is_best(row, m)]

    markdown = markdown_rows(report.to_markdown(), "detector")
    for row, cells in zip(report.rows, markdown, strict=True):
        for metric, cell in zip(report.metrics, cells[2:], strict=True):
            assert cell.startswith("**") == is_best(row, metric), (row["detector"], row["ood"], metric)
    summary = markdown_rows(report.to_markdown(), "rank")
    for cells in summary:
        for label, cell in zip(labels, cells[2:], strict=True):
            value = report.value(cells[1], label)
            assert cell.startswith("**") == (best.get((label, "auroc")) == value)

    pivot = html_table(page, "pivot")
    for cells in pivot:
        for label, (classes, text) in zip(labels, cells[2:], strict=True):
            assert ("best" in classes.split()) == (
                best.get((label, "auroc")) == report.value(cells[1][1], label)
            )
            assert text == f"{report.value(cells[1][1], label):.4f}"
    notebook = report._repr_html_()
    marked = [(row, metric) for row in report.rows for metric in report.metrics if is_best(row, metric)]
    assert "<style" not in notebook, "a notebook's page keeps its own styles"
    assert notebook.count("<b>") == len(marked) + sum(metric == "auroc" for _, metric in marked)
    bold = [cells[1][1] for cells in pivot if "best" in cells[-1][0].split()]
    assert bold == [name for name in report.order if report.value(name) == best["all (mean)", "auroc"]]


def test_nothing_is_marked_when_every_detector_ties():
    toy = make_toy()
    report = evaluate(None, None, toy["id"], {"noise": toy["ood"]}, {"a": MSP(), "b": MSP()})
    assert report.best_cells() == {} and "**" not in report.to_markdown()
    assert all(row["best"] == [] for row in report.table())
    assert report.ranks() == {"a": 1, "b": 1}


# --- group means ------------------------------------------------------------------------------------------


def test_means_only_for_groups_of_several_sets_and_several_sets_overall(report):
    labels = [row["ood"] for row in report.rows if row["detector"] == "MSP()"]
    assert labels == ["half", "noise", "noise2", "far (mean)", "all (mean)"]
    for metric in report.metrics:
        assert report.value("MSP()", "near", metric) == report.value("MSP()", "half", metric)
        assert report.value("MSP()", "far", metric) == pytest.approx(
            (report.value("MSP()", "noise", metric) + report.value("MSP()", "noise2", metric)) / 2
        )
    assert list(report.pivot()[0]) == ["detector", *labels]

    toy = make_toy()
    both = evaluate(
        None, None, toy["id"], {"a": toy["ood"], "b": _half(toy["id"])}, [MSP()], {"all": ["a", "b"]}
    )
    assert [row["ood"] for row in both.rows] == ["a", "b", "all (mean)"], "a group of every set is the mean"
    with pytest.raises(ValueError, match="The group name 'all' is the overall mean"):
        evaluate(None, None, toy["id"], {"a": toy["ood"], "b": toy["ood"]}, [MSP()], {"all": ["a"]})
    assert (
        both.value("MSP()", "all")
        == both.value("MSP()")
        == (both.value("MSP()", "a") + both.value("MSP()", "b")) / 2
    )

    alone = evaluate(None, None, toy["id"], {"noise": toy["ood"]}, [MSP()], groups={"far": ["noise"]})
    assert [row["ood"] for row in alone.rows] == ["noise"], "one OOD set: no mean rows at all"
    assert alone.value("MSP()") == alone.value("MSP()", "far") == alone.value("MSP()", "noise")
    assert alone.primary_label == "noise" and "its OOD set" in alone.header()


# --- provenance -------------------------------------------------------------------------------------------


def test_provenance_says_what_produced_the_report(report, page):
    prov = report.provenance
    json.dumps(prov)  # plain JSON types only
    assert prov["oodscope"] == oodscope.__version__
    created = datetime.datetime.fromisoformat(prov["created"])
    assert abs(datetime.datetime.now(datetime.timezone.utc) - created) < datetime.timedelta(minutes=10)
    assert prov["versions"]["numpy"] == np.__version__
    assert prov["model"] is None
    assert {name: entry["n_samples"] for name, entry in prov["datasets"].items()} == report.n_samples
    assert report.n_samples == {"fit": 400, "id": 200, "half": 200, "noise": 160, "noise2": 160}
    assert prov["datasets"]["noise2"]["groups"] == ["far"] and prov["datasets"]["id"]["role"] == "id"
    assert prov["datasets"]["half"]["data"] == "Features (logits, penultimate)"
    assert prov["settings"]["groups"] == GROUPS and prov["settings"]["errors"] == "record"
    assert set(prov["metrics"]) == set(report.metrics)
    assert "lower is better" in prov["metrics"]["fpr95tpr_ood"]

    knn = prov["detectors"]["KNN(k=5)"]
    assert knn["class"] == "KNN" and knn["params"] == KNN(k=5).get_params(deep=False)
    assert knn["reads"] == ["penultimate"]
    react = prov["detectors"]["ReAct(GEN(gamma=0.5))"]["params"]
    assert react == {"detector": {"class": "GEN", "params": {"gamma": 0.5, "k": 100}}, "percentile": 90.0}
    assert prov["detectors"]["heavy"] == {
        "class": "HeavyTail",
        "module": __name__,
        "params": {"decades": 9.0},
        "reads": ["logits"],
    }

    for name, entry in prov["detectors"].items():  # every parameter, defaults too, in the HTML
        shown = f"{entry['class']}({params_text(entry['params'])})"
        assert html.escape(shown) in page, name
    knn_params = "k=5, index=&#x27;exact&#x27;, n_lists=None, n_probe=None, layers=None, aggregator=None"
    assert f"KNN({knn_params})" in page
    data = [[text for _, text in row] for row in html_table(page, "provenance", index=0)]
    assert data[3] == ["noise", "ood", "far", "160", "Features (logits, penultimate)", "0.000"]
    first_line = report.to_markdown().splitlines()[0]
    assert first_line.startswith(f"oodscope {oodscope.__version__}, {prov['created']}. Scores from Features")


def test_provenance_of_a_torch_model():
    torch = pytest.importorskip("torch")
    from oodscope.fingerprint import fingerprint

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)
    )
    rng = np.random.default_rng(0)
    x_id = rng.normal(size=(24, 1, 4, 4)).astype(np.float32), rng.integers(0, 3, 24)
    x_ood = rng.normal(2, 1, (12, 1, 4, 4)).astype(np.float32)
    report = evaluate(model, None, x_id, {"shifted": x_ood}, [GEN()], batch_size=8, progress=False)
    described = report.provenance["model"]
    assert described["class"] == "Sequential" and described["framework"] == "torch"
    assert described["parameters"] == 16 * 8 + 8 + 8 * 3 + 3
    assert described["head_sha256"] == fingerprint(model).head_sha256
    assert described["options"] == {"head_layer_id": -1, "batch_size": 8}
    assert report.provenance["datasets"]["id"]["data"] == (
        "(inputs, labels): ndarray float32 (24, 1, 4, 4), ndarray int64 (24,)"
    )
    assert report.provenance["datasets"]["shifted"]["data"] == "ndarray float32 (12, 1, 4, 4)"
    assert report.provenance["versions"]["torch"] == torch.__version__
    assert "Model: Sequential (torch, 163 parameters)." in report.header()


def test_a_model_counts_its_own_parameters():
    from oodscope.bench.report import _parameter_count

    class KerasLike:
        def count_params(self) -> int:
            return 7

    class Unbuilt:
        def count_params(self) -> int:
            raise ValueError("not built")

    assert _parameter_count(KerasLike()) == 7
    assert _parameter_count(Unbuilt()) is None and _parameter_count(object()) is None


def test_the_report_imports_no_framework():
    code = (
        "import sys, numpy as np\n"
        "from oodscope import GEN, KNN, Features\n"
        "from oodscope.bench import evaluate\n"
        "rng = np.random.default_rng(0)\n"
        "def f(n):\n"
        "    layers = {'penultimate': rng.normal(size=(n, 4))}\n"
        "    return Features(logits=rng.normal(size=(n, 3)), layers=layers)\n"
        "report = evaluate(None, f(30), f(20), {'a': f(10), 'b': f(10)}, [GEN(), KNN(k=2)])\n"
        "report.to_json(); report.to_markdown()\n"
        "print(sorted(m for m in ('torch', 'tensorflow', 'keras', 'jax') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_report_built_by_hand_renders_without_provenance(tmp_path):
    rows = [
        {"detector": "a", "ood": "x", "auroc": 0.6, "fpr95tpr": 0.7},
        {"detector": "b", "ood": "x", "auroc": 0.9, "fpr95tpr": 0.2},
    ]
    scores = {"a": np.arange(5.0), "b": np.arange(5.0)}
    report = Report(
        rows=rows,
        metrics=("auroc", "fpr95tpr"),
        ood_names=["x"],
        groups={},
        id_accuracy=None,
        n_samples={"fit": None, "id": 5, "x": 5},
        id_scores=scores,
        ood_scores={name: {"x": values + 3} for name, values in scores.items()},
        detectors={"a": GEN(), "b": MSP()},
        errors=[],
        timings={},
    )
    assert report.order == ["b", "a"] and [row["detector"] for row in report.rows] == ["b", "a"]
    assert report.to_markdown().startswith("Samples: id 5, x 5. Detectors sorted by auroc on its OOD set")
    report.provenance["datasets"] = {
        "x": {"role": "ood", "n_samples": 5, "source": "x.npz", "data": "ndarray"}
    }
    page = report.to_html(tmp_path / "r.html", figures=False).read_text()
    assert '<td class="text">x.npz: ndarray</td>' in page
    page = report.to_html(tmp_path / "r.html", figures=False).read_text()
    assert "MSP()" in page and "GEN(gamma=0.1, k=100)" in page


# --- histograms -------------------------------------------------------------------------------------------


def coordinates_within(axis, scores) -> int:
    values = axis.coordinates(scores)
    return int(np.count_nonzero((values >= axis.edges[0]) & (values <= axis.edges[-1])))


def test_heavy_tailed_scores_get_a_log_axis():
    rng = np.random.default_rng(0)
    scores_in, scores_out = 10 ** rng.uniform(0, 2, 500), 10 ** rng.uniform(3, 9, 300)
    axis = histogram_axis({"ID": scores_in, "Gram OOD": scores_out})
    assert axis.scale == "log" and "log scale" in axis.label
    assert axis.edges[0] == scores_in.min() and axis.edges[-1] == scores_out.max()
    np.testing.assert_allclose(np.diff(np.log10(axis.edges)), np.log10(axis.edges[-1] / axis.edges[0]) / 50)
    linear, _ = np.histogram(scores_in, bins=np.linspace(scores_in.min(), scores_out.max(), 51))
    ours, _ = np.histogram(axis.coordinates(scores_in), bins=axis.edges)
    assert linear.max() == scores_in.size, "on a linear axis every ID score falls into the first bin"
    assert np.count_nonzero(ours) >= 10 and ours.max() < 0.2 * scores_in.size


def test_heavy_tailed_scores_piled_near_their_minimum_are_read_from_it():
    rng = np.random.default_rng(4)
    gram_in = np.r_[np.zeros(50), 10 ** rng.uniform(-3, 0, 250)]  # deviations, often exactly 0
    gram_out = 10 ** rng.uniform(1, 8, 200)
    axis = histogram_axis({"ID": gram_in, "OOD": gram_out})
    assert (axis.scale, axis.origin, axis.label) == (
        "log-distance",
        0.0,
        "score, log scale (higher = more OOD)",
    )
    assert axis.at_origin == {"ID": 50, "OOD": 0} and axis.shown == {"ID": 300, "OOD": 200}

    near_one = 1 + 10 ** rng.uniform(-3, -0.5, 300)  # on a log axis from 1 to 1e8: all in the first bin
    axis = histogram_axis({"ID": near_one, "OOD": gram_out})
    assert axis.scale == "log-distance" and 1.0 <= axis.origin <= near_one.min()
    ours, _ = np.histogram(axis.coordinates(near_one), bins=axis.edges)
    assert ours.max() < 0.2 * near_one.size


def test_scores_piled_against_a_bound_get_a_log_axis_of_the_distance():
    rng = np.random.default_rng(1)
    msp_in = -(1 - 10 ** rng.uniform(-8, -2, 400))  # confident: within 1e-8..1e-2 of -1
    msp_out = -rng.uniform(0.3, 0.99, 200)
    axis = histogram_axis({"ID": msp_in, "OOD": msp_out})
    assert (axis.scale, axis.direction, axis.origin) == ("log-distance", 1, -1.0), "MSP's bound, -1"
    assert axis.label == "score − (−1), log scale (higher = more OOD)"
    ours, _ = np.histogram(axis.coordinates(msp_in), bins=axis.edges)
    assert ours.max() < 0.2 * msp_in.size, "ID spreads over many bins instead of one"
    assert axis.shown == {"ID": 400, "OOD": 200} and axis.at_origin == {"ID": 0, "OOD": 0}
    np.testing.assert_allclose(axis.coordinates(msp_in), msp_in + 1)

    flipped = histogram_axis({"ID": -msp_out, "OOD": -msp_in})  # the same pile at the top
    assert (flipped.scale, flipped.direction, flipped.origin) == ("log-distance", -1, 1.0)
    assert flipped.label == "1 − score, log scale, reversed (higher = more OOD)"

    saturated = np.r_[np.full(100, -1.0), msp_in]  # softmax exactly 1 in float64
    axis = histogram_axis({"ID": saturated, "OOD": msp_out})
    assert axis.origin == -1.0 and axis.at_origin == {"ID": 100, "OOD": 0} and axis.shown["ID"] == 500
    counts, _ = np.histogram(axis.coordinates(saturated), bins=axis.edges)
    assert counts[0] >= 100, "scores at the bound are drawn in the first bin"

    offset = histogram_axis({"ID": msp_in + 3.7123, "OOD": msp_out + 3.7123})  # the bound moves along
    assert (offset.scale, offset.origin) == ("log-distance", 2.7123)
    assert offset.label == "score − 2.7123, log scale (higher = more OOD)"


def test_tied_scores_get_one_bar_per_value():
    rng = np.random.default_rng(2)
    scores_in, scores_out = np.round(rng.normal(0, 1, 300)), np.round(rng.normal(2, 1, 200))
    axis = histogram_axis({"ID": scores_in, "OOD": scores_out})
    values = np.unique(np.r_[scores_in, scores_out])
    assert axis.scale == "distinct" and np.array_equal(axis.values, values)
    assert axis.label.startswith(f"score, {values.size} distinct values")
    for scores in (scores_in, scores_out):
        counts, _ = np.histogram(axis.coordinates(scores), bins=axis.edges)
        assert counts.tolist() == [int(np.sum(scores == value)) for value in values]
    assert axis.outside == {"ID": 0, "OOD": 0}


@pytest.mark.parametrize(
    "make",
    [
        lambda rng, n: rng.normal(0, 1, n),
        lambda rng, n: rng.standard_cauchy(n),
        lambda rng, n: 10 ** rng.normal(0, 3, n),
        lambda rng, n: np.r_[rng.normal(0, 1, n - 3), 1e9, -1e9, 5e3],  # n >= 3
        lambda rng, n: -(1 - 10 ** rng.uniform(-12, -1, n)),
        lambda rng, n: np.full(n, 0.25),
    ],
    ids=["normal", "cauchy", "lognormal", "outliers", "msp-like", "constant"],
)
@pytest.mark.parametrize("n", [3, 40, 1000])
def test_the_axis_holds_the_stated_share_of_every_set(make, n):
    rng = np.random.default_rng(n)
    sets = {"ID": make(rng, n), "OOD": make(rng, max(n // 2, 3)) + 0.5}
    axis = histogram_axis(sets, bins=30, share=0.99)
    for name, scores in sets.items():
        inside = coordinates_within(axis, scores)
        assert axis.shown[name] == inside and axis.outside[name] == scores.size - inside
        assert inside >= 0.99 * scores.size
        counts, _ = np.histogram(axis.coordinates(scores), bins=axis.edges)
        assert counts.sum() == inside, "what is counted as shown is what the histogram draws"
    assert np.all(np.diff(axis.edges) > 0)


def test_the_share_is_a_floor_not_a_fixed_cut():
    scores = np.r_[np.linspace(0, 1, 999), 1e6]
    axis = histogram_axis({"ID": scores, "OOD": np.linspace(0.5, 1.5, 500)}, share=0.99)
    assert axis.outside == {"ID": 1, "OOD": 0} and axis.edges[-1] == 1.5
    assert histogram_axis({"ID": scores}, share=1.0).outside == {"ID": 0}


def test_non_finite_scores_are_counted_not_drawn():
    axis = histogram_axis({"ID": np.array([0.0, 1.0, np.nan, 2.0, np.inf]), "OOD": np.array([3.0, -np.inf])})
    assert axis.non_finite == {"ID": 2, "OOD": 1} and axis.shown == {"ID": 3, "OOD": 1}
    assert np.isfinite(axis.edges).all()


def test_bad_histogram_arguments():
    with pytest.raises(
        ValueError, match=r"The 'share' parameter of histogram_axis must be in \(0, 1\]. Got 0"
    ):
        histogram_axis({"a": [1.0]}, share=0)
    with pytest.raises(ValueError, match="The 'bins' parameter of histogram_axis must be an int >= 1"):
        histogram_axis({"a": [1.0]}, bins=0)


def test_the_plot_states_its_axis_and_what_it_leaves_out():
    pytest.importorskip("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rng = np.random.default_rng(3)
    scores_in = 10 ** rng.uniform(0, 2, 500)
    scores_out = np.r_[10 ** rng.uniform(3, 9, 299), -5.0]  # one score below any log axis
    figure = Figure()
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    axis = draw_histograms(ax, [("ID", scores_in), ("Gram OOD", scores_out)], ["C0", "C1"])
    assert ax.get_xscale() == "log" and ax.get_xlabel() == axis.label
    assert ax.get_xlim() == pytest.approx((axis.edges[0], axis.edges[-1]))
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["ID (n=500)", "Gram OOD (n=300; 1 beyond the axis)"]
    heights = [sum(bar.get_height() for bar in container) for container in ax.containers]
    assert heights == pytest.approx([1.0, 299 / 300]), "bars show each set's share per bin"

    ax = figure.subplots()
    draw_histograms(ax, [("ID", np.round(scores_in / 30)), ("OOD", np.full(50, 4.0))], ["C0", "C1"])
    ticks = [text.get_text() for text in ax.get_xticklabels()]
    assert ticks == ["0", "1", "2", "3", "4"] and "5 distinct values" in ax.get_xlabel()


def test_html_tables_use_the_full_width_and_figures_state_their_axes(report, page):
    css = re.search(r"<style>(.*?)</style>", page, re.S).group(1)
    assert re.search(r"\ntable \{[^}]*width: 100%", css) and "max-width: 1400px" not in css
    assert page.index("<h2>Summary: auroc</h2>") < page.index("<h2>All metrics</h2>")
    assert page.index("<h2>Scores and ROC curves</h2>") < page.index("<h2>How this report was made</h2>")
    assert "the legend counts the samples beyond it" in page
    assert page.count("<img ") == len(report.id_scores)
