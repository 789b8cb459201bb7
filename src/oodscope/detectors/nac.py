"""NAC-UE: how well the fit data covered the states a sample puts its neurons in."""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from typing import Any

import numpy as np

from .._params import Constraint, Interval
from ..extract import spatial_sum
from ..features import Features
from ..losses import KLToUniform
from ..needs import Gradient, GradientOf, Needs, layer_tuple
from ._layerwise import map_row_blocks
from ._logits import as_logits, log_softmax
from .base import Detector

__all__ = ["NAC", "kl_uniform_gradient", "nac_coverage", "nac_edges", "nac_layer_score", "nac_states"]

PENULTIMATE = "penultimate"
#: the per-layer hyperparameters, each a scalar or one value per layer
PER_LAYER = ("alpha", "bins", "saturation")


def nac_edges(bins: int = 50) -> np.ndarray:
    """The official code's M fixed bin edges on the state axis, float64 [M] (M even, at least 4).

    With K = M / 2 and r = log₁₀₀₀(linspace(1, √1000, K)) (a ramp from 0 to 0.5), the edges are r without
    its last value, then 1 − r reversed (0.5 to 1), the last edge moved from 1 to 1.01, and 1.2 appended.
    That gives M − 1 half-open bins [e_m, e_{m+1}); the last, [1.01, 1.2), lies beyond every state, so
    M − 2 bins are live. They are **finest around 0.5** and coarsest next to 0 and 1 (for M = 50 the first
    bin is [0, 0.119), the two around 0.5 are 0.006 wide).

    >>> nac_edges(8).round(4)
    array([0.    , 0.3498, 0.4436, 0.5   , 0.5564, 0.6502, 1.01  , 1.2   ])
    """
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 4 or bins % 2:
        raise ValueError(f"nac_edges needs an even number of edges, at least 4; got {bins!r}.")
    ramp = np.log(np.linspace(1.0, np.sqrt(1000.0), int(bins) // 2)) / np.log(1000.0)
    edges = np.concatenate([ramp[:-1], (1.0 - ramp)[::-1]])
    edges[-1] += 1e-2
    return np.append(edges, 1.2)


def kl_uniform_gradient(logits: Any, head_weight: Any) -> np.ndarray:
    """∂L/∂h of ``L = −(1/C) Σ_c log softmax(z)_c`` for z = W h + b: ``Wᵀ (p − 1/C)`` per sample, float64
    [N, D] (W [C, D] laid out as ``Features.head_weight``).

    This is the gradient NAC takes at the head's input, in closed form: no backward pass.

    >>> kl_uniform_gradient([[0.0, 0.0], [2.0, 0.0]], [[1.0, 0.0], [0.0, 2.0]]).round(4)
    array([[ 0.    ,  0.    ],
           [ 0.3808, -0.7616]])
    """
    z = as_logits(logits)
    w = np.asarray(head_weight, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != z.shape[1]:
        raise ValueError(
            f"kl_uniform_gradient expects the head's weight [C, D] for logits of {z.shape[1]} classes; got "
            f"shape {w.shape}."
        )
    uniform = 1.0 / z.shape[1]
    # fixed-size blocks: a sample's gradient does not depend on the batch it comes in
    return map_row_blocks(z, lambda block: (np.exp(log_softmax(block)) - uniform) @ w)


def nac_states(activations: Any, gradients: Any, alpha: float = 100.0) -> np.ndarray:
    """Neuron states ``σ(α · o ⊙ g)`` in [0, 1], float64 [N, D]: o a layer's (spatially summed) output, g the
    gradient of the KL loss with respect to it (spatially summed the same way).

    >>> nac_states([[1.0, 2.0]], [[0.0, -0.01]], alpha=100.0).round(4)
    array([[0.5   , 0.1192]])
    """
    o, g = np.asarray(activations), np.asarray(gradients)
    if o.ndim != 2 or o.shape != g.shape:
        raise ValueError(
            f"nac_states expects activations and gradients of one shape [N, D]; got {o.shape} and {g.shape}."
        )
    states = np.multiply(o, g, dtype=np.float64)  # cast element by element: no float64 copies of o and g
    states *= -alpha
    with np.errstate(over="ignore"):  # exp overflows to inf for very negative products: the state is 0
        np.exp(states, out=states)
    states += 1.0
    return np.reciprocal(states, out=states)


#: rows per block in NAC's elementwise work: about 32 768 states, so that its float64 temporaries stay in
#: the CPU cache (twice as fast as 8 MB blocks)
CACHE_STATES = 1 << 15


def _cache_blocks(n: int, width: int) -> Iterator[slice]:
    rows = max(1, CACHE_STATES // max(width, 1))
    for start in range(0, n, rows):
        yield slice(start, min(start + rows, n))


class _Bins:
    """Counts, for each state, the edges at or below it: ``searchsorted(edges, s, side="right")``, in O(1).

    With count k, a state lies in bin k − 1 ([e_{k−1}, e_k)); k = 0 (below e_0, or NaN) and k = M (at or
    above the last edge) are outside every bin. A uniform grid over [e_0, e_last] whose cells are at most half
    the narrowest bin wide holds at most one edge per cell; the cell map c(s) (clipped to the grid) is
    monotone in s, so every edge in an earlier cell is below s and every edge in a later one above it, and
    ``count = before[c(s)] + (s >= edge_in[c(s)])`` is exact. Two to three times faster than the binary
    search on NAC's tables. Edges too uneven for a table of at most ``2**20`` cells take the binary search.
    """

    MAX_CELLS = 1 << 20

    def __init__(self, edges: np.ndarray) -> None:
        self.edges = edges
        self.lo, span = edges[0], edges[-1] - edges[0]
        self.cells = 2 * np.ceil(span / np.diff(edges).min()) if np.isfinite(span) else np.inf
        if self.cells <= self.MAX_CELLS:
            self.scale = self.cells / span
            own = self._cells(edges)
            if np.all(np.diff(own) > 0):  # one edge per cell (always, but checked rather than assumed)
                self.before = np.searchsorted(own, np.arange(int(self.cells)))
                self.edge_in = np.full(int(self.cells), np.inf)
                self.edge_in[own] = edges
                return
        self.cells = np.inf

    def _cells(self, states: np.ndarray) -> np.ndarray:
        cell = states - self.lo
        cell *= self.scale
        np.fmax(cell, 0, out=cell)  # fmax first: NaN becomes cell 0, where it counts 0 (outside every bin)
        np.fmin(cell, self.cells - 1, out=cell)
        return cell.astype(np.intp)

    def count(self, states: np.ndarray) -> np.ndarray:
        """The number of edges at or below each state, int [N, D] in [0, M]."""
        if not self.cells <= self.MAX_CELLS:
            return np.searchsorted(self.edges, states, side="right")
        cell = self._cells(states)
        count = self.before[cell]
        count += states >= self.edge_in[cell]
        return count


def _bin_counts(states: np.ndarray, bins: _Bins) -> np.ndarray:
    """How many states of each neuron (column) fall in each bin: int64 [M − 1, D]."""
    edges, width = len(bins.edges), states.shape[1]
    flat = bins.count(states) * width + np.arange(width)
    return np.bincount(flat.ravel(), minlength=(edges + 1) * width).reshape(edges + 1, width)[1:-1]


def _covered(states: np.ndarray, bins: _Bins, padded: np.ndarray) -> np.ndarray:
    """The coverage of the bin each state falls in, [N, D]: ``padded`` is the coverage table [M − 1, D] with
    a row of zeros before and after it (the counts 0 and M, outside every bin)."""
    flat = bins.count(states) * states.shape[1]
    flat += np.arange(states.shape[1])
    return padded.ravel().take(flat)


def _padded(coverage: np.ndarray) -> np.ndarray:
    zeros = np.zeros((1, coverage.shape[1]))
    return np.concatenate([zeros, np.asarray(coverage, dtype=np.float64), zeros])


def _checked_edges(edges: Any) -> np.ndarray:
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or e.size < 2 or not np.all(np.diff(e) > 0):
        raise ValueError(
            f"NAC's bin edges must be an increasing 1-D array of at least 2; got shape {e.shape}."
        )
    return e


def nac_coverage(states: Any, edges: Any, saturation: float = 50.0) -> np.ndarray:
    """Per neuron and bin, the coverage ``min(count / O, 1)`` of the fit states: float64 [M − 1, D].

    ``count[m, n]`` is the number of rows of ``states`` [N, D] whose state of neuron n lies in
    [e_m, e_{m+1}); O (``saturation``) is the count at which a bin counts as fully covered.

    >>> nac_coverage([[0.1, 0.9], [0.2, 0.9]], [0.0, 0.5, 1.0], saturation=2)
    array([[1., 0.],
           [0., 1.]])
    """
    s = np.asarray(states, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"nac_coverage expects states [N, D]; got shape {s.shape}.")
    return np.minimum(_bin_counts(s, _Bins(_checked_edges(edges))) / saturation, 1.0)


def nac_layer_score(states: Any, edges: Any, coverage: Any) -> np.ndarray:
    """One layer's NAC (higher = more like the fit data): the mean over neurons of the coverage of the bin
    each state falls in, float64 [N]; a state outside every bin counts 0.

    >>> nac_layer_score([[0.1, 0.9], [0.7, 0.9]], [0.0, 0.5, 1.0], [[1.0, 0.0], [0.5, 1.0]])
    array([1.  , 0.75])
    """
    s = np.asarray(states, dtype=np.float64)
    e = _checked_edges(edges)
    table = np.asarray(coverage, dtype=np.float64)
    if s.ndim != 2 or table.shape != (len(e) - 1, s.shape[1]):
        raise ValueError(
            f"nac_layer_score expects states [N, D] and a coverage table [M − 1, D] for M edges; got "
            f"{s.shape}, {table.shape} and {len(e)} edges."
        )
    return _covered(s, _Bins(e), _padded(table)).mean(axis=1)


class _LayerIds(Constraint):
    """A layer id (str or int), or a non-empty list or tuple of distinct ones."""

    @staticmethod
    def _is_id(value: Any) -> bool:
        return isinstance(value, (str, int)) and not isinstance(value, bool)

    def is_satisfied_by(self, value: Any) -> bool:
        if isinstance(value, (list, tuple)):
            return bool(value) and all(map(self._is_id, value)) and len(set(value)) == len(value)
        return self._is_id(value)

    def describe(self) -> str:
        return "a layer id (str or int) or a non-empty list of distinct ones"

    def invalid_examples(self) -> list[Any]:
        return [None, 2.5, True, [], ["penultimate", "penultimate"], [None]]


class _EvenEdges(Constraint):
    """An even int of at least 4 (the official edge rule gives M − 1 edges for an odd M)."""

    def is_satisfied_by(self, value: Any) -> bool:
        return Interval(int, 4, None).is_satisfied_by(value) and value % 2 == 0

    def describe(self) -> str:
        return "an even int in [4, inf)"

    def invalid_examples(self) -> list[Any]:
        return [2, 3, 51, 2.5, "50", None, True]


class _PerLayer(Constraint):
    """A value that meets ``inner``, or a non-empty list or tuple of them (one per layer)."""

    def __init__(self, inner: Constraint) -> None:
        self.inner = inner

    def is_satisfied_by(self, value: Any) -> bool:
        if isinstance(value, (list, tuple)):
            return bool(value) and all(self.inner.is_satisfied_by(item) for item in value)
        return self.inner.is_satisfied_by(value)

    def describe(self) -> str:
        return f"{self.inner.describe()}, or a list of them (one per layer)"

    def invalid_examples(self) -> list[Any]:
        bad = self.inner.invalid_examples()
        return [*bad, [], [bad[0]]]


_CONSTRAINTS = {
    "layers": _LayerIds(),
    "alpha": _PerLayer(Interval(float, 0, None, closed="neither")),
    "bins": _PerLayer(_EvenEdges()),
    "saturation": _PerLayer(Interval(float, 0, None, closed="neither")),
}


class NAC(Detector):
    """NAC-UE: the mean coverage, by the fit data, of the states a sample puts each neuron in.

    Liu, Tian, Li, Ma & Wang, "Neuron Activation Coverage: Rethinking Out-of-distribution Detection and
    Generalization", ICLR 2024. https://arxiv.org/abs/2306.02879 (code: https://github.com/BierOne/ood_coverage)

    For each layer l, o is the layer's output summed over its spatial positions (a 2-D layer as it is) and g
    the gradient of ``L = −(1/C) Σ_c log softmax(z)_c`` (KL to the uniform distribution, up to a constant;
    summed over the batch, so each sample gets its own gradient) with respect to that output, summed the same
    way. The state of neuron n is s_n = σ(α_l · o_n · g_n). At fit, the states of the fit samples fill a
    histogram per neuron on the fixed edges of :func:`nac_edges` (M_l edges), and a bin's coverage is
    cov_l[m, n] = min(count[m, n] / O_l, 1). A sample scores, higher = more OOD,

        S(x) = −(1/L) Σ_l (1/N_l) Σ_n cov_l[bin(s_n(x)), n].

    **The penultimate layer without a backward pass.** At the head's input h the gradient is
    ∂L/∂h = Wᵀ (softmax(z) − 1/C) (:func:`kl_uniform_gradient`). So with the default ``layers="penultimate"``
    NAC reads the plain forward pass (the penultimate features, logits and head) and scores precomputed
    :class:`~oodscope.Features`. Any other layer needs the model: ``NAC(layers=["layer3", "penultimate"])
    .fit(model, data)`` runs one forward and backward pass per batch (a gradient pass of
    :class:`~oodscope.losses.KLToUniform`, shared by every detector that differentiates that loss, e.g. all
    NACs in one ``evaluate``) and reads each layer and its gradient, both summed over the spatial axes (a
    user's ``postproc_fns`` for a layer replace that sum). It reads the head's weights in every case, so the
    model must end in a linear layer.

    **Against the official code** (``BierOne/ood_coverage``, ``openood/postprocessors/nac``): the same state
    (``sigmoid(o*g_kl)``, sums over H×W, gradient of the summed loss), the same edges (its ``logspace(1e3,
    M)``; we checked that they are finest around 0.5, not near 0 and 1), the same coverage and the same
    per-layer mean (``test_method: avg``). It fits on every sample it is given, as the official code does (on
    1 000 class-balanced training images for ResNets: choosing them is up to the caller). States are computed
    in float64 (the official code: float32 on the GPU), which may move a state lying on a bin edge. An odd M,
    which the official code cannot reshape, is refused. pytorch-ood's ``NACUE`` differs: it pools
    mean(a ⊙ g) instead of Σa · Σg and bins on other edges. OpenOOD's main branch has no NAC.

    Parameters
    ----------
    layers : layer id or list of layer ids, default="penultimate"
        The layers whose neurons are covered, in the order of the per-layer values below. Only
        ``"penultimate"``: the closed form, no gradient pass.
    alpha : float or list of float, default=100.0
        α_l > 0, the steepness of the sigmoid; one value for every layer, or one per layer.
    bins : int or list of int, default=50
        M_l, the number of bin edges (even, at least 4; M_l − 1 bins).
    saturation : float or list of float, default=50.0
        O_l > 0, the count at which a bin is fully covered.

    The defaults are the official CIFAR-10 setting of the avgpool layer (the head's input of a ResNet):
    O = 50, M = 50, α = 100. Its other layers there: layer3 O=100, M=500, α=1000; layer2 O=5, M=50,
    α=0.001; layer1 O=100, M=500, α=0.001. ImageNet: avgpool O=10, M=50, α=3000; layer3 O=500, M=50,
    α=300; layer2 O=50, M=500, α=0.01; layer1 O=5000, M=1000, α=1. ``search_space`` is the official CIFAR-10
    sweep of the avgpool layer, O ∈ {10, 50} (M = 50, α = 100); the leaderboard run (C10 near/far AUROC
    90.93 / 94.60) used all four layers, tuned on OOD validation data.

    Attributes
    ----------
    edges_ : list of ndarray [M_l]
        The bin edges of each layer, in the order of ``layers``.
    coverage_ : list of ndarray [M_l − 1, N_l]
        The coverage table of each layer.

    Cost: none beyond the plain pass for ``"penultimate"`` alone; otherwise one forward and backward pass per
    batch of every dataset. Scoring is O(N_l log M_l) per layer and sample.

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> w = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> h = np.array([[3.0, 0.0], [2.5, 0.1], [0.0, 3.0], [0.2, 2.0]])
    >>> nac = NAC(saturation=1).fit(Features(logits=h @ w.T, layers={"penultimate": h}, head_weight=w))
    >>> test = np.array([[2.8, 0.0], [0.1, 0.0]])  # the second puts neuron 0 in a state no fit sample had
    >>> nac.score(Features(logits=test @ w.T, layers={"penultimate": test}, head_weight=w)).scores
    array([-1. , -0.5])
    """

    requires = frozenset({"features", "logits", "head"})
    search_space = {"saturation": [10.0, 50.0]}
    _parameter_constraints = _CONSTRAINTS

    def __init__(
        self,
        layers: Hashable | Sequence[Hashable] = PENULTIMATE,
        alpha: float | Sequence[float] = 100.0,
        bins: int | Sequence[int] = 50,
        saturation: float | Sequence[float] = 50.0,
    ) -> None:
        self.layers = layers
        self.alpha = alpha
        self.bins = bins
        self.saturation = saturation

    # --- what it reads ------------------------------------------------------------------------------------

    def _layer_ids(self) -> tuple[Hashable, ...]:
        return layer_tuple(self.layers)

    def _closed_form(self) -> bool:
        return all(layer == PENULTIMATE for layer in self._layer_ids())

    def needs(self, layers: Any = None) -> Needs:
        """Its ``layers`` and the head; unless they are only ``"penultimate"``, also the gradient of
        :class:`~oodscope.losses.KLToUniform` with respect to each, every layer and gradient summed over its
        spatial axes. ``layers`` (a user's ``feature_layers_id``) must be NAC's own, or None."""
        own = self._layer_ids()
        if layers not in (None, ()) and layer_tuple(layers) != own:
            raise ValueError(
                f"NAC reads the layers of its 'layers' parameter {list(own)}, each with its own alpha, bins "
                f"and saturation; it was asked for {list(layer_tuple(layers))}. Set NAC(layers=...) instead "
                "of feature_layers_id."
            )
        if self._closed_form():
            return Needs(layers=own, head=True)
        sums = {
            key: spatial_sum for layer in own if layer != PENULTIMATE for key in (layer, GradientOf(layer))
        }
        return Needs(layers=own, head=True, gradient=Gradient(loss=KLToUniform(), wrt=own), reductions=sums)

    # --- parameters ---------------------------------------------------------------------------------------

    def _validate_params(self) -> None:
        super()._validate_params()
        layers = self._layer_ids()
        for name in PER_LAYER:
            value = getattr(self, name)
            if isinstance(value, (list, tuple)) and len(value) != len(layers):
                raise ValueError(
                    f"The {name!r} parameter of NAC has {len(value)} value(s) for the {len(layers)} layer(s) "
                    f"{list(layers)}: give one value per layer, or a single value for all."
                )

    def _per_layer(self) -> list[tuple[Hashable, float, int, float]]:
        """``(layer, alpha, bins, saturation)`` of each layer."""
        layers = self._layer_ids()
        values = [getattr(self, name) for name in PER_LAYER]
        columns = [list(v) if isinstance(v, (list, tuple)) else [v] * len(layers) for v in values]
        return list(zip(layers, *columns, strict=True))

    # --- fit and score --------------------------------------------------------------------------------------

    def _states(self, features: Features, layer: Hashable, alpha: float, rows: slice) -> np.ndarray:
        o = features.layer(layer)[rows]
        if self._closed_form():
            g = kl_uniform_gradient(features.logits[rows], features.head_weight)
        else:
            g = features.layer(GradientOf(layer))[rows]
        return nac_states(o, g, alpha)

    def _fit(self, features: Features) -> None:
        n = len(features)
        self.edges_, self.coverage_ = [], []
        for layer, alpha, bins, saturation in self._per_layer():
            edges = nac_edges(bins)
            lookup = _Bins(edges)
            counts = np.zeros((bins - 1, features.layer(layer).shape[1]), dtype=np.int64)
            for rows in _cache_blocks(n, counts.shape[1]):
                counts += _bin_counts(self._states(features, layer, alpha, rows), lookup)
            self.edges_.append(edges)
            self.coverage_.append(np.minimum(counts / saturation, 1.0))

    def _score(self, features: Features) -> np.ndarray:
        n = len(features)
        total = np.zeros(n)
        settings = self._per_layer()
        if len(settings) != len(self.coverage_):
            raise ValueError(
                f"This NAC was fitted on {len(self.coverage_)} layer(s), but its 'layers' parameter now "
                f"names {len(settings)}: fit it again."
            )
        for (layer, alpha, _, _), edges, coverage in zip(settings, self.edges_, self.coverage_, strict=True):
            lookup, padded = _Bins(np.asarray(edges, dtype=np.float64)), _padded(coverage)
            for rows in _cache_blocks(n, coverage.shape[1]):
                states = self._states(features, layer, alpha, rows)
                total[rows] += _covered(states, lookup, padded).mean(axis=1)
        return -total / len(settings)

    def _check_state(self) -> None:
        """The shape checks of the base class, then one edge array and one coverage table [M_l − 1, N_l] per
        layer (loaded state is held to them before anything is scored)."""
        super()._check_state()
        if not hasattr(self, "edges_") or not hasattr(self, "coverage_"):
            return
        layers = self._layer_ids()
        if not all(isinstance(v, list) and len(v) == len(layers) for v in (self.edges_, self.coverage_)):
            raise ValueError(
                f"NAC.edges_ and NAC.coverage_ must be lists of one array per layer {list(layers)}."
            )
        widths = getattr(self, "fit_widths_", None) or {}
        widths = widths.get("layers", {}) if isinstance(widths, dict) else {}
        for layer, edges, coverage in zip(layers, self.edges_, self.coverage_, strict=True):
            edges, coverage = np.asarray(edges), np.asarray(coverage)
            width = widths.get(layer, coverage.shape[-1] if coverage.ndim else None)
            if edges.ndim != 1 or coverage.shape != (edges.size - 1, width):
                raise ValueError(
                    f"NAC's state of layer {layer!r} does not fit together: edges of shape {edges.shape} and "
                    f"a coverage table of shape {coverage.shape} (expected {(edges.size - 1, width)})."
                )
