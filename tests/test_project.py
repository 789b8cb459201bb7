"""Project hygiene: ruff, the README's commands, no print in the library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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


def test_demo_without_a_framework_uses_scikit_learn(tmp_path):
    from oodscope.demo import run_demo

    result = run_demo(out_dir=tmp_path, seed=0, backend="sklearn")
    assert result["accuracy"] > 0.95
    aurocs = {row["detector"]: row["auroc"] for row in result["rows"]}
    assert set(aurocs) == {"GEN()", "MSP()", "MLS()", "Energy()", "Entropy()"}
    assert min(aurocs.values()) > 0.75
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen_roc.png", "gen_scores.png"]


@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
def test_demo_command_on_digits_with_each_framework(tmp_path, backend, capsys):
    from oodscope.cli import main

    args = ["demo", "--backend", backend, "--data", "digits", "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| GEN()" in out and "ReAct(detector=GEN())" in out and "scikit-learn 8x8 digits" in out
    accuracy = float(out.split("ID test accuracy ")[1].split(";")[0])
    assert accuracy > 0.9
    assert (tmp_path / "gen_roc.png").stat().st_size > 10_000
