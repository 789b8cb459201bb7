"""MDSEns: Mahalanobis distances of inputs moved toward their closest class mean, summed over layers."""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
import warnings
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from .._params import Constraint, Interval
from ..features import Features
from ..needs import FromPass, Needs, Perturbation, layer_tuple
from ._layerwise import LAYERS
from .base import Detector
from .iodin import _frozen, _PositiveStd
from .mahalanobis import Mahalanobis

__all__ = ["MDSEns", "ClosestClassDistance", "SignOverStd", "mdsens_direction"]

#: a new number for every fitted or loaded state, the ``state_token`` of the losses that read it
_STATES = itertools.count()


def mdsens_direction(gradient: Any, input_std: Any = 1.0) -> np.ndarray:
    """The step direction of MDSEns's input preprocessing, of the gradient's shape [B, ...]:
    ``sign(g) / σ`` (0 where the gradient is 0).

    ``input_std`` σ is a scalar or an array that broadcasts against one sample's shape, e.g. ``(3, 1, 1)``
    per channel for channels-first images, ``(3,)`` for channels-last ones.

    >>> mdsens_direction(np.array([[[0.5, -2.0], [0.0, 1.0]]]), input_std=[0.5, 4.0]).tolist()
    [[[2.0, -0.25], [0.0, 0.25]]]
    """
    gradient = np.asarray(gradient)
    std = np.asarray(input_std, dtype=np.float64)
    sample = gradient.shape[1:]
    try:
        fits = gradient.ndim >= 1 and np.broadcast_shapes(std.shape, sample) == sample
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"MDSEns's input_std of shape {std.shape} does not broadcast against one input of shape "
            f"{sample}: give a scalar, or one value per channel shaped for the model's layout, e.g. "
            "(3, 1, 1) for channels-first and (3,) for channels-last images."
        )
    step = np.sign(gradient).astype(np.result_type(gradient.dtype, np.float32), copy=False)
    return step / std.astype(step.dtype)


@dataclasses.dataclass(frozen=True)
class SignOverStd:
    """The direction of MDSEns's step (:func:`mdsens_direction`), a :class:`~oodscope.needs.Perturbation`
    ``direction``; ``std`` is σ as a float or as nested tuples (hashable, compared by value)."""

    std: Any = 1.0

    def __call__(self, gradient: np.ndarray) -> np.ndarray:
        return mdsens_direction(gradient, self.std)


class ClosestClassDistance:
    """The loss of MDSEns's input preprocessing on one layer: the squared Mahalanobis distance of each
    sample's mean-pooled features to its closest class mean, summed over the batch,

        Σ_i (f(x_i) − μ_c*)ᵀ Σ⁻¹ (f(x_i) − μ_c*),   c* = argmin_c (f(x_i) − μ_c)ᵀ Σ⁻¹ (f(x_i) − μ_c),

    with the class held fixed (no gradient through the argmin). Σ⁻¹ is the fitted layer's
    :class:`~oodscope.detectors.Mahalanobis` whitening W (W Wᵀ = Σ⁻¹, or Σ⁺), so the loss is the distance
    that Mahalanobis scores, dead units included. With z = (f − c) W and m_k = (μ_k − c) W (c the mean of
    the class means), it is computed as Σ_i ‖z_i‖² + (‖m_c*‖² − 2 z_i·m_c*): the expansion only picks the
    class; its gradient, 2 (z_i − m_c*) Wᵀ, is exact.

    It reads the learned state of ``owner`` (an :class:`MDSEns`) when called, so the same loss serves every
    fit of that detector: it compares equal by ``(owner, layer)`` (needs registered before the fit match
    those after it), and its ``state_token`` changes with every fit and load (a compiled gradient function
    is traced anew).
    """

    def __init__(self, owner: MDSEns, layer: Hashable) -> None:
        self.owner = owner
        self.layer = layer

    @property
    def reads(self) -> tuple[Hashable, ...]:
        return (self.layer,)

    @property
    def state_token(self) -> Any:
        return getattr(self.owner, "_state", None)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ClosestClassDistance)
            and other.owner is self.owner
            and other.layer == self.layer
        )

    def __hash__(self) -> int:
        return hash((id(self.owner), self.layer))

    def __repr__(self) -> str:
        return f"ClosestClassDistance(layer={self.layer!r})"

    def __call__(self, logits: Any, ops: Any, taps: dict[Hashable, Any]) -> Any:
        h = ops.pool(taps[self.layer])
        centre, whitening, whitened_means, mean_norms = self.owner._loss_constants(self.layer)
        z = ops.native.matmul(h - ops.constant(centre, like=h), ops.constant(whitening, like=h))
        # ‖z − m_k‖² − ‖z‖², [B, K]: what tells the classes apart
        rest = ops.constant(mean_norms, like=h) - 2.0 * ops.native.matmul(
            z, ops.constant(whitened_means, like=h)
        )
        closest = ops.argmax(ops.stop_gradient(-rest))
        return ops.total(z * z) + ops.total(ops.pick(rest, closest))


