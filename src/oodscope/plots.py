"""Plots of OOD scores, ROC curves and 2-D maps of a model's features (matplotlib, the ``plots`` extra).

Every function draws on ``ax`` when one is given, else on a new figure made with ``plt.subplots``, and
returns the :class:`~matplotlib.figure.Figure` (``fig.savefig("roc.png")``; the axes are ``fig.axes`` or
the ``ax`` you passed). Nothing is shown and nothing blocks: ``plt.show()`` is never called and the
matplotlib backend is never changed. On a machine without a display matplotlib falls back to its
non-interactive Agg backend by itself (or set ``MPLBACKEND=Agg``). In notebooks, figures appear as usual;
end the line with ``;`` to avoid seeing the returned figure twice, and ``plt.close(fig)`` figures made in
a loop.

Scores follow the library's convention: **higher = more OOD**.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ._batches import INPUT_KEYS, LABEL_KEYS, as_labels, is_array_like, iter_batches, to_numpy
from .backends import require
from .extract import extract
from .metrics import _as_score_array, auroc, fpr_at_tpr, roc_curve

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_2D_features", "plot_ood_scores", "plot_roc_curve", "roc_curve_ood"]

ID_COLOR = "tab:blue"
OOD_COLOR = "tab:red"
#: colour of OOD points in 2-D feature maps, where ID points are coloured by class
OOD_POINT_COLOR = "0.25"


def _axes(ax: Axes | None, figsize: tuple[float, float] = (6.4, 4.8)) -> tuple[Figure, Axes]:
    plt = require("matplotlib.pyplot", "plots")
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    from matplotlib.axes import Axes

    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes (e.g. from plt.subplots()) or None; got {ax!r}.")
    return ax.figure, ax


def _check_axes(ax: Any) -> None:
    """Refuse a wrong ``ax`` before any work (a projection or a model pass)."""
    if ax is not None:
        _axes(ax)


def _scores(values: Any, name: str) -> np.ndarray:
    array = _as_score_array(values if isinstance(values, (str, bytes)) else to_numpy(values), name)
    if array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of scores; got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or inf; drop or replace them before plotting.")
    return array


def _bin_edges(values: np.ndarray, bins: Any) -> np.ndarray:
    """``numpy.histogram_bin_edges``, with its refusals of ``bins`` said in terms of this function."""
    if isinstance(bins, bool) or (isinstance(bins, (int, np.integer)) and bins < 1):
        raise ValueError(
            f"bins must be a positive number of bins, a rule such as 'auto', or edges; got {bins!r}."
        )
    try:
        return np.histogram_bin_edges(values, bins=bins)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"bins={bins!r} is not usable ({error}); give a positive int, a numpy rule such as 'auto' or "
            "'fd', or increasing bin edges."
        ) from None


def _legend_names(labels: Any) -> tuple[str, str]:
    if isinstance(labels, (str, bytes)) or not isinstance(labels, (tuple, list)) or len(labels) != 2:
        raise ValueError(
            f"labels must be a pair of legend names (ID, OOD), e.g. ('ID', 'OOD'); got {labels!r}."
        )
    return str(labels[0]), str(labels[1])


def plot_ood_scores(
    scores_in: Any,
    scores_out: Any,
    log_scale: bool = False,
    bins: int | str | Any = 100,
    title: str | None = None,
    ax: Axes | None = None,
    labels: tuple[str, str] = ("ID", "OOD"),
) -> Figure:
    """Overlaid density histograms of the ID and OOD scores.

    Both histograms share the same bin edges (computed on all scores together) and are normalised to
    densities, so sets of different sizes compare directly.

    Parameters
    ----------
    scores_in, scores_out : array-like of shape [N]
        Scores of the ID and of the OOD samples (higher = more OOD).
    log_scale : bool, default False
        Put the density axis on a logarithmic scale, which shows thin tails (e.g. the few OOD samples that
        score like ID ones). The scores themselves are not transformed.
    bins : int, str or sequence, default 100
        Anything ``numpy.histogram_bin_edges`` accepts: a number of equal-width bins, a rule such as
        ``"auto"``, or the edges.
    title : str, optional
    ax : matplotlib Axes, optional
        Draw there instead of on a new figure.
    labels : (str, str), default ("ID", "OOD")
        Legend entries of the two sets.

    Returns
    -------
    matplotlib.figure.Figure
        The axes hold two ``BarContainer`` s (``ax.containers``), ID first, one bar per bin each.
    """
    s_in, s_out = _scores(scores_in, "scores_in"), _scores(scores_out, "scores_out")
    labels = _legend_names(labels)
    edges = _bin_edges(np.concatenate((s_in, s_out)), bins)
    fig, ax = _axes(ax)
    style = dict(bins=edges, density=True, alpha=0.5, log=log_scale, histtype="bar", rwidth=1.0)
    ax.hist(s_in, color=ID_COLOR, label=f"{labels[0]} (n={s_in.size})", **style)
    ax.hist(s_out, color=OOD_COLOR, label=f"{labels[1]} (n={s_out.size})", **style)
    ax.set_xlabel("OOD score (higher = more OOD)")
    ax.set_ylabel("density (log scale)" if log_scale else "density")
    ax.legend()
    if title is not None:
        ax.set_title(title)
    return fig


def roc_curve_ood(scores_in: Any, scores_out: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact ROC curve with OOD as the positive class: ``(fpr, tpr, thresholds)``.

    :func:`oodscope.metrics.roc_curve` with ``positive="ood"``, for scores given as arrays or tensors (on
    any device): one point per distinct score value ``t``, from the highest down, plus the start ``(0, 0)``
    at ``t = +inf``; ``tpr`` is the share of OOD scores ``>= t`` (OOD caught), ``fpr`` the share of ID
    scores ``>= t`` (ID flagged as OOD). Tied scores are never split.

    Examples
    --------
    >>> fpr, tpr, thresholds = roc_curve_ood([0.0, 1.0, 2.0], [1.0, 3.0])
    >>> thresholds.tolist()
    [inf, 3.0, 2.0, 1.0, 0.0]
    >>> (fpr * 3).tolist(), (tpr * 2).tolist()
    ([0.0, 0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 1.0, 2.0, 2.0])
    """
    s_in, s_out = _scores(scores_in, "scores_in"), _scores(scores_out, "scores_out")
    return roc_curve(s_in, s_out, positive="ood")


