"""OOD detectors: one module per method, each a pure score function plus a thin :class:`Detector` class.

Adding a method is one new file here (a score function and a :class:`Detector` subclass) plus its export
line below; :func:`available` then lists it for the CLI, persistence and the test suite.
"""

from ._registry import available, registry_name
from .adascale import (
    AdaSCALE,
    adascale_direction,
    adascale_percentiles,
    adascale_ratio,
    adascale_score,
    adascale_shift,
)
from .base import REQUIREMENTS, Detector, NotFittedError, ScoreResult, clone
from .blood import BLOOD, blood_score, softmax_smoothness
from .cadref import CADRef, cadref_confidence, cadref_score
from .caref import CARef, caref_score, class_aware_means
from .energy import Energy, energy_score
from .entropy import Entropy, entropy_score
from .fdbd import FDBD, fdbd_boundary_norms, fdbd_score
from .gen import GEN, gen_score
from .gmm import GMM, gmm_score
from .gradnorm import GradNorm, gradnorm_score
from .gram import Gram, gram_bounds, gram_deviation, gram_postproc, gram_statistics
from .iodin import IODIN, iodin_direction
from .klm import KLM, klm_score, klm_templates
from .knn import DKNN, KNN, kth_neighbor_distance, l2_normalize
from .lts import LTS, lts_factor, lts_score
from .mahalanobis import Mahalanobis, class_statistics, mahalanobis_distances, whitening
from .mdsens import MDSEns, mdsens_direction
from .mls import MLS, mls_score
from .msp import MSP, msp_score
from .nac import NAC, kl_uniform_gradient, nac_coverage, nac_edges, nac_layer_score, nac_states
from .nci import NCI, nci_score
from .neco import NECO, neco_principal_dim, neco_score
from .nnguide import NNGuide, nnguide_bank, nnguide_score
from .odin import ODIN, odin_score
from .openmax import OpenMax, fit_weibull_tail, openmax_score, weibull_tail_cdf
from .optfs import OptFS, optfs_score, optfs_theta
from .rankfeat import RankFeat, rankfeat_score, remove_rank_one
from .relation import Relation, relation_score
from .residual import Residual, residual_score
from .rmds import RMDS
from .she import SHE, she_patterns, she_score
from .tempscale import TempScale, fit_temperature, tempscale_score
from .vim import ViM, vim_principal_dim, vim_score
from .weiper import WeiPer, weiper_densities, weiper_head, weiper_score

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
    "IODIN",
    "iodin_direction",
    "RankFeat",
    "rankfeat_score",
    "remove_rank_one",
    "BLOOD",
    "blood_score",
    "softmax_smoothness",
    "MDSEns",
    "mdsens_direction",
    "AdaSCALE",
    "adascale_direction",
    "adascale_percentiles",
    "adascale_ratio",
    "adascale_score",
    "adascale_shift",
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
    "NAC",
    "kl_uniform_gradient",
    "nac_coverage",
    "nac_edges",
    "nac_layer_score",
    "nac_states",
    "NCI",
    "nci_score",
    "OptFS",
    "optfs_score",
    "optfs_theta",
    "WeiPer",
    "weiper_densities",
    "weiper_head",
    "weiper_score",
    "Residual",
    "residual_score",
    "NECO",
    "neco_principal_dim",
    "neco_score",
    "GMM",
    "gmm_score",
    "OpenMax",
    "fit_weibull_tail",
    "openmax_score",
    "weibull_tail_cdf",
    "NNGuide",
    "nnguide_bank",
    "nnguide_score",
    "Relation",
    "relation_score",
    "CARef",
    "caref_score",
    "class_aware_means",
    "CADRef",
    "cadref_confidence",
    "cadref_score",
    "TempScale",
    "fit_temperature",
    "tempscale_score",
    "KLM",
    "klm_score",
    "klm_templates",
    "GradNorm",
    "gradnorm_score",
    "LTS",
    "lts_factor",
    "lts_score",
    "FDBD",
    "fdbd_boundary_norms",
    "fdbd_score",
]
