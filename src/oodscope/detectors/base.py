"""The detector contract shared by every OOD detector.

A detector is a small estimator in the scikit-learn mould:

- ``__init__`` stores explicit keyword hyperparameters and nothing else;
- ``fit(features)`` validates the hyperparameters, learns state into attributes ending with ``_`` (a refit
  replaces them all) and returns ``self``;
- ``score(features)`` returns :class:`ScoreResult` ``(scores, info)``, where ``scores`` is a float64 array of
  shape [N] and **higher means more OOD**;
- ``get_params`` / ``set_params`` / :func:`clone` read the ``__init__`` signature.

A method subclasses :class:`Detector`, declares what it needs in class attributes (``requires``,
``needs_fit``, ``_parameter_constraints``) and implements ``_fit(features)`` (when it learns anything) and
``_score(features) -> ndarray``. Everything else -- validation, requirement checks, the not-fitted error,
state reset, the result type -- lives here, so each method file holds only what is specific to it.
"""

from __future__ import annotations

import copy
import functools
import inspect
from typing import Any, ClassVar, NamedTuple

import numpy as np

from .._params import Constraint, validate_params
from ..features import Features
from ..needs import Needs, PassKind, layer_tuple

__all__ = ["Detector", "NotFittedError", "ScoreResult", "clone", "REQUIREMENTS"]

#: What a detector may declare in ``requires``.
REQUIREMENTS = {
    "logits": "the classifier's logits",
    "features": "the activations of at least one layer",
    "labels": "class labels of the fit data",
    "head": "the weights (W, b) of the classifier's final linear layer",
}


class ScoreResult(NamedTuple):
    """What :meth:`Detector.score` returns: ``scores, info = detector.score(...)``.

    Attributes
    ----------
    scores : ndarray of shape [N], float64
        OOD scores; higher means more likely out-of-distribution.
    info : dict
        What the same pass produced: ``"logits"`` and, when the data has them, ``"labels"``.
    """

    scores: np.ndarray
    info: dict[str, Any]


class NotFittedError(ValueError, AttributeError):
    """Raised when a detector that learns from ID data is used before ``fit``."""


def is_learned_name(key: Any) -> bool:
    """Whether ``key`` names learned state: an identifier ending with ``_`` and not starting with one."""
    return isinstance(key, str) and key.isidentifier() and key.endswith("_") and not key.startswith("_")