def plot_roc_curve(
    scores_in: Any,
    scores_out: Any,
    title: str | None = None,
    ax: Axes | None = None,
    tpr: float = 0.95,
) -> Figure:
    """The ROC curve of ID vs OOD scores, OOD positive, with the AUROC and the FPR at ``tpr`` TPR marked.

    The x axis is the false positive rate (ID samples flagged as OOD), the y axis the true positive rate
    (OOD samples caught), over all thresholds (exact, see :func:`roc_curve_ood`). The marked point is the
    first one reaching a TPR of at least ``tpr``; its x coordinate is
    ``oodscope.metrics.fpr_at_tpr(scores_in, scores_out, tpr, positive="ood")``.

    Parameters
    ----------
    scores_in, scores_out : array-like of shape [N]
        Scores of the ID and of the OOD samples (higher = more OOD).
    title : str, optional
    ax : matplotlib Axes, optional
        Draw there instead of on a new figure.
    tpr : float, default 0.95
        The TPR of the marked point.

    Returns
    -------
    matplotlib.figure.Figure
        The axes hold three lines, in order: the ROC curve (its label gives the AUROC), the chance
        diagonal, and the marked point (its label gives the FPR).
    """
    fpr_curve, tpr_curve, _ = roc_curve_ood(scores_in, scores_out)
    area = auroc(scores_in, scores_out)
    fpr_point = fpr_at_tpr(scores_in, scores_out, tpr=tpr, positive="ood")
    # the first ROC point whose TPR reaches `tpr`, compared in float like fpr_at_tpr
    tpr_point = float(tpr_curve[np.flatnonzero(tpr_curve >= tpr)[0]])
    fig, ax = _axes(ax, figsize=(5.2, 5.0))
    ax.plot(fpr_curve, tpr_curve, color=OOD_COLOR, lw=2, label=f"ROC (AUROC = {area:.4f})")
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="chance")
    percent = f"{100 * tpr:g}"
    ax.plot(
        [fpr_point],
        [tpr_point],
        marker="o",
        ms=8,
        ls="none",
        color="black",
        label=f"FPR@{percent}TPR = {fpr_point:.4f} (OOD positive)",
    )
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("FPR: share of ID flagged as OOD")
    ax.set_ylabel("TPR: share of OOD detected")
    ax.legend(loc="lower right")
    if title is not None:
        ax.set_title(title)
    return fig


# --- 2-D feature maps -------------------------------------------------------------------------------------


