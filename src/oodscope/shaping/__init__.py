"""Activation shaping: ReAct, ASH and SCALE, composable with any logit detector.

Each shaping method transforms the penultimate activations h and recomputes the logits through the
classifier's linear head, ``z' = shape(h) @ W.T + b``; the wrapped detector (Energy by default, as in the
papers) then scores ``z'``. Everything comes from one forward pass: the penultimate layer and the head's
weights are in :class:`~oodscope.Features`, so no extra pass is needed::

    ReAct(GEN(), percentile=90).fit(model, train_data).score(test_data)

The shaping is a wrapper, not a flag: any logit detector (and any feature detector, which then sees the
shaped penultimate features) composes with any shaping method.

A new shaping method is one file in this package: a ``_Shaping`` subclass (see ``_base.py``) whose
``__init__`` stores ``detector`` and its hyperparameters (with their ``_parameter_constraints``), and which
implements

- ``_parts(h, scratch)``: the shaping of one block of rows as ``(g, factor)``, the shaped rows being
  ``g * factor[:, None]`` (or ``g`` when factor is None);
- ``_shaping_key()``: what decides the shaping, so that equal shapings share their recomputed logits inside
  :func:`sharing` (by default an instance shares nothing);
- optionally ``_fit_shape(h)``: what it learns from the fit data's penultimate features; one that learns
  nothing sets ``needs_fit = False`` (it is then fitted only when the wrapped detector needs it).

``_non_negative = True`` makes it reject negative (not post-ReLU) activations. Import it here.
"""

from .._sharing import _MEMO as _MEMO
from .._sharing import sharing
from ._base import _Scratch as _Scratch
from ._base import _Shaping as _Shaping
from ._base import percentile as percentile
from .ash import ASH, ash
from .dice import DICE, dice_mask
from .react import ReAct, react
from .scale import SCALE, scale
from .vra import VRA, vra

__all__ = ["ASH", "DICE", "SCALE", "VRA", "ReAct", "ash", "dice_mask", "react", "scale", "sharing", "vra"]
