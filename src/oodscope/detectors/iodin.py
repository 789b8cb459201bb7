"""iODIN: ODIN whose input perturbation moves a single element, the one of largest gradient."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import numpy as np

from .._params import Constraint
from ..features import Features
from ..losses import PredictedClassCE
from ..needs import Needs, Perturbation
from .base import Detector
from .odin import _CONSTRAINTS as _ODIN_CONSTRAINTS
from .odin import odin_score


class _PositiveStd(Constraint):
    """A float > 0, or an array-like of them (one per channel, shaped to broadcast against one input)."""

    def is_satisfied_by(self, value: Any) -> bool:
        if isinstance(value, (bool, str, bytes)) or value is None:
            return False
        if isinstance(value, numbers.Real):
            return math.isfinite(float(value)) and value > 0
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            return False
        return array.size > 0 and bool(np.all(np.isfinite(array)) and np.all(array > 0))

    def describe(self) -> str:
        return "a float in (0, inf) or an array-like of them (one per channel)"

    def invalid_examples(self) -> list[Any]:
        return [0.0, -1.0, float("nan"), math.inf, "1", None, True, [1.0, 0.0], []]


_CONSTRAINTS = {**_ODIN_CONSTRAINTS, "input_std": _PositiveStd()}


def iodin_direction(gradient: Any, input_std: Any = 1.0) -> np.ndarray:
    """iODIN's step direction, of the gradient's shape [B, ...]: ``sign(g) ⊙ mask / σ``, where ``mask`` is
    one-hot at the element of largest ``|g|`` of each sample (over all its elements; the first on a tie).

    ``input_std`` σ is a scalar or an array that broadcasts against one sample's shape, e.g. ``(3, 1, 1)``
    per channel for channels-first images, ``(3,)`` for channels-last ones.

    >>> iodin_direction(np.array([[[0.5, -2.0], [1.0, 0.0]]]), input_std=[1.0, 4.0]).tolist()
    [[[0.0, -0.25], [0.0, 0.0]]]
    """
    gradient = np.asarray(gradient)
    if gradient.ndim < 2:
        raise ValueError(
            f"iodin_direction expects a batch of gradients [B, ...]; got shape {gradient.shape}."
        )
    std = np.asarray(input_std, dtype=np.float64)
    sample = gradient.shape[1:]
    try:
        fits = np.broadcast_shapes(std.shape, sample) == sample
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"iODIN's input_std of shape {std.shape} does not broadcast against one input of shape {sample}: "
            "give a scalar, or one value per channel shaped for the model's layout, e.g. (3, 1, 1) for "
            "channels-first and (3,) for channels-last images."
        )
    flat = gradient.reshape(len(gradient), -1)
    rows, largest = np.arange(len(flat)), np.abs(flat).argmax(axis=1)
    direction = np.zeros(flat.shape, dtype=np.result_type(gradient.dtype, np.float32))
    direction[rows, largest] = np.sign(flat[rows, largest])
    return direction.reshape(gradient.shape) / std


@dataclasses.dataclass(frozen=True)
class LargestGradientElement:
    """The direction of iODIN's step (:func:`iodin_direction`), a :class:`~oodscope.needs.Perturbation`
    ``direction``: hashable, so that iODINs of equal temperature, eps and σ share one gradient pass.

    ``std`` is σ as a float or as nested tuples (what ``np.asarray`` turns back into the array).
    """

    std: Any = 1.0

    def __call__(self, gradient: np.ndarray) -> np.ndarray:
        return iodin_direction(gradient, self.std)


def _frozen(value: Any) -> Any:
    """``value`` as a float or as nested tuples of floats: hashable and equal for equal arrays."""
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        return float(array)
    return tuple(_frozen(row) for row in array)


class IODIN(Detector):
    """iODIN: ODIN whose input perturbation moves only the single input element of largest gradient.

    Regmi, "Image-based outlier synthesis with training data" (the ASCOOD paper, which introduces iODIN),
    arXiv 2411.10794, 2024. https://arxiv.org/abs/2411.10794

    With f the logits, T the temperature, ŷ = argmax f(x) and g = ∇ₓ CE(f(x) / T, ŷ), one element of each
    input is moved to raise the confidence in ŷ (the element of largest |g| over all of the sample's
    elements), and the temperature-scaled maximum softmax probability of the moved input is negated so that
    higher means more OOD:

        x̃ = x − ε · sign(g) ⊙ onehot(argmax |g|) / σ,    S(x) = −max_c softmax(f(x̃) / T)_c.

    σ (``input_std``) converts ε from pixel units to the model's input units, as OpenOOD divides by the
    dataset's per-channel standard deviation of the normalisation. oodscope cannot see the normalisation
    (the inputs it is given are what the model sees), so σ defaults to 1.0: ε is then in the model's input
    units. Give the normalisation's std to reproduce OpenOOD's step, as a scalar or per channel shaped for the
    model's layout: ``[[[0.247]], [[0.243]], [[0.261]]]`` (channels-first, torch) or ``[0.247, 0.243, 0.261]``
    (channels-last, Keras). The mask is taken on the gradient itself, not on g / σ. A model with several
    inputs has one element moved in each of them (each along its own gradient, as ODIN moves each input).

    With ``eps > 0`` this needs the model: ``IODIN().fit(model).score(data)`` runs one forward and backward
    pass and a second forward pass per batch (on any backend that provides gradients), and
    ``info["logits"]`` holds the logits of the perturbed inputs; ``evaluate`` shares that pass between
    iODINs of the same temperature, eps and σ, but not with ODIN (another step). With ``eps=0`` it is ODIN
    with ``eps=0`` and scores precomputed :class:`~oodscope.Features`.

    Parameters
    ----------
    temperature : float, default=1000
        T > 0 (OpenOOD's ``iodin.yml``).
    eps : float, default=0.0014
        Perturbation size ε ≥ 0 of the one moved element (OpenOOD's ``noise``).
    input_std : float or array-like, default=1.0
        σ > 0: the input normalisation's standard deviation, a scalar or per channel (broadcast against
        one input sample).

    Stateless: ``fit`` only remembers the model.

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> IODIN(temperature=1.0, eps=0.0).score(Features(logits=np.array([[2.0, 0.0]]))).scores.round(4)
    array([-0.8808])
    """

    requires = frozenset({"logits"})
    needs_fit = False
    _parameter_constraints = _CONSTRAINTS
    #: OpenOOD's sweep (``iodin.yml``, APS mode: tuned on OOD validation data); each (T, eps) costs one
    #: gradient pass per dataset
    search_space = {"temperature": [1.0, 10.0, 100.0, 1000.0], "eps": [0.0014, 0.0028]}
    _features_only_params = {"eps": 0.0}

    def __init__(self, temperature: float = 1000.0, eps: float = 0.0014, input_std: Any = 1.0) -> None:
        self.temperature = temperature
        self.eps = eps
        self.input_std = input_std

    def needs(self, layers: Any = None) -> Needs:
        """With ``eps > 0``, the logits of the inputs with one element moved against the gradient of
        :class:`~oodscope.losses.PredictedClassCE` at the temperature: a gradient pass, shared by iODINs with
        the same temperature, eps and σ."""
        needs = super().needs(layers)
        if self.eps == 0:
            return needs
        move = Perturbation(
            loss=PredictedClassCE(temperature=float(self.temperature)),
            step=float(self.eps),
            direction=LargestGradientElement(std=_frozen(self.input_std)),
        )
        return dataclasses.replace(needs, perturbation=move)

    def _score(self, features: Features) -> np.ndarray:
        # with eps > 0 the logits come from the perturbed inputs (checked against needs())
        return odin_score(features.logits, self.temperature)
