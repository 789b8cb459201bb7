"""RankFeat: the energy of the logits of forwards with the rank-1 part of a block's feature map removed."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from .._params import Constraint, Interval, Options, validate_params
from ..features import Features
from ..needs import LOGITS, FromPass, Needs, layer_tuple
from ._logits import as_logits, logsumexp
from .base import Detector

__all__ = ["RankFeat", "RankOneRemoved", "rankfeat_score", "remove_rank_one"]

#: the power iterations of ``accelerate=True`` (the official code's and OpenOOD's ``iter=20``)
POWER_ITERATIONS = 20

_TEMPERATURE = Interval(float, 0, None, closed="neither")


def _sizes(tensor: Any, ops: Any) -> tuple[Any, ...]:
    """The sizes of the tensor's axes: ints, except in a compiled Keras function, where a size known only at
    run time (a free height or width) is a scalar tensor from ``keras.ops.shape``."""
    sizes = tuple(tensor.shape)
    if any(size is None for size in sizes[1:]):
        sizes = tuple(ops.native.shape(tensor))  # only Keras gives None: its native is keras.ops
    return sizes


def _power_rank_one(m: Any, ops: Any, iterations: int) -> Any:
    """σ₁ u₁ v₁ᵀ of every matrix of ``m`` [B, M, N] by power iteration from v = (1, ..., 1), N long."""
    native = ops.native

    def unit(x: Any) -> Any:  # [B, K] rows of norm 1 (the official code's +1e-10 against a zero row)
        norm = native.matmul(x[:, None, :], x[:, :, None])[:, 0] ** 0.5
        return x / (norm + 1e-10)

    v = native.ones_like(m[:, 0, :])
    u = unit(native.matmul(m, v[:, :, None])[:, :, 0])
    for _ in range(iterations):
        v = unit(native.matmul(u[:, None, :], m)[:, 0, :])
        u = unit(native.matmul(m, v[:, :, None])[:, :, 0])
    sigma = native.matmul(native.matmul(u[:, None, :], m), v[:, :, None])  # [B, 1, 1]
    return sigma * u[:, :, None] * v[:, None, :]


def remove_rank_one(tensor: Any, ops: Any, power_iterations: int = 0) -> Any:
    """``X − σ₁ u₁ v₁ᵀ`` for each sample's feature map X, as a framework tensor of the input's shape.

    A map [B, C, H, W] (torch) or [B, H, W, C] (Keras, ``ops.channels_last``), or any map with more spatial
    axes, is one matrix per sample, C × (H·W), whose largest singular value σ₁ and singular vectors u₁, v₁
    come from ``ops.svd`` (``power_iterations=0``) or from that many steps of power iteration started from
    the vector of ones over the spatial positions (deterministic, unlike the official code's random start).
    A 3-D tensor [B, T, D] (a transformer's token sequence, or a 1-D convolution's map) is one matrix per
    sample as it is. The rank-1 part does not depend on which axis holds the channels, so the layouts give
    the same result (a Keras layer with ``data_format="channels_first"`` would be misread as channels-last,
    Keras' default, and is not supported). Layers in which each sample is a vector ([B, D], or a map of one
    channel or one position) are refused: the edit would set it to zero.

    Written with :class:`~oodscope.backends.Ops` only (``svd``, ``channels_last``, and ``reshape``,
    ``swapaxes``, ``matmul``, ``ones_like`` of ``ops.native``), so it runs in torch and in Keras on every
    backend, also in a compiled function with a free batch size.

    >>> import torch
    >>> from oodscope.backends.torch import TorchOps
    >>> x = torch.zeros(1, 2, 2, 2)  # one sample, C=2 channels of 2 x 2: a 2 x 4 matrix
    >>> x[0, 0, 0, 0], x[0, 1, 0, 1] = 5.0, 1.0  # singular values 5 and 1
    >>> rest = torch.zeros(1, 2, 2, 2)
    >>> rest[0, 1, 0, 1] = 1.0  # what is left without the part of σ₁ = 5
    >>> torch.allclose(remove_rank_one(x, TorchOps()), rest, atol=1e-6)
    True
    """
    native = ops.native
    sizes = _sizes(tensor, ops)
    channels_last = len(sizes) > 3 and ops.channels_last
    if len(sizes) == 3:
        shape = sizes[1:]
    elif channels_last:
        shape = (sizes[-1], math.prod(sizes[1:-1]))
    else:
        shape = (sizes[1], math.prod(sizes[2:]))
    if len(sizes) < 3 or any(isinstance(size, int) and size < 2 for size in shape):
        raise ValueError(
            "RankFeat removes the rank-1 part of each sample's feature map ([B, C, H, W], [B, H, W, C] or a "
            f"token sequence [B, T, D]); it got a tensor of shape {tuple(tensor.shape)}, in which each "
            "sample is a vector, which the edit would set to zero. Choose a layer that outputs a feature "
            "map, e.g. a ResNet's last block ('layer4'), not a pooled or dense layer."
        )
    if len(sizes) == 3:
        m = tensor
    elif channels_last:  # [B, *S, C] -> [B, C, S], so that both layouts run the same power iteration
        m = native.swapaxes(native.reshape(tensor, (-1, shape[1], shape[0])), 1, 2)
    else:
        m = native.reshape(tensor, (-1, *shape))
    if power_iterations:
        rank_one = _power_rank_one(m, ops, power_iterations)
    else:
        u, s, vh = ops.svd(m)
        rank_one = u[:, :, :1] * s[:, None, :1] * vh[:, :1, :]
    m = m - rank_one
    if len(sizes) == 3:
        return m
    if channels_last:
        m = native.swapaxes(m, 1, 2)
    return native.reshape(m, (-1, *sizes[1:]))


@dataclasses.dataclass(frozen=True)
class RankOneRemoved:
    """RankFeat's edit of a block's output (:func:`remove_rank_one`), for ``Needs.edits``: hashable and equal
    by value, so that RankFeats editing the same block the same way share that pass.

    ``power_iterations``: 0 for the exact SVD, else that many power iterations.
    """

    power_iterations: int = 0

    def __call__(self, tensor: Any, ops: Any) -> Any:
        return remove_rank_one(tensor, ops, self.power_iterations)


def rankfeat_score(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """RankFeat's score from the logits of its edited forwards, higher = more OOD:
    ``S = −T · log Σ_c exp(z̄_c / T)`` with ``z̄ = (1/K) Σ_k z_k``, float64 of shape [N].

    ``logits``: a sequence of K arrays [N, C] (one per edited block), or one array [N, C] (K = 1).

    >>> rankfeat_score([[[2.0, 0.0]], [[0.0, 2.0]]]).round(4)  # z̄ = (1, 1): −(1 + log 2)
    array([-1.6931])
    """
    validate_params("rankfeat_score", {"temperature": temperature}, {"temperature": _TEMPERATURE})
    if isinstance(logits, np.ndarray) or not all(np.ndim(z) >= 2 for z in logits):
        passes = [logits] if np.ndim(logits) == 2 else list(logits)  # [N, C], or K passes as [K, N, C]
    else:
        passes = list(logits)
    if not passes:
        raise ValueError("rankfeat_score needs the logits of at least one forward pass; got none.")
    arrays = [as_logits(z) for z in passes]
    if any(z.shape != arrays[0].shape for z in arrays):
        raise ValueError(
            f"The logits of RankFeat's passes must have one shape; got {[z.shape for z in arrays]}."
        )
    mean = np.mean(arrays, axis=0)
    return -temperature * logsumexp(mean / temperature)


class _Blocks(Constraint):
    """A layer id (str or int), or a list or tuple of distinct ones (empty: no block is edited)."""

    @staticmethod
    def _is_id(value: Any) -> bool:
        return isinstance(value, (str, int)) and not isinstance(value, bool)

    def is_satisfied_by(self, value: Any) -> bool:
        if isinstance(value, (list, tuple)):
            return all(map(self._is_id, value)) and len(set(value)) == len(value)
        return self._is_id(value)

    def describe(self) -> str:
        return "a layer id (str or int) or a list of distinct ones"

    def invalid_examples(self) -> list[Any]:
        return [None, 2.5, True, ["layer4", "layer4"], [None], {"layer4": 1}]


class RankFeat(Detector):
    """RankFeat: the energy of the logits of forwards in which a block's feature map lost its rank-1 part.

    Song, Sebe & Wang, "RankFeat: Rank-1 Feature Removal for Out-of-distribution Detection", NeurIPS 2022.
    https://arxiv.org/abs/2209.08590 (code: https://github.com/KingJamesSong/RankFeat)

    For each block b of ``layers``, the model runs once with that block's output feature map X (per sample a
    C × HW matrix) replaced by X − σ₁ u₁ v₁ᵀ (its largest singular value and vectors), and the rest of the
    network running on it, giving logits z_b. With K blocks and T the temperature, higher = more OOD:

        z̄ = (1/K) Σ_b z_b,    S(x) = −T · log Σ_c exp(z̄_c / T).

    The paper observes that OOD maps are more dominated by their rank-1 part (a larger leading singular
    value): removing it leaves OOD logits flat, while ID logits keep most of their evidence.

    **Blocks.** The paper's blocks 3 and 4 of a ResNet (OpenOOD's setting) are ``("layer3", "layer4")`` for
    torchvision and timm ResNets (the outputs after the blocks' final ReLU), ``("conv4_block6_out",
    "conv5_block3_out")`` for Keras applications' ResNet50 (``ResNet101``: ``"conv4_block23_out"``;
    ``ResNet152``: ``"conv4_block36_out"``). The official BiT code (ResNetV2, pre-activation) takes the block
    outputs *before* the head's norm + ReLU: ``("body.block3", "body.block4")`` in its own ResNetV2,
    ``("stages.2", "stages.3")`` in timm's, and the same ``conv*_out`` names in Keras' ResNet50V2 (before
    ``post_bn`` / ``post_relu``). A single block (e.g.
    ``"layer4"``) is the paper's block-4-only RankFeat. Any layer whose output is a feature map [B, C, H, W]
    / [B, H, W, C] or a token sequence [B, T, D] can be edited (the official ViT code edits block 11's
    tokens); a 2-D layer is refused when the pass runs (see :func:`remove_rank_one`).

    **Passes.** Each block costs one edited forward per dataset (two by default); ``evaluate`` shares them
    between RankFeats with the same blocks and ``accelerate``. ``info["logits"]`` holds the logits of the
    forward with the first block edited. With ``layers=()`` nothing is edited and the score is the energy of
    the plain logits: that scores precomputed :class:`~oodscope.Features`.

    **Against the official code and OpenOOD** (``rankfeat_postprocessor.py``, ``rankfeat.yml``): the same
    score, blocks, mean of the two blocks' logits and temperature, in our sign (their confidence is
    T·logsumexp). Their block-3 pass re-runs only ``layer4`` and the head on a partial forward; ours runs the
    whole edited forward, which gives the same logits. The official default ``--score RankFeatWeight`` (the
    journal version) also removes the rank-1 part of the last block's weights, which is not done here.
    ``accelerate=True`` starts the power iteration from ones instead of a random vector, so scores do not
    change from run to run. pytorch-ood's ``RankFeat`` edits block 4 only (and before 0.4.0 had the sign
    reversed). The SVD runs in the maps' precision: float16 / bfloat16 maps need a float32 model.

    Parameters
    ----------
    layers : layer id or sequence of layer ids, default=("layer3", "layer4")
        The blocks whose outputs are edited, one forward each; ``()`` edits none (Energy of the plain
        logits).
    temperature : float, default=1.0
        T > 0 (OpenOOD's ``rankfeat.yml`` and the paper: 1).
    accelerate : bool, default=False
        Approximate σ₁ u₁ v₁ᵀ by 20 power iterations instead of the SVD (the official option).

    Stateless: ``fit`` only remembers the model. There is no tuning grid: OpenOOD's ``rankfeat.yml`` has no
    sweep (``search_space`` is ``{}``).

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> from oodscope.needs import LOGITS, FromPass
    >>> detector = RankFeat()  # own pass: layer3 edited; FromPass("layer4", LOGITS): layer4 edited
    >>> feats = Features(
    ...     logits=np.array([[2.0, 0.0]]),
    ...     layers={FromPass("layer4", LOGITS): np.array([[0.0, 2.0]])},
    ...     pass_kind=detector.needs().kind(),
    ... )
    >>> detector.score(feats).scores.round(4)
    array([-1.6931])
    """

    requires = frozenset({"logits"})
    needs_fit = False
    _parameter_constraints = {
        "layers": _Blocks(),
        "temperature": _TEMPERATURE,
        "accelerate": Options((False, True)),
    }
    # search_space: the base's {} (OpenOOD's rankfeat.yml has no sweep)
    _features_only_params = {"layers": ()}

    def __init__(
        self,
        layers: Hashable | Sequence[Hashable] = ("layer3", "layer4"),
        temperature: float = 1.0,
        accelerate: bool = False,
    ) -> None:
        self.layers = layers
        self.temperature = temperature
        self.accelerate = accelerate

    def _blocks(self) -> tuple[Hashable, ...]:
        self._validate_params()  # needs() may be asked before fit; a bad value fails here, not in a pass
        return layer_tuple(self.layers)

    def needs(self, layers: Any = None) -> Needs:
        """The forward with the first block edited (:class:`RankOneRemoved`) as its own pass, and one more
        pass per other block, named by the block (``FromPass(block, LOGITS)``); each is shared with every
        detector that edits that block the same way."""
        needs = super().needs(layers)
        blocks = self._blocks()
        if not blocks:
            return needs
        edit = RankOneRemoved(power_iterations=POWER_ITERATIONS if self.accelerate else 0)
        first, *others = blocks
        also = {block: Needs(edits={block: edit}) for block in others}
        return dataclasses.replace(needs, edits={first: edit}, also=also)

    def _score(self, features: Features) -> np.ndarray:
        # the first block's logits are the Features' own (their pass kind was checked against needs())
        others = [features.layer(FromPass(block, LOGITS)) for block in self._blocks()[1:]]
        return rankfeat_score([features.logits, *others], self.temperature)
