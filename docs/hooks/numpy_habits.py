"""Griffe extension for the API pages: a few habits of oodscope's docstrings, rendered as their authors mean.

The docstrings are numpy-style, read by Sphinx-minded people and by ``help()``. mkdocstrings (through griffe)
is stricter, and would render these habits badly:

- a doctest (``>>>``) outside an Examples section, which Markdown shows as nested quotes: in the text it is
  fenced as Python console code; after a section (say, Parameters) it moves to the Examples section;
- a paragraph of prose after the last parameter ("Stateless: ``fit`` only validates."), which griffe reads
  as one more parameter: it moves to a Notes section;
- ``name, optional`` (no colon), read as two parameters "name" and "optional": written ``name : optional``;
- a "Class attributes" section, which griffe does not know: rendered as Attributes;
- the reST literal-block marker ``::`` ending a line: a single colon (the indented block stays code).

Nothing is dropped. ``tests/test_docs.py`` parses every documented docstring with this extension and fails on
any warning, so the API pages show each docstring whole.
"""

from __future__ import annotations

import re

import griffe

PARAMETER_SECTIONS = {"Parameters", "Other Parameters", "Attributes", "Class attributes", "Keyword Arguments"}
PARAMETER = re.compile(r"^\*{0,2}[A-Za-z_]\w*(, \*{0,2}[A-Za-z_]\w*)*( : .*| :)?$")
LITERAL_MARKER = re.compile(r"(?<=\S)::$")


def _split_sections(lines: list[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The text before the first section, then ``[(name, lines)]`` of each numpy section."""
    body: list[str] = []
    sections: list[tuple[str, list[str]]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        underline = lines[i + 1] if i + 1 < len(lines) else ""
        is_header = (
            line.strip() and not line.startswith(" ") and re.fullmatch(r"-{3,}", underline) is not None
        )
        if is_header:
            sections.append((line.strip(), []))
            i += 2
            continue
        (sections[-1][1] if sections else body).append(line)
        i += 1
    return body, sections


def _take_paragraph(lines: list[str], start: int) -> int:
    """The index just past the paragraph starting at ``start`` (up to the next blank line)."""
    end = start
    while end < len(lines) and lines[end].strip():
        end += 1
    return end


def _fence_doctests(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        if lines[i].startswith(">>>"):
            end = _take_paragraph(lines, i)
            out += ["```pycon", *lines[i:end], "```"]
            i = end
        else:
            out.append(lines[i])
            i += 1
    return out


def tidy(docstring: str) -> str:
    """The docstring with the habits above rewritten; unchanged when it has none of them."""
    lines = [LITERAL_MARKER.sub(":", line) for line in docstring.split("\n")]
    body, sections = _split_sections(lines)
    examples: list[str] = []
    notes: list[str] = []
    kept: list[tuple[str, list[str]]] = []
    for name, section in sections:
        if name == "Examples":
            examples += section
            continue
        if name == "Notes":
            notes += section
            continue
        rest: list[str] = []
        i = 0
        while i < len(section):
            line = section[i]
            after_blank = i == 0 or not section[i - 1].strip()
            if line.startswith(">>>"):
                end = _take_paragraph(section, i)
                examples += ["", *section[i:end], ""]
                i = end
                continue
            if name in PARAMETER_SECTIONS and line.strip() and not line.startswith(" "):
                line = re.sub(r"^(\w+), optional$", r"\1 : optional", line)
                if after_blank and not PARAMETER.match(line):
                    end = _take_paragraph(section, i)
                    notes += ["", *section[i:end], ""]
                    i = end
                    continue
            rest.append(line)
            i += 1
        if name == "Class attributes" and not any(other == "Attributes" for other, _ in sections):
            name = "Attributes"
        kept.append((name, rest))
    if notes:
        kept.append(("Notes", notes))
    if examples:
        kept.append(("Examples", examples))
    out = _fence_doctests(body)
    for name, section in kept:
        while out and not out[-1].strip():
            out.pop()
        out += ["", name, "-" * len(name)]
        while section and not section[0].strip():
            section = section[1:]
        while section and not section[-1].strip():
            section = section[:-1]
        out += [line for j, line in enumerate(section) if line.strip() or section[j - 1].strip()]
    return "\n".join(out).strip("\n")


class NumpyHabits(griffe.Extension):
    """Applies :func:`tidy` to every docstring griffe loads."""

    def on_object(self, *, obj: griffe.Object, **kwargs: object) -> None:
        if obj.docstring is not None:
            obj.docstring.value = tidy(obj.docstring.value)
