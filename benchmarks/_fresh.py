"""Run one arm of a benchmark in a fresh Python process (see ``_allocator.py`` for why).

A script that offers this calls itself with ``--child ARM`` plus its own arguments; the child sets up only
that arm, runs one warm-up pass and then the timed ones, and prints one JSON object as its last line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_child(script: str, arm: str, args: list[str]) -> dict[str, Any]:
    """``python script --child arm *args`` in a new process; returns the JSON object it printed last."""
    done = subprocess.run(
        [sys.executable, str(Path(script).resolve()), "--child", arm, *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"The {arm!r} arm of {Path(script).name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
