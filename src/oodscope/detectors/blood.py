"""BLOOD: how sharply a network transforms a sample between consecutive layers, estimated with random
projections of the Jacobians between them."""

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from .._params import AnyOf, Constraint, Interval, Options, validate_params
from ..features import Features, all_finite
from ..needs import FromPass, Gradient, GradientOf, Needs, layer_tuple
from ._logits import as_logits, log_softmax
from .base import Detector

__all__ = [
    "BLOOD",
    "ProjectedRepresentation",
    "SquaredNormAt",
    "blood_score",
    "projection",
    "softmax_smoothness",
]

_VARIANT = Options(("mean", "last"))


def blood_score(squared_norms: Any, variant: str = "mean") -> np.ndarray:
    """BLOOD from projected Jacobians, higher = more OOD, float64 of shape [N].

    ``squared_norms`` [N, P, K] holds ``‖v_{p,k}ᵀ J_p(x)‖²`` for P consecutive layer pairs and K random
    projections each. Each pair's ``‖J_p(x)‖_F²`` is estimated by the mean over its K projections; ``"mean"``
    (BLOOD_M) averages the P estimates, ``"last"`` (BLOOD_L) keeps the last pair's.

    >>> norms = np.array([[[1.0, 3.0], [4.0, 8.0]]])  # one sample, two pairs, two projections each
    >>> blood_score(norms), blood_score(norms, "last")
    (array([4.]), array([6.]))
    """
    validate_params("blood_score", {"variant": variant}, {"variant": _VARIANT})
    norms = np.asarray(squared_norms, dtype=np.float64)
    if norms.ndim != 3 or 0 in norms.shape[1:]:
        raise ValueError(
            "blood_score expects squared norms [n_samples, n_pairs, n_projections] with at least one pair "
            f"and one projection; got shape {norms.shape}."
        )
    if not all_finite(norms):
        raise ValueError("The squared norms of BLOOD's projected Jacobians hold NaN or inf.")
    per_pair = norms.mean(axis=2)
    return per_pair.mean(axis=1) if variant == "mean" else per_pair[:, -1]


def softmax_smoothness(logits: Any) -> np.ndarray:
    """The squared Frobenius norm of the Jacobian of the softmax at the logits, float64 of shape [N]:
    ``‖∂ softmax(z) / ∂z‖_F² = ‖diag(p) − p pᵀ‖_F² = Σ_c p_c² (1 − p_c)² + Σ_{c≠k} p_c² p_k²``.

    BLOOD's score at the Features level (see :class:`BLOOD`, ``layers=()``): near 0 for a confident
    prediction, larger for a flat one.

    >>> softmax_smoothness([[0.0, 0.0], [4.0, 0.0]]).round(4)  # p = (½, ½): 4 · (¼ · ¼)
    array([0.25  , 0.0012])
    """
    z = as_logits(logits)
    p = np.exp(log_softmax(z))
    rows = np.arange(len(z))
    top = np.argmax(z, axis=1)
    p_top = p[rows, top]
    rest = p.copy()
    rest[rows, top] = 0.0  # the other classes, each at most ½: no term below cancels for a confident row
    squares = np.square(rest)
    others = squares.sum(axis=1)  # Σ_{c≠t} p_c²
    diagonal = np.square(p_top * rest.sum(axis=1)) + (squares * np.square(1.0 - rest)).sum(axis=1)
    off_diagonal = 2.0 * p_top**2 * others + (others**2 - np.square(squares).sum(axis=1))
    return diagonal + np.maximum(off_diagonal, 0.0)


@functools.lru_cache(maxsize=256)
def projection(random_state: int, index: int, layer: Hashable, shape: tuple[int, ...]) -> np.ndarray:
    """The random direction ``v ~ N(0, I)`` of projection ``index`` for the representation of ``layer``:
    drawn by ``numpy.random.default_rng([random_state, index, crc32(repr(layer))])``, so the same on every
    framework, for every batch and every sample, and independent between layers and projections.

    >>> v = projection(0, 1, "block3", (4,))
    >>> v.shape, np.array_equal(v, projection(0, 1, "block3", (4,)))
    ((4,), True)
    >>> np.array_equal(v, projection(0, 2, "block3", (4,))), np.array_equal(v, projection(0, 1, "h", (4,)))
    (False, False)
    """
    seed = [int(random_state), int(index), zlib.crc32(repr(layer).encode())]
    v = np.random.default_rng(seed).standard_normal(shape)
    v.flags.writeable = False  # shared by the cache
    return v


