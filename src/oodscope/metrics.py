"""Exact metrics for out-of-distribution (OOD) detection.

Conventions
-----------
* **Scores are "higher = more OOD".** A detector assigns every sample a real score; in-distribution (ID)
  samples should get low scores and OOD samples high ones. Negate your scores first if your detector
  follows the opposite convention (e.g. a maximum softmax probability).
* **Positive class.** ``auroc`` and ``detect_acc`` do not depend on which class is called positive.
  ``aupr_out`` treats OOD as the positive class and ``aupr_in`` treats ID as the positive class.
  ``fpr_at_tpr`` / ``tnr_at_tpr`` (metric names ``fprXXtpr`` / ``tnrXXtpr``) depend on it, and two
  conventions are in use in the literature; they generally give *different* numbers:

  - ``positive="ood"`` (**default**): OOD is the positive class. The threshold is the highest score ``t``
    such that at least XX% of OOD scores are ``>= t``; the FPR is the share of ID scores ``>= t``
    (ID samples wrongly flagged as OOD). This is the convention of oodeel, OpenOOD and pytorch-ood.
  - ``positive="id"``: ID is the positive class and the ID-ness score is ``-score`` (the convention of the
    ODIN, Energy and GEN papers). The threshold is the lowest score ``t`` such that at least XX% of ID
    scores are ``<= t``; the FPR is the share of OOD scores ``<= t`` (OOD samples wrongly accepted as ID).

* **Exactness.** Every metric is computed in float64 from integer counts over all distinct score values
  (no threshold grid), with tied scores handled exactly; the results agree with scikit-learn's
  ``roc_auc_score``, ``roc_curve`` and ``average_precision_score``. The scores are sorted once,
  O(N log N), and :func:`bench_metrics` derives all requested metrics from that one sort.
"""

from __future__ import annotations

import math
import numbers
import re
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "aupr_in",
    "aupr_out",
    "auroc",
    "bench_metrics",
    "detect_acc",
    "fpr_at_tpr",
    "roc_curve",
    "threshold_at_tpr",
    "tnr_at_tpr",
]

_POSITIVES = ("ood", "id")
_FIXED_METRICS = ("auroc", "aupr_in", "aupr_out", "detect_acc")
_RATE_PATTERN = re.compile(r"^(fpr|tnr)(\d+(?:\.\d+)?)tpr(?:_(ood|id))?$")
_VALID_NAMES_MESSAGE = (
    "Valid names are 'auroc', 'aupr_in', 'aupr_out', 'detect_acc', and 'fpr<XX>tpr' / 'tnr<XX>tpr' for "
    "XX in (0, 100] (e.g. 'fpr95tpr', 'tnr90tpr', 'fpr99.5tpr'), optionally suffixed with '_ood' or '_id' "
    "to fix the positive class regardless of `positive` (e.g. 'fpr95tpr_id')."
)
# Integer arithmetic is exact while 2 * n_in * n_out fits in int64.
_INT64_LIMIT = 2**63


# ---------------------------------------------------------------------------------------------------------
# Input handling
# ---------------------------------------------------------------------------------------------------------


def _as_score_array(values: Any, name: str) -> np.ndarray:
    """Convert ``values`` to a 1-D float64 array (a new array or a read-only use of the caller's)."""
    if isinstance(values, (str, bytes)):
        raise TypeError(
            f"{name} must be a 1-D array of numeric per-sample scores; got a {type(values).__name__}."
        )
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(
            f"{name} could not be converted to a numeric array ({exc}); expected a 1-D array of per-sample "
            "scores (a list, a NumPy array, or an object supporting __array__, e.g. a CPU tensor)."
        ) from None
    kind = arr.dtype.kind
    if kind == "O":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise TypeError(
                f"{name} holds non-numeric objects; expected a 1-D array of real-valued per-sample scores."
            ) from None
    elif kind == "c":
        raise TypeError(f"{name} is complex ({arr.dtype}); scores must be real numbers.")
    elif kind not in "biuf":
        raise TypeError(
            f"{name} has dtype {arr.dtype}; expected a 1-D array of real-valued per-sample scores."
        )
    if arr.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D array of per-sample scores; got an array of shape {arr.shape}. "
            "If it holds one score per sample, flatten it first (e.g. np.ravel)."
        )
    return arr.astype(np.float64, copy=False)


def _check_finite(arr: np.ndarray, name: str) -> None:
    if np.isfinite(arr).all():
        return
    n_nan = int(np.count_nonzero(np.isnan(arr)))
    n_inf = int(np.count_nonzero(np.isinf(arr)))
    raise ValueError(
        f"{name} contains {n_nan + n_inf} non-finite value(s) ({n_nan} NaN, {n_inf} inf) out of {arr.size}; "
        "OOD metrics need finite scores. Drop or replace them first (e.g. np.nan_to_num)."
    )


