"""The documentation holds: its code runs, the notebook runs, the site's pages and docstrings are in order.

``mkdocs build --strict`` itself runs in ``.ci/run``.
"""

from __future__ import annotations

import ast
import importlib.util
import logging
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from test_readme import python_blocks, readers_setup

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NOTEBOOK = ROOT / "examples" / "gen_mnist.ipynb"

# Pages whose Python blocks run, in order, each page in its own namespace (architecture.md shows sketches of
# files inside the package, with relative imports: they are not meant to run).
RUNNABLE_PAGES = ["getting-started.md", "concepts.md"]
# Pages that use the reader's own model and data (model, train_data, id_data, ...), as the README does.
PAGES_WITH_READERS_NAMES = {"concepts.md"}


def needs(*modules: str):
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)}")


@needs("torch", "sklearn")
@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_python_blocks_of_the_page_run_in_order(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # getting-started saves knn.oodscope
    blocks = python_blocks((DOCS / page).read_text())
    assert blocks, f"{page} has no python block"
    namespace: dict[str, object] = {"__name__": "docs"}
    if page in PAGES_WITH_READERS_NAMES:
        namespace.update(readers_setup("torch"))
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"docs/{page} python block {number}", "exec"), namespace)  # noqa: S102
    if page == "getting-started.md":
        assert namespace["knn"].threshold_ is not None
        assert 0.8 <= namespace["report"].value("GEN()", "digits 5-9", "auroc") <= 1.0
        assert np.mean(namespace["knn"].predict(namespace["x_ood"])) > 0.5


@needs("yaml")
def test_every_page_is_in_the_nav():
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(nav):
        for item in nav:
            if isinstance(item, str):
                yield item
            else:
                for value in item.values():
                    yield from pages(value) if isinstance(value, list) else [value]

    in_nav = set(pages(config["nav"]))
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*") if p.suffix in (".md", ".ipynb")}
    assert in_nav == on_disk
    assert (DOCS / "gen_mnist.ipynb").resolve() == NOTEBOOK.resolve(), "the docs render the example itself"


def test_the_readme_links_to_the_docs_after_the_two_commands():
    text = (ROOT / "README.md").read_text()
    commands_end = text.index("```", text.index("```bash") + 3)
    link = text.index("](docs/index.md)")
    assert commands_end < link < text.index("## Concepts")


# --- the notebook ----------------------------------------------------------------------------------------


def notebook_code() -> list[str]:
    import json

    cells = json.loads(NOTEBOOK.read_text())["cells"]
    return ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]


def statements(code: str, drop_keywords: tuple[str, ...] = ()) -> list[str]:
    """The statements of ``code`` as AST dumps, with the named keyword arguments of calls removed."""
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            node.keywords = [kw for kw in node.keywords if kw.arg not in drop_keywords]
    return [ast.dump(statement) for statement in tree.body]


def test_the_notebook_is_the_design_flow():
    """Every statement of the reference flow (DESIGN.md, as tests/test_design_flow.py keeps it) is in the
    notebook, in order; the notebook only adds imports, prints, a model path and ``verbose=2``."""
    from test_design_flow import FLOW

    flow = statements(FLOW, drop_keywords=("verbose",))
    notebook = statements("\n".join(notebook_code()), drop_keywords=("verbose",))
    positions = [notebook.index(statement) for statement in flow]
    assert positions == sorted(positions)


