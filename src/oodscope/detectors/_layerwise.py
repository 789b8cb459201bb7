"""Multi-layer scoring: aggregators that combine per-layer OOD scores into one, and the shared layer-wise
machinery of the feature detectors.

A feature detector (KNN, Mahalanobis, RMDS, SHE, Gram) scores each requested layer on its own. With one layer
that score is the result. With several, the detector is given an *aggregator*: one fitted copy of the detector
per layer scores the fit data, the aggregator learns from those per-layer fit scores how to put the layers on
a common scale, and at scoring time it combines the per-layer scores::

    det = KNN(aggregator=FisherAggregator())
    det.fit(model, train_data, feature_layers_id=["layer3", "penultimate"])
    scores, _ = det.score(test_data)

Aggregators follow the detectors' conventions: keyword hyperparameters only, validation at ``fit``, learned
state in attributes ending with ``_``, ``get_params`` / ``set_params``, and higher = more OOD.

Fit scores are in-sample, except where the in-sample score is degenerate: KNN leaves each fit sample out of
its own neighbours, and Gram's min/max bounds give leave-one-out deviations (in-sample they are all zero).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, ClassVar

import numpy as np

from .._params import Constraint, InstanceOf, Options, validate_params
from ..features import Features
from ..needs import Needs
from .base import Detector, LearnedState, NotFittedError, clone

__all__ = ["Aggregator", "FisherAggregator", "MeanNormalizedAggregator", "StdNormalizedAggregator"]


class Aggregator(LearnedState):
    """Base class of multi-layer score aggregators.

    ``fit(layer_scores)`` learns from the per-layer scores of the fit data, an array [N, L] (one column per
    layer, higher = more OOD); ``aggregate(layer_scores)`` maps per-layer scores [M, L] to one float64 score
    per sample [M], higher = more OOD.
    """

    _parameter_constraints: ClassVar[dict[str, Constraint]] = {}
    _state_shapes: ClassVar[dict[str, tuple[str | int, ...]]] = {
        "n_layers_": (),
        "mean_": ("L",),
        "std_": ("L",),
        "sorted_scores_": ("N", "L"),
        "scale_": (),
        "dof_": (),
    }

    def _known_sizes(self) -> dict[str, int]:
        layers = getattr(self, "n_layers_", None)
        return {} if layers is None else {"L": int(layers)}

    def fit(self, layer_scores: Any) -> Aggregator:
        """Learn the per-layer normalisation from fit-data scores [N, L]; returns ``self``."""
        validate_params(type(self).__name__, self.get_params(), self._parameter_constraints)
        scores = _as_layer_scores(layer_scores, type(self).__name__)
        self._reset()
        self._fit(scores)
        self.n_layers_ = scores.shape[1]
        return self

    def aggregate(self, layer_scores: Any) -> np.ndarray:
        """Combine per-layer scores [M, L] into float64 scores [M] (higher = more OOD)."""
        name = type(self).__name__
        if not hasattr(self, "n_layers_"):
            raise NotFittedError(
                f"This {name} is not fitted yet. Call fit() with per-layer fit scores first."
            )
        scores = _as_layer_scores(layer_scores, name, min_rows=0)  # scoring 0 samples gives 0 scores
        if scores.shape[1] != self.n_layers_:
            raise ValueError(
                f"{name} was fitted on {self.n_layers_} layers; got scores for {scores.shape[1]} layers."
            )
        return np.asarray(self._aggregate(scores), dtype=np.float64)

    def _fit(self, scores: np.ndarray) -> None:
        raise NotImplementedError

    def _aggregate(self, scores: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @classmethod
    def _param_names(cls) -> list[str]:
        return [name for name in inspect.signature(cls.__init__).parameters if name != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The hyperparameters, as passed to ``__init__``."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> Aggregator:
        """Set hyperparameters by name; returns ``self``. They are validated at the next ``fit``."""
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(
                    f"Invalid parameter {name!r} for {type(self).__name__}. Valid parameters are: {valid}."
                )
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = {
            name: parameter.default
            for name, parameter in inspect.signature(type(self).__init__).parameters.items()
            if name != "self"
        }
        shown = [f"{k}={v!r}" for k, v in self.get_params().items() if v is not defaults.get(k)]
        return f"{type(self).__name__}({', '.join(shown)})"


def _as_layer_scores(layer_scores: Any, owner: str, min_rows: int = 1) -> np.ndarray:
    """Per-layer scores as float64 [N, L], N at least ``min_rows`` and L at least 1, finite; real numbers only
    (a complex or string array is refused, never cast)."""
    try:
        scores = np.asarray(layer_scores)
    except ValueError:  # ragged nested lists
        raise ValueError(
            f"{owner} expects per-layer scores of shape [n_samples, n_layers]; got rows of different lengths."
        ) from None
    if scores.dtype.kind not in "biuf":
        raise TypeError(
            f"{owner} expects real-valued per-layer scores [n_samples, n_layers]; got dtype {scores.dtype}."
        )
    if scores.ndim != 2 or scores.shape[0] < min_rows or scores.shape[1] == 0:
        raise ValueError(
            f"{owner} expects per-layer scores of shape [n_samples, n_layers]; got shape {scores.shape}."
        )
    scores = scores.astype(np.float64, copy=False)
    finite = np.isfinite(scores)
    if not finite.all():
        bad_layers = np.flatnonzero(~finite.all(axis=0)).tolist()
        raise ValueError(
            f"{owner} got per-layer scores holding NaN or inf in {int((~finite.all(axis=1)).sum())} of "
            f"{len(scores)} rows (layer column(s) {bad_layers}); check the layers' detectors and features."
        )
    return scores


class StdNormalizedAggregator(Aggregator):
    """Mean over layers of the scores standardised by the fit data's per-layer mean and std.

    With μ_l and σ_l the mean and standard deviation of layer l's scores on the fit data and L layers:

        S(x) = (1 / L) Σ_l (s_l(x) − μ_l) / σ_l.

    (Centring only shifts the result by a constant; it keeps the score readable as "fit standard deviations
    above the fit mean".) A layer whose fit scores are constant cannot be standardised and raises an error.

    Attributes
    ----------
    mean_, std_ : ndarray of shape [L]
        Per-layer mean and standard deviation (ddof=0) of the fit scores.
    n_layers_ : int

    Examples
    --------
    >>> import numpy as np
    >>> agg = StdNormalizedAggregator().fit(np.array([[0.0, 10.0], [2.0, 30.0]]))
    >>> agg.aggregate(np.array([[1.0, 20.0], [3.0, 40.0]]))
    array([0., 2.])
    """

    def __init__(self) -> None:
        pass

    def _fit(self, scores: np.ndarray) -> None:
        self.mean_ = scores.mean(axis=0)
        self.std_ = scores.std(axis=0)
        _check_nonzero(self.std_, "standard deviation", type(self).__name__)

    def _aggregate(self, scores: np.ndarray) -> np.ndarray:
        return ((scores - self.mean_) / self.std_).mean(axis=1)


class MeanNormalizedAggregator(Aggregator):
    """Mean over layers of the scores divided by the fit data's per-layer mean score.

    With μ_l the mean of layer l's scores on the fit data and L layers:

        S(x) = (1 / L) Σ_l s_l(x) / |μ_l|.

    This is the normalisation of Gram (Sastry & Oore, ICML 2020, https://arxiv.org/abs/1912.12510), whose
    total deviation Σ_l Δ_l(x) / E[Δ_l] is L times this score. Dividing by |μ_l| keeps the direction of
    negative-valued scores; a layer whose fit scores average to zero raises an error (use
    :class:`StdNormalizedAggregator` or :class:`FisherAggregator` for such scores).

    Attributes
    ----------
    mean_ : ndarray of shape [L]
        Per-layer mean of the fit scores.
    n_layers_ : int

    Examples
    --------
    >>> import numpy as np
    >>> agg = MeanNormalizedAggregator().fit(np.array([[1.0, 10.0], [3.0, 30.0]]))
    >>> agg.aggregate(np.array([[2.0, 20.0], [4.0, 80.0]]))
    array([1., 3.])
    """

    def __init__(self) -> None:
        pass

    def _fit(self, scores: np.ndarray) -> None:
        self.mean_ = scores.mean(axis=0)
        _check_nonzero(self.mean_, "mean", type(self).__name__)

    def _aggregate(self, scores: np.ndarray) -> np.ndarray:
        return (scores / np.abs(self.mean_)).mean(axis=1)


def _check_nonzero(values: np.ndarray, what: str, owner: str) -> None:
    zero = np.flatnonzero(values == 0)
    if zero.size:
        raise ValueError(
            f"{owner} cannot normalise layer(s) {zero.tolist()}: their fit scores have a {what} of 0. "
            "Use FisherAggregator, which works on ranks."
        )


class FisherAggregator(Aggregator):
    """Fisher's method on empirical p-values, with Brown's correction for dependent layers.

    Fisher, "Statistical Methods for Research Workers", 1925; Brown, "A Method for Combining Non-Independent,
    One-Sided Tests of Significance", Biometrics 1975, https://doi.org/10.2307/2529826; the empirical variant
    of Brown's method: Poole et al., Bioinformatics 2016, https://doi.org/10.1093/bioinformatics/btw438.

    Each layer's score is turned into an empirical p-value against the N fit scores of that layer,
    p_l(x) = (1 + #{i : s_l(x_i) ≥ s_l(x)}) / (N + 1), and the L p-values are combined by Fisher's statistic
    X(x) = −2 Σ_l log p_l(x). Under independence X ~ χ²(2L). Layers are not independent, so Brown's
    correction treats X as c·χ²(f), matching its mean E = 2L and its variance
    V = 4L + 2 Σ_{l<m} cov(−2 log p_l, −2 log p_m), the covariances estimated on the fit data (with
    leave-one-out p-values): c = V / (2E), f = 2E² / V. The score is the negative log of the combined
    p-value, higher = more OOD:

        S(x) = −log P(χ²(f) ≥ X(x) / c).

    It depends on the layers' scores only through their ranks among the fit scores, so it needs no scaling.

    Parameters
    ----------
    brown : bool, default=True
        Apply Brown's correction; ``False`` assumes independent layers (c = 1, f = 2L).

    Attributes
    ----------
    sorted_scores_ : ndarray of shape [N, L]
        The fit scores of each layer, sorted.
    scale_ : float
        Brown's c (1 without the correction).
    dof_ : float
        Brown's f (2L without the correction).
    n_layers_ : int

    Examples
    --------
    >>> import numpy as np
    >>> fit = np.random.default_rng(0).normal(size=(500, 2))
    >>> agg = FisherAggregator().fit(fit)
    >>> scores = agg.aggregate(np.array([[0.0, 0.0], [3.0, 3.0]]))
    >>> bool(scores[1] > scores[0] > 0)
    True
    """

    _parameter_constraints = {"brown": Options([True, False])}

    def __init__(self, brown: bool = True) -> None:
        self.brown = brown

    def _fit(self, scores: np.ndarray) -> None:
        n, n_layers = scores.shape
        self.sorted_scores_ = np.sort(scores, axis=0)
        expected = 2.0 * n_layers
        variance = 2.0 * expected
        if self.brown and n_layers > 1 and n > 2:
            # leave-one-out p-values of the fit samples: #{j != i : s_j >= s_i} + 1 over (N - 1) + 1
            counts = self._count_at_least(scores)
            transformed = -2.0 * np.log(counts / n)
            cov = np.cov(transformed, rowvar=False)
            variance += cov.sum() - np.trace(cov)  # 2 * sum over l < m of cov(l, m)
            variance = max(variance, 1e-12)
        self.scale_ = variance / (2.0 * expected)
        self.dof_ = 2.0 * expected**2 / variance

    def _count_at_least(self, scores: np.ndarray) -> np.ndarray:
        n = self.sorted_scores_.shape[0]
        counts = np.empty(scores.shape, dtype=np.float64)
        for layer in range(scores.shape[1]):
            below = np.searchsorted(self.sorted_scores_[:, layer], scores[:, layer], side="left")
            counts[:, layer] = n - below
        return counts

    def _aggregate(self, scores: np.ndarray) -> np.ndarray:
        from scipy.stats import chi2  # scikit-learn's dependency; imported only here

        n = self.sorted_scores_.shape[0]
        log_p = np.log((self._count_at_least(scores) + 1.0) / (n + 1.0))
        statistic = -2.0 * log_p.sum(axis=1)
        return -chi2.logsf(statistic / self.scale_, self.dof_)


# --- the layer-wise machinery of the feature detectors ---------------------------------------------------

LAYERS = InstanceOf((list, tuple), allow_none=True)
AGGREGATOR = InstanceOf(Aggregator, allow_none=True)


class _LayerwiseDetector(Detector):
    """A detector that scores each of its layers on its own, combining several with an aggregator.

    Subclasses have the hyperparameters ``layers`` (layer ids to use; ``None``: every layer of the fit
    Features) and ``aggregator``, and implement the single-layer methods ``_fit_layer(h, features)``,
    ``_score_layer(h, features)`` and, when the in-sample score of the fit data is degenerate,
    ``_fit_layer_scores(h, features)``; ``h`` is the layer's [N, D] array.

    With one layer the detector holds that layer's state. With several it holds ``layer_detectors_`` (one
    fitted single-layer copy per layer) and ``aggregator_`` (fitted on their fit-data scores).
    """

    requires = frozenset({"features"})
    default_layers = ("penultimate",)
    #: the constraints of the two shared hyperparameters; methods with more extend this dict
    _parameter_constraints: ClassVar[dict[str, Constraint]] = {"layers": LAYERS, "aggregator": AGGREGATOR}
    layers: Sequence[Hashable] | None
    aggregator: Aggregator | None

    def needs(self, layers: Any = None) -> Needs:
        """At model level, the layers read are ``layers`` when set, else ``default_layers``."""
        if layers is None and isinstance(self.layers, (list, tuple)):
            layers = list(self.layers)
        return super().needs(layers)

    def _state_layer(self) -> Any:
        layers = getattr(self, "layers_", None)
        return layers[0] if isinstance(layers, list) and len(layers) == 1 else None

    def _fit(self, features: Features) -> None:
        name = type(self).__name__
        layer_ids = list(features.layers) if self.layers is None else list(self.layers)
        if not layer_ids:
            raise ValueError(
                f"The 'layers' parameter of {name} must name at least one layer. Got [] instead."
            )
        values = [features.layer(layer_id) for layer_id in layer_ids]
        self.layers_ = layer_ids
        if len(layer_ids) == 1:
            self._fit_layer(values[0], features)
            return
        if self.aggregator is None:
            raise ValueError(
                f"{name} was given {len(layer_ids)} layers {layer_ids} but no aggregator to combine their "
                "scores. Pass aggregator=FisherAggregator() (or StdNormalizedAggregator(), "
                "MeanNormalizedAggregator()), or select one layer with layers=[...]."
            )
        detectors = []
        for layer_id in layer_ids:
            detector = clone(self).set_params(layers=[layer_id], aggregator=None)
            detectors.append(detector._fit_features(features))
        fit_scores = np.column_stack(
            [det._fit_layer_scores(h, features) for det, h in zip(detectors, values, strict=True)]
        )
        self.layer_detectors_ = detectors
        self.aggregator_ = clone(self.aggregator).fit(fit_scores)

    def _score(self, features: Features) -> np.ndarray:
        if len(self.layers_) == 1:
            return self._score_layer(features.layer(self.layers_[0]), features)
        per_layer = np.column_stack([det._score(features) for det in self.layer_detectors_])
        return self.aggregator_.aggregate(per_layer)

    def _fit_layer(self, h: np.ndarray, features: Features) -> None:
        raise NotImplementedError

    def _score_layer(self, h: np.ndarray, features: Features) -> np.ndarray:
        raise NotImplementedError

    def _fit_layer_scores(self, h: np.ndarray, features: Features) -> np.ndarray:
        """Scores of the fit data that the aggregator learns from (in-sample unless overridden)."""
        return self._score_layer(h, features)


# --- blocked computation helpers -------------------------------------------------------------------------

#: bytes of float64 working memory per row block
BLOCK_BYTES = 1 << 23


def block_rows(n_columns: int) -> int:
    """Rows per block for [rows, n_columns] float64 work: at most 1024, at least 16, about 8 MB.

    It depends on the width only, never on the number of rows, so that every row is computed by the same
    sequence of fixed-size operations however the data is batched.
    """
    return int(max(16, min(1024, BLOCK_BYTES // (8 * max(n_columns, 1)))))


def map_row_blocks(x: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply ``fn`` to fixed-size float64 row blocks of ``x`` (the last one zero-padded); concatenate.

    ``fn`` gets a [b, D] float64 array (b from :func:`block_rows`) and returns a per-row result [b, ...]; the
    padding rows are dropped. Padding keeps every matrix product the same shape, which makes the result of a
    row independent of its position and of the batch it came in (BLAS kernels may round differently for
    different shapes). Working memory: one block.
    """
    n, width = x.shape
    if n == 0:  # the shape of a result row comes from fn itself
        return np.asarray(fn(np.zeros((1, width)))[:0], dtype=np.float64)
    rows = block_rows(width)
    block = np.zeros((rows, width), dtype=np.float64)
    parts = []
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        block[: stop - start] = x[start:stop]
        block[stop - start :] = 0.0
        parts.append(np.array(fn(block)[: stop - start], dtype=np.float64))
    return np.concatenate(parts, axis=0) if parts else np.zeros(0)


def iter_row_blocks(n: int, n_columns: int) -> Iterator[slice]:
    """Slices of about 8 MB of float64 rows (their bounds depend on n and the width only), for passes over
    the fit data such as sums and second moments."""
    rows = max(1, BLOCK_BYTES // (8 * max(n_columns, 1)))
    for start in range(0, n, rows):
        yield slice(start, min(start + rows, n))


def column_mean(h: np.ndarray) -> np.ndarray:
    """Mean of the rows of h [N, D] in float64 [D], summed one block of rows at a time (no float64 copy of
    the whole array)."""
    total = np.zeros(h.shape[1])
    for rows in iter_row_blocks(len(h), h.shape[1]):
        total += h[rows].sum(axis=0, dtype=np.float64)
    return total / len(h)
