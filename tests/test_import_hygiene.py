"""`import oodscope` imports no framework and writes nothing to the home directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_import_loads_no_framework_and_writes_nothing_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    code = (
        "import json, sys; import oodscope; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'tensorflow', 'keras', 'jax', 'matplotlib'))))"
    )
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    assert list(home.iterdir()) == []


def test_ci_has_what_the_skippable_tests_need():
    """Tests skip when a framework or an offline data set is missing; in CI nothing may be missing, so that
    a skip cannot hide a failure (and the import check above does not pass trivially)."""
    import importlib.util

    if not os.environ.get("CI"):
        return
    needed = ("torch", "tensorflow", "keras", "tensorflow_datasets", "faiss", "matplotlib", "mnist", "pandas")
    for module in needed:
        assert importlib.util.find_spec(module) is not None, module
    from oodscope.data import OODDataset

    assert len(OODDataset("fashion_mnist", load_kwargs={"split": "test"})) == 10_000
    assert len(OODDataset("animal_mnist")) == 10_000


def test_the_gen_example_runs_with_only_the_framework_it_uses():
    # README command 1 installs TensorFlow only; the example must not import torch for --backend tensorflow
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "gen_mnist.py"
    code = (
        "import runpy, sys\n"
        "class NoTorch:  # as if torch were not installed\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        f"runpy.run_path({str(example)!r})  # its top level, not main()\n"
        "from oodscope.training import train_tf_model\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False", "nothing imported torch"
