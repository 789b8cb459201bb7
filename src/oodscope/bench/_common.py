"""What ``evaluate`` and ``tune`` share: which layers a detector reads, one pass per dataset, metric names."""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..detectors.base import Detector
from ..extract import _layer_list, extract, global_average_pool
from ..features import Features
from ..metrics import bench_metrics

log = logging.getLogger("oodscope.bench")

PENULTIMATE = "penultimate"

#: Hyperparameter names under which a feature detector may be told which layers to read.
LAYER_PARAMS = ("feature_layers_id", "layer_ids", "layers", "layer_id", "layer")

_HIGHER_IS_BETTER = re.compile(r"^(auroc|aupr_in|aupr_out|detect_acc|tnr[\d.]+tpr(_ood|_id)?)$")
_LOWER_IS_BETTER = re.compile(r"^fpr[\d.]+tpr(_ood|_id)?$")


def check_metric(metric: str) -> None:
    """Raise the metrics module's own ``ValueError`` for a name :func:`~oodscope.bench_metrics` rejects."""
    bench_metrics(([0.0], [1.0]), metrics=[metric])


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better: AUROC, AUPR, TNR, detection accuracy; not FPR.

    >>> higher_is_better("auroc"), higher_is_better("fpr95tpr_id"), higher_is_better("tnr90tpr")
    (True, False, True)
    """
    check_metric(metric)
    if _HIGHER_IS_BETTER.match(metric):
        return True
    if _LOWER_IS_BETTER.match(metric):
        return False
    raise ValueError(f"Cannot tell whether higher or lower {metric!r} is better.")


def check_errors(errors: str) -> str:
    if errors not in ("record", "raise"):
        raise ValueError(f"errors must be 'record' or 'raise'; got {errors!r}.")
    return errors


def needs_gradients(detector: Detector) -> bool:
    """Whether the detector needs a model-level pass of its own (input gradients, e.g. ODIN)."""
    return "input_gradients" in detector.requires


def detector_layers(detector: Detector, override: Any = None) -> tuple[Hashable, ...]:
    """The layer ids whose activations ``detector`` reads, as its own ``fit(model)`` would extract them.

    ``override`` (layer ids given for this detector) wins; then a layer hyperparameter of the detector (one
    of :data:`LAYER_PARAMS`, when not None); then its ``default_layers``. A detector that needs features
    but declares no default layer gets the penultimate layer. Logit detectors read no layer.
    """
    if override is not None:
        return tuple(_layer_list(override))
    params = detector.get_params(deep=False)
    for name in LAYER_PARAMS:
        if params.get(name) is not None:
            return tuple(_layer_list(params[name]))
    if detector.default_layers:
        return tuple(detector.default_layers)
    if "features" in detector.requires:
        return (PENULTIMATE,)
    return ()


def layer_union(layer_lists: Iterable[Sequence[Hashable]]) -> list[Hashable]:
    """The layer ids of all lists, each once, in first-seen order."""
    return list(dict.fromkeys(layer for layers in layer_lists for layer in layers))


def unreachable_layers(
    model: Any, layers: Sequence[Hashable], head_layer_id: Any
) -> dict[Hashable, Exception]:
    """Layer ids the model cannot provide, each with the backend's error; checked without a pass.

    A bad ``head_layer_id`` is not a detector's problem: its error is raised.
    """
    if not layers:
        return {}
    from ..backends import get_backend

    backend = get_backend(model)
    try:
        backend.for_pass(model, list(layers), head_layer_id)
        return {}
    except (KeyError, ValueError, TypeError):
        backend(model, [], head_layer_id)  # raises if the head itself is the problem
    bad = {}
    for layer in layers:
        try:
            backend(model, [layer], head_layer_id)
        except (KeyError, ValueError, TypeError) as error:
            bad[layer] = error
    return bad


def describe_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class PassOptions:
    """The keyword arguments of :func:`~oodscope.extract` shared by every pass of one run."""

    def __init__(
        self,
        head_layer_id: Any,
        postproc_fns: Mapping[Hashable, Any] | None,
        batch_size: int,
        input_key: str | None,
        label_key: str | None,
        progress: bool | None,
    ) -> None:
        if postproc_fns is not None and not isinstance(postproc_fns, Mapping):
            raise TypeError("postproc_fns must be a dict {layer_id: function} here, as layers are shared.")
        self.head_layer_id = head_layer_id
        self.postproc_fns = dict(postproc_fns or {})
        self.batch_size = batch_size
        self.input_key = input_key
        self.label_key = label_key
        self.progress = progress

    def model_fit(self, detector: Detector, model: Any, fit_data: Any, layers: Sequence[Hashable]) -> None:
        """``detector.fit(model, fit_data, ...)`` with these options (the detector's own passes)."""
        kept = {layer: fn for layer, fn in self.postproc_fns.items() if layer in layers}
        detector.fit(
            model,
            fit_data if detector._needs_fit() else None,
            feature_layers_id=list(layers),
            head_layer_id=self.head_layer_id,
            postproc_fns=kept or None,
            batch_size=self.batch_size,
            input_key=self.input_key,
            label_key=self.label_key,
            progress=self.progress,
        )


def detector_postproc(detector: Detector, model: Any, layers: Sequence[Hashable]) -> dict[Hashable, Any]:
    """The post-processing a detector's own model-level ``fit`` applies to its layers (usually none; see
    ``Detector._postproc``: :class:`~oodscope.detectors.gram.Gram` turns its layers into Gram statistics)."""
    return dict(detector._postproc(model, list(layers))) if layers else {}


def _fn_key(fn: Any) -> Hashable:
    """Equal keys for post-processing functions that compute the same thing (None, or equal partials)."""
    if fn is None:
        return None
    if isinstance(fn, functools.partial):
        try:
            key = (fn.func, fn.args, tuple(sorted(fn.keywords.items())))
            hash(key)
            return key
        except TypeError:
            pass
    return ("id", id(fn))


class _Stacked:
    """Several post-processings of one layer in one pass: their [B, D_i] results side by side.

    :meth:`split` cuts the extracted array back into the parts, each in the precision it was computed in.
    """

    def __init__(self, layer: Hashable, fns: Sequence[Any], channels_last: bool) -> None:
        self.layer, self.fns, self.channels_last = layer, list(fns), channels_last
        self.widths: list[int] = []
        self.dtypes: list[np.dtype] = []

    def __call__(self, values: np.ndarray) -> np.ndarray:
        parts = [
            global_average_pool(values, self.channels_last) if fn is None else np.asarray(fn(values))
            for fn in self.fns
        ]
        for part in parts:
            if part.ndim != 2 or part.shape[0] != values.shape[0]:
                raise ValueError(
                    f"A post-processing of layer {self.layer!r} must return a 2-D array [batch, features]; "
                    f"it returned shape {part.shape} for a batch of {values.shape[0]}."
                )
        self.widths = [part.shape[1] for part in parts]
        self.dtypes = [part.dtype for part in parts]
        return np.concatenate(parts, axis=1)

    def split(self, stacked: np.ndarray) -> list[np.ndarray]:
        edges = np.cumsum(self.widths)[:-1]
        return [
            np.ascontiguousarray(part, dtype=dtype)
            for part, dtype in zip(np.split(stacked, edges, axis=1), self.dtypes, strict=True)
        ]


class ExtractionPlan:
    """One shared pass per dataset serving many detectors.

    Each detector registers the layers it reads and how its own pass would post-process them; the plan
    extracts every layer once, with every distinct post-processing of it side by side, and cuts out for each
    detector exactly the :class:`Features` its own ``fit(model)`` / ``score(data)`` would have seen.
    """

    def __init__(self, model: Any, options: PassOptions) -> None:
        self.model = model
        self.options = options
        self._fns: dict[Hashable, list[Any]] = {}
        self._keys: dict[Hashable, list[Hashable]] = {}
        self._wants: dict[str, dict[Hashable, int]] = {}
        self._head = False
        self._done: list[tuple[Any, Features]] = []

    def add(self, name: str, detector: Detector, layers: Sequence[Hashable]) -> None:
        own = detector_postproc(detector, self.model, layers) if self.model is not None else {}
        wants = {}
        for layer in layers:
            fn = self.options.postproc_fns.get(layer, own.get(layer))  # the user's choice wins, as in fit()
            keys = self._keys.setdefault(layer, [])
            if _fn_key(fn) not in keys:
                keys.append(_fn_key(fn))
                self._fns.setdefault(layer, []).append(fn)
            wants[layer] = keys.index(_fn_key(fn))
        self._wants[name] = wants
        self._head = self._head or "head" in detector.requires

    @property
    def layers(self) -> list[Hashable]:
        return list(self._fns)

    def features(self, name: str, data: Any, timings: dict[str, float]) -> Features:
        """``data`` itself when it is :class:`Features`; else one pass of the model over it (timed).

        The layers of the result are keyed ``(layer_id, i)``, the i-th post-processing of the layer; see
        :meth:`view`. The same data object given again (e.g. as fit and ID data) is not run again.
        """
        if isinstance(data, Features):
            timings[name] = 0.0
            return data
        for done, features in self._done:
            if done is data:
                timings[name] = 0.0
                return features
        if self.model is None:
            raise TypeError(
                f"The {name!r} data is a {type(data).__name__}, not oodscope.Features, and no model was "
                "given to run over it: pass model=... or precomputed Features."
            )
        from ..backends import get_backend

        channels_last = get_backend(self.model).channels_last
        postproc: dict[Hashable, Any] = {}
        for layer, fns in self._fns.items():
            if len(fns) > 1:
                postproc[layer] = _Stacked(layer, fns, channels_last)
            elif fns[0] is not None:
                postproc[layer] = fns[0]
        start = time.perf_counter()
        features = extract(
            self.model,
            data,
            feature_layers_id=self.layers,
            head_layer_id=self.options.head_layer_id,
            postproc_fns=postproc or None,
            batch_size=self.options.batch_size,
            input_key=self.options.input_key,
            label_key=self.options.label_key,
            with_head=None if self._head else False,
            progress=self.options.progress,
        )
        blocks = {}
        for layer, values in features.layers.items():
            stacked = postproc.get(layer)
            parts = stacked.split(values) if isinstance(stacked, _Stacked) else [values]
            blocks.update({(layer, i): part for i, part in enumerate(parts)})
        timings[name] = time.perf_counter() - start
        log.info("Extracted %r: %d samples in %.2f s.", name, len(features), timings[name])
        result = Features._unchecked(
            logits=features.logits,
            layers=blocks,
            labels=features.labels,
            head_weight=features.head_weight,
            head_bias=features.head_bias,
        )
        self._done.append((data, result))
        return result

    def forget(self, data: Any) -> None:
        """Drop the features kept for ``data`` (see :meth:`features`)."""
        self._done = [(done, features) for done, features in self._done if done is not data]

    def view(self, features: Features, name: str, given: Any) -> Features:
        """What detector ``name`` sees of extracted ``features``: its own layers, post-processed its way.

        Features the user gave (``given``) are passed on as they are.
        """
        if isinstance(given, Features):
            return given
        return Features._unchecked(
            logits=features.logits,
            layers={layer: features.layers[(layer, i)] for layer, i in self._wants[name].items()},
            labels=features.labels,
            head_weight=features.head_weight,
            head_bias=features.head_bias,
        )


def as_named(datasets: Any, default_name: str) -> dict[str, Any]:
    """A mapping ``{name: data}``; a single dataset gets ``default_name``."""
    if isinstance(datasets, Mapping):
        if not datasets:
            raise ValueError("Give at least one OOD dataset.")
        for key in datasets:
            if not isinstance(key, str):
                raise TypeError(f"Dataset names must be strings; got {key!r}.")
        return dict(datasets)
    return {default_name: datasets}


def mean_or_none(values: Sequence[float | None]) -> float | None:
    """The mean of the values, or None when any is missing (a partial mean would mislead)."""
    if not values or any(value is None for value in values):
        return None
    return float(np.mean(values))