def _representation(tensor: Any, token: int | None, what: str) -> Any:
    """The part of a layer's output (or of its gradient) that BLOOD reads: one position of a token sequence,
    or all of it."""
    if token is None:
        return tensor
    if len(tensor.shape) != 3:
        raise ValueError(
            f"BLOOD with token={token} reads one position of a token sequence [B, T, D], but {what} has "
            f"shape {tuple(tensor.shape)}. Give token=None to use the layers' whole outputs, or address "
            "layers whose outputs are [batch, tokens, width] (batch first)."
        )
    return tensor[:, token]


@dataclasses.dataclass(frozen=True)
class ProjectedRepresentation:
    """The loss of one BLOOD projection: ``Σ_b vᵀ rep(h_b)``, with h the output of ``layer``, rep its token
    ``token`` (the whole output for None) and v :func:`projection` ``(random_state, index, layer)``.

    Its gradient with respect to the layer before is ``vᵀ J`` for each sample. It reads ``layer`` (the
    ``reads`` attribute), and is equal by value: BLOODs with the same projection share its pass.
    """

    layer: Hashable
    index: int
    random_state: int = 0
    token: int | None = 0

    @property
    def reads(self) -> tuple[Hashable, ...]:
        return (self.layer,)

    def __call__(self, logits: Any, ops: Any, taps: Any) -> Any:
        rep = _representation(taps[self.layer], self.token, f"the output of layer {self.layer!r}")
        shape = tuple(rep.shape[1:])
        if any(size is None for size in shape):
            raise ValueError(
                f"BLOOD projects the representation of layer {self.layer!r}, whose shape {shape} is not "
                "fully known; give the model's input a fixed shape, or use token=0 (only the width must be "
                "known)."
            )
        v = projection(self.random_state, self.index, self.layer, tuple(int(size) for size in shape))
        return ops.total(rep * ops.constant(v.copy(), like=rep))  # a copy: torch refuses read-only arrays


@dataclasses.dataclass(frozen=True)
class SquaredNormAt:
    """A reduction of a gradient [B, T, D] (or [B, ...] for ``token=None``) to ``‖g_b[token]‖²`` [B, 1],
    for ``Needs.reductions`` (the framework's layout does not matter: the norm covers every axis)."""

    token: int | None = 0

    def __call__(self, values: np.ndarray, channels_last: bool = False) -> np.ndarray:
        what = "the gradient with respect to a layer of a pair"
        values = np.asarray(_representation(np.asarray(values), self.token, what))
        flat = values.reshape(len(values), -1).astype(np.float64)
        return np.einsum("bi,bi->b", flat, flat)[:, None]


class _Layers(Constraint):
    """``()``, or a list or tuple of at least two distinct layer ids (str or int)."""

    @staticmethod
    def _is_id(value: Any) -> bool:
        return isinstance(value, (str, int)) and not isinstance(value, bool)

    def is_satisfied_by(self, value: Any) -> bool:
        if not isinstance(value, (list, tuple)):
            return False
        if not value:
            return True
        return len(value) >= 2 and all(map(self._is_id, value)) and len(set(value)) == len(value)

    def describe(self) -> str:
        return "() or a list of at least two distinct layer ids (str or int), in forward order"

    def invalid_examples(self) -> list[Any]:
        return [None, "block0", ["block0"], ["block0", "block0"], [None, "block1"], [True, 1], 2.5]


