"""OOD detectors: one module per method, each a pure score function plus a thin :class:`Detector` class.

Adding a method is one new file here (a score function and a :class:`Detector` subclass) plus its export
line below; :func:`available` then lists it for the CLI, persistence and the test suite.
"""

from ._registry import available, registry_name
from .base import REQUIREMENTS, Detector, NotFittedError, ScoreResult, clone
from .energy import Energy, energy_score
from .entropy import Entropy, entropy_score
from .gen import GEN, gen_score
from .gram import Gram, gram_bounds, gram_deviation, gram_postproc, gram_statistics
from .knn import DKNN, KNN, kth_neighbor_distance, l2_normalize
from .mahalanobis import Mahalanobis, class_statistics, mahalanobis_distances, whitening
from .mls import MLS, mls_score
from .msp import MSP, msp_score
from .odin import ODIN, odin_score
from .rmds import RMDS
from .she import SHE, she_patterns, she_score
from .vim import ViM, vim_principal_dim, vim_score

__all__ = [
    "REQUIREMENTS",
    "available",
    "registry_name",
    "Detector",
    "NotFittedError",
    "ScoreResult",
    "clone",
    "Energy",
    "energy_score",
    "Entropy",
    "entropy_score",
    "GEN",
    "gen_score",
    "MLS",
    "mls_score",
    "MSP",
    "msp_score",
    "ODIN",
    "odin_score",
    "Gram",
    "gram_bounds",
    "gram_deviation",
    "gram_postproc",
    "gram_statistics",
    "DKNN",
    "KNN",
    "kth_neighbor_distance",
    "l2_normalize",
    "Mahalanobis",
    "class_statistics",
    "mahalanobis_distances",
    "whitening",
    "RMDS",
    "SHE",
    "she_patterns",
    "she_score",
    "ViM",
    "vim_principal_dim",
    "vim_score",
]
