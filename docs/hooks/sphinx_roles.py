"""MkDocs hook: Sphinx cross-reference roles in the docstrings become links on the API pages.

The docstrings are numpy-style and refer to other objects the Sphinx way, ``:class:`~oodscope.Features```.
mkdocstrings renders that as the text ``:class:`` followed by the code ``~oodscope.Features``; this hook turns
it into the code ``Features``, linked to its API entry when the site has one (through mkdocs-autorefs,
which resolves the links once every page is rendered, and leaves unresolved ones as plain code).
"""

from __future__ import annotations

import functools
import html
import re
from pathlib import Path

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):<code>(?P<target>[^<]+)</code>")
SRC = Path(__file__).resolve().parents[2] / "src"


@functools.cache
def _package():
    import griffe

    return griffe.load("oodscope", search_paths=[str(SRC)], docstring_parser="numpy")


@functools.cache
def _by_name() -> dict[str, list[str]]:
    """Every object defined in oodscope, by its short name: ``{"fpr_at_tpr": ["oodscope.metrics...."]}``."""
    names: dict[str, list[str]] = {}
    stack = [_package()]
    while stack:
        obj = stack.pop()
        for name, member in obj.members.items():
            if not member.is_alias and not name.startswith("_"):
                names.setdefault(name, []).append(member.path)
                stack.append(member)
    return names


def canonical(path: str) -> str:
    """Where ``path`` is defined (``oodscope.Features`` -> ``oodscope.features.Features``), if it can tell.

    A name without its module (``fpr_at_tpr``, ``OODDataset.prepare``) is looked up by its last part, and
    kept when that is unique; a module that shadows its own function (``oodscope.extract``) means the
    function.
    """
    try:
        obj = _package()[path.removeprefix("oodscope.")]
    except Exception:  # not a full path: a name relative to where the docstring is
        found = [p for p in _by_name().get(path.rsplit(".", 1)[-1], []) if p.endswith(path)]
        return found[0] if len(found) == 1 else path
    obj = obj.final_target if obj.is_alias else obj
    if obj.is_module and obj.name in obj.members:
        obj = obj.members[obj.name]
    return obj.path


def _link(match: re.Match) -> str:
    target = html.unescape(match["target"]).strip()
    short = target.startswith("~")
    path = target.lstrip("~.")
    title = path.rsplit(".", 1)[-1] if short else path
    identifier = html.escape(canonical(path))
    return f'<autoref identifier="{identifier}" optional><code>{html.escape(title)}</code></autoref>'


def on_page_content(content: str, page, config, files) -> str:
    return ROLE.sub(_link, content)