class BLOOD(Detector):
    """BLOOD: how smoothly the network's layers transform a sample, from the Jacobians between consecutive
    layers, estimated with random projections (data-free: nothing is fitted).

    Jelenić, Jukić, Tutek, Puljiz & Šnajder, "Out-of-Distribution Detection by Leveraging Between-Layer
    Transformation Smoothness", ICLR 2024. https://arxiv.org/abs/2310.02832
    (code: https://github.com/fjelenic/between-layer-ood)

    For consecutive layers l_0 → l_1 → … → l_P of ``layers`` with outputs h_p, J_p(x) is the Jacobian of the
    representation rep(h_p) with respect to rep(h_{p−1}): the ``token``'s vector (the CLS token, position 0,
    by default; the other positions of h_{p−1} held fixed), or the whole output with ``token=None``. Its
    squared Frobenius norm is estimated with K = ``n_projections`` random directions v ~ N(0, I), since
    E‖vᵀJ‖² = ‖J‖_F²; higher (a sharper transformation) = more OOD:

        φ_p(x) = (1/K) Σ_k ‖v_{p,k}ᵀ J_p(x)‖²,
        S(x) = (1/P) Σ_p φ_p(x)   (``variant="mean"``, BLOOD_M),   S(x) = φ_P(x)   (``"last"``, BLOOD_L).

    **Layers.** No default fits every model: give the blocks' outputs, batch first ([B, T, D]), in forward
    order. The paper uses the outputs of all 12 blocks of RoBERTa-base and ELECTRA-base (11 pairs; the
    embeddings are not a layer of a pair), e.g. ``[f"roberta.encoder.layer.{i}.output" for i in range(12)]``
    for a Hugging Face RoBERTa (``RobertaOutput`` returns the block's output as one tensor; the block itself
    returns a tuple, which the torch backend cannot tap), ``nn.TransformerEncoderLayer`` modules
    (``batch_first=True``), or the last ``LayerNormalization`` of each Keras block. ``token=None`` takes the
    whole output, as the official code does for ResNet blocks.

    ``layers`` has no default: ``BLOOD()`` refuses to fit or score until it is given.

    **Features level.** With ``layers=()`` there is no model layer to differentiate, and BLOOD scores the
    one transformation that every classifier's :class:`~oodscope.Features` describe, from the logits z to
    the class probabilities p, exactly (no projection, see :func:`softmax_smoothness`):
    ``S(x) = ‖∂ softmax(z) / ∂z‖_F² = ‖diag(p) − p pᵀ‖_F²``. This is oodscope's, not the paper's (whose
    pairs stop at the last block): a confidence score on any Features, asked for by name.

    **Passes.** Each (pair, projection) is a distinct loss (:class:`ProjectedRepresentation`), so one
    gradient pass per dataset (a forward and a backward): a gradient with respect to l_{p−1} of a loss on
    l_p cannot be told apart from the terms of other pairs in one backward. BLOOD_M costs P · K passes per
    dataset (11 · 10 = 110 for RoBERTa-base), BLOOD_L K. ``evaluate`` shares every pass between BLOODs of
    the same pair, projection, ``random_state`` and ``token`` (a BLOOD_L's passes are among the BLOOD_M's
    of the same layers). ``info["logits"]`` are those of the first pass (the plain logits: no input moves).

    **Against the official code** (``fjelenic/between-layer-ood@6668060``, ``my_models.py``
    ``get_grad_layers``, checked): the same pairs of CLS representations (the gradient of the CLS output of
    block p with respect to block p−1's output, read at position 0), the same sign (their uncertainty is
    φ), BLOOD_M as the mean over pairs and BLOOD_L as the last pair, the model in eval mode. The text code
    averages 50 two-sided estimates (vᵀ J w)² with v, w ~ N(0, I); ``‖vᵀJ‖²`` is its average over w, has the
    same expectation and a variance that is smaller by a factor of at least 4 (``2Σσ⁴`` against
    ``2(Σσ²)² + 6Σσ⁴`` for J's singular values σ), so K = 10 is as precise as their 50 unless J is close
    to rank 1 (and 13 always is); their image code (``cv_models.py@0b21725``) uses ``‖vᵀJ‖²`` itself,
    with 10 projections of whole block outputs. They draw new directions for every sample and batch; here
    v is fixed by ``random_state`` and shared by all samples, so scores are reproducible and independent of
    the batching (each sample's estimate has the same distribution). OpenOOD and pytorch-ood lack BLOOD.

    Parameters
    ----------
    layers : sequence of layer ids, or None, default=None
        At least two layers, consecutive blocks in forward order (pairs (l_0, l_1), (l_1, l_2), …); ``()``:
        the softmax's Jacobian at the Features level. None (the default) is refused with a message saying
        which to give: no choice of blocks fits every model.
    variant : {"mean", "last"}, default="mean"
        BLOOD_M (the mean over pairs) or BLOOD_L (the last pair only: K passes instead of P · K).
    n_projections : int, default=10
        K ≥ 1, random directions per pair (the official image code's 10; see above for the text code's 50).
    random_state : int, default=0
        Seed of the directions v (:func:`projection`); the same seed gives the same v on every framework.
    token : int or None, default=0
        The position of a [B, T, D] sequence whose representation is used (0: CLS, as in the paper; −1: the
        last token); None: the layers' whole outputs (any shape: a 2-D layer or a feature map).

    Stateless: ``fit`` only remembers the model. There is no tuning grid (the paper tunes nothing).

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> feats = Features(logits=np.array([[4.0, 0.0], [0.0, 0.0]]))
    >>> BLOOD(layers=()).score(feats).scores.round(4)  # the softmax's Jacobian, flatter = higher
    array([0.0012, 0.25  ])
    """

    requires = frozenset({"logits"})
    needs_fit = False
    _parameter_constraints = {
        "layers": AnyOf(_Layers(), Options([None])),
        "variant": _VARIANT,
        "n_projections": Interval(int, 1, None),
        "random_state": Interval(int, 0, None),
        "token": AnyOf(Interval(int, None, None), Options([None])),
    }
    # search_space: the base's {} (the paper reports BLOOD_M and BLOOD_L side by side and tunes nothing)
    _features_only_params = {"layers": ()}

    def __init__(
        self,
        layers: Sequence[Hashable] | None = None,
        variant: str = "mean",
        n_projections: int = 10,
        random_state: int = 0,
        token: int | None = 0,
    ) -> None:
        self.layers = layers
        self.variant = variant
        self.n_projections = n_projections
        self.random_state = random_state
        self.token = token

    def _validate_params(self) -> None:
        super()._validate_params()
        if self.layers is None:
            raise ValueError(
                "BLOOD needs the layers whose transformations it measures, and no choice fits every model: "
                "give BLOOD(layers=[...]) at least two consecutive blocks in forward order, e.g. "
                "[f'roberta.encoder.layer.{i}.output' for i in range(12)] for a Hugging Face RoBERTa, or "
                "layers=() for the softmax's Jacobian at the Features level (not the paper's method)."
            )

    def _projections(self) -> list[tuple[Hashable, ProjectedRepresentation]]:
        """``(layer differentiated, loss)`` of every (pair, projection), pairs first, in the score's order."""
        self._validate_params()  # needs() may be asked before fit; a bad value fails here, not in a pass
        layers = layer_tuple(self.layers)
        pairs = list(zip(layers[:-1], layers[1:], strict=True))
        if self.variant == "last":
            pairs = pairs[-1:]
        return [
            (before, ProjectedRepresentation(after, k, int(self.random_state), self.token))
            for before, after in pairs
            for k in range(int(self.n_projections))
        ]

    def _pass(self, before: Hashable, loss: ProjectedRepresentation) -> Needs:
        return Needs(
            gradient=Gradient(loss, wrt=(before,)), reductions={GradientOf(before): SquaredNormAt(self.token)}
        )

    def needs(self, layers: Any = None) -> Needs:
        """With layers, the gradient pass of the first (pair, projection) as its own, and one more pass per
        other (pair, projection), named ``(layer, k)``; with ``layers=()``, the plain pass."""
        needs = super().needs(layers)
        projections = self._projections()
        if not projections:
            return needs
        own = self._pass(*projections[0])
        also = {(before, loss.index): self._pass(before, loss) for before, loss in projections[1:]}
        return dataclasses.replace(
            needs, gradient=own.gradient, reductions={**needs.reductions, **own.reductions}, also=also
        )

    def _score(self, features: Features) -> np.ndarray:
        projections = self._projections()
        if not projections:
            return softmax_smoothness(features.logits)
        columns = [features.layer(GradientOf(projections[0][0]))[:, 0]]
        columns += [
            features.layer(FromPass((before, loss.index), GradientOf(before)))[:, 0]
            for before, loss in projections[1:]
        ]
        norms = np.stack(columns, axis=1).reshape(len(features), -1, int(self.n_projections))
        return blood_score(norms, self.variant)
