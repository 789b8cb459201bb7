"""oodscope.plots, headless: the returned figures hold what the docstrings promise, and save to PNG."""

from __future__ import annotations

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")  # headless, whatever MPLBACKEND says

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from oodscope.metrics import auroc, fpr_at_tpr  # noqa: E402
from oodscope.plots import plot_2D_features, plot_ood_scores, plot_roc_curve, roc_curve_ood  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def scores():
    rng = np.random.default_rng(0)
    # rounded, so that ties between and within the two sets occur
    return np.round(rng.normal(0.0, 1.0, 300), 1), np.round(rng.normal(1.2, 1.0, 200), 1)


def saved_png(fig: Figure, path) -> bytes:
    fig.savefig(path)
    return path.read_bytes()[:8]


def test_roc_curve_matches_scikit_learn_point_for_point(scores):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    scores_in, scores_out = scores
    fpr, tpr, thresholds = roc_curve_ood(scores_in, scores_out)
    y = np.r_[np.zeros(scores_in.size), np.ones(scores_out.size)]
    ref_fpr, ref_tpr, ref_thresholds = sklearn_metrics.roc_curve(
        y, np.r_[scores_in, scores_out], drop_intermediate=False
    )
    np.testing.assert_array_equal(fpr, ref_fpr)
    np.testing.assert_array_equal(tpr, ref_tpr)
    np.testing.assert_array_equal(thresholds[1:], ref_thresholds[1:])
    assert thresholds[0] == np.inf
    # the trapezoid under the exact curve is the AUROC
    assert np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2) == pytest.approx(auroc(scores_in, scores_out))


def test_plot_ood_scores_draws_two_density_histograms_on_shared_bins(scores, tmp_path):
    scores_in, scores_out = scores
    fig = plot_ood_scores(scores_in, scores_out, bins=25, title="GEN")
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert len(ax.containers) == 2 and len(ax.patches) == 2 * 25
    edges = np.histogram_bin_edges(np.r_[scores_in, scores_out], bins=25)
    for container, values in zip(ax.containers, (scores_in, scores_out), strict=True):
        heights = [bar.get_height() for bar in container]
        np.testing.assert_allclose(heights, np.histogram(values, bins=edges, density=True)[0])
        np.testing.assert_allclose([bar.get_x() for bar in container], edges[:-1])
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["ID (n=300)", "OOD (n=200)"]
    assert ax.get_xlabel() == "OOD score (higher = more OOD)"
    assert ax.get_title() == "GEN" and ax.get_yscale() == "linear"
    assert saved_png(fig, tmp_path / "scores.png") == PNG_MAGIC


def test_plot_ood_scores_log_scale_and_given_axes(scores):
    fig, (left, right) = plt.subplots(1, 2)
    returned = plot_ood_scores(*scores, log_scale=True, ax=right)
    assert returned is fig
    assert right.get_yscale() == "log" and left.get_yscale() == "linear"
    assert len(right.patches) == 200 and not left.patches


def test_plot_roc_curve_marks_the_fpr_at_95_tpr_and_gives_the_auroc(scores, tmp_path):
    scores_in, scores_out = scores
    fig = plot_roc_curve(scores_in, scores_out, title="ROC")
    ax = fig.axes[0]
    curve, chance, point = ax.get_lines()
    fpr, tpr, _ = roc_curve_ood(scores_in, scores_out)
    np.testing.assert_array_equal(curve.get_xdata(), fpr)
    np.testing.assert_array_equal(curve.get_ydata(), tpr)
    np.testing.assert_array_equal(chance.get_xdata(), [0, 1])

    expected_fpr = fpr_at_tpr(scores_in, scores_out, 0.95, positive="ood")
    (x,), (y,) = point.get_xdata(), point.get_ydata()
    assert x == expected_fpr
    first = int(np.searchsorted(tpr, 0.95, side="left"))
    assert y == tpr[first] >= 0.95 and x == fpr[first]

    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend[0] == f"ROC (AUROC = {auroc(scores_in, scores_out):.4f})"
    assert legend[2] == f"FPR@95TPR = {expected_fpr:.4f} (OOD positive)"
    assert saved_png(fig, tmp_path / "roc.png") == PNG_MAGIC


