"""oodscope: post-hoc out-of-distribution detection for trained image classifiers.

Scores read **higher = more OOD** for every detector. ``import oodscope`` imports neither torch nor
tensorflow; framework code is loaded only when a model of that framework is used.
"""

from . import plots, training
from ._version import __version__
from .aggregation import FisherAggregator, MeanNormalizedAggregator, StdNormalizedAggregator
from .bench import Report, TuneResult, evaluate, tune
from .binding import BoundModel, bind
from .data import OODDataset
from .detectors import (
    DKNN,
    GEN,
    KNN,
    MLS,
    MSP,
    ODIN,
    RMDS,
    SHE,
    Detector,
    Energy,
    Entropy,
    Gram,
    Mahalanobis,
    NotFittedError,
    ScoreResult,
    ViM,
    clone,
    energy_score,
    entropy_score,
    gen_score,
    gram_postproc,
    mls_score,
    msp_score,
    odin_score,
)
from .extract import extract
from .features import Features
from .metrics import (
    aupr_in,
    aupr_out,
    auroc,
    bench_metrics,
    conformal_pvalues,
    detect_acc,
    fpr_at_tpr,
    roc_curve,
    threshold_at_tpr,
    tnr_at_tpr,
)
from .needs import Needs, Perturbation
from .persistence import ModelMismatchError, load
from .shaping import ASH, SCALE, ReAct

__all__ = [
    "__version__",
    "BoundModel",
    "Needs",
    "Perturbation",
    "bind",
    "conformal_pvalues",
    "ModelMismatchError",
    "roc_curve",
    "threshold_at_tpr",
    "DKNN",
    "KNN",
    "RMDS",
    "SHE",
    "Gram",
    "Mahalanobis",
    "ViM",
    "gram_postproc",
    "FisherAggregator",
    "MeanNormalizedAggregator",
    "StdNormalizedAggregator",
    "ASH",
    "ODIN",
    "OODDataset",
    "Report",
    "TuneResult",
    "ReAct",
    "SCALE",
    "evaluate",
    "extract",
    "odin_score",
    "plots",
    "training",
    "tune",
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
