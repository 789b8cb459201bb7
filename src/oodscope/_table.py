"""Plain-text tables for reports and the command line."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def markdown_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, digits: int = 4
) -> str:
    """Render rows (dicts) as a GitHub-flavoured markdown table; floats get ``digits`` decimals.

    >>> print(markdown_table([{"method": "GEN", "auroc": 0.91234}]))
    | method | auroc  |
    |--------|--------|
    | GEN    | 0.9123 |
    """
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.{digits}f}"
        return "" if value is None else str(value)

    body = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column)] + [len(line[i]) for line in body]) for i, column in enumerate(columns)]
    lines = [
        "| " + " | ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True)) + " |"
    ]
    lines.append("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    lines += [
        "| " + " | ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)) + " |"
        for line in body
    ]
    return "\n".join(lines)
