"""Gram matrices: deviations of a sample's higher-order feature correlations from per-class bounds."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from .._params import AnyOf, Interval, Options, validate_params
from ..features import Features
from ..needs import Needs
from ._layerwise import Aggregator, _LayerwiseDetector, iter_row_blocks

__all__ = ["Gram", "gram_bounds", "gram_deviation", "gram_postproc", "gram_statistics"]

#: added to |bound| in the relative deviation, so that bounds at zero (dead units) stay finite
EPS = 1e-6


def gram_statistics(maps: Any, orders: int = 10, channels_last: bool = False) -> np.ndarray:
    """Per-sample Gram statistics of a batch of feature maps: float64 [B, orders · C].

    For a map F [C, S] (C channels, S = H·W positions; a 2-D activation [B, D] is D channels at one
    position) and each order p = 1..P, the row sums of the p-th order Gram matrix
    G_p = F^p (F^p)ᵀ (powers element-wise), mapped back to the scale of F by a signed p-th root:

        g_p,c = sign(r) |r|^(1/p),   r = Σ_c' (G_p)_{c c'} = Σ_s F_cs^p Σ_c' F_c's^p,

    computed without forming the C × C matrix. Columns are order-major: column (p − 1)·C + c holds g_p,c.

    Parameters
    ----------
    maps : array [B, C, H, W] (torch layout), [B, H, W, C] (Keras layout, ``channels_last=True``), any
        number of spatial axes, or [B, D].
    orders : int, default=10
        P; the paper uses orders 1 to 10.
    channels_last : bool, default=False

    >>> gram_statistics(np.array([[[1.0, 2.0], [3.0, 0.0]]]), orders=2)  # one map, C=2, S=2
    array([[ 8.        , 12.        ,  5.09901951,  9.48683298]])
    """
    validate_params("gram_statistics", {"orders": orders}, {"orders": Interval(int, 1, None)})
    a = np.asarray(maps)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"gram_statistics expects real-valued feature maps; got dtype {a.dtype}.")
    a = a.astype(np.float64, copy=False)
    if a.ndim < 2:
        raise ValueError(f"gram_statistics expects a batch of maps [B, C, ...]; got shape {a.shape}.")
    if a.ndim > 2 and channels_last:
        a = np.moveaxis(a, -1, 1)
    a = a.reshape(a.shape[0], a.shape[1], -1)
    n, n_channels = a.shape[:2]
    out = np.empty((n, orders, n_channels))
    power = a.copy()
    for p in range(1, orders + 1):
        if p > 1:
            power *= a
        row_sums = np.matmul(power, power.sum(axis=1)[:, :, None])[:, :, 0]
        out[:, p - 1] = np.sign(row_sums) * np.abs(row_sums) ** (1.0 / p)
    if not np.isfinite(out).all():
        bad = np.flatnonzero(~np.isfinite(out).all(axis=(0, 2))) + 1
        raise ValueError(
            f"gram_statistics of order(s) {bad.tolist()} overflow float64 for these maps (values up to "
            f"{np.abs(a).max():.3g}); lower 'orders' or rescale the activations."
        )
    return out.reshape(n, orders * n_channels)


def gram_postproc(model: Any, feature_layers_id: Any, orders: int = 10) -> dict[Hashable, Callable]:
    """``postproc_fns`` for :func:`~oodscope.extract` (or a model-level ``fit``) that turn each requested
    layer's activations into :func:`gram_statistics` of orders 1..``orders``, in the model's layout
    (channels first for torch, channels last for Keras)::

        layers = ["layer2", "layer3"]
        feats = extract(model, data, feature_layers_id=layers, postproc_fns=gram_postproc(model, layers))
    """
    from ..backends import get_backend

    channels_last = get_backend(model).channels_last  # TypeError for anything that is not a model
    if isinstance(feature_layers_id, (str, int)):
        feature_layers_id = [feature_layers_id]
    fn = functools.partial(gram_statistics, orders=orders, channels_last=channels_last)
    return {layer_id: fn for layer_id in feature_layers_id}


def gram_bounds(stats: Any, classes: Any, n_classes: int, quantile: float = 0.0) -> tuple[np.ndarray, ...]:
    """Per-class lower and upper bounds of each statistic, float64 [n_classes, D] each.

    The bounds of class c are the ``quantile`` and 1 − ``quantile`` quantiles (min and max for 0) of the
    statistics of the samples with ``classes == c``; a class without samples gets the bounds of all samples.
    """
    x = np.asarray(stats)
    classes = np.asarray(classes)
    lower = np.empty((n_classes, x.shape[1]))
    upper = np.empty((n_classes, x.shape[1]))
    lower[:], upper[:] = _bounds(x, quantile)
    for c in np.unique(classes):
        lower[c], upper[c] = _bounds(x[classes == c], quantile)
    return lower, upper


def _bounds(x: np.ndarray, quantile: float) -> tuple[np.ndarray, np.ndarray]:
    if quantile == 0:
        return x.min(axis=0), x.max(axis=0)
    low, high = np.quantile(x, [quantile, 1.0 - quantile], axis=0)
    return low, high


def _relative_deviation(x: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    below = np.maximum(lower - x, 0.0) / (np.abs(lower) + EPS)
    above = np.maximum(x - upper, 0.0) / (np.abs(upper) + EPS)
    return (below + above).sum(axis=1)


def gram_deviation(stats: Any, classes: Any, lower: Any, upper: Any) -> np.ndarray:
    """Total relative deviation of each sample's statistics from its class's bounds, float64 [N].

    ``Δ(x) = Σ_j δ(lo_cj, hi_cj, g_j(x))`` with c = ``classes[i]`` and
    ``δ(lo, hi, v) = max(lo − v, 0) / (|lo| + ε) + max(v − hi, 0) / (|hi| + ε)``, ε = 1e-6.

    >>> gram_deviation([[0.5, 3.0]], [0], lower=[[1.0, 0.0]], upper=[[2.0, 2.0]]).round(4)
    array([1.])
    """
    x = np.asarray(stats)
    classes = np.asarray(classes)
    lower, upper = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    out = np.empty(len(x))
    for rows in iter_row_blocks(len(x), x.shape[1]):
        c = classes[rows]
        out[rows] = _relative_deviation(x[rows].astype(np.float64), lower[c], upper[c])
    return out


def _leave_one_out_deviation(x: np.ndarray) -> np.ndarray:
    """Each sample's deviation from the min/max bounds of the other samples (all of one class)."""
    n = len(x)
    if n < 2:
        return np.zeros(n)  # no other sample of the class to bound it
    smallest = np.partition(x, 1, axis=0)[:2]
    largest = np.partition(x, n - 2, axis=0)[n - 2 :]
    rows = np.arange(n)[:, None]
    # only the sample holding a column's minimum (maximum) sees the second smallest (largest) value there
    lower = np.where(rows == x.argmin(axis=0), smallest[1], smallest[0])
    upper = np.where(rows == x.argmax(axis=0), largest[0], largest[1])
    return _relative_deviation(x, lower, upper)


