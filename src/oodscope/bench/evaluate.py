"""Run many detectors on many OOD sets with the fewest passes per dataset, and gather a :class:`Report`.

The model is run once over the fit data, once over the ID data and once over each OOD set, whatever the
number of detectors: the layers all detectors read are extracted together, and every detector is fitted and
scored on the shared :class:`~oodscope.Features`. Detectors that need a perturbed pass (ODIN) add one such
pass per dataset for each distinct perturbation (see :mod:`oodscope.plan`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..detectors.base import Detector, clone
from ..extract import progress_bar
from ..features import Features
from ..metrics import bench_metrics
from ..needs import Needs
from ..shaping import sharing
from ._common import Session, as_named, check_metric, mean_or_none
from .report import DEFAULT_METRICS, Report, describe_run, mean_label

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
    if "all" in checked and set(checked["all"]) != set(ood_names):
        raise ValueError(
            "The group name 'all' is the overall mean over every OOD set; name the group otherwise."
        )
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
    errors: str = "record",
    **pass_options: Any,
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

    Detectors that read a pass over perturbed inputs (ODIN with ``eps > 0``) get it from one gradient pass
    per dataset, shared by all detectors with the same perturbation (one forward and backward pass plus a
    second forward pass per batch); the data must then be re-iterable (not a one-shot generator).

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
        ``{"near": ["mnist_5_9"], "far": ["fashion", "animal"]}``. A group of several sets gets a row of
        means; a group of one set is read from that set's row, and a group of every set from the overall
        mean over all OOD sets, which is added when there are several.
    metrics : sequence of str
        Metric names understood by :func:`~oodscope.bench_metrics`. The default reports AUROC,
        FPR@95TPR with OOD positive (``fpr95tpr_ood``) and with ID positive (``fpr95tpr_id``), AUPR-In and
        AUPR-Out, all computed exactly.
    feature_layers_id : dict of str to layer ids, optional
        Layers to extract for the named detectors instead of their defaults (as ``fit(model,
        feature_layers_id=...)`` would). Otherwise a detector reads the layers named by a layer
        hyperparameter if it has one, else its ``default_layers`` (``"penultimate"`` for feature
        detectors and activation shaping); logit detectors read none.
    **pass_options
        ``head_layer_id``, ``postproc_fns`` (a dict ``{layer_id: function}``), ``batch_size``, ``input_key``,
        ``label_key``, ``progress``: see :class:`~oodscope.BoundModel`; or give a ``BoundModel`` as the model.
    errors : {"record", "raise"}, default "record"
        What to do when a detector fails to fit or score (e.g. it needs labels the fit data lacks): record the
        error in :attr:`Report.errors`, log a warning and go on; or raise it.

    Returns
    -------
    Report
        The metric table, the raw scores per detector and dataset, the fitted detectors, the errors, the
        time spent in each phase and the provenance (versions, date, model, data, every detector's
        parameters, settings). Its detectors are sorted best first by AUROC over the OOD sets.

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
    metrics = tuple(metrics)
    for metric in metrics:
        check_metric(metric)
    oods = as_named(ood_data, "ood")
    groups = _check_groups(groups, list(oods))
    originals = detector_names(detectors)
    unknown = [name for name in feature_layers_id or {} if name not in originals]
    if unknown:
        raise ValueError(f"feature_layers_id names unknown detectors {unknown}; known: {list(originals)}.")
    detectors_ = {name: clone(detector) for name, detector in originals.items()}
    if _LOGITS in detectors_:
        raise ValueError(f"{_LOGITS!r} is reserved; name the detector otherwise.")
    session = Session(model, detectors_, feature_layers_id, errors, **pass_options)
    session.require_fit_data(fit_data)
    session.plan.add(_LOGITS, Needs())  # the model's plain logits on the ID data, for its accuracy
    given = {"fit": fit_data, "id": id_data, **oods}
    scores: dict[str, dict[str, np.ndarray]] = {name: {} for name in detectors_}
    sizes: dict[str, int | None] = {"fit": None}
    id_accuracy = None
    # Each dataset is scored right after its passes, and its activations are then dropped (unless the same
    # data comes again), so that memory holds one dataset's activations at a time. (Scoring on a worker
    # thread during the next pass was measured slower on 2 cores: the framework's own thread pool then
    # competes for the cores.)
    bar = progress_bar(
        given.items(), pass_options.get("progress"), desc="evaluate", unit="dataset", leave=False
    )
    for index, (key, data) in enumerate(bar):
        names = session.live(learning=key == "fit") + ([_LOGITS] if key == "id" else [])
        if not names:  # the fit data only when a detector learns from it, an OOD set only when one scores it
            continue
        views = session.features(key if key in ("fit", "id") else f"ood:{key}", data, names)
        sizes[key] = len(next(iter(views.values())))
        with sharing():  # within a dataset, detectors share shaping work and statistics
            for name in names:
                if name == _LOGITS:  # read now: the ID set's arrays are released before the OOD sets run
                    id_accuracy = _accuracy(views[name])
                elif key == "fit":
                    session.fit(name, views[name])
                elif name not in session.failed:
                    result = session.score(name, key, views[name])
                    if result is not None:
                        scores[name][key] = result
        if not any(later is data for later in list(given.values())[index + 1 :]):
            session.plan.forget(data)
        del views
    for name in detectors_:
        session.timings["fit"].setdefault(name, 0.0)  # stays 0 for detectors that learn nothing
    rows = _metric_rows(session, scores, list(oods), groups, metrics)
    session.timings["total"] = time.perf_counter() - started
    return Report(
        rows=rows,
        metrics=metrics,
        ood_names=list(oods),
        groups=groups,
        id_accuracy=id_accuracy,
        n_samples=sizes,
        id_scores={name: by_set["id"] for name, by_set in scores.items() if "id" in by_set},
        ood_scores={
            name: {key: by_set[key] for key in oods if key in by_set}
            for name, by_set in scores.items()
            if any(key in by_set for key in oods)
        },
        detectors={name: session.bind(name) for name in detectors_ if name not in session.failed},
        errors=session.errors,
        timings=session.timings,
        provenance=describe_run(
            model=session.bound,
            datasets=given,
            n_samples=sizes,
            detectors=detectors_,
            layers=feature_layers_id,
            groups=groups,
            metrics=metrics,
            settings={"metrics": list(metrics), "groups": groups, "errors": errors},
        ),
    )


#: the plan's entry for the model's own logits on the ID data
_LOGITS = "<logits>"


def _accuracy(features: Features | None) -> float | None:
    if features is None or features.labels is None or features.logits is None:
        return None
    predictions = features.logits.argmax(axis=1)
    return float(np.mean(predictions == np.asarray(features.labels).astype(predictions.dtype)))


def _metric_rows(
    session: Session,
    scores: Mapping[str, Mapping[str, np.ndarray]],
    ood_names: list[str],
    groups: Mapping[str, list[str]],
    metrics: tuple[str, ...],
) -> list[dict[str, Any]]:
    rows = []
    for name, by_set in scores.items():
        if "id" not in by_set:
            continue
        values: dict[str, dict[str, float | None]] = {}
        for ood in ood_names:
            scores_out = by_set.get(ood)
            if scores_out is None:
                values[ood] = dict.fromkeys(metrics)
                continue
            try:
                values[ood] = bench_metrics((by_set["id"], scores_out), metrics=metrics)
            except ValueError as error:  # e.g. a detector that gave NaN scores
                session.fail(name, "metrics", ood, error)
                values[ood] = dict.fromkeys(metrics)
                continue
            rows.append({"detector": name, "ood": ood, **values[ood]})
        means = {  # a group of one set, or of every set, would repeat a row
            group: members
            for group, members in groups.items()
            if len(set(members)) > 1 and set(members) != set(ood_names)
        }
        if len(ood_names) > 1:
            means["all"] = ood_names
        for group, members in means.items():
            row = {"detector": name, "ood": mean_label(group)}
            row.update({metric: mean_or_none([values[m][metric] for m in members]) for metric in metrics})
            rows.append(row)
    return rows