class LearnedState:
    """What fitted objects (detectors, aggregators) share: learned state lives in attributes named like
    ``mean_``, is cleared on refit, and is what ``save`` writes and ``load`` restores.

    ``_state_shapes`` declares the shapes of the learned arrays with symbolic axes, e.g.
    ``{"class_means_": ("K", "D"), "covariance_": ("D", "D"), "alpha_": ()}``: an axis named by the same
    symbol must have one size across the arrays (``"C"``, the number of classes, and ``"D"``, the width of
    the features read, are also bound by :meth:`_known_sizes`); an int is a fixed size. :meth:`_check_state`
    holds loaded state to it, so a file whose arrays do not fit together is refused at ``load`` instead of
    failing (or broadcasting silently) at ``score``.
    """

    _state_shapes: ClassVar[dict[str, tuple[str | int, ...]]] = {}

    def _learned_attributes(self) -> list[str]:
        return [key for key in vars(self) if is_learned_name(key)]

    def _reset(self) -> None:
        for key in self._learned_attributes():
            delattr(self, key)

    def _get_state(self) -> dict[str, Any]:
        """Learned state to save: by default every learned attribute. Classes whose state holds objects that
        are not arrays, numbers, strings, detectors or aggregators override this and :meth:`_set_state`."""
        return {key: getattr(self, key) for key in self._learned_attributes()}

    def _set_state(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    def _known_sizes(self) -> dict[str, int]:
        """Sizes of symbolic axes known from elsewhere than the arrays (see ``_state_shapes``)."""
        return {}

    def _check_state(self) -> None:
        """Raise a ``ValueError`` naming the attribute when learned arrays do not have their declared shapes
        (see ``_state_shapes``); nested detectors and aggregators are checked too."""
        sizes = dict(self._known_sizes())
        owner = type(self).__name__
        for name, shape in self._state_shapes.items():
            if not hasattr(self, name):
                continue
            value = np.asarray(getattr(self, name))
            if value.ndim != len(shape):
                raise ValueError(
                    f"{owner}.{name} has shape {value.shape}, but it must have {len(shape)} axes {shape}."
                )
            for symbol, size in zip(shape, value.shape, strict=True):
                expected = symbol if isinstance(symbol, int) else sizes.setdefault(symbol, size)
                if size != expected:
                    raise ValueError(
                        f"{owner}.{name} has shape {value.shape}, which does not fit the rest of its state "
                        f"(axis {symbol!r} of {shape} must be {expected})."
                    )
        for value in vars(self).values():
            for part in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(part, LearnedState):
                    part._check_state()


class Detector(LearnedState):
    """Base class of all detectors; see the module docstring for the contract.

    Class attributes
    ----------------
    requires : frozenset of str
        Inputs the detector reads from :class:`~oodscope.Features`; keys of :data:`REQUIREMENTS`.
        ``"labels"`` is needed at fit time only.
    needs_fit : bool
        False for stateless detectors, which score without being fitted.
    default_layers : tuple
        Layer ids a model-level ``fit`` extracts when not told otherwise, e.g. ``("penultimate",)``.
    """

    requires: ClassVar[frozenset[str]] = frozenset({"logits"})
    needs_fit: ClassVar[bool] = True
    _state_shapes: ClassVar[dict[str, tuple[str | int, ...]]] = {
        "n_samples_fit_": (),
        "threshold_": (),
        "threshold_tpr_": (),
        "calibration_scores_": ("M",),
    }
    #: layers extracted when fitted on a model without ``feature_layers_id``
    default_layers: ClassVar[tuple[Any, ...]] = ()
    #: the method's published tuning grid (OpenOOD's sweep where it has one), as data for
    #: :func:`~oodscope.tune`: ``tune(det, det.search_space, fit, id_val, ood_val)`` reproduces that
    #: automatic parameter search. ``{}`` (one candidate: the defaults) when the method is not tuned.
    search_space: ClassVar[dict[str, list[Any]] | list[dict[str, list[Any]]]] = {}
    #: hyperparameters under which the detector scores Features without a model (for the test suite)
    _features_only_params: ClassVar[dict[str, Any]] = {}
    _parameter_constraints: ClassVar[dict[str, Constraint]] = {}

    # --- what the detector needs from a model ------------------------------------------------------------

    def needs(self, layers: Any = None) -> Needs:
        """What this detector reads from a model pass, as data (see :mod:`oodscope.needs`).

        ``layers`` (a user's choice, e.g. ``fit(model, data, feature_layers_id=...)``) replaces the layers the
        detector reads by default: ``default_layers``, or the penultimate layer for a detector that requires
        ``"features"`` and names none. Methods whose needs depend on hyperparameters override this (a layer
        hyperparameter, ODIN's perturbation, Gram's post-processing, an edit or a gradient).
        """
        if layers is None:
            layers = self.default_layers or (("penultimate",) if "features" in self.requires else ())
        return Needs(layers=layer_tuple(layers), head="head" in self.requires)

    def fit_needs(self, layers: Any = None) -> Needs:
        """What this detector reads from the fit data; by default what it reads to score (:meth:`needs`).

        A method whose scoring pass depends on what it learned overrides this: e.g. input preprocessing along
        the gradient of a distance to fitted class means learns those means from a plain pass first.
        """
        return self.needs(layers)

    # --- the public contract -------------------------------------------------------------------------------

    def fit(self, model_or_features: Any, fit_data: Any = None, **pass_options: Any) -> Detector:
        """Fit on in-distribution data and return ``self``; a refit discards everything learned before.

        Two forms:

        - ``fit(features)``: fit on precomputed :class:`~oodscope.Features` (array level);
        - ``fit(model, fit_data=None, **pass_options)``: remember the model (by reference; it is never
          modified) and, when the detector learns from data, run it over ``fit_data`` as the detector needs
          (:meth:`needs`). Later ``score(data)`` calls run the same model with the same options. Stateless
          detectors accept ``fit(model)`` alone and ignore ``fit_data``. The pass options are those of
          :class:`~oodscope.BoundModel`: ``feature_layers_id`` (instead of the layers the detector reads by
          default), ``head_layer_id=-1``, ``postproc_fns``, ``batch_size=128``, ``input_key``,
          ``label_key``, ``progress``; a :class:`~oodscope.BoundModel` may be given as the model.
        """
        if isinstance(model_or_features, Features):
            if fit_data is not None:
                raise TypeError("fit(features) takes no fit_data: the Features are the fit data.")
            if pass_options:
                raise TypeError(
                    f"fit(features) takes no pass options ({sorted(pass_options)}): they apply to a model."
                )
            self._bound = None
            return self._fit_features(model_or_features)
        from ..binding import bind

        bound = bind(model_or_features, **pass_options)
        self._validate_params()  # before any pass, so a bad value fails fast
        if not self._needs_fit():
            self._plan(bound)  # checks that the model can give what the detector needs
            self._reset()
            self.n_samples_fit_ = 0
        elif fit_data is None:
            raise ValueError(
                f"{type(self).__name__} learns from in-distribution data: call fit(model, fit_data) with the "
                "data the model was trained on (or held-out ID data)."
            )
        else:
            self._fit_features(self._plan(bound, fit=True).features(fit_data, "fit")[repr(self)])
        self._bound = bound
        return self

    def _plan(self, bound: Any, fit: bool = False) -> Any:
        from ..plan import Plan

        plan = Plan(bound, strict=True)
        needs = self.fit_needs if fit else self.needs
        plan.add(repr(self), needs(bound.feature_layers_id))
        return plan

    def score(
        self,
        data: Any,
        *,
        batch_size: int | None = None,
        input_key: str | None = None,
        label_key: str | None = None,
        progress: bool | None = None,
    ) -> ScoreResult:
        """Score :class:`~oodscope.Features`, or data run through the model given to ``fit``.

        Higher means more OOD. For data, the pass uses the options given to ``fit``; ``batch_size``,
        ``input_key``, ``label_key`` and ``progress`` replace them for this call when given (e.g. OOD data
        whose dict batches name the input differently). They do not apply to Features.

        Returns
        -------
        ScoreResult
            ``(scores, info)``: float64 scores of shape [N] and a dict with the logits (and labels, when
            present) that the scores were computed from.
        """
        options = dict(batch_size=batch_size, input_key=input_key, label_key=label_key, progress=progress)
        return self._score_features(self._scoring_features(data, "score", **options))

    def _scoring_features(self, data: Any, caller: str, **options: Any) -> Features:
        """``data`` as the Features this detector scores: given Features as they are, else the pass of the
        model given to ``fit`` (``options`` replace its pass options); ``caller`` names the public method in
        errors."""
        if self._needs_fit():
            self._check_is_fitted()
        self._validate_params()
        if isinstance(data, Features):
            return data
        if self._bound is None:
            raise TypeError(
                f"{type(self).__name__}.{caller}() got {type(data).__name__}, not Features, and no model is "
                "known: call fit(model, ...) first to score data through the model (for a saved detector, "
                "load(path, model=model)), or pass oodscope.Features."
            )
        bound = self._bound.replace(**options)
        return self._plan(bound).features(data, "score")[repr(self)]

    def _fit_features(self, features: Features) -> Detector:
        self._validate_params()
        features = self._check_features(features, stage="fit")
        if len(features) == 0 and self._needs_fit():
            raise ValueError(
                f"{type(self).__name__}.fit() got Features of 0 samples: it learns from in-distribution "
                "data, so give it at least one sample (in practice thousands)."
            )
        self._reset()
        try:
            self._fit(features)
        except BaseException:
            self._reset()  # a failed fit leaves the detector unfitted, not half-fitted
            raise
        self.n_samples_fit_ = len(features)
        self.fit_widths_ = features.widths()
        return self

    def _score_features(self, features: Features) -> ScoreResult:
        features = self._check_features(features, stage="score")
        scores = np.asarray(self._score(features), dtype=np.float64)
        if scores.shape != (len(features),):
            raise RuntimeError(
                f"{type(self).__name__} produced scores of shape {scores.shape} for {len(features)} samples."
            )
        info: dict[str, Any] = {}
        if features.logits is not None:
            info["logits"] = features.logits
        if features.labels is not None:
            info["labels"] = features.labels
        return ScoreResult(scores, info)

    def _needs_fit(self) -> bool:
        """Whether this instance must be fitted before scoring (composite detectors ask their parts)."""
        return self.needs_fit

    # --- decisions: thresholds and conformal p-values ----------------------------------------------------

    def calibrate(self, id_data: Any, tpr: float = 0.95, **pass_options: Any) -> Detector:
        """Set a decision threshold from held-out in-distribution data; returns ``self``.

        ``pass_options`` (``batch_size``, ``input_key``, ``label_key``, ``progress``) go to :meth:`score`, as
        in :meth:`predict` and :meth:`pvalues`.

        ``threshold_`` is the smallest score that keeps at least ``tpr`` of the given ID samples (score
        <= threshold); ``predict`` then flags scores above it as OOD. The sorted scores are kept in
        ``calibration_scores_`` for :meth:`pvalues`. Use ID data that was *not* used to fit the detector.
        A refit discards the calibration.
        """
        from ..metrics import threshold_at_tpr

        threshold_at_tpr([0.0], tpr)  # a bad tpr fails before the pass
        scores = np.sort(self.score(id_data, **pass_options).scores)
        if scores.size == 0:
            raise ValueError(
                f"{type(self).__name__}.calibrate() got no samples in id_data: a threshold needs held-out "
                "in-distribution samples (a few hundred at least for a stable one)."
            )
        self.threshold_ = threshold_at_tpr(scores, tpr)
        self.threshold_tpr_ = float(tpr)
        self.calibration_scores_ = scores
        return self

    def predict(self, data: Any, **pass_options: Any) -> np.ndarray:
        """Boolean array, True where a sample is flagged OOD (score above ``threshold_``)."""
        self._check_calibrated()
        return self.score(data, **pass_options).scores > self.threshold_

    def pvalues(self, data: Any, **pass_options: Any) -> np.ndarray:
        """Conformal p-values of the samples against the calibration scores.

        p(x) = (1 + #{calibration scores >= s(x)}) / (n + 1). Guarantee: if the calibration samples and a
        test sample are exchangeable (drawn i.i.d. from the same in-distribution), then for every level a,
        P(p(x) <= a) <= a; flagging p <= a as OOD therefore wrongly flags at most a share a of ID data (on
        average over calibration sets). Small p-values mean unlike the ID data.
        """
        from ..metrics import conformal_pvalues

        self._check_calibrated()
        return conformal_pvalues(self.score(data, **pass_options).scores, self.calibration_scores_)

    def _check_calibrated(self) -> None:
        if getattr(self, "threshold_", None) is None:
            raise NotFittedError(
                f"This {type(self).__name__} has no threshold yet: call calibrate(held_out_id_data) first."
            )

    # --- persistence ----------------------------------------------------------------------------------------

    def save(self, path: Any) -> Any:
        """Save hyperparameters, learned state, threshold and extraction options to one file.

        The file is a zip of JSON and ``.npy`` arrays, read back with :func:`oodscope.load` without
        executing any code (no pickle). The model is not saved: pass it to ``load(path, model=...)``.
        """
        from ..persistence import save

        return save(self, path)

    # --- what a method implements -------------------------------------------------------------------------

    def _fit(self, features: Features) -> None:  # noqa: B027 - stateless detectors learn nothing
        """Learn from ID features; store results in attributes ending with ``_``."""

    def _score(self, features: Features) -> np.ndarray:
        raise NotImplementedError

    # --- parameters (scikit-learn conventions) --------------------------------------------------------------

    @classmethod
    def _param_names(cls) -> list[str]:
        return list(_init_parameters(cls))

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The hyperparameters, as passed to ``__init__``."""
        params = {}
        for name in self._param_names():
            value = getattr(self, name)
            params[name] = value
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                params.update({f"{name}__{key}": sub for key, sub in value.get_params().items()})
        return params

    def set_params(self, **params: Any) -> Detector:
        """Set hyperparameters (``name=value`` or ``name__sub=value`` for nested objects); returns ``self``.

        The new values are validated at the next ``fit``; learned state is left as it is until then.
        """
        valid = self._param_names()
        for key, value in params.items():
            name, _, sub = key.partition("__")
            if name not in valid:
                raise ValueError(
                    f"Invalid parameter {name!r} for {type(self).__name__}. Valid parameters are: {valid}."
                )
            if sub:
                getattr(self, name).set_params(**{sub: value})
            else:
                setattr(self, name, value)
        return self

    def _validate_params(self) -> None:
        validate_params(type(self).__name__, self.get_params(deep=False), self._parameter_constraints)

    # --- state ----------------------------------------------------------------------------------------------

    _bound: Any = None  # the BoundModel given to fit, if any

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # a method declares its own arrays; the shared ones (threshold, calibration) are kept
        cls._state_shapes = {
            name: shape
            for base in reversed(cls.__mro__)
            for name, shape in base.__dict__.get("_state_shapes", {}).items()
        }

    def _known_sizes(self) -> dict[str, int]:
        """``C`` (classes) from the fit Features' widths, and ``D`` from the width of :meth:`_state_layer`."""
        widths = getattr(self, "fit_widths_", None)
        if not isinstance(widths, dict):
            return {}
        sizes = {} if widths.get("logits") is None else {"C": widths["logits"]}
        layer = self._state_layer()
        if layer is not None and layer in widths.get("layers", {}):
            sizes["D"] = widths["layers"][layer]
        return sizes

    def _state_layer(self) -> Any:
        """The layer whose width is the axis ``D`` of the learned arrays, if any (see ``_state_shapes``)."""
        return None

    def _check_is_fitted(self) -> None:
        if not self._learned_attributes():
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet. Call fit() with in-distribution data first."
            )

    def _check_features(self, features: Any, stage: str) -> Features:
        name = type(self).__name__
        if not isinstance(features, Features):
            raise TypeError(
                f"{name}.{stage}() expects an oodscope.Features object; got {type(features).__name__}. "
                "Wrap arrays with Features(logits=..., layers={...}, labels=...)."
            )
        missing = []
        if "logits" in self.requires and features.logits is None:
            missing.append("logits")
        if "features" in self.requires and not features.layers:
            missing.append("features")
        if "head" in self.requires and features.head_weight is None:
            missing.append("head")
        if stage == "fit" and "labels" in self.requires and features.labels is None:
            missing.append("labels")
        if missing:
            needs = "; ".join(REQUIREMENTS[key] for key in missing)
            raise ValueError(f"{name} needs {needs}, but the Features given to {stage}() have none.")
        fit_widths = getattr(self, "fit_widths_", None)
        if stage == "score" and fit_widths is not None:
            features.check_widths(fit_widths, f"the Features given to {name}.score()", "the fit Features")
        # () skips the layer logic of needs()
        needed = (self.fit_needs if stage == "fit" else self.needs)(layers=()).kind()
        given = PassKind() if features.pass_kind is None else features.pass_kind
        if needed != given:
            raise ValueError(
                f"{self!r} reads {needed}, but these Features come from {given}. Let it run the model: "
                "fit(model) and then score(data) (or evaluate / tune with the model and raw data)."
            )
        return features

    def __repr__(self) -> str:
        defaults = {
            name: parameter.default
            for name, parameter in inspect.signature(type(self).__init__).parameters.items()
            if name != "self"
        }
        shown = [
            f"{name}={value!r}"
            for name, value in self.get_params(deep=False).items()
            if not _same(value, defaults.get(name, inspect.Parameter.empty))
        ]
        return f"{type(self).__name__}({', '.join(shown)})"


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a is b or a == b)
    except Exception:  # arrays or objects without a scalar == compare as different
        return False


def clone(detector: Detector) -> Detector:
    """A new, unfitted detector with the same hyperparameters (deep-copied; nested detectors cloned)."""
    params = detector.get_params(deep=False)
    return type(detector)(
        **{
            name: clone(value) if isinstance(value, Detector) else copy.deepcopy(value)
            for name, value in params.items()
        }
    )


@functools.cache
def _init_parameters(cls: type[Detector]) -> tuple[str, ...]:
    """A detector class's hyperparameter names, read once from its ``__init__`` signature."""
    names = []
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if name == "self":
            continue
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise TypeError(f"{cls.__name__}.__init__ must take explicit keyword hyperparameters only.")
        names.append(name)
    return tuple(names)
