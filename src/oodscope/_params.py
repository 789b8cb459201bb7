"""Hyperparameter constraints, checked at ``fit`` time with one uniform message.

Each detector declares ``_parameter_constraints``, e.g.
``{"gamma": Interval(float, 0, None, closed="neither")}``; :func:`validate_params` checks them all and
raises::

    ValueError: The 'gamma' parameter of GEN must be a float in (0, inf). Got 0 instead.

The command line builds its numeric flags from the same constraints (:func:`argument_type`), so
``--batch-size 0`` fails with ``argument --batch-size: must be an int in [1, inf); got '0'``.
"""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any


class Constraint:
    """A condition a hyperparameter value must meet."""

    def is_satisfied_by(self, value: Any) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def invalid_examples(self) -> list[Any]:
        """Values that violate the constraint (used by the conformance tests)."""
        raise NotImplementedError


class Interval(Constraint):
    """A real (``kind=float``) or integer (``kind=int``) interval; ``None`` bounds are infinite.

    ``closed`` is one of "both", "left", "right", "neither". Booleans are never accepted as numbers, NaN
    never is, and an infinite bound is open: ``Interval(float, 0, None)`` is [0, inf), so ``inf`` (which
    would turn a temperature or an exponent into a silently degenerate score) is refused.
    """

    def __init__(self, kind: type, left: float | None, right: float | None, closed: str = "both"):
        if kind not in (int, float):
            raise ValueError(f"kind must be int or float, got {kind!r}")
        if closed not in ("both", "left", "right", "neither"):
            raise ValueError(f"closed must be 'both', 'left', 'right' or 'neither', got {closed!r}")
        self.kind, self.left, self.right, self.closed = kind, left, right, closed

    def _is_number(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        return isinstance(value, numbers.Integral) if self.kind is int else True

    def is_satisfied_by(self, value: Any) -> bool:
        if not self._is_number(value) or not math.isfinite(float(value)):  # numpy floats too
            return False
        if self.left is not None:
            if value < self.left or (value == self.left and self.closed in ("right", "neither")):
                return False
        if self.right is not None:
            if value > self.right or (value == self.right and self.closed in ("left", "neither")):
                return False
        return True

    def describe(self) -> str:
        left_bracket = "[" if self.closed in ("both", "left") and self.left is not None else "("
        right_bracket = "]" if self.closed in ("both", "right") and self.right is not None else ")"
        left = "-inf" if self.left is None else self._bound(self.left)
        right = "inf" if self.right is None else self._bound(self.right)
        noun = "an int" if self.kind is int else "a float"
        return f"{noun} in {left_bracket}{left}, {right}{right_bracket}"

    def _bound(self, value: float) -> str:
        return str(int(value)) if self.kind is int else f"{value:g}"

    def invalid_examples(self) -> list[Any]:
        examples: list[Any] = ["1", None, True]
        if self.left is not None:
            examples.append(self.left - 1 if self.closed in ("both", "left") else self.left)
        if self.right is not None:
            examples.append(self.right + 1 if self.closed in ("both", "right") else self.right)
        if self.kind is int:
            examples.append(2.5)
        else:
            examples.append(float("nan"))
            if self.right is None:
                examples.append(math.inf)
        return examples


class Options(Constraint):
    """One of a fixed set of values."""

    def __init__(self, options: Iterable[Any]):
        self.options = tuple(options)

    def is_satisfied_by(self, value: Any) -> bool:
        return any(
            value is option or (type(value) is type(option) and value == option) for option in self.options
        )

    def describe(self) -> str:
        return "one of " + ", ".join(repr(option) for option in self.options)

    def invalid_examples(self) -> list[Any]:
        return ["__not_an_option__", 3.5]


class InstanceOf(Constraint):
    """An instance of the given type(s); ``allow_none`` admits ``None`` too."""

    def __init__(self, types: type | tuple[type, ...], allow_none: bool = False):
        self.types = types if isinstance(types, tuple) else (types,)
        self.allow_none = allow_none

    def is_satisfied_by(self, value: Any) -> bool:
        return (value is None and self.allow_none) or isinstance(value, self.types)

    def describe(self) -> str:
        names = " or ".join(t.__name__ for t in self.types)
        return f"an instance of {names}" + (" or None" if self.allow_none else "")

    def invalid_examples(self) -> list[Any]:
        return [object()]


class AnyOf(Constraint):
    """Satisfied when any of the given constraints is."""

    def __init__(self, *constraints: Constraint):
        self.constraints = constraints

    def is_satisfied_by(self, value: Any) -> bool:
        return any(c.is_satisfied_by(value) for c in self.constraints)

    def describe(self) -> str:
        return " or ".join(c.describe() for c in self.constraints)

    def invalid_examples(self) -> list[Any]:
        return [v for c in self.constraints for v in c.invalid_examples() if not self.is_satisfied_by(v)]


def validate_params(owner: str, params: Mapping[str, Any], constraints: Mapping[str, Constraint]) -> None:
    """Raise a uniform ``ValueError`` for the first parameter that violates its constraint."""
    for name, constraint in constraints.items():
        value = params[name]
        if not constraint.is_satisfied_by(value):
            raise ValueError(
                f"The {name!r} parameter of {owner} must be {constraint.describe()}. Got {value!r} instead."
            )


def argument_type(constraint: Interval) -> Callable[[str], Any]:
    """An ``argparse`` ``type=`` function reading a flag's text as a number that meets ``constraint``.

    A bad value is an :class:`argparse.ArgumentTypeError` with the constraint's own description, so argparse
    exits with code 2 and ``argument --batch-size: must be an int in [1, inf); got '0'``.

    >>> argument_type(Interval(int, 1, None))("16")
    16
    """

    def parse(text: str) -> Any:
        try:
            value = constraint.kind(text)
        except (TypeError, ValueError):
            value = None
        if value is None or not constraint.is_satisfied_by(value):
            raise argparse.ArgumentTypeError(f"must be {constraint.describe()}; got {text!r}")
        return value

    parse.__name__ = constraint.kind.__name__  # what argparse calls the type in its own messages
    return parse