def _check_nonempty(n_in: int, n_out: int) -> None:
    missing = []
    if n_in == 0:
        missing.append("0 ID scores")
    if n_out == 0:
        missing.append("0 OOD scores")
    if missing:
        raise ValueError(f"Each metric needs at least one ID and one OOD score; got {' and '.join(missing)}.")


def _validate_pair(
    scores_in: Any, scores_out: Any, in_name: str, out_name: str
) -> tuple[np.ndarray, np.ndarray]:
    s_in = _as_score_array(scores_in, in_name)
    s_out = _as_score_array(scores_out, out_name)
    _check_nonempty(s_in.size, s_out.size)
    _check_finite(s_in, in_name)
    _check_finite(s_out, out_name)
    return s_in, s_out


def _equals(labels: np.ndarray, value: Any) -> np.ndarray:
    """Element-wise ``labels == value`` that never raises or warns on mismatched types."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = labels == value
        except (TypeError, ValueError):
            result = False
    result = np.asarray(result, dtype=bool)
    if result.shape != labels.shape:
        result = np.broadcast_to(result, labels.shape)
    return result


def _describe_values(values: np.ndarray, limit: int = 10) -> str:
    try:
        uniq = list(np.unique(values))
    except TypeError:  # mixed, unorderable objects
        uniq = list(dict.fromkeys(values.tolist()))
    shown = ", ".join(repr(v.item() if isinstance(v, np.generic) else v) for v in uniq[:limit])
    more = f", ... ({len(uniq) - limit} more)" if len(uniq) > limit else ""
    return f"[{shown}{more}]"


def _split_by_labels(
    scores: Any, labels: Any, in_value: Any, out_value: Any
) -> tuple[np.ndarray, np.ndarray]:
    s = _as_score_array(scores, "scores")
    for name, value in (("in_value", in_value), ("out_value", out_value)):
        if not isinstance(value, (numbers.Number, str, bytes, np.generic)) or np.ndim(value) != 0:
            raise ValueError(
                f"{name} must be a single label value (a number or a string); got {value!r}. Labels are "
                "compared element by element with it, so a set, list or array cannot be one."
            )
    if _equals(np.asarray([in_value], dtype=object), out_value)[0]:
        raise ValueError(f"in_value and out_value must differ; both are {in_value!r}.")
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise ValueError(
            f"labels must be a 1-D array with one label per score; got an array of shape {lab.shape}."
        )
    if lab.shape[0] != s.shape[0]:
        raise ValueError(
            f"labels has {lab.shape[0]} entries but scores has {s.shape[0]}; "
            "they must have the same length (one label per score)."
        )
    is_in = _equals(lab, in_value)
    is_out = _equals(lab, out_value)
    unexpected = ~(is_in | is_out)
    if unexpected.any():
        raise ValueError(
            f"labels must contain only in_value={in_value!r} (ID) and out_value={out_value!r} (OOD); "
            f"found unexpected value(s) {_describe_values(lab[unexpected])}. "
            "Pass in_value=... and out_value=... to match your labelling."
        )
    s_in = s[is_in]
    s_out = s[is_out]
    _check_nonempty(s_in.size, s_out.size)
    _check_finite(s_in, "scores[labels == in_value]")
    _check_finite(s_out, "scores[labels == out_value]")
    return s_in, s_out


def _is_pair_like(scores: Any) -> bool:
    """True when ``scores`` is a tuple/list of array-likes, i.e. meant as ``(scores_in, scores_out)``; also
    when an item of a tuple is something else that is not a number (a string, None), so that the pair's
    check names what is wrong with it instead of asking for labels."""
    if not isinstance(scores, (tuple, list)) or len(scores) == 0:
        return False
    if all(not isinstance(item, (str, bytes)) and np.ndim(item) >= 1 for item in scores):
        return True
    return isinstance(scores, tuple) and any(
        not isinstance(item, (numbers.Number, np.generic)) and np.ndim(item) == 0 for item in scores
    )


def _check_score_container(scores: Any) -> None:
    """Refuse containers that hold scores in no order: a dict (which is ID?), a set, an iterator."""
    if isinstance(scores, (dict, set, frozenset)) or (
        hasattr(scores, "__next__") and not hasattr(scores, "__len__")
    ):
        raise TypeError(
            f"scores must be a pair (scores_in, scores_out) of 1-D arrays, or one 1-D array with labels; got "
            f"a {type(scores).__name__}. Pass e.g. (scores['id'], scores['ood']) as a tuple."
        )


def _check_positive(positive: Any) -> str:
    if not isinstance(positive, str) or positive not in _POSITIVES:
        raise ValueError(
            "positive must be 'ood' (OOD is the positive class; the default) or 'id' "
            f"(ID is the positive class); got {positive!r}."
        )
    return positive


def _check_tpr(tpr: Any) -> float:
    if isinstance(tpr, bool) or not isinstance(tpr, numbers.Real):
        raise TypeError(f"tpr must be a real number in (0, 1]; got {tpr!r} of type {type(tpr).__name__}.")
    value = float(tpr)
    if not (0.0 < value <= 1.0):
        hint = f" tpr is a fraction: use {value / 100:g} for {value:g}%." if 1.0 < value <= 100.0 else ""
        raise ValueError(f"tpr must be in (0, 1]; got {tpr!r}.{hint}")
    return value


def _fewest_reaching(tpr: float, n: int) -> int:
    """The smallest count ``c`` in [0, n] with ``c / n >= tpr``, compared in float.

    Float division is monotone in ``c``, so "``k / n >= tpr``" <=> "``k >= c``": the comparison is exactly
    scikit-learn's float comparison of a TPR with its target, and ``ceil(tpr * n)`` (whose product may round
    either way) is only the starting guess.
    """
    c = min(max(math.ceil(tpr * n), 0), n)
    while c > 0 and (c - 1) / n >= tpr:
        c -= 1
    while c < n and c / n < tpr:
        c += 1
    return c


def _parse_metric(name: Any, positive: str) -> tuple[str, float, str]:
    """Return ``(kind, tpr, positive)``; ``kind`` is a fixed metric name, ``"fpr"`` or ``"tnr"``."""
    if not isinstance(name, str):
        raise TypeError(f"Metric names must be strings; got {name!r}. {_VALID_NAMES_MESSAGE}")
    if name in _FIXED_METRICS:
        return name, math.nan, positive
    match = _RATE_PATTERN.match(name)
    if match is None:
        raise ValueError(f"Unknown metric {name!r}. {_VALID_NAMES_MESSAGE}")
    kind, percent, suffix = match.groups()
    # float("95e-2") is the double nearest to 0.95, exactly like the literal 0.95 (float("95") / 100 is not
    # always: e.g. 99.9 / 100 != 0.999).
    tpr = float(f"{percent}e-2")
    if not (0.0 < tpr <= 1.0):
        raise ValueError(f"Metric {name!r}: XX must be in (0, 100]; got {percent}. {_VALID_NAMES_MESSAGE}")
    return kind, tpr, suffix if suffix is not None else positive


# ---------------------------------------------------------------------------------------------------------
# The ranked curve: one sort, every metric
# ---------------------------------------------------------------------------------------------------------


class _RankedCurve:
    """Cumulative class counts over the distinct score values, built from a single sort.

    With the G distinct score values ``v_1 < ... < v_G`` (``values``) and ``v_0 = -inf``, ``id_le[j]`` /
    ``ood_le[j]`` hold the number of ID / OOD scores ``<= v_j`` (length G + 1, starting at 0, ending at
    n_in / n_out).

    * ID-positive ROC (ID-ness ``-score``, thresholds in increasing score): true positives ``id_le``,
      false positives ``ood_le``.
    * OOD-positive ROC (thresholds in decreasing score, starting at ``+inf``): true positives
      ``n_out - ood_le[::-1]``, false positives ``n_in - id_le[::-1]``.

    Both are exactly scikit-learn's ``roc_curve(..., drop_intermediate=False)`` counts.
    """

    __slots__ = ("n_in", "n_out", "values", "id_le", "ood_le", "_ood_curve")

    def __init__(self, scores_in: np.ndarray, scores_out: np.ndarray) -> None:
        n_in, n_out = int(scores_in.size), int(scores_out.size)
        # Sorting each class and then merging the two sorted runs with a stable (run-detecting) argsort is
        # faster than one argsort of the concatenation; the merge order tells which class each value has.
        both = np.concatenate((np.sort(scores_in), np.sort(scores_out)))
        order = np.argsort(both, kind="stable")
        values = both[order]
        # Index of the last element of every group of equal values, in increasing order.
        ends = np.flatnonzero(values[1:] != values[:-1])
        ends = np.append(ends, values.size - 1)
        ood_cum = np.cumsum(order >= n_in, dtype=np.int64)
        ood_le = ood_cum[ends]
        id_le = ends.astype(np.int64) + 1 - ood_le
        zero = np.zeros(1, dtype=np.int64)
        self.n_in = n_in
        self.n_out = n_out
        self.values = values[ends] + 0.0  # one zero for a group of -0.0 and 0.0, whatever the sort did
        self.id_le = np.concatenate((zero, id_le))
        self.ood_le = np.concatenate((zero, ood_le))
        self._ood_curve: tuple[np.ndarray, np.ndarray] | None = None

    def ood_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """``(tp, fp)`` counts of the OOD-positive ROC, thresholds from ``+inf`` downwards."""
        if self._ood_curve is None:
            tp = self.n_out - self.ood_le[::-1]
            fp = self.n_in - self.id_le[::-1]
            self._ood_curve = (tp, fp)
        return self._ood_curve

    def roc(self, positive: str) -> tuple[np.ndarray, np.ndarray, int, int]:
        """``(tp, fp, n_pos, n_neg)`` of the ROC curve with the given positive class."""
        if positive == "ood":
            tp, fp = self.ood_curve()
            return tp, fp, self.n_out, self.n_in
        return self.id_le, self.ood_le, self.n_in, self.n_out

    def rates(
        self, positive: str, drop_intermediate: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(fpr, tpr, thresholds)`` with the given positive class (see :func:`roc_curve`)."""
        tp, fp, n_pos, n_neg = self.roc(positive)
        if positive == "ood":
            thresholds = np.concatenate(([np.inf], self.values[::-1]))
        else:
            thresholds = np.concatenate(([-np.inf], self.values))
        if drop_intermediate and tp.size > 3:
            # scikit-learn's rule, on the points after the start: drop a point when the steps before and
            # after it are equal in both counts (it is the middle of a straight run)
            bends = np.logical_or(np.diff(fp[1:], 2), np.diff(tp[1:], 2))
            keep = np.concatenate(([True, True], bends, [True]))
            tp, fp, thresholds = tp[keep], fp[keep], thresholds[keep]
        return fp / n_neg, tp / n_pos, thresholds

    # -- metrics ------------------------------------------------------------------------------------------

    def auroc(self) -> float:
        # Trapezoid over the tie-grouped ROC points, in integer counts = Mann-Whitney U with ties as 1/2.
        tp, fp = self.ood_curve()
        dtype = np.int64 if 2 * self.n_in * self.n_out < _INT64_LIMIT else np.float64
        twice_area = np.dot(np.diff(fp).astype(dtype), (tp[1:] + tp[:-1]).astype(dtype))
        if dtype is np.int64:
            return int(twice_area) / (2 * self.n_in * self.n_out)
        return float(twice_area / (2.0 * self.n_in * self.n_out))

    def false_positives_at(self, tpr: float, positive: str) -> tuple[int, int]:
        """``(fp, n_neg)`` at the first ROC point whose TPR (in float, ``tp / n_pos``) is ``>= tpr``."""
        tp, fp, n_pos, n_neg = self.roc(positive)
        k = int(np.searchsorted(tp, _fewest_reaching(tpr, n_pos), side="left"))
        return int(fp[k]), n_neg

    def fpr_at_tpr(self, tpr: float, positive: str) -> float:
        fp, n_neg = self.false_positives_at(tpr, positive)
        return fp / n_neg

    def tnr_at_tpr(self, tpr: float, positive: str) -> float:
        fp, n_neg = self.false_positives_at(tpr, positive)
        return (n_neg - fp) / n_neg

    def average_precision(self, positive: str) -> float:
        tp, fp, n_pos, _ = self.roc(positive)
        gain = np.diff(tp)
        hit = np.flatnonzero(gain) + 1  # points where recall increases; tp + fp >= 1 there
        precision = tp[hit] / (tp[hit] + fp[hit])
        return float(np.dot(gain[hit - 1], precision) / n_pos)

    def detect_acc(self) -> float:
        # 0.5 * (TPR + TNR) at every split, including "everything OOD" and "everything ID";
        # numerator in integer counts: (n_out - ood_le) * n_in + id_le * n_out.
        n_in, n_out = self.n_in, self.n_out
        if 2 * n_in * n_out < _INT64_LIMIT:
            best = int(np.max((n_out - self.ood_le) * n_in + self.id_le * n_out))
            return best / (2 * n_in * n_out)
        tpr = (n_out - self.ood_le) / n_out
        tnr = self.id_le / n_in
        return float(np.max(tpr + tnr) / 2.0)

    def metric(self, kind: str, tpr: float, positive: str) -> float:
        if kind == "auroc":
            return self.auroc()
        if kind == "aupr_in":
            return self.average_precision("id")
        if kind == "aupr_out":
            return self.average_precision("ood")
        if kind == "detect_acc":
            return self.detect_acc()
        if kind == "fpr":
            return self.fpr_at_tpr(tpr, positive)
        return self.tnr_at_tpr(tpr, positive)


