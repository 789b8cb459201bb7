"""Benchmarking: many detectors on many OOD sets in one pass per dataset, reports, and tuning.

- :func:`evaluate` fits and scores a list of detectors on ID data and several OOD sets, running the model
  once per dataset, and returns a :class:`Report` (markdown, CSV, JSON, HTML, pandas).
- :func:`tune` searches a detector's hyperparameters on cached features and returns a :class:`TuneResult`.
"""

from .evaluate import detector_names, evaluate
from .report import DEFAULT_METRICS, BestDetector, Report
from .tune import TuneResult, parameter_candidates, tune

__all__ = [
    "DEFAULT_METRICS",
    "BestDetector",
    "Report",
    "TuneResult",
    "detector_names",
    "evaluate",
    "parameter_candidates",
    "tune",
]
