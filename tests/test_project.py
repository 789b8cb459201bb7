"""Project hygiene: ruff, the README's commands, no print in the library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_starts_with_exactly_two_commands():
    text = (ROOT / "README.md").read_text()
    assert text.index("```bash") < 40, "the commands come first"
    commands = readme_commands()
    assert len(commands) == 2
    assert commands[0].endswith("oodscope demo")


def test_the_readme_test_command_is_ci():
    assert readme_commands()[1] == "bash .ci/run"


def test_ruff_is_clean():
    ruff = [sys.executable, "-m", "ruff"]
    check = subprocess.run([*ruff, "check", str(ROOT)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = subprocess.run([*ruff, "format", "--check", str(ROOT)], capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_demo_command_runs_and_separates_digits():
    from oodscope.cli import main
    from oodscope.demo import run_demo

    result = run_demo(seed=0)
    assert result["accuracy"] > 0.95
    aurocs = {row["detector"]: row["auroc"] for row in result["rows"]}
    assert set(aurocs) == {"GEN()", "MSP()", "MLS()", "Energy()", "Entropy()"}
    assert min(aurocs.values()) > 0.75
    assert main(["demo", "--seed", "1"]) == 0
