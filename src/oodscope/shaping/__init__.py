"""Activation shaping: ReAct, ASH and SCALE, composable with any logit detector."""

# _MEMO, _Scratch, _Shaping and percentile are importable from here too, outside __all__
from ._base import _MEMO as _MEMO
from ._base import ASH, SCALE, ReAct, ash, react, scale, sharing
from ._base import _Scratch as _Scratch
from ._base import _Shaping as _Shaping
from ._base import percentile as percentile

__all__ = ["ASH", "SCALE", "ReAct", "ash", "react", "scale", "sharing"]