def test_plot_roc_curve_other_tpr_and_perfect_separation():
    fig = plot_roc_curve([0.0, 0.1, 0.2], [1.0, 2.0], tpr=0.5)
    point = fig.axes[0].get_lines()[2]
    assert (point.get_xdata()[0], point.get_ydata()[0]) == (0.0, 0.5)
    assert "AUROC = 1.0000" in fig.axes[0].get_legend().get_texts()[0].get_text()
    assert "FPR@50TPR" in fig.axes[0].get_legend().get_texts()[2].get_text()


# --- 2-D features ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture
def counting_model(torch):
    """A small torch classifier that counts the inputs it is run on."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    model.seen = 0

    def count(module, args):
        module.seen += args[0].shape[0]

    model.register_forward_pre_hook(count)
    return model


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    return (rng.normal(0, 0.3, (n, 6)) + 2.0 * np.eye(6)[labels]).astype(np.float32), labels


def test_plot_2D_features_pca_is_the_projection_of_the_extracted_layer(counting_model, tmp_path):
    from sklearn.decomposition import PCA

    from oodscope import extract

    x_in, y_in = blobs(60, 0)
    x_out = np.random.default_rng(1).normal(0, 1, (30, 6)).astype(np.float32)
    fig = plot_2D_features(counting_model, (x_in, y_in), "1", out_dataset=x_out, proj_method="PCA")
    ax = fig.axes[0]
    assert len(ax.collections) == 4  # classes 0, 1, 2, then OOD
    assert [len(c.get_offsets()) for c in ax.collections] == [20, 20, 20, 30]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ID: 0", "ID: 1", "ID: 2", "OOD"]

    feats = np.r_[
        extract(counting_model, x_in, "1").layer("1"), extract(counting_model, x_out, "1").layer("1")
    ]
    expected = PCA(n_components=2, random_state=0).fit_transform(feats.astype(np.float64))
    for label in range(3):
        np.testing.assert_allclose(
            ax.collections[label].get_offsets(), expected[:60][y_in == label], atol=1e-6
        )
    np.testing.assert_allclose(ax.collections[3].get_offsets(), expected[60:], atol=1e-6)
    assert saved_png(fig, tmp_path / "features_pca.png") == PNG_MAGIC


def test_plot_2D_features_samples_before_the_forward_pass(counting_model, torch, tmp_path):
    x_in, y_in = blobs(500, 2)
    x_out = np.random.default_rng(3).normal(0, 1, (400, 6)).astype(np.float32)
    # OOD data as a list of torch batches: taken in order until max_samples inputs are collected
    out_batches = [torch.as_tensor(x_out[i : i + 32]) for i in range(0, 400, 32)]
    fig = plot_2D_features(
        counting_model,
        {"image": x_in, "label": y_in},
        "penultimate",
        out_dataset=out_batches,
        proj_method="tsne",
        max_samples=25,
        title="t-SNE",
        seed=1,
        proj_kwargs={"max_iter": 250},  # scikit-learn's minimum: keeps the test short
    )
    assert counting_model.seen == 50  # 25 ID + 25 OOD went through the model, not 900
    ax = fig.axes[0]
    assert sum(len(c.get_offsets()) for c in ax.collections[:-1]) == 25
    assert len(ax.collections[-1].get_offsets()) == 25
    assert ax.get_title() == "t-SNE" and ax.get_xlabel() == "TSNE 1"
    assert saved_png(fig, tmp_path / "features_tsne.png") == PNG_MAGIC


def test_plot_2D_features_without_labels_or_ood(counting_model):
    x_in, _ = blobs(40, 4)
    fig = plot_2D_features(counting_model, x_in, -2, proj_method="PCA")
    ax = fig.axes[0]
    assert len(ax.collections) == 1 and len(ax.collections[0].get_offsets()) == 40
    with pytest.raises(ValueError, match="proj_method must be 'TSNE', 'PCA'"):
        plot_2D_features(counting_model, x_in, -2, proj_method="umap")
