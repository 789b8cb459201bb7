"""Quiet by default: library code never writes to standard output, progress bars go to standard error and
only on a terminal (or when asked), and the command line keeps framework log lines out of its output."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from oodscope.extract import progress_bar


class _Terminal:
    """A stand-in for standard error that says it is a terminal and keeps what is written."""

    def __init__(self) -> None:
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass


def test_progress_bars_show_on_a_terminal_or_when_asked(monkeypatch):
    monkeypatch.setattr(sys, "stderr", _Terminal())
    bar = progress_bar(range(3), None)
    assert not bar.disable and bar.delay == 2.0  # on a terminal, for loops that take a while
    bar.close()
    assert progress_bar(range(3), False).disable

    monkeypatch.setattr(sys, "stderr", open(os.devnull, "w"))  # noqa: SIM115 - closed by the interpreter
    assert progress_bar(range(3), None).disable  # piped or redirected: no bar
    shown = progress_bar(range(3), True, file=_Terminal())
    assert not shown.disable and shown.delay == 0


def test_bars_are_written_to_stderr_only(capfd):
    torch = pytest.importorskip("torch")
    from oodscope import extract
    from oodscope.training import train_torch_model

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 1, 4, 4)).astype(np.float32), rng.integers(0, 3, 64)
    torch.manual_seed(0)
    model = train_torch_model((x, y), "toy_mlp", epochs=1, batch_size=16)  # not a terminal: no bars
    extract(model, x, batch_size=8)
    assert capfd.readouterr() == ("", "")
    extract(model, x, batch_size=8, progress=True)
    train_torch_model((x, y), model, epochs=1, batch_size=16, verbose=True)
    out, err = capfd.readouterr()
    assert out == "" and "batch" in err and "Epoch 1/1" in err


def test_keras_training_prints_nothing_when_not_on_a_terminal(capfd):
    pytest.importorskip("keras")
    from oodscope.training import train_tf_model

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4, 4, 1)).astype(np.float32), rng.integers(0, 3, 32)
    train_tf_model((x, y), "toy_mlp", epochs=1, batch_size=16)
    assert capfd.readouterr().out == ""


@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="needs Keras")
def test_the_command_line_is_quiet_with_keras(tmp_path):
    """A fresh process, as a user runs it: TensorFlow's import lines, absl and Keras' progress stay out."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TF_CPP")}

    def run(*argv: str) -> tuple[str, str]:
        done = subprocess.run(
            [sys.executable, "-m", "oodscope", *argv], capture_output=True, text=True, env=env, cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr
        return done.stdout, done.stderr

    out, err = run("train", "--data", "digits:train:0-4", "--out", "m.keras", "--architecture", "toy_mlp")
    assert out.splitlines()[0].startswith("Trained toy_mlp (keras) on ") and len(out.splitlines()) == 2
    assert err == ""
    out, err = run(
        "fit",
        "--model",
        "m.keras",
        "--detector",
        "GEN()",
        "--calibrate",
        "digits:test:0-4",
        "--out",
        "GEN.oodscope",
    )
    assert out.splitlines()[-1] == "Saved to GEN.oodscope" and err == ""
    out, err = run("score", "--model", "m.keras", "--detector", "GEN.oodscope", "--inputs", "digits:test:5-9")
    lines = out.splitlines()
    assert lines[0] == "index,score,is_ood,p_value" and all(line.count(",") == 3 for line in lines)
    assert err == ""