# ---------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------


def bench_metrics(
    scores: Any,
    labels: Any = None,
    metrics: Iterable[str] | str = ("auroc", "fpr95tpr"),
    in_value: Any = 0,
    out_value: Any = 1,
    positive: str = "ood",
) -> dict[str, float]:
    """Compute several OOD-detection metrics from one sort of the scores.

    Parameters
    ----------
    scores : tuple of two array-like, or array-like
        Either a pair ``(scores_in, scores_out)`` of 1-D arrays of ID and OOD scores, or one 1-D array of
        scores for all samples together with ``labels``. Higher scores mean "more OOD". Lists, NumPy arrays
        of any real dtype and objects with ``__array__`` (e.g. CPU tensors) are accepted; they are never
        modified. Scores must be finite.
    labels : array-like, optional
        Required when ``scores`` is a single array, forbidden with a pair: one label per score, each equal
        to ``in_value`` (ID) or ``out_value`` (OOD).
    metrics : iterable of str or str, default ("auroc", "fpr95tpr")
        Metric names:

        - ``"auroc"``: area under the ROC curve (see :func:`auroc`).
        - ``"aupr_in"`` / ``"aupr_out"``: average precision with ID / OOD as the positive class
          (see :func:`aupr_in`, :func:`aupr_out`).
        - ``"detect_acc"``: best balanced detection accuracy (see :func:`detect_acc`).
        - ``"fprXXtpr"`` / ``"tnrXXtpr"``: FPR / TNR at XX% TPR for any XX in (0, 100], integer or decimal,
          e.g. ``"fpr95tpr"``, ``"tnr90tpr"``, ``"fpr99.5tpr"`` (see :func:`fpr_at_tpr`). They use the
          ``positive`` convention unless suffixed with ``"_ood"`` or ``"_id"`` (e.g. ``"fpr95tpr_id"``),
          which fixes the positive class for that metric.

        Names are exact and lowercase; an unknown name raises ``ValueError`` listing the valid ones.
    in_value, out_value : scalar, default 0 and 1
        The label values of ID and OOD samples in ``labels`` (e.g. ``"in"`` / ``"out"`` or ``-1`` / ``1``).
    positive : {"ood", "id"}, default "ood"
        Positive class of the ``fprXXtpr`` / ``tnrXXtpr`` metrics without suffix. ``"ood"`` (default) is the
        oodeel / OpenOOD / pytorch-ood convention, ``"id"`` the ODIN / Energy / GEN papers' one; they give
        different numbers (see :func:`fpr_at_tpr`). The other metrics do not depend on it.

    Returns
    -------
    dict of str to float
        Each requested metric name mapped to its value (a Python float), in the requested order.

    Examples
    --------
    >>> from oodscope.metrics import bench_metrics
    >>> scores_in = [0.1, 0.2, 0.3, 0.4]
    >>> scores_out = [0.35, 0.5, 0.6, 0.7]
    >>> bench_metrics((scores_in, scores_out), metrics=("auroc", "fpr95tpr", "fpr95tpr_id", "detect_acc"))
    {'auroc': 0.9375, 'fpr95tpr': 0.25, 'fpr95tpr_id': 0.25, 'detect_acc': 0.875}
    >>> bench_metrics([0.1, 0.7, 0.2, 0.6], labels=["in", "out", "in", "out"], in_value="in", out_value="out")
    {'auroc': 1.0, 'fpr95tpr': 0.0}
    """
    positive = _check_positive(positive)
    if isinstance(metrics, str):
        names: Sequence[Any] = (metrics,)
    elif isinstance(metrics, Iterable):
        names = tuple(metrics)
    else:
        raise TypeError(
            f"metrics must be a metric name or a list of them; got {metrics!r}. {_VALID_NAMES_MESSAGE}"
        )
    if len(names) == 0:
        raise ValueError(f"metrics must name at least one metric. {_VALID_NAMES_MESSAGE}")
    parsed = [_parse_metric(name, positive) for name in names]

    _check_score_container(scores)
    if _is_pair_like(scores):
        if labels is not None:
            raise ValueError(
                "labels must be None when scores is a (scores_in, scores_out) pair; either pass the pair "
                "alone, or pass one array of all scores together with labels."
            )
        if len(scores) != 2:
            raise ValueError(
                f"scores given as a {type(scores).__name__} must be a pair (scores_in, scores_out); "
                f"got {len(scores)} arrays."
            )
        s_in, s_out = _validate_pair(scores[0], scores[1], "scores_in", "scores_out")
    else:
        if labels is None:
            raise ValueError(
                "labels is required when scores is a single array; pass labels (in_value for ID, out_value "
                "for OOD) or pass scores as a pair (scores_in, scores_out)."
            )
        s_in, s_out = _split_by_labels(scores, labels, in_value, out_value)

    curve = _RankedCurve(s_in, s_out)
    return {name: float(curve.metric(*spec)) for name, spec in zip(names, parsed, strict=True)}


