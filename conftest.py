"""Doctest collection: skip framework backends whose framework is not installed."""

import importlib.util

collect_ignore = [
    f"src/oodscope/backends/{name}.py"
    for name, module in (("torch", "torch"), ("keras", "keras"))
    if importlib.util.find_spec(module) is None
]