def _sample(data: Any, max_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """At most ``max_samples`` ``(inputs, labels or None)`` of ``data``, as numpy arrays."""
    if is_array_like(data):
        inputs, labels = to_numpy(data), None
    elif isinstance(data, tuple) and len(data) == 2 and all(map(is_array_like, data)):
        inputs, labels = to_numpy(data[0]), as_labels(data[1])
        if len(inputs) != len(labels):
            raise ValueError(f"(inputs, labels) have different lengths: {len(inputs)} and {len(labels)}.")
    elif isinstance(data, Mapping) and all(map(is_array_like, data.values())):
        input_key = next((key for key in INPUT_KEYS if key in data), None)
        if input_key is None:
            raise ValueError(f"Cannot tell which entry of the dict is the input among {list(data)}.")
        label_key = next((key for key in LABEL_KEYS if key in data), None)
        inputs = to_numpy(data[input_key])
        labels = None if label_key is None else as_labels(data[label_key])
    else:  # an iterable of batches: take batches in order until there are enough inputs
        parts_x, parts_y, count = [], [], 0
        for x, y in iter_batches(data):
            parts_x.append(to_numpy(x))
            parts_y.append(y)
            count += len(parts_x[-1])
            if count >= max_samples:
                break
        if not parts_x:
            raise ValueError("The data yielded no batches.")
        inputs = np.concatenate(parts_x)
        labels = None if any(y is None for y in parts_y) else np.concatenate(parts_y)
    n = len(inputs)
    if n > max_samples:
        keep = np.sort(rng.choice(n, size=max_samples, replace=False))
        inputs = inputs[keep]
        labels = None if labels is None else labels[keep]
    return inputs, labels


def _project(
    features: np.ndarray, proj_method: Any, seed: int | None, proj_kwargs: Mapping[str, Any] | None
) -> np.ndarray:
    method = proj_method.lower() if isinstance(proj_method, str) else proj_method
    options = dict(proj_kwargs or {})
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(**{"n_components": 2, "random_state": seed, **options}).fit_transform(features)
    if method == "tsne":
        from sklearn.decomposition import PCA
        from sklearn.manifold import TSNE

        if features.shape[1] > 50:  # the usual PCA step before t-SNE: faster, and removes noise dimensions
            features = PCA(n_components=50, random_state=seed).fit_transform(features)
        defaults = {
            "n_components": 2,
            "perplexity": min(30.0, (features.shape[0] - 1) / 3),
            "init": "pca",
            "random_state": seed,
        }
        return TSNE(**{**defaults, **options}).fit_transform(features)
    if proj_kwargs:
        raise ValueError(
            "proj_kwargs applies to proj_method='TSNE' or 'PCA'; configure your estimator instead."
        )
    if hasattr(proj_method, "fit_transform"):
        projected = np.asarray(proj_method.fit_transform(features))
        if projected.ndim != 2 or projected.shape[1] < 2:
            raise ValueError(f"proj_method.fit_transform returned shape {projected.shape}; expected [N, 2].")
        return projected[:, :2]
    raise ValueError(
        "proj_method must be 'TSNE', 'PCA' or an object with fit_transform (e.g. umap.UMAP()); "
        f"got {proj_method!r}."
    )


def plot_2D_features(
    model: Any,
    in_dataset: Any,
    output_layer_id: Hashable,
    out_dataset: Any = None,
    proj_method: str | Any = "TSNE",
    max_samples: int = 4000,
    title: str | None = None,
    ax: Axes | None = None,
    seed: int | None = 0,
    batch_size: int = 128,
    class_names: Any = None,
    proj_kwargs: Mapping[str, Any] | None = None,
) -> Figure:
    """A 2-D map (t-SNE or PCA) of one layer's features, ID points coloured by class, OOD points in grey.

    At most ``max_samples`` samples of each dataset are drawn at random **before** the model is run; the
    sampled inputs go through :func:`oodscope.extract.extract` with
    ``feature_layers_id=[output_layer_id]`` (feature maps are globally average-pooled), and the ID and OOD
    features are projected together.

    Parameters
    ----------
    model : torch.nn.Module or keras.Model
    in_dataset, out_dataset
        ID data, and optionally OOD data. Numpy arrays or tensors, ``(inputs, labels)`` tuples and dicts of
        arrays are sampled directly (``numpy.random.Generator.choice`` without replacement). Any other data
        ``extract`` accepts (a ``tf.data.Dataset`` of batches, a torch ``DataLoader``, a list of batches) is
        read batch by batch, in order, until ``max_samples`` inputs are collected, and then sampled: the
        sample is random only if the iterable is shuffled.
    output_layer_id : layer id
        The layer whose features are mapped: a name, an integer index or ``"penultimate"``.
    proj_method : {"TSNE", "PCA"} or estimator, default "TSNE"
        scikit-learn's ``TSNE`` (perplexity ``min(30, (N - 1) / 3)``, PCA initialisation; features with
        more than 50 dimensions are first reduced to 50 by PCA) or ``PCA``, case-insensitive, or any object
        with ``fit_transform`` returning [N, >=2].
    max_samples : int, default 4000
        Per dataset.
    title : str, optional
    ax : matplotlib Axes, optional
        Draw there instead of on a new figure.
    seed : int, optional, default 0
        Seeds the sampling and the projection.
    batch_size : int, default 128
        Batch size of the forward pass.
    class_names : sequence or mapping, optional
        Legend names of the ID classes (indexed by label); default: the labels themselves.
    proj_kwargs : dict, optional
        Keyword arguments for scikit-learn's ``TSNE`` or ``PCA``, overriding the defaults above, e.g.
        ``{"perplexity": 50, "max_iter": 500}``. t-SNE of 8,000 points takes about a minute on two cores.

    Returns
    -------
    matplotlib.figure.Figure
        The axes hold one scatter collection per ID class (or a single one when the ID data has no labels)
        and then one for the OOD points.
    """
    if isinstance(max_samples, bool) or not isinstance(max_samples, (int, np.integer)) or max_samples < 2:
        raise ValueError(f"max_samples must be an int >= 2; got {max_samples!r}.")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"seed must be None or an int >= 0; got {seed!r}.")
    _check_axes(ax)
    rng = np.random.default_rng(seed)
    x_in, y_in = _sample(in_dataset, int(max_samples), rng)
    features = [extract(model, x_in, feature_layers_id=[output_layer_id], batch_size=batch_size)]
    if out_dataset is not None:
        x_out, _ = _sample(out_dataset, int(max_samples), rng)
        features.append(extract(model, x_out, feature_layers_id=[output_layer_id], batch_size=batch_size))
    arrays = [feats.layer(output_layer_id) for feats in features]
    n_in = arrays[0].shape[0]
    if n_in + sum(array.shape[0] for array in arrays[1:]) < 4:
        raise ValueError("plot_2D_features needs at least 4 samples in all.")
    if arrays[0].shape[1] < 2:
        raise ValueError(
            f"Layer {output_layer_id!r} has {arrays[0].shape[1]} feature per sample; a 2-D map needs at "
            "least 2. Choose a wider layer as output_layer_id."
        )
    projected = _project(np.concatenate(arrays).astype(np.float64), proj_method, seed, proj_kwargs)
    points_in, points_out = projected[:n_in], projected[n_in:]

    matplotlib = require("matplotlib", "plots")
    fig, ax = _axes(ax, figsize=(6.4, 5.6))
    size = max(2.0, min(20.0, 4000.0 / max(len(projected), 1)))
    if y_in is None:
        ax.scatter(points_in[:, 0], points_in[:, 1], s=size, color=ID_COLOR, label="ID", alpha=0.8)
    else:
        classes = np.unique(y_in)
        cmap = matplotlib.colormaps["tab10" if classes.size <= 10 else "tab20"]
        for index, label in enumerate(classes):
            mask = y_in == label
            name = _class_name(class_names, label)
            ax.scatter(
                points_in[mask, 0],
                points_in[mask, 1],
                s=size,
                color=cmap(index % cmap.N),
                label=f"ID: {name}",
                alpha=0.8,
            )
    if out_dataset is not None:
        ax.scatter(points_out[:, 0], points_out[:, 1], s=size, color=OOD_POINT_COLOR, marker="x", label="OOD")
    method = proj_method.upper() if isinstance(proj_method, str) else type(proj_method).__name__
    ax.set_xlabel(f"{method} 1")
    ax.set_ylabel(f"{method} 2")
    ax.set_xticks([])
    ax.set_yticks([])
    n_entries = len(ax.collections)
    if n_entries <= 21:
        ax.legend(loc="best", fontsize="small", markerscale=2.0, ncol=1 + n_entries // 12)
    ax.set_title(title if title is not None else f"{method} of layer {output_layer_id!r}")
    return fig


def _class_name(class_names: Any, label: Any) -> str:
    value = label.item() if isinstance(label, np.generic) else label
    if class_names is None:
        return str(value)
    try:
        return str(class_names[value])
    except (KeyError, IndexError, TypeError):
        return str(value)
