"""The result of :func:`~oodscope.bench.evaluate`: a metric table plus the scores behind it.

A :class:`Report` renders as markdown (its ``str`` and ``repr``), CSV, JSON, a pandas DataFrame, or one
self-contained HTML file with the table and, per detector, score histograms and ROC curves. Every format
lists the detectors in one order, best first by the primary metric (AUROC averaged over the OOD sets), marks
the best value of each column, and says what produced it (:attr:`Report.provenance`).
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import datetime
import html
import io
import json
import math
import os
import platform
import re
import sys
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .._table import markdown_table
from .._version import __version__
from ..detectors.base import Detector
from ..features import Features
from ..metrics import auroc, roc_curve
from ..needs import PassKind
from ._common import higher_is_better

__all__ = ["DEFAULT_METRICS", "BestDetector", "HistogramAxis", "Report", "draw_histograms", "histogram_axis"]

#: AUROC, FPR@95TPR in both conventions, AUPR-In and AUPR-Out.
DEFAULT_METRICS = ("auroc", "fpr95tpr_ood", "fpr95tpr_id", "aupr_in", "aupr_out")

_DESCRIPTIONS = {
    "auroc": "area under the ROC curve (exact, ties count 1/2)",
    "aupr_in": "average precision with ID positive",
    "aupr_out": "average precision with OOD positive",
    "detect_acc": "best balanced detection accuracy",
}


def describe_metric(metric: str) -> str:
    """What a metric name means, in words, with its direction.

    >>> describe_metric("fpr95tpr_id")
    'FPR at 95% TPR with ID positive: share of OOD samples accepted as ID when 95% of ID samples are kept (lower is better)'
    """  # noqa: E501
    match = re.fullmatch(r"(fpr|tnr)([\d.]+)tpr(?:_(ood|id))?", metric)
    if metric in _DESCRIPTIONS:
        text = _DESCRIPTIONS[metric]
    elif match:
        kind, tpr, positive = match.groups()
        positive = positive or "ood"
        caught = "of OOD samples are caught" if positive == "ood" else "of ID samples are kept"
        share = (
            "share of ID samples flagged OOD" if positive == "ood" else "share of OOD samples accepted as ID"
        )
        if kind == "tnr":
            share = "one minus the " + share
        text = f"{kind.upper()} at {tpr}% TPR with {positive.upper()} positive: {share} when {tpr}% {caught}"
    else:
        text = metric
    return f"{text} ({'higher' if higher_is_better(metric) else 'lower'} is better)"


def mean_label(group: str) -> str:
    """The ``ood`` entry of the row averaging a group of OOD sets; ``"all"`` is the overall mean.

    >>> mean_label("near")
    'near (mean)'
    """
    return f"{group} (mean)"


class BestDetector(NamedTuple):
    """What :meth:`Report.best` returns: ``name, value, detector = report.best()``."""

    name: str
    value: float
    detector: Detector


# --- provenance ---------------------------------------------------------------------------------------------


def describe_run(
    *,
    model: Any,
    datasets: Mapping[str, Any],
    n_samples: Mapping[str, int | None],
    detectors: Mapping[str, Detector],
    layers: Mapping[str, Any] | None,
    groups: Mapping[str, Sequence[str]],
    metrics: Sequence[str],
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """The provenance of a report, as plain JSON-ready objects: what produced it and when.

    ``model`` is a :class:`~oodscope.BoundModel` or None (every dataset given as Features); ``datasets``
    maps ``"fit"``, ``"id"`` and each OOD set's name to what was given. No framework is imported that the
    model's own has not: the model is described from its type, its own methods (``count_params``,
    ``parameters``) and its backend (the hash of its head's weights, as
    :func:`oodscope.fingerprint.fingerprint` takes it).
    """
    group_of: dict[str, list[str]] = {}
    for group, members in groups.items():
        for member in members:
            group_of.setdefault(member, []).append(group)
    return {
        "oodscope": __version__,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "versions": _versions(),
        "model": None if model is None else _describe_model(model),
        "datasets": {
            name: {
                "role": name if name in ("fit", "id") else "ood",
                "n_samples": n_samples.get(name),
                "data": _describe_data(data),
                "groups": group_of.get(name, []),
            }
            for name, data in datasets.items()
        },
        "detectors": {
            name: _describe_detector(detector, (layers or {}).get(name))
            for name, detector in detectors.items()
        },
        "metrics": {metric: describe_metric(metric) for metric in metrics},
        "conventions": [
            "Scores read higher = more OOD.",
            "Metrics are exact: every distinct score is a threshold; tied scores count 1/2 in AUROC.",
            "Group means average the metric over the OOD sets of a group (a group of one set is read from "
            "that set's row, a group of every set from 'all (mean)'); 'all (mean)' averages over every OOD "
            "set.",
            "Detectors are sorted by the primary metric averaged over the OOD sets, best first.",
        ],
        "settings": {key: _plain(value) for key, value in settings.items()},
    }


def _versions() -> dict[str, str]:
    """Python, numpy and the frameworks the user has already imported (none is imported here)."""
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for module in ("torch", "tensorflow", "keras", "jax"):
        version = getattr(sys.modules.get(module), "__version__", None)
        if isinstance(version, str):
            versions[module] = version
    return versions


def _describe_model(bound: Any) -> dict[str, Any]:
    from ..backends import framework_of

    model = bound.model
    framework = framework_of(model)
    described = {
        "class": type(model).__name__,
        "module": type(model).__module__,
        "framework": framework,
        "parameters": _parameter_count(model),
        "options": {
            name: _plain(getattr(bound, name))
            for name in (
                "head_layer_id",
                "feature_layers_id",
                "postproc_fns",
                "batch_size",
                "input_key",
                "label_key",
            )
            if getattr(bound, name) is not None
        },
    }
    if framework == "keras":
        config = getattr(sys.modules.get("keras"), "config", None)
        if config is not None and hasattr(config, "backend"):
            described["keras_backend"] = config.backend()
    try:  # the hash a saved detector remembers its model by: ties the report to the trained weights
        from ..fingerprint import fingerprint

        described["head_sha256"] = fingerprint(model, bound.head_layer_id).head_sha256
    except Exception:  # a model whose backend cannot tell is described without it
        described["head_sha256"] = None
    return described


def _parameter_count(model: Any) -> int | None:
    """The number of weights, asked of the model itself (Keras' ``count_params``, torch's ``parameters``);
    None when it cannot tell (e.g. a Keras model that is not built yet)."""
    try:
        if callable(getattr(model, "count_params", None)):
            return int(model.count_params())
        if callable(getattr(model, "parameters", None)):
            return int(sum(int(parameter.numel()) for parameter in model.parameters()))
    except Exception:  # a model that cannot count is described without the count
        return None
    return None


def _describe_data(data: Any) -> str | None:
    """``"Features"``, ``"ndarray float32 (40, 1, 8, 8)"``, ``"(inputs, labels): ..."`` or the type's name."""
    if data is None:
        return None
    if isinstance(data, Features):
        parts = (["logits"] if data.logits is not None else []) + [str(key) for key in data.layers]
        return f"Features ({', '.join(parts)})"
    if isinstance(data, tuple) and 1 < len(data) <= 3 and all(hasattr(part, "shape") for part in data):
        return "(inputs, labels): " + ", ".join(_describe_data(part) or "" for part in data)
    shape, dtype = getattr(data, "shape", None), getattr(data, "dtype", None)
    if shape is not None and dtype is not None:
        return f"{type(data).__name__} {str(dtype).removeprefix('torch.')} {tuple(shape)}"
    module = type(data).__module__
    return type(data).__qualname__ if module == "builtins" else f"{module}.{type(data).__qualname__}"


