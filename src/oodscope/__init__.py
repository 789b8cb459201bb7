"""oodscope: post-hoc out-of-distribution detection for trained image classifiers.

Scores read **higher = more OOD** for every detector. ``import oodscope`` imports neither torch nor
tensorflow; framework code is loaded only when a model of that framework is used.
"""

from . import plots, training
from ._version import __version__
from .data import OODDataset
from .detectors import (
    GEN,
    MLS,
    MSP,
    ODIN,
    Detector,
    Energy,
    Entropy,
    NotFittedError,
    ScoreResult,
    clone,
    energy_score,
    entropy_score,
    gen_score,
    mls_score,
    msp_score,
    odin_score,
)
from .extract import extract
from .features import Features
from .metrics import aupr_in, aupr_out, auroc, bench_metrics, detect_acc, fpr_at_tpr, tnr_at_tpr
from .persistence import load
from .shaping import ASH, SCALE, ReAct

__all__ = [
    "__version__",
    "ASH",
    "ODIN",
    "OODDataset",
    "ReAct",
    "SCALE",
    "extract",
    "odin_score",
    "plots",
    "training",
    "Detector",
    "Energy",
    "Entropy",
    "Features",
    "GEN",
    "MLS",
    "MSP",
    "NotFittedError",
    "ScoreResult",
    "aupr_in",
    "aupr_out",
    "auroc",
    "bench_metrics",
    "clone",
    "detect_acc",
    "energy_score",
    "entropy_score",
    "fpr_at_tpr",
    "load",
    "gen_score",
    "mls_score",
    "msp_score",
    "tnr_at_tpr",
]
