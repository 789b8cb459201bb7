"""MkDocs hook: the command-line page shows the ``--help`` of every ``oodscope`` command, as installed.

The page holds the marker below; at build time it is replaced by the help of the top-level command and of
each sub-command, read from ``oodscope.cli.build_parser()``, so a new command or option appears without
editing the page.
"""

from __future__ import annotations

import argparse
import os

MARKER = "<!-- oodscope help -->"
WIDTH = "88"  # argparse wraps to $COLUMNS; the page shows about 90 characters


def help_sections() -> str:
    from oodscope.cli import build_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        parser = build_parser()
        sections = [f"### `oodscope --help`\n\n```text\n{parser.format_help()}```\n"]
        for action in parser._actions:  # argparse keeps its sub-commands here, and nowhere public
            if isinstance(action, argparse._SubParsersAction):
                for name, command in action.choices.items():
                    sections.append(f"### `oodscope {name}`\n\n```text\n{command.format_help()}```\n")
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
    return "\n".join(sections)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, help_sections())