class _Weights(Constraint):
    """None, or a non-empty sequence of finite real numbers (one per layer)."""

    def is_satisfied_by(self, value: Any) -> bool:
        if value is None:
            return True
        if isinstance(value, np.ndarray):
            if value.ndim != 1:
                return False
            value = value.tolist()
        if not isinstance(value, (list, tuple)):
            return False
        return bool(value) and all(
            isinstance(item, numbers.Real) and not isinstance(item, bool) and math.isfinite(float(item))
            for item in value
        )

    def describe(self) -> str:
        return "None or a non-empty list of finite floats (one per layer)"

    def invalid_examples(self) -> list[Any]:
        return ["1", 1.0, [], [1.0, float("nan")], [True], object()]


class MDSEns(Detector):
    """MDSEns: the Mahalanobis detector with input preprocessing and a weighted ensemble of layers.

    Lee, Lee, Lee & Shin, "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
    Adversarial Attacks", NeurIPS 2018. https://arxiv.org/abs/1807.03888

    For each layer l, with f_l its mean-pooled features, class means μ_{l,c} and the tied covariance Σ_l of
    the labelled fit data (a :class:`~oodscope.detectors.Mahalanobis` per layer), and
    d_l(x) = min_c (f_l(x) − μ_{l,c})ᵀ Σ_l⁻¹ (f_l(x) − μ_{l,c}) (minus the paper's confidence M_l), the
    input is moved toward its closest class mean, once per layer, and the distances of the moved inputs
    are summed with weights α_l, so that higher means more OOD:

        x̃_l = x − ε · sign(∇ₓ d_l(x)) / σ,    S(x) = Σ_l α_l d_l(x̃_l)  (= −Σ_l α_l M_l(x̃_l)).

    The gradient is that of the distance to the closest class c*, held fixed (:class:`ClosestClassDistance`),
    of the layer's features mean-pooled over its spatial axes, as they are read by default (a user's
    ``postproc_fns`` for these layers would score other features than the step moves: leave them out).
    Σ_l⁻¹ is applied through Mahalanobis's whitening (the pseudo-inverse where Σ_l is singular, e.g. units
    without variance), in the loss as in the score. σ (``input_std``) converts ε from pixel units to the
    model's input units: oodscope cannot see the normalisation, so σ defaults to 1.0 (ε in the model's
    input units); give the normalisation's std as a scalar or per channel in the model's layout
    (``[[[0.247]], [[0.243]], [[0.261]]]`` channels-first, ``[0.247, 0.243, 0.261]`` channels-last).

    The weights α are ``weights`` (all 1 by default, as OpenOOD's ``alpha_list: [1]``), or learned as in
    the paper by :meth:`fit_weights`: a logistic regression on the per-layer scores of held-out ID data
    against OOD (or adversarial) data. That tunes on OOD data.

    Layers. By default the penultimate layer only: Lee et al.'s single-layer Mahalanobis with input
    preprocessing, the variant most used. For the paper's feature ensemble give several layers (e.g. the
    output of each residual block), by ``layers`` or ``feature_layers_id``. OpenOOD's ``mds_ensemble``
    config reads one layer, its network's ``feature_list[0]``, the **stem** output (conv1, bn, relu), which
    explains its low leaderboard figures (CIFAR-10 AUROC 60.43 / 73.90, ImageNet 49.67 / 67.52); they are
    not the paper's method.

    Other differences from OpenOOD's ``mds_ensemble`` postprocessor: its step divides the sign by a
    hard-coded 0.5 in every channel, not the dataset's std (``input_std=0.5`` reproduces it); its sign of a
    zero gradient is +1 (here 0: the element is not moved); its scores carry a factor −½ (rank-neutral); its
    precision is scikit-learn's ``EmpiricalCovariance`` pseudo-inverse. pytorch-ood's ``MahalanobisODIN``
    (one layer, ε = 0.002) and ``MultiMahalanobis`` (several layers, no preprocessing) are the two halves.

    Cost per dataset: fitting runs one plain forward pass over the fit data (labels needed), shared with
    other detectors' plain pass in ``evaluate``; scoring runs, per layer, a forward and backward pass and a
    second forward pass of the moved inputs, per batch. Those passes are this detector's own (their loss
    reads its learned state): not shared with other detectors. With ``eps=0`` it reads one plain pass with
    every layer and scores precomputed :class:`~oodscope.Features`; it is then the sum of Mahalanobis
    scores of the layers.

    Parameters
    ----------
    layers : list of layer ids, optional
        The layers of the ensemble; ``None`` uses every layer of the fit Features (at model level: the
        extracted ones, ``("penultimate",)`` by default). The first layer's perturbed pass is the
        detector's own (its Features' logits); each further one is read as ``FromPass(layer, layer)``.
    eps : float, default=0.0014
        Step size ε ≥ 0 (OpenOOD's ``noise``); 0 scores the plain features.
    weights : list of float, optional
        α_l, one per layer; ``None`` gives 1 to every layer.
    input_std : float or array-like, default=1.0
        σ > 0: the input normalisation's standard deviation, a scalar or per channel (broadcast against
        one input sample).

    Attributes
    ----------
    layers_ : list
        The layer ids used, in order.
    layer_detectors_ : list of Mahalanobis
        One fitted single-layer Mahalanobis per layer (``class_means_``, ``whitening_``, ...).
    weights_ : ndarray [L]
        The α used to score: ``weights`` (or ones) after ``fit``, the regression's after
        :meth:`fit_weights`.

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> h = np.array([[1.0, 0.0], [3.0, 0.0], [-1.0, 1.0], [-3.0, -1.0]])
    >>> fit = Features(layers={"penultimate": h}, labels=np.array([0, 0, 1, 1]))
    >>> test = Features(layers={"penultimate": np.array([[2.0, 0.0], [0.0, 5.0]])})
    >>> MDSEns(eps=0.0).fit(fit).score(test).scores.round(3)
    array([ 0., 68.])
    """

    requires = frozenset({"features", "labels"})
    default_layers = ("penultimate",)
    _parameter_constraints = {
        "layers": LAYERS,
        "eps": Interval(float, 0, None, closed="left"),
        "weights": _Weights(),
        "input_std": _PositiveStd(),
    }
    _state_shapes = {"weights_": ("L",)}
    #: the paper's ε grid (Lee et al., section 3), tuned there on OOD validation data; each ε > 0 costs one
    #: gradient pass per layer and dataset. OpenOOD sweeps ``[0.0014]`` only.
    search_space = {"eps": [0.0, 0.0005, 0.001, 0.0014, 0.002, 0.005, 0.01, 0.05, 0.1, 0.2]}
    _features_only_params = {"eps": 0.0}

    def __init__(
        self,
        layers: Sequence[Hashable] | None = None,
        eps: float = 0.0014,
        weights: Sequence[float] | None = None,
        input_std: Any = 1.0,
    ) -> None:
        self.layers = layers
        self.eps = eps
        self.weights = weights
        self.input_std = input_std

    # --- what it reads -------------------------------------------------------------------------------------

    def _layer_ids(self, layers: Any) -> tuple[Hashable, ...]:
        """The layers read: those given (a user's ``feature_layers_id``), else ``layers``, else the fitted
        ones (``()``: Features whose layers are already chosen), else the penultimate layer."""
        ids = layer_tuple(layers)
        if not ids and isinstance(self.layers, (list, tuple)):
            ids = tuple(self.layers)
            if not ids:
                raise ValueError(
                    "The 'layers' parameter of MDSEns must name at least one layer. Got [] instead."
                )
        if not ids and layers is not None:
            ids = tuple(getattr(self, "layers_", ()))
        ids = ids or self.default_layers
        if len(set(ids)) != len(ids):
            raise ValueError(f"MDSEns reads each layer once; got the layers {list(ids)}.")
        return ids

    def fit_needs(self, layers: Any = None) -> Needs:
        """A plain pass with the layers: the class means and covariances come from unperturbed inputs."""
        return Needs(layers=self._layer_ids(layers))

    def needs(self, layers: Any = None) -> Needs:
        """With ``eps > 0``, one pass per layer of the inputs moved against the gradient of that layer's
        :class:`ClosestClassDistance`: the first layer's is the detector's own, each further one a pass of
        ``also`` named by its layer. With ``eps=0``, the plain pass of :meth:`fit_needs`."""
        ids = self._layer_ids(layers)
        if self.eps == 0:
            return Needs(layers=ids)
        direction = SignOverStd(std=_frozen(self.input_std))

        def moved(layer: Hashable) -> Needs:
            loss = ClosestClassDistance(self, layer)
            return Needs(layers=(layer,), perturbation=Perturbation(loss, float(self.eps), direction))

        return dataclasses.replace(moved(ids[0]), also={layer: moved(layer) for layer in ids[1:]})

    def _key(self, index: int, layer: Hashable) -> Hashable:
        """Where layer ``index`` of the ensemble is in the Features scored (see :meth:`needs`)."""
        return layer if index == 0 or self.eps == 0 else FromPass(layer, layer)

    # --- fit and score -------------------------------------------------------------------------------------

    def _fit(self, features: Features) -> None:
        layer_ids = list(features.layers) if self.layers is None else list(self.layers)
        self._layer_ids(layer_ids)  # at least one, each once
        if self.weights is not None and len(self.weights) != len(layer_ids):
            raise ValueError(
                f"The 'weights' parameter of MDSEns has {len(self.weights)} values, but it reads "
                f"{len(layer_ids)} layers {layer_ids}: give one weight per layer."
            )
        self.layers_ = layer_ids
        self.layer_detectors_ = [Mahalanobis(layers=[layer]).fit(features) for layer in layer_ids]
        ones = np.ones(len(layer_ids))
        self.weights_ = ones if self.weights is None else np.asarray(self.weights, dtype=np.float64)
        self._new_state()

    def _fit_features(self, features: Features) -> MDSEns:
        super()._fit_features(features)
        # what scoring reads: each further layer from its own pass, as FromPass(layer, layer), of the width
        # fitted (checked at score; a loaded detector is probed with it)
        widths = self.fit_widths_["layers"]
        widths.update({FromPass(layer, layer): widths[layer] for layer in self.layers_[1:]})
        return self

    def _score(self, features: Features) -> np.ndarray:
        return self._layer_scores(features) @ self.weights_

    def _layer_scores(self, features: Features) -> np.ndarray:
        columns = [
            detector._score_layer(features.layer(self._key(index, layer)), features)
            for index, (layer, detector) in enumerate(zip(self.layers_, self.layer_detectors_, strict=True))
        ]
        return np.column_stack(columns).astype(np.float64, copy=False)

    def layer_scores(
        self,
        data: Any,
        *,
        batch_size: int | None = None,
        input_key: str | None = None,
        label_key: str | None = None,
        progress: bool | None = None,
    ) -> np.ndarray:
        """The per-layer scores d_l(x̃_l) [N, L] (float64, higher = more OOD) of Features or of data run
        through the fitted model, as :meth:`score` reads them; ``score`` is their sum weighted by
        ``weights_``. The pass options replace those given to ``fit`` for this call."""
        options = dict(batch_size=batch_size, input_key=input_key, label_key=label_key, progress=progress)
        features = self._scoring_features(data, "layer_scores", **options)
        return self._layer_scores(self._check_features(features, stage="score"))

    def fit_weights(self, id_data: Any, ood_data: Any, *, cv: int = 5, **pass_options: Any) -> MDSEns:
        """Learn the layer weights α (``weights_``) as the paper does, by a logistic regression of OOD (1)
        against ID (0) on the per-layer scores of held-out data; returns ``self``.

        **This tunes on OOD data**: use OOD validation data (or adversarial examples, as the paper also
        does), never the OOD test sets. ``id_data`` and ``ood_data`` are Features or data run through the
        fitted model (``pass_options`` as for :meth:`layer_scores`).

        The regression is scikit-learn's ``LogisticRegressionCV`` with an L2 penalty, as in the paper's and
        OpenOOD's code, on the per-layer scores divided by their standard deviations over both sets (so that
        the penalty treats the layers alike); α are its coefficients divided back, and act on the raw
        distances (the intercept does not change the ranking). The penalty's strength is chosen by the
        log-loss of a ``cv``-fold cross-validation; their code used scikit-learn's former default, the
        accuracy, which ties on separable sets. A refit (``fit``) returns to ``weights``; to keep the learned
        ones, ``set_params(weights=list(det.weights_))``.
        """
        from sklearn.linear_model import LogisticRegressionCV

        if isinstance(cv, bool) or not isinstance(cv, numbers.Integral) or cv < 2:
            raise ValueError(
                f"The 'cv' argument of MDSEns.fit_weights must be an int in [2, inf). Got {cv!r}."
            )
        inside = self.layer_scores(id_data, **pass_options)
        outside = self.layer_scores(ood_data, **pass_options)
        if min(len(inside), len(outside)) < cv:
            raise ValueError(
                f"MDSEns.fit_weights needs at least cv={cv} samples in each of id_data and ood_data; got "
                f"{len(inside)} and {len(outside)}."
            )
        scores = np.vstack([inside, outside])
        is_ood = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
        scale = scores.std(axis=0)
        scale[~(scale > 0)] = 1.0
        with warnings.catch_warnings():
            # scikit-learn 1.8+ announces new defaults (l1_ratios, its fitted attributes) that leave the
            # coefficients of an L2 fit as they are; the scoring is given
            warnings.simplefilter("ignore", FutureWarning)
            regression = LogisticRegressionCV(cv=cv, scoring="neg_log_loss", max_iter=1000)
            regression.fit(scores / scale, is_ood)
        self.weights_ = regression.coef_.reshape(-1) / scale
        if not self.weights_.any():
            warnings.warn(
                "MDSEns.fit_weights: the regression gave every layer the weight 0, so every score is 0; the "
                "per-layer scores do not tell these ID and OOD sets apart.",
                stacklevel=2,
            )
        return self

    # --- learned state -------------------------------------------------------------------------------------

    def _new_state(self) -> None:
        self._state = next(_STATES)

    def _set_state(self, state: dict[str, Any]) -> None:
        super()._set_state(state)
        self._new_state()

    def _known_sizes(self) -> dict[str, int]:
        sizes = super()._known_sizes()
        layers = getattr(self, "layers_", None)
        if isinstance(layers, list):
            sizes["L"] = len(layers)
        return sizes

    def _loss_constants(self, layer: Hashable) -> tuple[np.ndarray, ...]:
        """``(c [D], W [D, r], Mᵀ [r, K], ‖m_k‖² [K])`` of the fitted layer, for
        :class:`ClosestClassDistance`: c the mean of the class means, W the whitening, M = (μ − c) W;
        computed once per fitted state."""
        self._check_is_fitted()
        cached = getattr(self, "_constants", None)
        if cached is None or cached[0] != self._state:
            cached = self._constants = (self._state, {})
        constants = cached[1]
        if layer not in constants:
            detector = self.layer_detectors_[self.layers_.index(layer)]
            means = np.asarray(detector.class_means_, dtype=np.float64)
            whitening = np.asarray(detector.whitening_, dtype=np.float64)
            centre = means.mean(axis=0)
            whitened = (means - centre) @ whitening
            constants[layer] = (
                centre,
                whitening,
                np.ascontiguousarray(whitened.T),
                (whitened**2).sum(axis=1),
            )
        return constants[layer]
