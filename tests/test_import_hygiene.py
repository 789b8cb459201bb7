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


def test_torch_is_installed_so_the_check_above_means_something():
    # CI installs torch; without it the import check above would pass trivially.
    import importlib.util

    if os.environ.get("CI"):
        assert importlib.util.find_spec("torch") is not None
