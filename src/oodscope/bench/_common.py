"""What ``evaluate`` and ``tune`` share: the :class:`Session` of many detectors on one model, metric names."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from ..detectors.base import Detector
from ..features import Features
from ..metrics import bench_metrics

log = logging.getLogger("oodscope.bench")


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


class Session:
    """Many detectors on one bound model: the plan of their passes, and what happened to each of them.

    ``evaluate`` and ``tune`` both run their detectors through a session. On construction each detector's
    hyperparameters are validated, its needs (with the layers given for it in ``layers``) join the
    :class:`~oodscope.plan.Plan`, and, before any pass, every layer is checked to exist in the model; a
    detector that fails any of this is recorded (or raised, with ``errors="raise"``) and takes no further
    part. :meth:`features` then runs the fewest passes over a dataset for the detectors still alive, and
    :meth:`fit` / :meth:`score` run one detector, recording failures and times.
    """

    def __init__(
        self,
        model: Any,
        detectors: Mapping[str, Detector],
        layers: Mapping[str, Any] | None = None,
        errors: str = "record",
        **pass_options: Any,
    ) -> None:
        from ..binding import bind
        from ..plan import Plan

        self.raise_errors = check_errors(errors) == "raise"
        self.detectors = dict(detectors)
        self.failed: set[str] = set()
        self.errors: list[dict[str, Any]] = []
        self.timings: dict[str, Any] = {"extract": {}, "fit": {}, "score": {}}
        self.first_widths: dict[str, tuple[str, dict[str, Any]]] = {}
        self.bound = None if model is None else bind(model, **pass_options)
        self.plan = Plan(self.bound)
        self.layers = layers = dict(layers or {})
        needs, fit_needs = {}, {}
        #: the plan's name for the fit pass of a detector that reads the fit data otherwise than it scores
        self.fit_entry: dict[str, str] = {}
        for name, detector in self.detectors.items():
            try:
                detector._validate_params()  # a bad hyperparameter fails here, before any pass
                needs[name] = detector.needs(layers.get(name))
                fit_needs[name] = detector.fit_needs(layers.get(name))
            except (ValueError, TypeError) as error:
                self.fail(name, "fit", None, error)
        for name in list(needs):
            if fit_needs[name] != needs[name] and self.detectors[name]._needs_fit():
                self.fit_entry[name] = f"{name} <fit>"
        if self.bound is not None:
            wanted = list(
                dict.fromkeys(
                    layer for need in (*needs.values(), *fit_needs.values()) for layer in need.model_layers()
                )
            )
            bad = unreachable_layers(self.bound.model, wanted, self.bound.head_layer_id)
            for name, need in needs.items():
                missing = [
                    layer for layer in (*need.model_layers(), *fit_needs[name].model_layers()) if layer in bad
                ]
                if missing:
                    self.fail(name, "extract", None, bad[missing[0]])
        for name, need in needs.items():
            if name not in self.failed:
                try:
                    self.plan.add(name, need)
                    if name in self.fit_entry:
                        self.plan.add(self.fit_entry[name], fit_needs[name])
                except Exception as error:  # e.g. a backend without the gradients a perturbation needs
                    self.fail(name, "fit", None, error)

    def bind(self, name: str) -> Detector:
        """Detector ``name``, bound to the session's model and pass options (with the layers given for it), so
        that it scores raw data too; as it is when the session has no model."""
        detector = self.detectors[name]
        if self.bound is not None:
            detector._bound = self.bound.replace(feature_layers_id=self.layers.get(name))
        return detector

    def live(self, learning: bool = False) -> list[str]:
        """The detectors that have not failed (only those that learn from data, with ``learning``)."""
        return [
            name
            for name, detector in self.detectors.items()
            if name not in self.failed and (detector._needs_fit() or not learning)
        ]

    def require_fit_data(self, fit_data: Any) -> None:
        """Record every detector that learns from data as failed when there is no fit data."""
        if fit_data is None:
            for name in self.live(learning=True):
                detector = self.detectors[name]
                who = name if name == repr(detector) else f"{name} ({detector!r})"
                self.fail(
                    name, "fit", None, ValueError(f"{who} learns from in-distribution data: give fit_data.")
                )

    def features(self, label: str, data: Any, names: Sequence[str]) -> dict[str, Features]:
        """The Features of ``data`` for each named detector, from the fewest passes (timed as ``label``).

        Every dataset must give Features of the widths of the first one (classes, layer widths): scores of
        sets from different models or layers are not comparable, so a mismatch raises a ``ValueError``
        naming both datasets, whatever ``errors`` says.
        """
        if label == "fit":  # a detector's own fit pass, where it has one
            entries = {self.fit_entry.get(name, name): name for name in names}
            views = self.plan.features(data, label, self.timings["extract"], list(entries))
            views = {entries[entry]: view for entry, view in views.items()}
        else:
            views = self.plan.features(data, label, self.timings["extract"], names)
        for name, view in views.items():
            first, widths = self.first_widths.setdefault(name, (label, view.widths()))
            if first != label:
                view.check_widths(widths, f"the {_dataset(label)} data", f"the {_dataset(first)} data")
        return views

    def fail(self, name: str, stage: str, dataset: str | None, error: BaseException) -> None:
        if self.raise_errors:
            raise error
        where = f"{stage}" + (f" on {dataset!r}" if dataset else "")
        log.warning("%s failed to %s: %s", name, where, describe_error(error))
        log.debug("Traceback of the failure of %s.", name, exc_info=error)
        if stage in ("fit", "extract") or dataset == "id":
            self.failed.add(name)
        self.errors.append(
            {"detector": name, "stage": stage, "dataset": dataset, "error": describe_error(error)}
        )

    def last_error(self, name: str) -> str | None:
        """The last failure recorded for detector ``name``, or None."""
        return next((entry["error"] for entry in reversed(self.errors) if entry["detector"] == name), None)

    def fit(self, name: str, features: Features) -> bool:
        """Fit detector ``name`` on ``features``; False (and recorded) when it fails."""
        start = time.perf_counter()
        try:
            self.detectors[name].fit(features)
            return True
        except Exception as error:  # a detector's failure is recorded, not fatal (unless errors="raise")
            self.fail(name, "fit", None, error)
            return False
        finally:
            self.timings["fit"][name] = time.perf_counter() - start

    def score(self, name: str, dataset: str, features: Features) -> np.ndarray | None:
        """Detector ``name``'s scores of ``features``; None (and recorded) when it fails."""
        start = time.perf_counter()
        try:
            return self.detectors[name].score(features).scores
        except Exception as error:
            self.fail(name, "score", dataset, error)
            return None
        finally:
            self.timings["score"][name] = self.timings["score"].get(name, 0.0) + time.perf_counter() - start


def _dataset(label: str) -> str:
    """A dataset's name in a message: "fit", "ID" or "OOD 'svhn'" for the labels ``fit``, ``id``,
    ``ood:svhn``."""
    kind, _, name = label.partition(":")
    return {"id": "ID", "fit": "fit"}.get(kind, f"OOD {name!r}" if name else label)


def as_named(datasets: Any, default_name: str) -> dict[str, Any]:
    """A mapping ``{name: data}``; a single dataset gets ``default_name``."""
    if isinstance(datasets, Mapping):
        if not datasets:
            raise ValueError("Give at least one OOD dataset.")
        for key in datasets:
            if not isinstance(key, str):
                raise TypeError(f"Dataset names must be strings; got {key!r}.")
            if key in ("fit", "id"):
                raise ValueError(
                    f"An OOD set cannot be named {key!r}: that name stands for the {key} data. Rename it."
                )
        return dict(datasets)
    return {default_name: datasets}


def mean_or_none(values: Sequence[float | None]) -> float | None:
    """The mean of the values, or None when any is missing (a partial mean would mislead)."""
    if not values or any(value is None for value in values):
        return None
    return float(np.mean(values))