def roc_curve(
    scores_in: Any, scores_out: Any, positive: str = "ood", drop_intermediate: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact ROC curve, ``(fpr, tpr, thresholds)``: the curve every metric here is computed from.

    One point per distinct score value plus a start at ``(0, 0)``, in float64 from integer counts; tied
    scores are never split. The scores are sorted once. Which class is positive decides which way a
    threshold ``t`` cuts (with scores "higher = more OOD"):

    * ``positive="ood"`` (**default**): a sample is called OOD when its score is ``>= t``. ``tpr`` is the
      share of OOD scores ``>= t`` (OOD caught), ``fpr`` the share of ID scores ``>= t`` (ID flagged as
      OOD). ``thresholds`` decrease: ``+inf`` (nothing flagged), then the distinct scores from the
      highest down. The points are those of ``sklearn.metrics.roc_curve(y_ood, scores,
      drop_intermediate=False)`` with ``y_ood = 1`` for OOD samples (whose first threshold is ``inf`` too).
    * ``positive="id"``: a sample is called ID when its score is ``<= t``. ``tpr`` is the share of ID
      scores ``<= t`` (ID kept), ``fpr`` the share of OOD scores ``<= t`` (OOD accepted as ID).
      ``thresholds`` increase: ``-inf`` (nothing kept), then the distinct scores from the lowest up. The
      points are scikit-learn's ``roc_curve(y_id, -scores, drop_intermediate=False)``, whose thresholds
      are the negated ones.

    :func:`fpr_at_tpr` is ``fpr[k]`` at the first ``k`` with ``tpr[k] >= tpr`` of the same ``positive``,
    and :func:`auroc` the trapezoid under either curve.

    Parameters
    ----------
    scores_in : array-like
        1-D scores of the ID samples (higher = more OOD).
    scores_out : array-like
        1-D scores of the OOD samples.
    positive : {"ood", "id"}, default "ood"
        Which class is the positive one (see above).
    drop_intermediate : bool, default False
        Drop the points in the middle of straight runs of the curve (where the steps before and after are
        the same in both rates), as scikit-learn's ``roc_curve`` does by default: the line through the
        remaining points is the same, with fewer points to draw. The first point after the start and the
        last one are always kept.

    Returns
    -------
    fpr, tpr, thresholds : ndarray of shape [G + 1] (fewer with ``drop_intermediate``)
        float64, for G distinct score values; ``fpr`` and ``tpr`` rise from 0 to 1. A group of tied
        scores -0.0 and 0.0 has the threshold 0.0.

    Examples
    --------
    >>> from oodscope.metrics import roc_curve
    >>> fpr, tpr, thresholds = roc_curve([0.0, 1.0, 2.0], [1.0, 3.0])
    >>> thresholds.tolist()
    [inf, 3.0, 2.0, 1.0, 0.0]
    >>> (fpr * 3).tolist(), (tpr * 2).tolist()
    ([0.0, 0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 1.0, 2.0, 2.0])
    >>> fpr, tpr, thresholds = roc_curve([0.0, 1.0, 2.0], [1.0, 3.0], positive="id")
    >>> thresholds.tolist()
    [-inf, 0.0, 1.0, 2.0, 3.0]
    >>> (fpr * 2).tolist(), (tpr * 3).tolist()
    ([0.0, 0.0, 1.0, 1.0, 2.0], [0.0, 1.0, 2.0, 3.0, 3.0])
    """
    positive = _check_positive(positive)
    s_in, s_out = _validate_pair(scores_in, scores_out, "scores_in", "scores_out")
    return _RankedCurve(s_in, s_out).rates(positive, bool(drop_intermediate))


def auroc(scores_in: Any, scores_out: Any) -> float:
    """Area under the ROC curve, exact with ties counted 1/2.

    The probability that a random OOD sample scores higher than a random ID sample, plus half the
    probability of a tie (the Mann-Whitney U statistic divided by ``n_in * n_out``). It does not depend on
    which class is called positive, and equals scikit-learn's ``roc_auc_score(y_ood, scores)``.

    Parameters
    ----------
    scores_in : array-like
        1-D scores of the ID samples (higher = more OOD).
    scores_out : array-like
        1-D scores of the OOD samples.

    Returns
    -------
    float
        AUROC in [0, 1]; 1.0 for perfect separation, 0.5 for chance (or all-equal scores).

    Examples
    --------
    >>> from oodscope.metrics import auroc
    >>> auroc([0.1, 0.2, 0.3, 0.4], [0.35, 0.5, 0.6, 0.7])
    0.9375
    >>> auroc([1, 1], [1, 2])
    0.75
    """
    s_in, s_out = _validate_pair(scores_in, scores_out, "scores_in", "scores_out")
    return float(_RankedCurve(s_in, s_out).auroc())


def fpr_at_tpr(scores_in: Any, scores_out: Any, tpr: float = 0.95, positive: str = "ood") -> float:
    """False positive rate at the first threshold reaching a true positive rate of at least ``tpr``.

    Two conventions exist and generally give different numbers:

    * ``positive="ood"`` (**default**; the convention of oodeel, OpenOOD and pytorch-ood): OOD is the
      positive class. Take the highest threshold ``t`` such that the share of OOD scores ``>= t`` is at
      least ``tpr``; return the share of ID scores ``>= t`` (ID samples flagged as OOD). This equals
      ``fpr[np.searchsorted(tpr_curve, tpr, side="left")]`` with
      ``fpr, tpr_curve, _ = sklearn.metrics.roc_curve(y_ood, scores, drop_intermediate=False)`` and
      ``y_ood = 1`` for OOD samples.
    * ``positive="id"`` (the ODIN / Energy / GEN papers' convention): ID is the positive class and the
      ID-ness score is ``-score``. Take the lowest threshold ``t`` such that the share of ID scores
      ``<= t`` is at least ``tpr`` (at least ``tpr`` of ID samples are kept as ID); return the share of OOD
      scores ``<= t`` (OOD samples accepted as ID). This equals the same scikit-learn reference with
      ``y_id = 1`` for ID samples and the scores negated.

    TPRs are compared in float as ``count / n >= tpr``, exactly like the scikit-learn reference, so the
    result matches it bit for bit. Tied scores are never split: with all scores equal the result is 1.0.

    Parameters
    ----------
    scores_in : array-like
        1-D scores of the ID samples (higher = more OOD).
    scores_out : array-like
        1-D scores of the OOD samples.
    tpr : float, default 0.95
        Target true positive rate, in (0, 1] (a fraction: 0.95 means 95%).
    positive : {"ood", "id"}, default "ood"
        Which class is the positive one (see above).

    Returns
    -------
    float
        The false positive rate, in [0, 1]; lower is better.

    Examples
    --------
    >>> from oodscope.metrics import fpr_at_tpr
    >>> scores_in = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    >>> scores_out = [5, 10, 11, 12, 13, 14, 15, 16, 17, 18]
    >>> fpr_at_tpr(scores_in, scores_out, tpr=0.9)
    0.0
    >>> fpr_at_tpr(scores_in, scores_out, tpr=0.95)
    0.5
    >>> fpr_at_tpr(scores_in, scores_out, tpr=0.95, positive="id")
    0.1
    """
    positive = _check_positive(positive)
    tpr = _check_tpr(tpr)
    s_in, s_out = _validate_pair(scores_in, scores_out, "scores_in", "scores_out")
    return float(_RankedCurve(s_in, s_out).fpr_at_tpr(tpr, positive))


def tnr_at_tpr(scores_in: Any, scores_out: Any, tpr: float = 0.95, positive: str = "ood") -> float:
    """True negative rate at the first threshold reaching a true positive rate of at least ``tpr``.

    Equal to ``1 - fpr_at_tpr(scores_in, scores_out, tpr, positive)`` (computed from the counts), with the
    same two conventions: ``positive="ood"`` (**default**) gives the share of ID scores below the
    threshold, ``positive="id"`` the share of OOD scores above it; they generally differ.

    Parameters
    ----------
    scores_in : array-like
        1-D scores of the ID samples (higher = more OOD).
    scores_out : array-like
        1-D scores of the OOD samples.
    tpr : float, default 0.95
        Target true positive rate, in (0, 1].
    positive : {"ood", "id"}, default "ood"
        Which class is the positive one (see :func:`fpr_at_tpr`).

    Returns
    -------
    float
        The true negative rate, in [0, 1]; higher is better.

    Examples
    --------
    >>> from oodscope.metrics import tnr_at_tpr
    >>> tnr_at_tpr([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [5, 10, 11, 12, 13, 14, 15, 16, 17, 18], tpr=0.95)
    0.5
    """
    positive = _check_positive(positive)
    tpr = _check_tpr(tpr)
    s_in, s_out = _validate_pair(scores_in, scores_out, "scores_in", "scores_out")
    return float(_RankedCurve(s_in, s_out).tnr_at_tpr(tpr, positive))


def threshold_at_tpr(id_scores: Any, tpr: float = 0.95) -> float:
    """The smallest score that keeps at least ``tpr`` of the given ID samples (score ``<= threshold``).

    With the ``n`` ID scores sorted, ``s_(1) <= ... <= s_(n)``, the threshold is ``s_(k)`` for the fewest
    samples ``k`` with ``k / n >= tpr``, compared in float like :func:`fpr_at_tpr` compares its TPRs (so
    ``tpr=0.28`` of 25 scores keeps 7 of them, although ``0.28 * 25`` is ``7.000000000000001`` in float).
    Calling a sample OOD when its score is above the threshold then keeps at least ``k`` of these ID
    samples, more when scores tie with ``s_(k)``. This is the ``positive="id"`` convention of
    :func:`fpr_at_tpr`: its FPR is the share of OOD scores ``<= threshold_at_tpr(scores_in, tpr)``.

    Parameters
    ----------
    id_scores : array-like
        1-D, non-empty, finite scores of held-out ID samples (higher = more OOD).
    tpr : float, default 0.95
        Share of the ID samples to keep, in (0, 1] (a fraction: 0.95 means 95%); 1 gives the highest score.

    Returns
    -------
    float
        One of the given scores.

    Examples
    --------
    >>> from oodscope.metrics import threshold_at_tpr
    >>> threshold_at_tpr([0.5, 0.1, 0.4, 0.2, 0.3], tpr=0.8)
    0.4
    >>> threshold_at_tpr([0.5, 0.1, 0.4, 0.2, 0.3], tpr=0.9)
    0.5
    """
    tpr = _check_tpr(tpr)
    scores = _as_score_array(id_scores, "id_scores")
    if scores.size == 0:
        raise ValueError("id_scores must hold at least one ID score; got an empty array.")
    _check_finite(scores, "id_scores")
    kept = _fewest_reaching(tpr, scores.size)  # >= 1, as tpr > 0
    return float(np.sort(scores)[kept - 1])


def aupr_in(scores_in: Any, scores_out: Any) -> float:
    """Area under the precision-recall curve with ID as the positive class.

    Computed as the average precision (not the trapezoid rule) of the ID-ness score ``-score``:
    ``sum_k (R_k - R_{k-1}) * P_k`` over the distinct score values taken as thresholds, ties kept together.
    Equals scikit-learn's ``average_precision_score(y_id, -scores)`` with ``y_id = 1`` for ID samples.

    Parameters
    ----------
    scores_in : array-like
        1-D scores of the ID samples (higher = more OOD).
    scores_out : array-like
        1-D scores of the OOD samples.

    Returns
    -------
    float
        AUPR-In in (0, 1]; its chance level is the ID fraction ``n_in / (n_in + n_out)``.

    Examples
    --------
    >>> from oodscope.metrics import aupr_in
    >>> aupr_in([0.1, 0.4], [0.2, 0.9])
    0.8333333333333333
    """
    s_in, s_out = _validate_pair(scores_in, scores_out, "scores_in", "scores_out")
    return float(_RankedCurve(s_in, s_out).average_precision("id"))


def aupr_out(scores_in: Any, scores_out: Any) -> float:
    """Area under the precision-recall curve with OOD as the positive class.

    Computed as the average precision (not the trapezoid rule) of the scores:
    ``sum_k (R_k - R_{k-1}) * P_k`` over the distinct score values taken as thresholds, ties kept together.
    Equals scikit-learn's ``average_precision_score(y_ood, scores)`` with ``y_ood = 1`` for OOD samples.

    Parameters
    ----------
    scores_in : array-like
        1-D scores of the ID samples (higher = more OOD).
    scores_out : array-like
        1-D scores of the OOD samples.

    Returns
    -------
    float
        AUPR-Out in (0, 1]; its chance level is the OOD fraction ``n_out / (n_in + n_out)``.

    Examples
    --------
    >>> from oodscope.metrics import aupr_out
    >>> aupr_out([0.1, 0.4], [0.2, 0.9])
    0.8333333333333333
    >>> aupr_out([1, 1, 1], [1])
    0.25
    """
    s_in, s_out = _validate_pair(scores_in, scores_out, "scores_in", "scores_out")
    return float(_RankedCurve(s_in, s_out).average_precision("ood"))


def detect_acc(scores_in: Any, scores_out: Any) -> float:
    """Best balanced detection accuracy over all thresholds.

    ``max_t 0.5 * (TPR(t) + TNR(t))``, where a sample is flagged OOD when its score is ``>= t``; this is
    ``1 -`` the minimum detection error of the ODIN paper. The maximum runs over every distinct score value
    and the two trivial thresholds (everything OOD, everything ID), so the result is at least 0.5. It does
    not depend on which class is called positive.

    Parameters
    ----------
    scores_in : array-like
        1-D scores of the ID samples (higher = more OOD).
    scores_out : array-like
        1-D scores of the OOD samples.

    Returns
    -------
    float
        Detection accuracy in [0.5, 1]; 1.0 for perfect separation.

    Examples
    --------
    >>> from oodscope.metrics import detect_acc
    >>> detect_acc([0.1, 0.2, 0.3, 0.4], [0.35, 0.5, 0.6, 0.7])
    0.875
    >>> detect_acc([3, 3], [3, 3])
    0.5
    """
    s_in, s_out = _validate_pair(scores_in, scores_out, "scores_in", "scores_out")
    return float(_RankedCurve(s_in, s_out).detect_acc())


def conformal_pvalues(scores: Any, calibration_scores: Any) -> np.ndarray:
    """Conformal p-values of ``scores`` against held-out ID ``calibration_scores`` (higher = more OOD):
    ``p(s) = (1 + #{calibration scores >= s}) / (n + 1)``, float64.

    If the calibration samples and a test sample are exchangeable, P(p <= a) <= a for every level a, so
    flagging p <= a wrongly flags at most a share a of ID data (on average over calibration sets).
    :meth:`Detector.pvalues <oodscope.detectors.Detector.pvalues>` computes these from its calibration.

    Both arrays are 1-D; the calibration scores must be non-empty (with none, every p-value would be 1) and
    neither may hold NaN (which compares with nothing). Infinite scores are fine: ``inf`` is as unlike the ID
    data as a score can be.

    >>> conformal_pvalues([0.5, 10.0, -1.0], [0.0, 1.0, 2.0, 3.0]).tolist()
    [0.8, 0.2, 1.0]
    """
    scores = _as_score_array(scores, "scores")
    calibration = _as_score_array(calibration_scores, "calibration_scores")
    if calibration.size == 0:
        raise ValueError(
            "calibration_scores is empty: p-values need the scores of held-out ID samples (calibrate the "
            "detector on a few hundred of them)."
        )
    for name, values in (("scores", scores), ("calibration_scores", calibration)):
        n_nan = int(np.count_nonzero(np.isnan(values)))
        if n_nan:
            raise ValueError(
                f"{name} holds {n_nan} NaN value(s) out of {values.size}; a NaN score has no rank. Drop "
                "those samples or fix the detector's inputs."
            )
    calibration = np.sort(calibration)
    at_least = calibration.size - np.searchsorted(calibration, scores, side="left")
    return (1.0 + at_least) / (calibration.size + 1.0)
