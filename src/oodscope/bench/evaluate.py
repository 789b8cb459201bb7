"""Run many detectors on many OOD sets with one forward pass per dataset, and gather a :class:`Report`.

The model is run once over the fit data, once over the ID data and once over each OOD set, whatever the
number of detectors: the layers all detectors read are extracted together, and every detector is fitted and
scored on the cached :class:`~oodscope.Features`. Only detectors that need input gradients (ODIN) run the
model again, once per scored dataset (and over the fit data when they learn from it).
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from ..detectors.base import Detector, clone
from ..features import Features
from ..metrics import bench_metrics
from ..shaping import sharing
from ._common import (
    ExtractionPlan,
    PassOptions,
    as_named,
    check_errors,
    check_metric,
    describe_error,
    detector_layers,
    layer_union,
    log,
    mean_or_none,
    needs_gradients,
    unreachable_layers,
)
from .report import DEFAULT_METRICS, Report, mean_label

__all__ = ["evaluate"]


def detector_names(detectors: Sequence[Detector] | Mapping[str, Detector]) -> dict[str, Detector]:
    """``{name: detector}``: the keys of a mapping, else each detector's ``repr`` (numbered when repeated).

    >>> from oodscope import GEN, MSP
    >>> list(detector_names([GEN(), MSP(), GEN(gamma=0.5), GEN()]))
    ['GEN()', 'MSP()', 'GEN(gamma=0.5)', 'GEN() #2']
    """
    if isinstance(detectors, Mapping):
        named = {str(name): detector for name, detector in detectors.items()}
    else:
        named = {}
        for detector in detectors:
            name, copy = repr(detector), 1
            while name in named:
                copy += 1
                name = f"{detector!r} #{copy}"
            named[name] = detector
    if not named:
        raise ValueError("Give at least one detector.")
    for name, detector in named.items():
        if not isinstance(detector, Detector):
            raise TypeError(f"{name!r} is a {type(detector).__name__}, not an oodscope Detector.")
    return named


def _check_groups(groups: Mapping[str, Sequence[str]] | None, ood_names: Sequence[str]) -> dict[str, list]:
    if groups is None:
        return {}
    checked = {}
    for group, members in groups.items():
        members = [members] if isinstance(members, str) else list(members)
        unknown = [member for member in members if member not in ood_names]
        if not members or unknown:
            raise ValueError(
                f"Group {group!r} must list OOD dataset names among {list(ood_names)}; "
                f"got {members}{' (unknown: ' + str(unknown) + ')' if unknown else ''}."
            )
        checked[str(group)] = members
    labels = [mean_label(group) for group in [*checked, "all"]]
    clash = [name for name in ood_names if name in labels]
    if clash:
        raise ValueError(f"OOD dataset names {clash} clash with the labels of the mean rows; rename them.")
    return checked


def evaluate(
    model: Any,
    fit_data: Any,
    id_data: Any,
    ood_data: Mapping[str, Any] | Any,
    detectors: Sequence[Detector] | Mapping[str, Detector],
    groups: Mapping[str, Sequence[str]] | None = None,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    feature_layers_id: Mapping[str, Any] | None = None,
    head_layer_id: Hashable = -1,
    postproc_fns: Mapping[Hashable, Any] | None = None,
    batch_size: int = 128,
    input_key: str | None = None,
    label_key: str | None = None,
    errors: str = "record",
    progress: bool | None = None,
) -> Report:
    """Fit and score many detectors on ID data and several OOD sets, one forward pass per dataset.

    The union of the layers the detectors read is extracted once from each dataset with
    :func:`~oodscope.extract` (logits always; the head's weights when a detector requires ``"head"``). Each
    detector is then fitted on the cached fit Features and scores the cached ID and OOD Features, seeing
    exactly what its own ``fit(model)`` / ``score(data)`` would have extracted: its layers only,
    post-processed its way (a detector with its own post-processing, such as Gram's statistics, gets it
    computed beside the pooled activations the others read, in the same pass). The same data object given
    twice (e.g. as fit and ID data) is run once.

    Each dataset is scored as soon as it is extracted, and its layer activations are then released, so that
    memory holds the activations of one dataset at a time (plus what the fitted detectors keep).

    Detectors that need input gradients (ODIN) cannot use cached Features: they are fitted with
    ``detector.fit(model, ...)`` and score each dataset with ``detector.score(data)``, i.e. one extra
    model-level pass per scored dataset (and one over the fit data if they learn from it); the data must then
    be re-iterable (not a one-shot generator).

    Parameters
    ----------
    model : torch.nn.Module or keras.Model or None
        The classifier; never modified. May be None when every dataset is given as :class:`Features`.
    fit_data
        In-distribution data to fit the detectors on, in any form :func:`~oodscope.extract` accepts, or
        ``Features``. May be None when no detector learns from data (it is then not run at all; nor is it run
        when given but no detector needs it).
    id_data
        In-distribution test data (data or ``Features``). Its labels, when present, give the model's accuracy.
    ood_data : dict of str to data
        The OOD sets by name (data or ``Features``); a single dataset is named ``"ood"``.
    detectors : list of Detector or dict of str to Detector
        The detectors, named by their ``repr`` (a list) or by the keys (a dict). They are cloned, so the
        objects given are left untouched; the fitted clones are in :attr:`Report.detectors`.
    groups : dict of str to list of str, optional
        Named groups of OOD sets whose metrics are averaged, e.g.
        ``{"near": ["mnist_5_9"], "far": ["fashion", "animal"]}``. An overall mean over all OOD sets is
        added when there are several.
    metrics : sequence of str
        Metric names understood by :func:`~oodscope.bench_metrics`. The default reports AUROC,
        FPR@95TPR with OOD positive (``fpr95tpr_ood``) and with ID positive (``fpr95tpr_id``), AUPR-In and
        AUPR-Out, all computed exactly.
    feature_layers_id : dict of str to layer ids, optional
        Layers to extract for the named detectors instead of their defaults (as ``fit(model,
        feature_layers_id=...)`` would). Otherwise a detector reads the layers named by a layer
        hyperparameter if it has one, else its ``default_layers`` (``"penultimate"`` for feature
        detectors and activation shaping); logit detectors read none.
    head_layer_id, postproc_fns, batch_size, input_key, label_key
        Passed to :func:`~oodscope.extract` (``postproc_fns`` as a dict ``{layer_id: function}``).
    errors : {"record", "raise"}, default "record"
        What to do when a detector fails to fit or score (e.g. it needs labels the fit data lacks): record the
        error in :attr:`Report.errors`, log a warning and go on; or raise it.
    progress : bool, optional
        ``True`` always shows progress bars, ``False`` never; by default they appear after 2 seconds.

    Returns
    -------
    Report
        The metric table, the raw scores per detector and dataset, the fitted detectors, the errors and the
        time spent in each phase.

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import GEN, MSP, Features
    >>> rng = np.random.default_rng(0)
    >>> peaked = Features(logits=rng.normal(0, 1, (50, 3)) + [6, 0, 0], labels=np.zeros(50, int))
    >>> flat = Features(logits=rng.normal(0, 1, (40, 3)))
    >>> report = evaluate(None, None, peaked, {"flat": flat}, [GEN(), MSP()])
    >>> report.id_accuracy
    1.0
    >>> round(report.value("GEN()", "flat", "auroc"), 3)
    0.997
    """
    started = time.perf_counter()
    errors = check_errors(errors)
    metrics = tuple(metrics)
    for metric in metrics:
        check_metric(metric)
    oods = as_named(ood_data, "ood")
    groups = _check_groups(groups, list(oods))
    originals = detector_names(detectors)
    overrides = dict(feature_layers_id or {})
    unknown = [name for name in overrides if name not in originals]
    if unknown:
        raise ValueError(f"feature_layers_id names unknown detectors {unknown}; known: {list(originals)}.")
    options = PassOptions(head_layer_id, postproc_fns, batch_size, input_key, label_key, progress)
    run = _Run(errors)

    detectors_ = {name: clone(detector) for name, detector in originals.items()}
    layers = {name: detector_layers(det, overrides.get(name)) for name, det in detectors_.items()}
    cached = {name: det for name, det in detectors_.items() if not needs_gradients(det)}
    scored = [id_data, *oods.values()]
    for name, det in detectors_.items():
        try:
            det._validate_params()  # a bad hyperparameter fails here, before any pass
        except ValueError as error:
            run.fail(name, "fit", None, error)
            continue
        if det._needs_fit() and fit_data is None:
            run.fail(
                name,
                "fit",
                None,
                ValueError(f"{_who(name, det)} learns from in-distribution data: give fit_data."),
            )
        elif needs_gradients(det) and (model is None or any(isinstance(d, Features) for d in scored)):
            message = (
                f"{_who(name, det)} needs input gradients, so a model and raw (not Features) ID and OOD data."
            )
            run.fail(name, "fit", None, TypeError(message))
    extracting = model is not None and not all(isinstance(d, Features) for d in (fit_data, *scored))
    if extracting:
        bad = unreachable_layers(model, layer_union(layers[name] for name in cached), head_layer_id)
        for name in cached:
            missing = [layer for layer in layers[name] if layer in bad]
            if missing:
                run.fail(name, "extract", None, bad[missing[0]])

    from tqdm.auto import tqdm

    plan = ExtractionPlan(model, options)
    live = [name for name in cached if name not in run.failed]
    for name in live:
        plan.add(name, cached[name], layers[name])
        run.timings["fit"][name] = 0.0  # stays 0 for detectors that learn nothing
    given = {"fit": fit_data, "id": id_data, **oods}
    # the fit data only when a detector learns from it, the OOD sets only when a detector uses them; the ID
    # data always, for the model's accuracy
    wanted = {"fit": any(cached[name]._needs_fit() for name in live), "id": True}
    wanted.update({key: bool(live) for key in oods})
    own_pass = [name for name in detectors_ if name not in cached and name not in run.failed]
    bar = tqdm(
        total=len(given) + (sum(wanted.values()) if live else 0) + len(own_pass),
        desc="evaluate",
        unit="step",
        disable=progress is False,
        delay=0 if progress else 2.0,
        leave=False,
    )

    # within a dataset, shaping detectors share their work (see oodscope.shaping.sharing)
    def fit_all(features: Features) -> None:
        with sharing():
            for name in live:
                det = cached[name]
                if det._needs_fit() and name not in run.failed:
                    view = plan.view(features, name, fit_data)
                    run.fit(name, det, lambda d, view=view: d.fit(view))
        bar.update()

    def score_all(key: str, features: Features) -> None:
        with sharing():
            for name in live:
                if name not in run.failed:
                    run.score(name, cached[name], key, plan.view(features, name, given[key]))
        bar.update()

    # Each dataset is scored right after its pass, and its layer activations are then dropped (unless the
    # same data comes again), so that memory holds one dataset's activations at a time. (Scoring on a
    # worker thread during the next pass was measured slower on 2 cores: the framework's own thread pool
    # then competes for the cores.)
    outputs: dict[str, Features] = {}  # logits and labels only
    with bar:
        for index, (key, data) in enumerate(given.items()):
            if wanted[key]:
                bar.set_postfix_str(f"extract {key}", refresh=False)
                label = key if key in ("fit", "id") else f"ood:{key}"
                features = plan.features(label, data, run.timings["extract"])
                if key == "fit":
                    fit_all(features)
                elif live:
                    score_all(key, features)
                outputs[key] = Features._unchecked(logits=features.logits, labels=features.labels)
                if not any(later is data for later in list(given.values())[index + 1 :]):
                    plan.forget(data)
                del features
            bar.update()
        for name in own_pass:  # input-gradient methods: their own passes, one model user at a time
            det = detectors_[name]
            bar.set_postfix_str(name, refresh=False)
            run.fit(name, det, lambda d, own=layers[name]: options.model_fit(d, model, fit_data, own))
            for key in ("id", *oods):
                if name not in run.failed:
                    run.score(name, det, key, given[key])
            bar.update()
    id_features = outputs["id"]
    fit_features = outputs.get("fit")
    ood_features = {key: outputs[key] for key in oods if key in outputs}

    metric_rows = _metric_rows(run, detectors_, list(oods), groups, metrics)
    run.timings["total"] = time.perf_counter() - started
    return Report(
        rows=metric_rows,
        metrics=metrics,
        ood_names=list(oods),
        groups=groups,
        id_accuracy=_accuracy(id_features),
        n_samples={
            "fit": None if fit_features is None else len(fit_features),
            "id": len(id_features),
            **{ood: len(features) for ood, features in ood_features.items()},
        },
        id_scores=run.id_scores,
        ood_scores=run.ood_scores,
        detectors={name: det for name, det in detectors_.items() if name not in run.failed},
        errors=run.errors,
        timings=run.timings,
    )


class _Run:
    """The mutable state of one evaluation: scores, errors and timings."""

    def __init__(self, errors: str) -> None:
        self.raise_errors = errors == "raise"
        self.failed: set[str] = set()
        self.errors: list[dict[str, Any]] = []
        self.id_scores: dict[str, np.ndarray] = {}
        self.ood_scores: dict[str, dict[str, np.ndarray]] = {}
        self.timings: dict[str, Any] = {"extract": {}, "fit": {}, "score": {}}

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

    def fit(self, name: str, det: Detector, fit: Any) -> None:
        start = time.perf_counter()
        try:
            fit(det)
        except Exception as error:  # a detector's failure is recorded, not fatal (unless errors="raise")
            self.fail(name, "fit", None, error)
        finally:
            self.timings["fit"][name] = time.perf_counter() - start

    def score(self, name: str, det: Detector, dataset: str, data: Any) -> None:
        start = time.perf_counter()
        try:
            scores = det.score(data).scores
        except Exception as error:
            self.fail(name, "score", dataset, error)
            return
        finally:
            self.timings["score"][name] = self.timings["score"].get(name, 0.0) + time.perf_counter() - start
        if dataset == "id":
            self.id_scores[name] = scores
        else:
            self.ood_scores.setdefault(name, {})[dataset] = scores


def _who(name: str, detector: Detector) -> str:
    return name if name == repr(detector) else f"{name} ({detector!r})"


def _accuracy(features: Features) -> float | None:
    if features.labels is None or features.logits is None:
        return None
    predictions = features.logits.argmax(axis=1)
    return float(np.mean(predictions == np.asarray(features.labels).astype(predictions.dtype)))


def _metric_rows(
    run: _Run,
    detectors: Mapping[str, Detector],
    ood_names: list[str],
    groups: Mapping[str, list[str]],
    metrics: tuple[str, ...],
) -> list[dict[str, Any]]:
    rows = []
    for name in detectors:
        if name not in run.id_scores:
            continue
        values: dict[str, dict[str, float | None]] = {}
        for ood in ood_names:
            scores_out = run.ood_scores.get(name, {}).get(ood)
            if scores_out is None:
                values[ood] = dict.fromkeys(metrics)
                continue
            try:
                values[ood] = bench_metrics((run.id_scores[name], scores_out), metrics=metrics)
            except ValueError as error:  # e.g. a detector that gave NaN scores
                run.fail(name, "metrics", ood, error)
                values[ood] = dict.fromkeys(metrics)
                continue
            rows.append({"detector": name, "ood": ood, **values[ood]})
        means = dict(groups)
        if len(ood_names) > 1:
            means["all"] = ood_names
        for group, members in means.items():
            row = {"detector": name, "ood": mean_label(group)}
            row.update({metric: mean_or_none([values[m][metric] for m in members]) for metric in metrics})
            rows.append(row)
    return rows