@pytest.mark.slow
@needs("tensorflow", "mnist", "matplotlib", "nbclient", "nbformat", "ipykernel")
def test_the_notebook_runs_on_small_settings(tmp_path):
    """The notebook, executed with one training epoch and a 2-D map of 200 points per set."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    small = {"epochs=5": "epochs=1", "max_samples=1000": "max_samples=200"}
    for old, new in small.items():
        (cell,) = [cell for cell in notebook.cells if cell.cell_type == "code" and old in cell.source]
        cell.source = cell.source.replace(old, new)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    ).execute()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) == 3  # scores, ROC curve, 2-D map: each shown once
    (metrics_cell,) = [cell for cell in notebook.cells if cell.source.endswith("\nmetrics")]
    (result,) = [output for output in metrics_cell.outputs if output.output_type == "execute_result"]
    metrics = ast.literal_eval(result["data"]["text/plain"])
    assert 0.8 <= metrics["auroc"] <= 0.98, metrics  # one epoch; five give 0.91-0.93


def test_the_committed_notebook_shows_its_results():
    """The docs render the committed outputs (mkdocs-jupyter does not execute it): they must be there."""
    import json

    cells = [cell for cell in json.loads(NOTEBOOK.read_text())["cells"] if cell["cell_type"] == "code"]
    assert all(cell["execution_count"] for cell in cells), "run every cell before committing"
    # TensorFlow's start-up lines (and tqdm's note that ipywidgets is missing) are left out of the page
    streams = [out for cell in cells for out in cell["outputs"] if out["output_type"] == "stream"]
    assert streams and all(out["name"] == "stdout" for out in streams)
    images = [out for cell in cells for out in cell["outputs"] if "image/png" in out.get("data", {})]
    assert len(images) == 3


# --- docstrings as the API pages read them ----------------------------------------------------------------


def documented_objects() -> list[str]:
    """The objects the API pages render (``::: oodscope.path``), as paths."""
    pages = sorted((DOCS / "api").glob("*.md"))
    return [path for page in pages for path in re.findall(r"^::: (\S+)", page.read_text(), flags=re.M)]


@needs("griffe")
def test_the_api_pages_read_every_docstring_whole():
    """griffe, as mkdocstrings runs it for the site (with docs/hooks/numpy_habits.py), parses each documented
    docstring without a warning: no text is lost or misread as a parameter."""
    import griffe

    sys.path.insert(0, str(DOCS / "hooks"))
    try:
        from numpy_habits import NumpyHabits
    finally:
        sys.path.remove(str(DOCS / "hooks"))
    extensions = griffe.load_extensions(NumpyHabits())
    package = griffe.load("oodscope", search_paths=[str(ROOT / "src")], extensions=extensions)
    warnings: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    logger = logging.getLogger("griffe")
    logger.addHandler(handler)
    try:
        found = [package[path.removeprefix("oodscope.")] for path in documented_objects()]
        stack = [obj.final_target if obj.is_alias else obj for obj in found]
        parsed = 0
        while stack:
            obj = stack.pop()
            if obj.docstring is not None:
                obj.docstring.parse("numpy")
                parsed += 1
            exported = set(obj.exports or ()) if obj.is_module else set()
            for name, member in obj.members.items():
                if member.is_alias and name in exported:  # rendered where it is exported from
                    stack.append(member.final_target)
                elif not member.is_alias and (not name.startswith("_") or name == "__init__"):
                    stack.append(member)
    finally:
        logger.removeHandler(handler)
    assert parsed > 100
    assert not warnings, "\n".join(warnings)


def test_the_docstring_habits_are_rewritten_without_loss():
    sys.path.insert(0, str(DOCS / "hooks"))
    try:
        from numpy_habits import tidy
    finally:
        sys.path.remove(str(DOCS / "hooks"))
    docstring = """Summary.

>>> f(1)
2

Parameters
----------
x, optional
    The x.

Stateless: nothing to fit.

>>> f(2)
3

Examples
--------
See this::

    f(3)
"""
    assert (
        tidy(docstring)
        == """Summary.

```pycon
>>> f(1)
2
```

Parameters
----------
x : optional
    The x.

Notes
-----
Stateless: nothing to fit.

Examples
--------
>>> f(2)
3

See this:

    f(3)"""
    )
    plain = "One line.\n\nParameters\n----------\nx : int\n    The x."
    assert tidy(plain) == plain


def test_every_detector_is_in_the_readme_table_the_api_pages_and_the_choosing_page():
    from oodscope.detectors import available

    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Detectors") :]
    table = table[: table.index("\n## ")]
    api = (DOCS / "api" / "detectors.md").read_text() + (DOCS / "api" / "shaping.md").read_text()
    choosing = (DOCS / "choosing.md").read_text()
    for name, cls in available().items():
        if ":" in name:
            continue
        assert re.search(rf"\| `{name}[`(]", table), f"{name} has no row in the README's detector table"
        assert f"::: {cls.__module__}.{name}\n" in api, f"{name} has no entry in docs/api"
        assert re.search(rf"\| `{name}[`(]", choosing), f"{name} has no row in docs/choosing.md"