def _describe_detector(detector: Detector, layers: Any) -> dict[str, Any]:
    described: dict[str, Any] = {
        "class": type(detector).__name__,
        "module": type(detector).__module__,
        "params": {key: _plain(value) for key, value in detector.get_params(deep=False).items()},
    }
    try:
        needs = detector.needs(layers)
    except Exception:  # a detector whose needs fail is recorded as failed; its parameters still show
        return described
    reads = ["logits"] if "logits" in detector.requires else []
    reads += [str(key) for key in needs.keys()]
    if needs.head:
        reads.append("head weights")
    if "labels" in detector.requires:
        reads.append("labels (fit)")
    described["reads"] = reads
    if needs.kind() != PassKind():
        described["pass"] = str(needs.kind())
    return described


def _plain(value: Any) -> Any:
    """``value`` as JSON-ready objects: nested detectors (and aggregators) as their class and full parameters,
    functions by name, small arrays as lists."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "get_params") and not isinstance(value, type):
        params = value.get_params(deep=False)
        return {"class": type(value).__name__, "params": {key: _plain(sub) for key, sub in params.items()}}
    if isinstance(value, Mapping):
        return {str(key): _plain(sub) for key, sub in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(sub) for sub in value]
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 16 else f"array of shape {value.shape} ({value.dtype})"
    if callable(value):
        return getattr(value, "__qualname__", None) or repr(value)
    return repr(value)


def params_text(params: Mapping[str, Any]) -> str:
    """Parameters from :func:`describe_run` as ``k=5, layers=None, ...``: every parameter, defaults too.

    >>> params_text({"detector": {"class": "GEN", "params": {"gamma": 0.1}}, "percentile": 90.0})
    'detector=GEN(gamma=0.1), percentile=90.0'
    """

    def text(value: Any) -> str:
        if isinstance(value, dict) and set(value) == {"class", "params"}:
            return f"{value['class']}({params_text(value['params'])})"
        return repr(value)

    return ", ".join(f"{key}={text(value)}" for key, value in params.items())


# --- histogram axes -----------------------------------------------------------------------------------------


class HistogramAxis(NamedTuple):
    """The x axis of a figure's score histograms, from :func:`histogram_axis`.

    Attributes
    ----------
    scale : {"linear", "log", "log-distance", "distinct"}
        ``"log"``: the scores on a log axis; ``"log-distance"``: the distance of each score from ``origin``
        (at or below the lowest score with ``direction=1``, at or above the highest with ``-1``) on a log
        axis, for scores piled against a bound (e.g. MSP near -1); ``"distinct"``: one bar per distinct
        score, for scores with few values (ties).
    edges : ndarray
        Bin edges in axis units (scores, or distances for ``"log-distance"``); the axis spans them. With
        ``"distinct"``, one bin around each of ``values``.
    values : ndarray or None
        The distinct scores (``"distinct"`` only).
    origin, direction : float or None, int
        Where distances are measured from, and which way (``"log-distance"`` only): the lowest score
        (``direction=1``) or the highest (``-1``), moved outwards to a round number (such as MSP's -1) when
        that changes the median distance of every set by 1% at most.
    shown, outside, at_origin, non_finite : dict of str to int
        Per set: samples drawn within ``edges``; finite samples beyond them (not drawn); samples equal to
        the origin (drawn in the first bin); NaN or infinite scores (not drawn).
    label : str
        The axis label, which states the scale.
    """

    scale: str
    edges: np.ndarray
    values: np.ndarray | None
    origin: float | None
    direction: int
    shown: dict[str, int]
    outside: dict[str, int]
    at_origin: dict[str, int]
    non_finite: dict[str, int]
    label: str

    def coordinates(self, scores: np.ndarray) -> np.ndarray:
        """The finite scores in axis units (distances at the origin go to the first edge)."""
        values = np.asarray(scores, dtype=np.float64)
        values = values[np.isfinite(values)]
        if self.scale != "log-distance":
            return values
        distances = self.direction * (values - self.origin)
        return np.where(distances > 0, distances, self.edges[0])


#: a linear axis is kept unless the central 90% of a set covers less than this share of it
_CRAMMED = 0.15
#: a log axis replaces it only when it spreads the least spread set this many times as wide
_LOG_GAIN = 2.0
#: and a log axis of the scores is preferred to one of their distances from a bound unless the latter spreads
#: the least spread set this many times as wide
_DISTANCE_PENALTY = 1.5
#: one bar per distinct score when there are at most this many, and four samples or more per value
_MAX_DISTINCT = 20


def histogram_axis(sets: Mapping[str, Any], bins: int = 50, share: float = 0.99) -> HistogramAxis:
    """A readable x axis for histograms of several sets of scores drawn together.

    The axis holds at least ``share`` of each set: its limits are the lowest and highest of the sets'
    ``(1 - share) / 2`` and ``(1 + share) / 2`` quantiles, widened to the scores that lie within 5% of
    their span beyond them. The rest is counted in ``outside`` (to be stated on the plot). The scale is

    - ``"distinct"`` when the scores take at most 20 distinct values, four samples or more per value on
      average (e.g. a score rounded to one decimal): one bin per value, nothing beyond the axis;
    - else ``"linear"``, unless it crams a set: the central 90% of some set covers less than 15% of the
      axis (e.g. Gram deviations: ID from 1 to 10 on an axis to 1e9; MSP: ID within 1e-6 of -1 on an
      axis to -0.3). A log axis then replaces it if it spreads the least spread set twice as wide or
      more: ``"log"`` (of the scores, when the quantiles above are positive) or ``"log-distance"`` (of
      their distance from the lowest or highest score, or a round bound just beyond it, such as MSP's
      -1), the latter only when it does 1.5 times as well as the former.

    Bins are equally wide in axis units in every case.

    >>> axis = histogram_axis({"ID": np.r_[np.linspace(0, 1, 999), 1e6], "OOD": np.linspace(0.5, 1.5, 500)})
    >>> axis.scale, axis.outside, float(axis.edges[0]), float(axis.edges[-1])
    ('linear', {'ID': 1, 'OOD': 0}, 0.0, 1.5)
    """
    if not 0 < share <= 1:
        raise ValueError(f"The 'share' parameter of histogram_axis must be in (0, 1]. Got {share} instead.")
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"The 'bins' parameter of histogram_axis must be an int >= 1. Got {bins!r} instead.")
    raw = {name: np.asarray(values, dtype=np.float64).ravel() for name, values in sets.items()}
    finite = {name: values[np.isfinite(values)] for name, values in raw.items()}
    present = [values for values in finite.values() if values.size]
    scale, origin, direction = _choose_scale(present, share)
    values = None
    if not present:
        edges = np.linspace(-0.5, 0.5, bins + 1)
    elif scale == "distinct":
        values = np.unique(np.concatenate(present))
        half = np.diff(values).min() / 2 if values.size > 1 else 0.5
        edges = np.r_[values[0] - half, (values[1:] + values[:-1]) / 2, values[-1] + half]
    elif scale == "linear":
        edges = np.linspace(*_robust_limits(present, share, log=False), bins + 1)
    else:
        if scale == "log-distance":
            present = [d[d > 0] for d in (direction * (v - origin) for v in present) if (d > 0).any()]
        edges = _log_edges(*_robust_limits(present, share, log=True), bins)
    label = _axis_label(scale, origin, direction, 0 if values is None else values.size)
    axis = HistogramAxis(scale, edges, values, origin, direction, {}, {}, {}, {}, label)
    for name, values in finite.items():
        coordinates = axis.coordinates(values)
        shown = int(np.count_nonzero((coordinates >= edges[0]) & (coordinates <= edges[-1])))
        axis.shown[name], axis.outside[name] = shown, int(values.size - shown)
        axis.at_origin[name] = int(np.count_nonzero(values == origin)) if origin is not None else 0
        axis.non_finite[name] = int(raw[name].size - values.size)
    return axis


def _choose_scale(sets: list[np.ndarray], share: float) -> tuple[str, float | None, int]:
    """``(scale, origin, direction)`` of :class:`HistogramAxis` for the finite scores of each set."""
    if not sets:
        return "linear", None, 1
    n_distinct = np.unique(np.concatenate(sets)).size
    if n_distinct <= _MAX_DISTINCT and 4 * n_distinct <= sum(v.size for v in sets):
        return "distinct", None, 1
    linear = _spread(sets, share, "linear", None, 1)
    if linear >= _CRAMMED:
        return "linear", None, 1
    candidates = []
    if _quantile_limits(sets, share)[0] > 0:
        candidates.append((_spread(sets, share, "log", None, 1), ("log", None, 1)))
    everything = np.concatenate(sets)
    for direction, origin in ((1, float(everything.min())), (-1, float(everything.max()))):
        distances = [d[d > 0] for d in (direction * (v - origin) for v in sets) if (d > 0).any()]
        if distances:
            # a round bound (MSP's -1) when it moves the typical distance of each set by 1% at most
            tolerance = 0.01 * min(float(np.median(d)) for d in distances)
            choice = ("log-distance", _round_bound(origin, direction, tolerance), direction)
            candidates.append((_spread(sets, share, *choice) / _DISTANCE_PENALTY, choice))
    spread, choice = max(candidates, key=lambda candidate: candidate[0], default=(0.0, None))
    return choice if spread >= _LOG_GAIN * linear and spread > 0 else ("linear", None, 1)


def _spread(sets: list[np.ndarray], share: float, scale: str, origin: float | None, direction: int) -> float:
    """How spread out the least spread set is on an axis: the central 90% of its scores as a share of the
    axis (the limits of :func:`histogram_axis`), in that axis's units."""
    if scale == "log-distance":
        sets = [direction * (v - origin) for v in sets]
    if scale == "linear":
        low, high = _robust_limits(sets, share, log=False)
        transform = np.asarray
    else:
        positive = [v[v > 0] for v in sets if (v > 0).any()]
        if not positive:
            return 0.0
        low, high = _robust_limits(positive, share, log=True)
        transform = np.log10
    width = float(transform(high) - transform(low))
    if width <= 0:
        return 0.0
    central = [np.quantile(transform(np.clip(v, low, high)), [0.05, 0.95]) for v in sets]
    return min(float(q95 - q05) for q05, q95 in central) / width


def _round_bound(origin: float, direction: int, tolerance: float) -> float:
    """The roundest number at most ``tolerance`` beyond ``origin`` (below it with ``direction=1``), so that
    distances are read from a bound such as -1 (MSP) rather than from the most extreme sample.

    >>> _round_bound(-0.99999999, 1, 1e-7), _round_bound(3.7123, 1, 0.01), _round_bound(3.7123, -1, 0.01)
    (-1.0, 3.71, 3.72)
    """
    round_ = math.floor if direction > 0 else math.ceil
    for decimals in range(-3, 17):
        scale = 10.0**decimals
        bound = round_(origin * scale) / scale
        if 0 <= direction * (origin - bound) <= tolerance:
            return bound
    return origin


def _quantile_limits(sets: list[np.ndarray], share: float) -> tuple[float, float]:
    """The lowest and the highest of the sets' ``(1 - share) / 2`` and ``(1 + share) / 2`` quantiles, each
    a score (so that the limits leave out less than ``1 - share`` of any set)."""
    tail = (1 - share) / 2
    low = min(float(np.quantile(v, tail, method="lower")) for v in sets)
    high = max(float(np.quantile(v, 1 - tail, method="higher")) for v in sets)
    return low, high


def _robust_limits(sets: list[np.ndarray], share: float, log: bool) -> tuple[float, float]:
    """Limits holding ``share`` of each set, widened to the scores within 5% of their span beyond them
    (the span measured in decades with ``log``, where scores <= 0 lie beyond any limit); never empty.

    The limits are scores themselves, so that the extreme scores shown lie exactly on them.
    """
    low, high = _quantile_limits(sets, share)
    everything = np.concatenate(sets)
    if log:
        everything = everything[everything > 0]
        low = max(low, float(everything.min()))
    if high <= low:  # most of every set on one value: show everything, or a unit around that value
        low, high = float(everything.min()), float(everything.max())
        if high <= low:
            return (low / 10**0.5, high * 10**0.5) if log else (low - 0.5, high + 0.5)
    if log:
        widen = (high / low) ** 0.05
        low_cut, high_cut = low / widen, high * widen
    else:
        margin = 0.05 * (high - low)
        low_cut, high_cut = low - margin, high + margin
    return float(everything[everything >= low_cut].min()), float(everything[everything <= high_cut].max())


def _log_edges(low: float, high: float, bins: int) -> np.ndarray:
    """Edges equally spaced in log10 from ``low`` to ``high``, which they hold exactly."""
    edges = np.logspace(math.log10(low), math.log10(high), bins + 1)
    edges[0], edges[-1] = low, high
    return edges


def _axis_label(scale: str, origin: float | None, direction: int, n_distinct: int) -> str:
    if scale == "distinct":
        return f"score, {n_distinct} distinct value{'s' * (n_distinct != 1)} (higher = more OOD)"
    if scale == "linear":
        return "score (higher = more OOD)"
    if scale == "log":
        return "score, log scale (higher = more OOD)"
    bound = _short_float(origin)
    if direction > 0 and origin == 0:
        return "score, log scale (higher = more OOD)"
    if direction > 0:
        return f"score − {f'({bound})' if origin < 0 else bound}, log scale (higher = more OOD)"
    return f"{bound} − score, log scale, reversed (higher = more OOD)"


def _short_float(value: float) -> str:
    """The shortest of 1 to 10 significant digits that gives ``value`` back (else 10), with a minus sign.

    >>> _short_float(-1.0), _short_float(-0.0), _short_float(0.1 + 0.2)
    ('−1', '0', '0.3')
    """
    for digits in range(1, 11):
        text = f"{value + 0.0:.{digits}g}"  # + 0.0 turns -0.0 into 0.0
        if float(text) == value:
            break
    return text.replace("-", "−")


# --- the report ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False, repr=False)
class Report:
    """Metrics of several detectors on several OOD sets, with the raw scores, timings and provenance.

    Built by :func:`~oodscope.bench.evaluate`. Scores read higher = more OOD. The detectors are kept in one
    order everywhere (``rows``, the score and detector dicts, every format): best first by the
    :attr:`primary_metric` averaged over the OOD sets (:attr:`order`).

    Attributes
    ----------
    rows : list of dict
        One row per detector and OOD set, ``{"detector", "ood", <metric>: value, ...}``, followed for each
        detector by one row per mean of a group of several OOD sets (``ood`` is ``"<group> (mean)"``) and,
        with several OOD sets, the overall mean (``"all (mean)"``). A mean is None when a member's value is
        missing.
    metrics : tuple of str
        The metric names, in column order (see :func:`~oodscope.bench_metrics`).
    ood_names : list of str
        The OOD sets, in the order given.
    groups : dict of str to list of str
        The groups of OOD sets. A group of one set has no mean row of its own (its set's row is its mean),
        nor has a group of every set (the overall mean is its mean).
    id_accuracy : float or None
        The model's top-1 accuracy on the ID data (argmax of the logits against its labels); None without
        labels.
    n_samples : dict of str to int or None
        Sample counts of ``"fit"`` (None when no fit pass was needed), ``"id"`` and each OOD set.
    id_scores : dict of str to ndarray
        Per detector, its scores of the ID data.
    ood_scores : dict of str to dict of str to ndarray
        Per detector and OOD set, its scores.
    detectors : dict of str to Detector
        The fitted detectors that did not fail to fit (clones of those given).
    errors : list of dict
        Failures: ``{"detector", "stage", "dataset", "error"}``; the stage is ``"extract"`` (a layer the
        model lacks), ``"fit"``, ``"score"`` or ``"metrics"`` (e.g. non-finite scores).
    timings : dict
        Seconds spent: ``{"extract": {dataset: s}, "fit": {detector: s}, "score": {detector: s},
        "total": s}``; a dataset's extraction time includes every pass over it, perturbed ones (ODIN) too.
    provenance : dict
        What produced the report (see ``describe_run``): the oodscope, Python, numpy and framework
        versions, the date and time, the model (class, framework, number of parameters, hash of the head's
        weights, pass options), the datasets (sizes, groups, what was given), every detector with all its
        parameters and what it reads, the metric conventions and the settings. Empty for a report built by
        hand. A caller that knows where a dataset came from (a file, a data set spec) may add it as the
        ``"source"`` of its entry in ``provenance["datasets"]``; the HTML shows it.
    """

    rows: list[dict[str, Any]]
    metrics: tuple[str, ...]
    ood_names: list[str]
    groups: dict[str, list[str]]
    id_accuracy: float | None
    n_samples: dict[str, int | None]
    id_scores: dict[str, np.ndarray]
    ood_scores: dict[str, dict[str, np.ndarray]]
    detectors: dict[str, Detector]
    errors: list[dict[str, Any]]
    timings: dict[str, Any]
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        order = self.order
        position = {name: index for index, name in enumerate(order)}

        def ordered(mapping: dict[str, Any]) -> dict[str, Any]:
            return dict(sorted(mapping.items(), key=lambda item: position.get(item[0], len(order))))

        self.rows = sorted(self.rows, key=lambda row: position.get(row["detector"], len(order)))
        self.id_scores = ordered(self.id_scores)
        self.ood_scores = ordered(self.ood_scores)
        self.detectors = ordered(self.detectors)
        if isinstance(self.provenance.get("detectors"), dict):
            self.provenance["detectors"] = ordered(self.provenance["detectors"])

    # --- order --------------------------------------------------------------------------------------------

    @property
    def primary_metric(self) -> str:
        """The metric that orders the detectors: AUROC, or the first metric when AUROC was not asked for."""
        return "auroc" if "auroc" in self.metrics else self.metrics[0]

    @property
    def primary_label(self) -> str:
        """The row the order is read from: ``"all (mean)"`` with several OOD sets, else the one set."""
        return self._ood_label(None)

    def primary_values(self) -> dict[str, float]:
        """Each detector's value of the primary metric on :attr:`primary_label`, where it has one."""
        metric, label = self.primary_metric, self.primary_label
        return {
            row["detector"]: row[metric]
            for row in self.rows
            if row["ood"] == label and row[metric] is not None
        }

    @property
    def order(self) -> list[str]:
        """Every detector in the report's one order: by :meth:`primary_values`, best first (ties in the order
        given), then those without a value (failed ones)."""
        names = list(dict.fromkeys([*(row["detector"] for row in self.rows), *self.id_scores]))
        names += [name for name in self.provenance.get("detectors", {}) if name not in names]
        names += [e["detector"] for e in self.errors if e["detector"] not in names]
        values = self.primary_values()
        sign = -1.0 if higher_is_better(self.primary_metric) else 1.0
        return sorted(names, key=lambda name: (name not in values, sign * values.get(name, 0.0)))

    def ranks(self) -> dict[str, int | None]:
        """Each detector's rank by :meth:`primary_values` (1 = best; ties share a rank; None without a
        value)."""
        values = self.primary_values()
        sign = 1.0 if higher_is_better(self.primary_metric) else -1.0
        return {
            name: (
                1 + sum(sign * other > sign * values[name] for other in values.values())
                if name in values
                else None
            )
            for name in self.order
        }

    # --- access ---------------------------------------------------------------------------------------------

    @property
    def columns(self) -> list[str]:
        """The table's columns: ``detector``, ``ood`` and the metrics."""
        return ["detector", "ood", *self.metrics]

    def _ood_label(self, ood: str | None) -> str:
        if ood is None:
            return mean_label("all") if len(self.ood_names) > 1 else self.ood_names[0]
        if ood in self.ood_names:
            return ood
        if ood in self.groups:
            members = set(self.groups[ood])
            if len(members) == 1:
                return self.groups[ood][0]
            return self._ood_label(None) if members == set(self.ood_names) else mean_label(ood)
        if ood == "all":
            return self._ood_label(None)
        labels = {row["ood"] for row in self.rows}
        if ood in labels:
            return ood
        raise KeyError(f"No OOD set or group {ood!r}; the report has {sorted(labels)}.")

    def value(self, detector: str, ood: str | None = None, metric: str = "auroc") -> float | None:
        """One cell of the table: ``detector`` on an OOD set or group (default: the overall mean).

        A group of one OOD set reads that set's row.
        """
        label = self._ood_label(ood)
        for row in self.rows:
            if row["detector"] == detector and row["ood"] == label:
                return row[metric]
        raise KeyError(f"The report has no row for detector {detector!r} on {label!r}.")

    def score_pair(self, detector: str, ood: str) -> tuple[np.ndarray, np.ndarray]:
        """``(scores_in, scores_out)`` of one detector and OOD set, e.g. for plots or thresholds."""
        return self.id_scores[detector], self.ood_scores[detector][ood]

    def best(self, metric: str = "auroc", ood: str | None = None) -> BestDetector:
        """The detector with the best ``metric`` on an OOD set or group (default: the overall mean).

        Higher is better for AUROC, AUPR, TNR and detection accuracy, lower for FPR. Ties go to the
        detector listed first.
        """
        if metric not in self.metrics:
            raise ValueError(f"The report has no metric {metric!r}; it has {list(self.metrics)}.")
        label = self._ood_label(ood)
        sign = 1.0 if higher_is_better(metric) else -1.0
        candidates = [row for row in self.rows if row["ood"] == label and row[metric] is not None]
        if not candidates:
            raise ValueError(f"No detector has a {metric} value on {label!r}.")
        row = max(candidates, key=lambda row: sign * row[metric])
        return BestDetector(row["detector"], row[metric], self.detectors[row["detector"]])

    def pivot(self, metric: str = "auroc") -> list[dict[str, Any]]:
        """One row per detector, one column per OOD set and mean: ``{"detector", <ood>: value, ...}``."""
        if metric not in self.metrics:
            raise ValueError(f"The report has no metric {metric!r}; it has {list(self.metrics)}.")
        table: dict[str, dict[str, Any]] = {}
        for row in self.rows:
            table.setdefault(row["detector"], {"detector": row["detector"]})[row["ood"]] = row[metric]
        return list(table.values())

    def best_cells(self) -> dict[tuple[str, str], float]:
        """Per ``(ood label, metric)``, the best value, where the detectors do not all tie."""
        values: dict[tuple[str, str], list[float]] = {}
        for metric in self.metrics:
            for row in self.rows:
                if row[metric] is not None:
                    values.setdefault((row["ood"], metric), []).append(row[metric])
        return {
            key: (max if higher_is_better(key[1]) else min)(found)
            for key, found in values.items()
            if len(set(found)) > 1
        }

    def _is_best(self, best: Mapping[tuple[str, str], float], label: str, metric: str, value: Any) -> bool:
        return value is not None and best.get((label, metric)) == value

    def table(self) -> list[dict[str, Any]]:
        """The rows with the detector's ``rank`` first and, last, ``best``: the metrics in which the row
        holds the best value of its OOD set or mean (what CSV, JSON and the DataFrame carry)."""
        best, ranks = self.best_cells(), self.ranks()
        return [
            {"rank": ranks.get(row["detector"])}
            | {column: row[column] for column in self.columns}
            | {"best": [m for m in self.metrics if self._is_best(best, row["ood"], m, row[m])]}
            for row in self.rows
        ]

    # --- text formats ---------------------------------------------------------------------------------------

    def _sort_note(self) -> str:
        over = (
            f"the mean over the {len(self.ood_names)} OOD sets" if len(self.ood_names) > 1 else "its OOD set"
        )
        return f"Detectors sorted by {self.primary_metric} on {over}, best first."

    def header(self) -> str:
        """One paragraph: oodscope version, date, model, ID accuracy, data sizes and the sort order."""
        prov, parts = self.provenance, []
        if "oodscope" in prov:
            parts.append(f"oodscope {prov['oodscope']}, {prov.get('created')}.")
        if "model" in prov:
            model = prov["model"]
            parts.append(
                "Scores from Features (no model)." if model is None else f"Model: {_model_text(model)}."
            )
        if self.id_accuracy is not None:
            parts.append(f"Model accuracy on the ID data: {self.id_accuracy:.4f}.")
        sizes = ", ".join(f"{name} {count}" for name, count in self.n_samples.items() if count is not None)
        parts.append(f"Samples: {sizes}.")
        return " ".join(parts + [self._sort_note()])

    def to_markdown(self, digits: int = 4) -> str:
        """The header, the summary of the primary metric (one row per detector, best values in bold), the
        full metric table, the metric conventions and the failures."""
        lines = [self.header(), ""]
        if self.rows:
            best, ranks = self.best_cells(), self.ranks()
            labels = list(dict.fromkeys(row["ood"] for row in self.rows))
            metric = self.primary_metric

            def cell(label: str, name_metric: str, value: Any) -> Any:
                if value is None or not isinstance(value, float):
                    return value
                text = f"{value:.{digits}f}"
                return f"**{text}**" if self._is_best(best, label, name_metric, value) else text

            summary = [
                {"rank": ranks[row["detector"]], "detector": row["detector"]}
                | {label: cell(label, metric, row.get(label)) for label in labels}
                for row in self.pivot(metric)
            ]
            full = [
                {column: row[column] for column in ("detector", "ood")}
                | {m: cell(row["ood"], m, row[m]) for m in self.metrics}
                for row in self.rows
            ]
            lines += [
                f"{metric} (best in bold):",
                "",
                markdown_table(summary, ["rank", "detector", *labels], digits=digits),
                "",
                "All metrics:",
                "",
                markdown_table(full, self.columns, digits=digits),
                "",
            ]
        else:
            lines += ["(no results)", ""]
        lines += [f"- {metric}: {describe_metric(metric)}" for metric in self.metrics]
        for error in self.errors:
            where = error["stage"] + (f" on {error['dataset']!r}" if error["dataset"] else "")
            lines.append(f"- FAILED {error['detector']} ({where}): {error['error']}")
        return "\n".join(lines).rstrip()

    def __str__(self) -> str:
        return self.to_markdown()

    def __repr__(self) -> str:
        return self.to_markdown()

    def _repr_html_(self) -> str:
        """The summary and the full table, for notebooks (no figures; see :meth:`to_html`)."""
        return self._pivot_html() + self._table_html()

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the metric table: ``rank,detector,ood,<metrics>,best`` (``best``: the metrics, space
        separated, in which the row holds its OOD set's best value; empty cells for missing values)."""
        path = Path(path)
        with path.open("w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=["rank", *self.columns, "best"])
            writer.writeheader()
            writer.writerows(row | {"best": " ".join(row["best"])} for row in self.table())
        return path

    def to_dict(self, include_scores: bool = False) -> dict[str, Any]:
        """Everything as plain Python objects: provenance, the ranking, the rows (with ``rank`` and
        ``best``), the fitted detectors by their ``repr``, failures and timings."""
        ranks = self.ranks()
        result: dict[str, Any] = {
            "provenance": self.provenance,
            "metrics": list(self.metrics),
            "primary_metric": self.primary_metric,
            "ranking": [
                {
                    "rank": ranks[name],
                    "detector": name,
                    self.primary_metric: self.primary_values().get(name),
                    "status": self._status(name),
                }
                for name in self.order
            ],
            "ood_names": list(self.ood_names),
            "groups": {group: list(members) for group, members in self.groups.items()},
            "id_accuracy": self.id_accuracy,
            "n_samples": dict(self.n_samples),
            "rows": self.table(),
            "detectors": {name: repr(detector) for name, detector in self.detectors.items()},
            "errors": [dict(error) for error in self.errors],
            "timings": self.timings,
        }
        if include_scores:
            result["scores"] = {
                name: {"id": scores.tolist()}
                | {ood: values.tolist() for ood, values in self.ood_scores.get(name, {}).items()}
                for name, scores in self.id_scores.items()
            }
        return result

    def to_json(self, path: str | os.PathLike[str] | None = None, include_scores: bool = False) -> str:
        """The report as JSON (see :meth:`to_dict`), written to ``path`` when given; returns the text."""
        text = json.dumps(self.to_dict(include_scores), indent=2)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def to_dataframe(self) -> Any:
        """The metric table as a ``pandas.DataFrame`` with the columns of :meth:`to_csv` (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as error:
            raise ImportError(
                "Report.to_dataframe needs pandas, an optional dependency. Install it with: "
                "pip install 'oodscope[pandas]' (or pip install pandas)."
            ) from error
        rows = [row | {"best": " ".join(row["best"])} for row in self.table()]
        return pd.DataFrame(rows, columns=["rank", *self.columns, "best"])

    def _status(self, name: str) -> str:
        failures = [e for e in self.errors if e["detector"] == name]
        if not failures:
            return "ok"
        return "; ".join(
            f"failed to {e['stage']}" + (f" on {e['dataset']}" if e["dataset"] else "") for e in failures
        )

    # --- HTML -----------------------------------------------------------------------------------------------

    def to_html(
        self,
        path: str | os.PathLike[str],
        title: str = "oodscope report",
        figures: bool = True,
        bins: int = 50,
    ) -> Path:
        """Write one self-contained HTML file: the summary, the full table, per detector its histograms and
        ROC curves, and what produced the report.

        Styles are inline and the figures are embedded as base64 PNG, so the file needs nothing else (no
        network, no JavaScript). Figures need matplotlib (``pip install 'oodscope[plots]'``); with
        ``figures=False`` only the tables are written. The histograms' axis holds at least 99% of each set
        (the rest is counted in the legend) and turns logarithmic for scores spanning orders of magnitude
        (see :func:`histogram_axis`).
        """
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en">',
            '<head><meta charset="utf-8">',
            f"<title>{_escape(title)}</title>",
            f"<style>{_CSS}</style>",
            "</head>",
            "<body>",
            f"<h1>{_escape(title)}</h1>",
            f'<p class="meta">{_escape(self.header())}</p>',
        ]
        if self.errors:
            parts += ["<h2>Failures</h2>", self._errors_html()]
        parts += [
            f"<h2>Summary: {_escape(self.primary_metric)}</h2>",
            self._pivot_html(),
            f'<p class="note">{_escape(self._sort_note())} In each column the best value is in bold (unless '
            "all detectors tie); means are over the OOD sets of a group, and a group of one set (or of every "
            "set) has no mean row of its own.</p>",
            "<h2>All metrics</h2>",
            '<ul class="legend">'
            + "".join(
                f"<li><b>{_escape(metric)}</b>: {_escape(describe_metric(metric))}</li>"
                for metric in self.metrics
            )
            + "</ul>",
            self._table_html(),
        ]
        if figures and self.id_scores:
            parts += [
                "<h2>Scores and ROC curves</h2>",
                '<p class="note">Histograms show the share of each set per bin. Each axis holds at least 99% '
                "of every set; the legend counts the samples beyond it. The axis label says when it is "
                "logarithmic.</p>",
            ]
            for name in self.id_scores:
                png = _detector_png(self.id_scores[name], self.ood_scores.get(name, {}), bins)
                parts += [
                    '<section class="detector">',
                    f"<h3>{_escape(name)}</h3>",
                    f'<img alt="Score histograms and ROC curves of {_escape(name)}" '
                    f'src="data:image/png;base64,{png}">',
                    "</section>",
                ]
        parts += ["<h2>How this report was made</h2>", self._provenance_html(), "</body>", "</html>"]
        path = Path(path)
        path.write_text("\n".join(parts) + "\n", encoding="utf-8")
        return path

    def _pivot_html(self) -> str:
        metric, best, ranks = self.primary_metric, self.best_cells(), self.ranks()
        labels = list(dict.fromkeys(row["ood"] for row in self.rows))

        def classes(label: str) -> str:
            found = [] if label in self.ood_names else ["mean"]
            return " ".join(found + (["sorted"] if label == self.primary_label else []))

        head = '<th class="rank">#</th><th class="name">detector</th>' + "".join(
            f'<th class="{classes(label)}">{_escape(label)}{" &#9660;" * (label == self.primary_label)}</th>'
            for label in labels
        )
        body = []
        for row in self.pivot(metric):
            rank = ranks.get(row["detector"])
            cells = [
                f'<td class="rank">{"" if rank is None else rank}</td>',
                f'<td class="name detector">{_escape(row["detector"])}</td>',
            ]
            for label in labels:
                cells.append(
                    _value_cell(
                        row.get(label), classes(label), self._is_best(best, label, metric, row.get(label))
                    )
                )
            body.append("<tr>" + "".join(cells) + "</tr>")
        return f'<table class="pivot"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'

    def _table_html(self) -> str:
        best = self.best_cells()
        head = "".join(
            f'<th class="name">{_escape(c)}</th>' if c in ("detector", "ood") else f"<th>{_escape(c)}</th>"
            for c in self.columns
        )
        spans: dict[str, int] = {}
        for row in self.rows:
            spans[row["detector"]] = spans.get(row["detector"], 0) + 1
        body, shown = [], set()
        for row in self.rows:
            name = row["detector"]
            classes = ["mean"] if row["ood"] not in self.ood_names else []
            cells = []
            if name not in shown:
                shown.add(name)
                classes.append("first")
                cells.append(f'<td class="name detector" rowspan="{spans[name]}">{_escape(name)}</td>')
            cells.append(f'<td class="name">{_escape(row["ood"])}</td>')
            cells += [
                _value_cell(row[m], "", self._is_best(best, row["ood"], m, row[m])) for m in self.metrics
            ]
            body.append(f'<tr class="{" ".join(classes)}">' + "".join(cells) + "</tr>")
        return f'<table class="metrics"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'

    def _errors_html(self) -> str:
        rows = "".join(
            f"<tr><td>{_escape(e['detector'])}</td><td>{_escape(e['stage'])}</td>"
            f'<td>{_escape(e["dataset"] or "")}</td><td class="message">{_escape(e["error"])}</td></tr>'
            for e in self.errors
        )
        return (
            '<table class="errors"><thead><tr><th>detector</th><th>stage</th><th>dataset</th>'
            f"<th>error</th></tr></thead><tbody>{rows}</tbody></table>"
        )

    def _provenance_html(self) -> str:
        prov = self.provenance
        facts: list[tuple[str, str]] = []
        if "oodscope" in prov:
            versions = ", ".join(f"{k} {v}" for k, v in prov.get("versions", {}).items())
            facts.append(("oodscope", f"{prov['oodscope']} ({versions})"))
        if "created" in prov:
            facts.append(("created", prov["created"]))
        if "model" in prov:
            model = prov["model"]
            if model is None:
                facts.append(("model", "none: every dataset was given as Features"))
            else:
                facts.append(("model", _model_text(model, full=True)))
                if model.get("options"):
                    facts.append(("pass options", params_text(model["options"])))
        facts += [(key, _setting_text(value)) for key, value in prov.get("settings", {}).items()]
        if self.id_accuracy is not None:
            facts.append(("ID accuracy", f"{self.id_accuracy:.4f}"))
        if self.timings.get("total") is not None:
            facts.append(("total time", f"{self.timings['total']:.3f} s"))
        facts_html = "".join(
            f'<tr><th class="name">{_escape(k)}</th><td class="text">{_escape(v)}</td></tr>' for k, v in facts
        )

        datasets = prov.get("datasets") or {
            name: {
                "role": name if name in ("fit", "id") else "ood",
                "n_samples": count,
                "data": None,
                "groups": [],
            }
            for name, count in self.n_samples.items()
        }
        passes = self.timings.get("extract", {})
        data_rows = "".join(
            f'<tr><td class="name">{_escape(name)}</td><td class="name">{_escape(d["role"])}</td>'
            f'<td class="name">{_escape(", ".join(d.get("groups", [])))}</td>'
            f"<td>{'not run' if d['n_samples'] is None else d['n_samples']}</td>"
            f'<td class="text">{_escape(": ".join(filter(None, [d.get("source"), d.get("data")])))}</td>'
            f"<td>{_seconds(passes.get(name if name in ('fit', 'id') else f'ood:{name}'))}</td></tr>"
            for name, d in datasets.items()
        )
        described = prov.get("detectors") or {
            name: _describe_detector(detector, None) for name, detector in self.detectors.items()
        }
        ranks, fit, score = self.ranks(), self.timings.get("fit", {}), self.timings.get("score", {})
        detector_rows = "".join(
            f'<tr><td class="rank">{ranks.get(name) or ""}</td><td class="name detector">{_escape(name)}</td>'
            f'<td class="text params">{_escape(d["class"])}({_escape(params_text(d["params"]))})</td>'
            f'<td class="text">{_escape(", ".join(d.get("reads", [])))}'
            f"{_escape('; ' + d['pass']) if d.get('pass') else ''}</td>"
            f"<td>{_seconds(fit.get(name))}</td><td>{_seconds(score.get(name))}</td>"
            f'<td class="text">{_escape(self._status(name))}</td></tr>'
            for name in self.order
            if (d := described.get(name)) is not None
        )
        conventions = "".join(f"<li>{_escape(c)}</li>" for c in prov.get("conventions", []))
        return (
            f'<table class="facts"><tbody>{facts_html}</tbody></table>'
            "<h3>Data</h3>"
            '<table class="provenance"><thead><tr><th class="name">dataset</th><th class="name">role</th>'
            '<th class="name">groups</th><th>samples</th><th class="name">given as</th><th>pass (s)</th></tr>'
            f"</thead><tbody>{data_rows}</tbody></table>"
            "<h3>Detectors</h3>"
            '<table class="provenance"><thead><tr><th class="rank">#</th><th class="name">detector</th>'
            '<th class="name">class and every parameter</th><th class="name">reads</th><th>fit (s)</th>'
            '<th>score (s)</th><th class="name">status</th></tr></thead>'
            f"<tbody>{detector_rows}</tbody></table>"
            + (f'<h3>Conventions</h3><ul class="legend">{conventions}</ul>' if conventions else "")
        )


def _model_text(model: Mapping[str, Any], full: bool = False) -> str:
    """``CountingModel (torch, 2,411 parameters)`` from a provenance's model entry (``full``: with the start
    of the head's hash)."""
    details = [model.get("framework") or "unknown framework"]
    if model.get("keras_backend"):
        details[0] += f" on {model['keras_backend']}"
    if model.get("parameters") is not None:
        details.append(f"{model['parameters']:,} parameters")
    if full and model.get("head_sha256"):
        details.append(f"head weights sha256 {model['head_sha256'][:12]}")
    return f"{model.get('class')} ({', '.join(details)})"


def _setting_text(value: Any) -> str:
    """``a, b`` for a list, ``near: a; far: b, c`` for a dict, ``none`` when empty."""
    if isinstance(value, (list, dict)) and not value:
        return "none"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return "; ".join(f"{key}: {_setting_text(sub)}" for key, sub in value.items())
    return str(value)


def _value_cell(value: float | None, classes: str, best: bool) -> str:
    if value is None:
        return f'<td class="missing {classes}">&ndash;</td>'
    if best:  # <b> too, so that the mark shows without the page's styles (in a notebook)
        return f'<td class="{classes} best"><b>{value:.4f}</b></td>'
    return f'<td class="{classes}">{value:.4f}</td>'


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _escape(text: Any) -> str:
    return html.escape(str(text), quote=True)


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: #1f2328; background: #fff; margin: 24px; line-height: 1.45; }
h1 { font-size: 1.7em; margin: 0 0 4px; }
h2 { font-size: 1.3em; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 1px solid #d0d7de; }
h3 { font-size: 1.05em; margin: 18px 0 6px; }
.meta { color: #57606a; margin: 0 0 8px; }
table { border-collapse: collapse; font-size: 14px; margin: 6px 0 10px; width: 100%; }
th, td { padding: 4px 12px; border-bottom: 1px solid #d8dee4; text-align: right; white-space: nowrap;
         font-variant-numeric: tabular-nums; vertical-align: baseline; }
th { background: #f6f8fa; border-bottom: 2px solid #afb8c1; }
th.name, td.name { text-align: left; }
th.rank, td.rank { text-align: right; width: 2em; color: #57606a; }
td.text { text-align: left; white-space: normal; }
td.params, td.detector { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 13px; }
table.metrics td.detector { vertical-align: top; background: #fff; border-right: 1px solid #d8dee4; }
tr.first td { border-top: 2px solid #8c959f; }
tr.mean td { background: #f6f8fa; font-style: italic; }
tr.mean td.detector { background: #fff; font-style: normal; }
table.pivot td.mean, table.pivot th.mean { background: #f6f8fa; }
table.pivot th.sorted, table.pivot td.sorted { background: #ddf4ff; }
td.best { font-weight: 700; color: #116329; }
td.missing { color: #8c959f; }
table.facts th { width: 12em; background: #f6f8fa; border-bottom: 1px solid #d8dee4; }
table.errors td, table.errors th { text-align: left; white-space: normal; vertical-align: top; }
table.errors td.message { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 13px; }
ul.legend { color: #57606a; font-size: 13px; margin: 0 0 6px; padding-left: 20px; }
p.note { color: #57606a; font-size: 13px; margin: 0 0 6px; }
section.detector { margin: 12px 0 20px; }
section.detector h3 { font-family: ui-monospace, Menlo, Consolas, monospace; }
img { display: block; max-width: 100%; height: auto; border: 1px solid #d8dee4; border-radius: 4px; }
"""


def _matplotlib() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "Report.to_html draws its figures with matplotlib, an optional dependency. Install it with: "
            "pip install 'oodscope[plots]', or call to_html(..., figures=False)."
        ) from error
    return Figure, FigureCanvasAgg


def _legend_label(name: str, size: int, axis: HistogramAxis, key: Hashable) -> str:
    notes = []
    if axis.outside[key]:
        notes.append(f"{axis.outside[key]} beyond the axis")
    if axis.at_origin[key]:
        notes.append(f"{axis.at_origin[key]} at the bound, in the first bin")
    if axis.non_finite[key]:
        notes.append(f"{axis.non_finite[key]} not finite")
    return f"{name} (n={size}" + "".join(f"; {note}" for note in notes) + ")"


def draw_histograms(
    ax: Any, sets: Sequence[tuple[str, np.ndarray]], colors: Sequence[str], bins: int = 50
) -> HistogramAxis:
    """Overlaid histograms of ``(name, scores)`` sets on ``ax``, on the axis :func:`histogram_axis` chooses:
    the share of each set per bin, and in the legend each set's size and what is not drawn."""
    axis = histogram_axis({index: scores for index, (_, scores) in enumerate(sets)}, bins=bins)
    drawn = [
        (_legend_label(name, np.size(scores), axis, index), scores, color)
        for index, ((name, scores), color) in enumerate(zip(sets, colors, strict=True))
    ]
    if axis.scale == "distinct":
        width = 0.8 / len(sets)
        for index, (label, scores, color) in enumerate(drawn):
            counts, _ = np.histogram(axis.coordinates(scores), bins=axis.edges)
            positions = np.arange(counts.size) + (index - (len(sets) - 1) / 2) * width
            ax.bar(
                positions, counts / max(np.size(scores), 1), width=width, color=color, alpha=0.8, label=label
            )
        ticks = np.arange(0, axis.values.size, math.ceil(axis.values.size / 8))
        ax.set_xticks(ticks, [_short_float(value) for value in axis.values[ticks]])
    else:
        for label, scores, color in drawn:
            coordinates = axis.coordinates(scores)
            weights = np.full(coordinates.size, 1.0 / max(np.size(scores), 1))
            ax.hist(coordinates, bins=axis.edges, weights=weights, alpha=0.55, color=color, label=label)
        if axis.scale == "linear":
            ax.locator_params(axis="x", nbins=4)
            ax.ticklabel_format(axis="x", useOffset=False)  # an offset would sit on the axis label
        else:
            ax.set_xscale("log")
        ax.set_xlim(axis.edges[0], axis.edges[-1])
        if axis.direction < 0:
            ax.invert_xaxis()
    ax.set_xlabel(axis.label, fontsize=8)
    ax.set_ylabel("share of the set per bin", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.35)  # headroom, so that the legend does not cover the bars
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    return axis


def _detector_png(scores_in: np.ndarray, scores_out: Mapping[str, np.ndarray], bins: int) -> str:
    """Base64 PNG: one histogram panel per OOD set (ID vs that set, see :func:`draw_histograms`) and one
    panel of ROC curves.

    The figure is drawn on its own Agg canvas, outside pyplot: no global state changes and nothing stays
    open once it is saved.
    """
    figure_class, canvas_class = _matplotlib()
    n_panels = len(scores_out) + 1 if scores_out else 1
    n_cols = min(n_panels, 4)
    n_rows = math.ceil(n_panels / n_cols)
    figure = figure_class(figsize=(3.6 * n_cols, 3.0 * n_rows), dpi=100, layout="constrained")
    canvas_class(figure)
    axes = figure.subplots(n_rows, n_cols, squeeze=False).ravel()
    colors = [f"C{i % 10}" for i in range(1, len(scores_out) + 1)]
    for ax, (ood, values), color in zip(axes, scores_out.items(), colors, strict=False):
        draw_histograms(ax, [("ID", scores_in), (ood, values)], ["C0", color], bins)
        ax.set_title(f"ID vs {ood}", fontsize=10)
    if not scores_out:
        draw_histograms(axes[0], [("ID", scores_in)], ["C0"], bins)
        axes[0].set_title("ID", fontsize=10)
    else:
        roc_ax = axes[len(scores_out)]
        for (ood, values), color in zip(scores_out.items(), colors, strict=True):
            if not (np.isfinite(scores_in).all() and np.isfinite(values).all()):
                continue  # no curve from non-finite scores (the report lists the failure)
            fpr, tpr, _ = roc_curve(scores_in, values, positive="ood", drop_intermediate=True)
            roc_ax.plot(fpr, tpr, color=color, lw=1.5, label=f"{ood} ({auroc(scores_in, values):.3f})")
        roc_ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="0.6")
        roc_ax.set(xlim=(0, 1), ylim=(0, 1.01))
        roc_ax.set_title("ROC, OOD positive (AUROC)", fontsize=10)
        roc_ax.set_xlabel("FPR: ID flagged OOD", fontsize=8)
        roc_ax.set_ylabel("TPR: OOD caught", fontsize=8)
        roc_ax.tick_params(labelsize=8)
        if roc_ax.get_legend_handles_labels()[0]:
            roc_ax.legend(fontsize=7, frameon=False, loc="lower right")
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")
