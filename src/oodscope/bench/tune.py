"""Hyperparameter search for one detector on cached features.

Every candidate is a clone of the detector with the candidate's parameters set (nested ones such as
``detector__gamma`` included), refitted on the same fit :class:`~oodscope.Features` and scored on the same
validation Features: the model runs once per dataset, not once per candidate.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._table import markdown_table
from ..detectors.base import Detector, clone
from ..metrics import bench_metrics
from ..shaping import sharing
from ._common import Session, as_named, describe_error, higher_is_better, log

__all__ = ["TuneResult", "parameter_candidates", "tune"]


def parameter_candidates(
    param_grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Sequence[Any]]],
) -> list:
    """All parameter combinations of a grid: a dict of lists, or a list of such dicts (their union).

    >>> parameter_candidates({"gamma": [0.1, 0.5], "k": [10]})
    [{'gamma': 0.1, 'k': 10}, {'gamma': 0.5, 'k': 10}]
    >>> parameter_candidates([{"gamma": [0.1]}, {"k": [5, 10]}])
    [{'gamma': 0.1}, {'k': 5}, {'k': 10}]
    """
    grids = [param_grid] if isinstance(param_grid, Mapping) else list(param_grid)
    candidates = []
    for grid in grids:
        if not isinstance(grid, Mapping):
            raise TypeError(f"A parameter grid is a dict of lists or a list of such dicts; got {grid!r}.")
        names = list(grid)
        values = []
        for name in names:
            options = grid[name]
            if isinstance(options, (str, bytes)) or not hasattr(options, "__iter__"):
                raise TypeError(
                    f"The values of parameter {name!r} must be a list of candidates; got {options!r}. "
                    f"Write {{{name!r}: [{options!r}]}} for a single value."
                )
            options = list(options)
            if not options:
                raise ValueError(f"Parameter {name!r} has an empty list of candidates.")
            values.append(options)
        candidates += [
            dict(zip(names, combination, strict=True)) for combination in itertools.product(*values)
        ]
    if not candidates:
        raise ValueError(
            "param_grid holds no grid: give a dict of candidate lists, e.g. {'gamma': [0.1, 0.5]}, or a "
            "non-empty list of such dicts."
        )
    return candidates


@dataclasses.dataclass(eq=False, repr=False)
class TuneResult:
    """The outcome of :func:`tune`.

    Attributes
    ----------
    best_detector : Detector
        The best candidate, fitted on the fit data.
    best_params : dict
        Its parameters (the grid's keys).
    best_score : float
        Its metric value (the mean over the OOD sets when there are several).
    metric : str
        The metric that was optimised.
    higher_is_better : bool
        Its direction.
    table : list of dict
        One row per candidate, in grid order: its parameters, ``rank`` (1 = best), the metric (and, with
        several OOD sets, ``"<metric>:<set>"`` per set), ``fit_s``, ``score_s`` and ``error`` (None unless
        the candidate failed).
    scores : list of dict or None
        With ``keep_scores=True``, per candidate ``{"id": scores, <ood set>: scores, ...}``.
    timings : dict of str to float
        Seconds spent extracting each dataset (0 for Features given).
    """

    best_detector: Detector
    best_params: dict[str, Any]
    best_score: float
    metric: str
    higher_is_better: bool
    table: list[dict[str, Any]]
    scores: list[dict[str, np.ndarray]] | None = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_markdown(self, digits: int = 4, sort: bool = True) -> str:
        """The candidates as a markdown table, best first (``sort=False``: grid order)."""
        rows = sorted(self.table, key=lambda row: row["rank"] or math.inf) if sort else self.table
        shown = [{key: _cell(value) for key, value in row.items()} for row in rows]
        columns = list(dict.fromkeys(key for row in shown for key in row))
        if all(row.get("error") is None for row in rows):
            columns.remove("error")
        return markdown_table(shown, columns, digits=digits)

    def __repr__(self) -> str:
        return (
            f"TuneResult(best_params={self.best_params!r}, best_score={self.best_score:.4f} ({self.metric}), "
            f"{len(self.table)} candidates)"
        )


def _cell(value: Any) -> Any:
    return repr(value) if isinstance(value, Detector) else value


def tune(
    detector: Detector,
    param_grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Sequence[Any]]],
    fit_data: Any,
    id_val: Any,
    ood_val: Any,
    metric: str = "auroc",
    model: Any = None,
    *,
    feature_layers_id: Any = None,
    errors: str = "record",
    keep_scores: bool = False,
    **pass_options: Any,
) -> TuneResult:
    """Grid search over a detector's hyperparameters, scored on validation ID / OOD data.

    Each candidate is ``clone(detector).set_params(**candidate)`` -- nested parameters such as
    ``detector__gamma`` of ``ReAct(GEN())`` included -- refitted on the cached fit Features and scored on
    the cached validation Features. A candidate whose parameters do not read back from ``get_params`` as
    set raises an error, so a search can never silently leave a parameter unchanged.

    Parameters
    ----------
    detector : Detector
        The detector to tune; it is not modified.
    param_grid : dict of str to list, or list of such dicts
        The candidates: all combinations of each dict's lists (see :func:`parameter_candidates`).
    fit_data, id_val, ood_val
        Fit data (None when no candidate learns from data), ID validation data, and OOD validation data (one
        dataset or a dict ``{name: data}``; the metric is then averaged over them). Each is
        :class:`~oodscope.Features` or data for ``model``, which is then run over it once.
    metric : str, default "auroc"
        A :func:`~oodscope.bench_metrics` name. Higher is better for ``auroc``, ``aupr_*``, ``tnr*`` and
        ``detect_acc``, lower for ``fpr*``.
    model : torch.nn.Module or keras.Model or BoundModel, optional
        Needed only for data that is not Features. Candidates that read a perturbed pass (ODIN's eps) get
        one such pass per dataset for each distinct perturbation.
    feature_layers_id : layer ids, optional
        Layers to extract instead of the detector's defaults (as ``fit(model, feature_layers_id=...)``).
    errors : {"record", "raise"}, default "record"
        A candidate that fails to fit or score is recorded in the table (``error``) and skipped, or raises.
    keep_scores : bool, default False
        Keep every candidate's scores in :attr:`TuneResult.scores`.
    **pass_options
        ``head_layer_id``, ``postproc_fns`` (a dict), ``batch_size``, ``input_key``, ``label_key`` and
        ``progress`` (bars over the passes and the candidates): see :class:`~oodscope.BoundModel`.

    Returns
    -------
    TuneResult

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import GEN, Features
    >>> rng = np.random.default_rng(0)
    >>> id_val = Features(logits=rng.normal(0, 1, (60, 4)) + [5, 0, 0, 0])
    >>> ood_val = Features(logits=rng.normal(0, 1, (60, 4)))
    >>> result = tune(GEN(), {"gamma": [0.01, 0.1, 1.0], "k": [1, 4]}, None, id_val, ood_val)
    >>> len(result.table), sorted(result.best_params), result.best_score > 0.9
    (6, ['gamma', 'k'], True)
    """
    direction = higher_is_better(metric)
    if not isinstance(detector, Detector):
        raise TypeError(f"tune needs an oodscope Detector; got {type(detector).__name__}.")
    candidates = parameter_candidates(param_grid)
    named = {}
    for index, params in enumerate(candidates):
        # a detector given as a value is copied, so that nested settings never leak between candidates
        given_values = {name: clone(v) if isinstance(v, Detector) else v for name, v in params.items()}
        named[str(index)] = clone(detector).set_params(**given_values)
        _check_params_took(named[str(index)], given_values)
    oods = as_named(ood_val, "ood")
    layers = dict.fromkeys(named, feature_layers_id)
    session = Session(model, named, layers, errors, **pass_options)
    del named  # the session holds the candidates, and lets each go once scored
    if session.live(learning=True) and fit_data is None:
        raise ValueError(f"{type(detector).__name__} learns from in-distribution data: give fit_data.")
    # every candidate's views of every dataset, from the fewest passes (candidates differ only in their
    # hyperparameters, so they mostly share one pass per dataset)
    views = {
        "fit": session.features("fit", fit_data, session.live(learning=True)) if fit_data is not None else {}
    }
    # a candidate whose scoring pass depends on what it learns (its fit_needs differ from its needs, e.g. a
    # loss reading class means) is fitted before the scoring passes are run
    fitted_first = {
        name: session.fit(name, views["fit"][name]) for name in session.fit_entry if name in views["fit"]
    }
    for key, data in {"id": id_val, **oods}.items():
        views[key] = session.features(key if key == "id" else f"ood:{key}", data, session.live())

    from ..extract import progress_bar

    progress = pass_options.get("progress")
    table, kept_scores = [], []
    best: tuple[float, int, Detector] | None = None
    sign = 1.0 if direction else -1.0
    bar = progress_bar(list(session.detectors), progress, desc="tune", unit="candidate", leave=False)
    # candidates share shaping work (the clip value of ReActs around several detectors) and statistics (the
    # covariance of Mahalanobis, RMDS and ViM candidates)
    with sharing():
        for name in bar:
            index, params = int(name), candidates[int(name)]
            candidate = session.detectors[name]
            row, scores, value = _run_candidate(session, name, candidate, views, oods, metric, fitted_first)
            session.bind(name)  # so that the best one scores raw data with the model, if there is one
            del session.detectors[name]  # only the best fitted candidate is kept (below)
            if row["error"] is not None:
                log.warning("Candidate %s of %r failed: %s", params, detector, row["error"])
            table.append({**params, "rank": None, metric: value, **row})
            kept_scores.append(scores if keep_scores else {})
            if value is not None and (best is None or sign * value > sign * best[0]):
                best = (value, index, candidate)
    if best is None:
        first = next(row["error"] for row in table)
        raise RuntimeError(f"Every candidate failed; the first error: {first}")
    _rank(table, metric, sign)
    best_value, best_index, best_detector = best
    return TuneResult(
        best_detector=best_detector,
        best_params=dict(candidates[best_index]),
        best_score=best_value,
        metric=metric,
        higher_is_better=direction,
        table=table,
        scores=kept_scores if keep_scores else None,
        timings=dict(session.timings["extract"]),
    )


def _run_candidate(
    session: Session,
    name: str,
    candidate: Detector,
    views: dict,
    oods: dict,
    metric: str,
    fitted_first: dict[str, bool],
) -> tuple[dict[str, Any], dict[str, np.ndarray], float | None]:
    """Fit and score one candidate on its views: ``(row, scores, value)``; the row holds the per-set
    metric (with several OOD sets), ``fit_s``, ``score_s`` and ``error``."""
    fit_s = score_s = value = None
    scores: dict[str, Any] = {}
    per_set: dict[str, Any] = dict.fromkeys(oods)
    error = None
    if name in session.failed:  # it failed before any pass
        error = session.last_error(name)
    else:
        start = time.perf_counter()
        if name in fitted_first:
            fitted = fitted_first[name]
        else:
            fitted = not candidate._needs_fit() or session.fit(name, views["fit"][name])
        if fitted:
            fit_s = session.timings["fit"].get(name, time.perf_counter() - start)
            start = time.perf_counter()
            scores = {key: session.score(name, key, views[key][name]) for key in ("id", *oods)}
            score_s = time.perf_counter() - start
        if fit_s is None or any(result is None for result in scores.values()):
            error, scores = session.last_error(name), {}  # what fit or score recorded
        else:
            try:
                per_set = {
                    key: bench_metrics((scores["id"], scores[key]), metrics=[metric])[metric] for key in oods
                }
                value = float(np.mean(list(per_set.values())))
            except ValueError as failure:  # e.g. non-finite scores
                if session.raise_errors:
                    raise
                error, scores, per_set = describe_error(failure), {}, dict.fromkeys(oods)
    row = {f"{metric}:{key}": per_set[key] for key in oods} if len(oods) > 1 else {}
    return {**row, "fit_s": fit_s, "score_s": score_s, "error": error}, scores, value


def _check_params_took(candidate: Detector, params: Mapping[str, Any]) -> None:
    """Fail loudly if ``set_params`` left any parameter of the candidate other than it was asked."""
    current = candidate.get_params(deep=True)
    for name, value in params.items():
        if name not in current or current[name] is not value:
            raise RuntimeError(
                f"{type(candidate).__name__}.set_params({name}={value!r}) did not take effect "
                f"(get_params gives {current.get(name, '<missing>')!r}); the search would be meaningless."
            )


def _rank(table: list[dict[str, Any]], metric: str, sign: float) -> None:
    order = sorted(
        (index for index, row in enumerate(table) if row[metric] is not None),
        key=lambda index: (-sign * table[index][metric], index),
    )
    for rank, index in enumerate(order, start=1):
        table[index]["rank"] = rank