class Gram(_LayerwiseDetector):
    """Gram-matrix deviations: how far a sample's feature correlations leave their per-class ranges.

    Sastry & Oore, "Detecting Out-of-Distribution Examples with Gram Matrices", ICML 2020.
    https://arxiv.org/abs/1912.12510

    For each layer l and order p = 1..P, the Gram statistics g_{l,p}(x) [C_l] are the row sums of the p-th
    order Gram matrix of the layer's feature map, brought back to its scale by a p-th root (see
    :func:`gram_statistics`). With ĉ = argmax logits the predicted class and [lo, hi] the per-class range of
    each statistic over the fit samples predicted as ĉ (min and max, as in the paper; or the ``quantile`` and
    1 − ``quantile`` quantiles), the score of one layer l is its total deviation, higher = more OOD:

        S(x) = Δ_l(x) = Σ_p Σ_c δ(lo_ĉ,l,p,c, hi_ĉ,l,p,c, g_l,p,c(x)),
        δ(lo, hi, v) = max(lo − v, 0) / (|lo| + ε) + max(v − hi, 0) / (|hi| + ε),   ε = 1e-6.

    Several layers are combined by ``aggregator``; the paper's Σ_l Δ_l / E[Δ_l] is
    :class:`~oodscope.aggregation.MeanNormalizedAggregator` (times L). The aggregator learns from
    leave-one-out deviations of the fit data (with min/max bounds the in-sample deviations are all zero;
    the leave-one-out mean estimates a new ID sample's expected deviation). A predicted class without fit
    samples uses the bounds of all fit samples.

    **Where the statistics come from.** :class:`~oodscope.Features` holds 2-D layers only, so the Gram
    statistics are computed per batch at extraction, by a post-processing function. The model-level fit
    does it for you: ``Gram().fit(model, data, feature_layers_id=[...])`` extracts each layer's statistics
    of orders 1..``orders`` (and ``score(data)`` repeats that). Its default layer is ``-2``, the output of
    the layer before the head (by index): ``"penultimate"`` cannot hold Gram statistics at model level, since
    Features checks it against the head's width; name the layers you want (the paper uses every
    convolutional layer). At the Features level, each layer's columns
    are taken as the statistics to bound: extract them once with
    ``extract(model, data, feature_layers_id=layers, postproc_fns=gram_postproc(model, layers, orders))``
    and fit and score any number of Gram detectors on the result. ``orders=None`` makes the model-level path
    use the layers as extracted (pooled maps, or your own ``postproc_fns``).

    Parameters
    ----------
    orders : int or None, default=10
        P, the highest Gram order computed by the model-level path; ``None``: no Gram post-processing.
        Not used at the Features level.
    quantile : float, default=0.0
        Bounds are the q and 1 − q quantiles of each class's fit statistics; 0 gives the paper's min/max.
        In [0, 0.5).
    layers : list of layer ids, optional
        Layers to use; ``None`` uses every layer of the fit Features (at model level: the extracted ones,
        ``(-2,)`` by default).
    aggregator : Aggregator, optional
        Combines the per-layer deviations when several layers are used (required then).

    Attributes
    ----------
    lower_, upper_ : ndarray [n_classes, D]
        Per predicted class, the bounds of each statistic.
    layers_ : list
        The layer ids used (with several: ``layer_detectors_`` and ``aggregator_``).

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> stats = np.array([[1.0, 5.0], [2.0, 6.0], [10.0, 1.0], [12.0, 2.0]])
    >>> logits = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    >>> gram = Gram().fit(Features(logits=logits, layers={"penultimate": stats}))
    >>> gram.lower_
    array([[ 1.,  5.],
           [10.,  1.]])
    >>> test = np.array([[1.5, 5.5], [4.0, 5.0]])
    >>> gram.score(Features(logits=logits[:2], layers={"penultimate": test})).scores.round(6)
    array([0., 1.])
    """

    requires = frozenset({"features", "logits"})
    _state_shapes = {"lower_": ("C", "S"), "upper_": ("C", "S")}
    default_layers = (-2,)
    #: with orders=None the model-level path extracts the same Features as the Features-level tests use
    _features_only_params = {"orders": None}
    _parameter_constraints = {
        "orders": AnyOf(Interval(int, 1, None), Options([None])),
        "quantile": Interval(float, 0, 0.5, closed="left"),
        **_LayerwiseDetector._parameter_constraints,
    }

    def __init__(
        self,
        orders: int | None = 10,
        quantile: float = 0.0,
        layers: Sequence[Hashable] | None = None,
        aggregator: Aggregator | None = None,
    ) -> None:
        self.orders = orders
        self.quantile = quantile
        self.layers = layers
        self.aggregator = aggregator

    def needs(self, layers: Any = None) -> Needs:
        """At model level, each layer's activations become their Gram statistics of orders 1..``orders``
        (see :func:`gram_statistics`), in the model's layout; with ``orders=None``, the default pooling."""
        needs = super().needs(layers)
        if self.orders is None:
            return needs
        if "penultimate" in needs.layers:
            raise ValueError(
                "Gram cannot store Gram statistics under 'penultimate' at model level (Features checks that "
                "layer against the head's width). Address the layer by name or index instead, e.g. "
                "feature_layers_id=[-2] for the output of the layer before the head."
            )
        statistics = functools.partial(gram_statistics, orders=self.orders)
        return dataclasses.replace(needs, reductions=dict.fromkeys(needs.layers, statistics))

    def _fit_layer(self, h: np.ndarray, features: Features) -> None:
        classes = _predicted(features)
        self.lower_, self.upper_ = gram_bounds(h, classes, features.logits.shape[1], self.quantile)

    def _score_layer(self, h: np.ndarray, features: Features) -> np.ndarray:
        return gram_deviation(h, _predicted(features), self.lower_, self.upper_)

    def _fit_layer_scores(self, h: np.ndarray, features: Features) -> np.ndarray:
        if self.quantile > 0:  # interior bounds: in-sample deviations are informative
            return self._score_layer(h, features)
        classes = _predicted(features)
        out = np.zeros(len(h))
        for c in np.unique(classes):
            rows = np.flatnonzero(classes == c)
            out[rows] = _leave_one_out_deviation(np.asarray(h[rows], dtype=np.float64))
        return out


def _predicted(features: Features) -> np.ndarray:
    """The predicted classes (argmax of the logits), with a clear error for logits of no class."""
    if features.logits.shape[1] == 0:
        raise ValueError(
            "Gram needs logits of at least one class to pick each sample's bounds; got 0 classes."
        )
    return np.argmax(features.logits, axis=1)
