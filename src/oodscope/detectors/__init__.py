"""OOD detectors: one module per method, each a pure score function plus a thin :class:`Detector` class."""

from .base import REQUIREMENTS, Detector, NotFittedError, ScoreResult, clone
from .energy import Energy, energy_score
from .entropy import Entropy, entropy_score
from .gen import GEN, gen_score
from .mls import MLS, mls_score
from .msp import MSP, msp_score
from .odin import ODIN, odin_score

__all__ = [
    "REQUIREMENTS",
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
]
