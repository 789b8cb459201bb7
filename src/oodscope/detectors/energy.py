"""Energy score."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._params import Interval, validate_params
from ..features import Features
from ._logits import as_logits, logsumexp
from .base import Detector

_CONSTRAINTS = {"temperature": Interval(float, 0, None, closed="neither")}


def energy_score(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """Free energy, higher = more OOD: ``E(z) = −T · log Σ_c exp(z_c / T)``, float64 of shape [N].

    >>> energy_score([[0.0, 0.0]]).round(6)
    array([-0.693147])
    """
    validate_params("energy_score", {"temperature": temperature}, _CONSTRAINTS)
    return -temperature * logsumexp(as_logits(logits) / temperature)


class Energy(Detector):
    """Energy-based OOD score.

    Liu, Wang, Owens & Li, "Energy-based Out-of-distribution Detection", NeurIPS 2020.
    https://arxiv.org/abs/2010.03759

    The free energy of the logits z at temperature T; the paper's ID score is its negation, so with higher
    meaning more OOD the score is the energy itself:

        S(z) = E(z; T) = −T · log Σ_c exp(z_c / T).

    Parameters
    ----------
    temperature : float, default=1.0
        T > 0. The paper uses T = 1.

    Stateless: ``fit`` only validates; ``score`` works without it.

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> Energy().score(Features(logits=np.array([[0.0, 0.0], [5.0, 0.0]]))).scores.round(4)
    array([-0.6931, -5.0067])
    """

    requires = frozenset({"logits"})
    needs_fit = False
    _parameter_constraints = _CONSTRAINTS
    #: OpenOOD's sweep (``configs/postprocessors/ebo.yml``), tuned on OOD validation data
    search_space = {"temperature": [1.0, 10.0, 100.0, 1000.0]}

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = temperature

    def _score(self, features: Features) -> np.ndarray:
        return energy_score(features.logits, self.temperature)
