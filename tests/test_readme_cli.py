"""The README's command-line examples run as written: every ``oodscope`` command of its ```bash blocks (but
the install block) is run in order in a fresh folder, with Keras as written and with torch as the README
says ("naming the model ``toy.pt`` instead of ``toy.keras``"). They read real MNIST and Fashion-MNIST, so the
test is slow and skips where those data packages are not installed."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from oodscope.cli import main

from conftest import mnist_and_fashion_installed

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[list[str]]:
    """The ``oodscope ...`` commands of the README's bash blocks after the first (the install commands), with
    line continuations joined, split as the shell would."""
    blocks = re.findall(r"^```bash\n(.*?)^```", (ROOT / "README.md").read_text(), flags=re.S | re.M)
    commands = []
    for block in blocks[1:]:
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("oodscope "):
                commands.append(shlex.split(line)[1:])
    return commands


def test_the_readme_shows_the_whole_round_trip():
    assert [command[0] for command in readme_commands()] == ["train", "fit", "bench", "score"]


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["keras", "torch"])
def test_the_readme_commands_run_as_written(framework, tmp_path, monkeypatch, capsys):
    if importlib.util.find_spec(framework) is None:
        pytest.skip(f"{framework} is not installed")
    if not mnist_and_fashion_installed():
        pytest.skip("MNIST / Fashion-MNIST are not installed")
    monkeypatch.chdir(tmp_path)
    for command in readme_commands():
        if framework == "torch":
            command = [word.replace("toy.keras", "toy.pt") for word in command]
        code = main(command)
        captured = capsys.readouterr()
        assert code == 0, f"oodscope {shlex.join(command)} exited with {code}:\n{captured.err}"
    assert (tmp_path / f"toy.{'keras' if framework == 'keras' else 'pt'}").exists()
    assert {path.name for path in (tmp_path / "report").iterdir()} >= {
        "report.md",
        "report.json",
        "report.html",
    }
    assert sorted(path.name for path in (tmp_path / "detectors").iterdir()) == [
        "GEN.oodscope",
        "KNN_k=10.oodscope",
        "ViM.oodscope",
    ]
    lines = (tmp_path / "scores.csv").read_text().splitlines()
    assert lines[0] == "index,score,is_ood,p_value" and len(lines) == 10_001
    flagged = sum(line.split(",")[2] == "1" for line in lines[1:]) / 10_000
    assert flagged > 0.9, "Fashion-MNIST is far OOD for a digit model: most of it is flagged"
