"""One registry of detector classes: what the CLI, persistence and the test suite know as detectors.

Every concrete, public subclass of :class:`~oodscope.detectors.Detector` that has been imported is a
detector: oodscope's own under their class name (``"GEN"``), any other under its import path
(``"mypkg.mymod:MyDetector"``). A detector in the user's own module is therefore a first-class citizen as
soon as its module is imported: ``evaluate``, ``tune``, ``save`` / ``load`` and the CLI
(``--detectors "mypkg.mymod:MyDetector(k=3)"``) all find it here.
"""

from __future__ import annotations

import importlib
import inspect
import sys

from .base import Detector

__all__ = ["available", "registry_name", "resolve"]


def registry_name(cls: type) -> str:
    """The name a detector class is known by: its class name for oodscope's own, else
    ``"module:QualName"``."""
    if cls.__module__.split(".")[0] == "oodscope":
        return cls.__name__
    return f"{cls.__module__}:{cls.__qualname__}"


def _is_public(cls: type) -> bool:
    """Defined at the top level of its module under its own name (not a local, private or dynamic class)."""
    module = sys.modules.get(cls.__module__)
    return (
        not cls.__name__.startswith("_")
        and not inspect.isabstract(cls)
        and module is not None
        and getattr(module, cls.__qualname__, None) is cls
    )


def available() -> dict[str, type[Detector]]:
    """``{name: class}`` of every detector imported so far, oodscope's own first, each group sorted by name.

    >>> from oodscope.detectors import available
    >>> {"GEN", "KNN", "ODIN", "ReAct"} <= set(available())
    True
    """
    from .. import shaping  # noqa: F401 - the shaping detectors are oodscope's too

    found: dict[str, type[Detector]] = {}
    stack = [Detector]
    while stack:
        for sub in stack.pop().__subclasses__():
            stack.append(sub)
            if _is_public(sub):
                found[registry_name(sub)] = sub
    own = sorted(name for name in found if ":" not in name)
    return {name: found[name] for name in own + sorted(set(found) - set(own))}


def resolve(name: str, import_module: bool = False) -> type[Detector]:
    """The detector class registered as ``name``.

    A ``"module:Class"`` name whose module is not imported yet is imported when ``import_module`` is true
    (the CLI, where the user named it); never when reading a file (:func:`oodscope.load`).
    """
    known = available()
    if name in known:
        return known[name]
    module, _, qualname = name.partition(":")
    if qualname and import_module:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ValueError(
                f"Cannot import the module {module!r} of detector {name!r} ({error}). Make it importable, "
                "e.g. by running from the folder that holds it with PYTHONPATH=."
            ) from None
        known = available()
        if name in known:
            return known[name]
        raise ValueError(f"The module {module!r} defines no public Detector subclass {qualname!r}.")
    own = ", ".join(key for key in known if ":" not in key)
    hint = " Import the module that defines it first." if qualname else ""
    raise ValueError(f"Unknown detector {name!r}.{hint} Known detectors: {own}.")
