"""What the ``oodscope bench`` and ``oodscope score`` commands do, apart from argument parsing.

Data specifications (``--fit``, ``--id``, ``--ood NAME=SPEC``) are either a named data set with an optional
split and class list, ``mnist:test:0-4`` / ``fashion_mnist:test`` / ``mnist:train:0,1,2,3,4``, or a path to a
``.npz`` file holding the inputs under ``x`` (or ``inputs`` / ``image``) and optionally labels under ``y`` (or
``labels`` / ``label``), or a ``.npy`` file of inputs. Detectors are written as Python calls with literal
arguments, ``GEN(gamma=0.1)``, ``KNN(k=50)``, ``ReAct(GEN(), percentile=90)``, or, for a detector in the
user's own module, ``mypkg.mymod:MyDetector(k=3)``; they are parsed, never evaluated as code.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from .detectors.base import Detector

log = logging.getLogger(__name__)

INPUT_KEYS = ("x", "inputs", "image", "images")
LABEL_KEYS = ("y", "labels", "label")


class UsageError(ValueError):
    """A problem with the command's arguments or configuration (exit code 2)."""


#: ``module.path:ClassName`` inside a detector expression: a detector from the user's own module
_DOTTED = re.compile(r"\b([A-Za-z_][\w.]*):([A-Za-z_]\w*)")


def parse_detector(text: str) -> Detector:
    """``"GEN(gamma=0.1)"`` -> ``GEN(gamma=0.1)``: only registered classes and literal arguments.

    A class from the user's own module is written ``"mypkg.mymod:MyDetector(k=3)"``; its module is imported
    (it must be importable, e.g. with ``PYTHONPATH``), and the call is still parsed, never evaluated.
    """
    from .detectors import available
    from .detectors._registry import resolve

    known = dict(available())
    aliases: dict[str, str] = {}

    def alias(match: re.Match) -> str:
        name = f"{match.group(1)}:{match.group(2)}"
        try:
            known[name] = resolve(name, import_module=True)
        except ValueError as error:
            raise UsageError(str(error)) from None
        aliases.setdefault(name, f"_user_detector_{len(aliases)}")
        return aliases[name]

    source = _DOTTED.sub(alias, text.strip())
    known.update({placeholder: known[name] for name, placeholder in aliases.items()})
    try:
        tree = ast.parse(source, mode="eval").body
    except SyntaxError as error:
        raise UsageError(
            f"Cannot read the detector {text!r}: {error.msg}. Write e.g. 'GEN(gamma=0.1)'."
        ) from None
    return _build(tree, text, known)


def _build(node: ast.AST, text: str, known: dict[str, type[Detector]]) -> Detector:
    if isinstance(node, ast.Name):
        node = ast.Call(func=node, args=[], keywords=[])
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise UsageError(f"Cannot read the detector {text!r}; write a call such as 'KNN(k=50)'.")
    name = node.func.id
    if name not in known:
        shown = ", ".join(key for key in known if ":" not in key and not key.startswith("_user_"))
        raise UsageError(
            f"Unknown detector {name!r}. Known: {shown}; or 'module.path:ClassName(...)' for your own."
        )

    def value(arg: ast.AST) -> Any:
        if isinstance(arg, ast.Call) or (isinstance(arg, ast.Name) and arg.id in known):
            return _build(arg, text, known)
        try:
            return ast.literal_eval(arg)
        except ValueError:
            raise UsageError(f"In {text!r}: arguments must be literals or detectors.") from None

    try:
        return known[name](*[value(a) for a in node.args], **{k.arg: value(k.value) for k in node.keywords})
    except TypeError as error:
        raise UsageError(f"In {text!r}: {error}.") from None


def load_model(path: str | Path) -> Any:
    """A model saved by oodscope's trainers (or Keras / torch): ``.keras`` / ``.h5`` or ``.pt``."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"No model file at {path}.")
    if path.suffix in (".keras", ".h5", ".hdf5"):
        from .training import load_tf_model

        return load_tf_model(path)
    if path.suffix in (".pt", ".pth"):
        from .training import load_torch_model

        return load_torch_model(path)
    raise UsageError(f"Cannot tell the framework of {path}: use a .keras/.h5 (Keras) or .pt (torch) file.")


def load_data(spec: str, backend: str, scale: float | None) -> Any:
    """Data for the model from a specification (see the module docstring), scaled by ``1 / scale``."""
    from .data import OODDataset

    path = Path(spec)
    if path.suffix in (".npz", ".npy"):
        if not path.exists():
            raise UsageError(f"No data file at {path}.")
        if path.suffix == ".npy":
            dataset = OODDataset(np.load(path, allow_pickle=False), backend=backend)
        else:
            with np.load(path, allow_pickle=False) as archive:
                x_key = next((k for k in INPUT_KEYS if k in archive), None)
                if x_key is None:
                    raise UsageError(f"{path} has no inputs under {INPUT_KEYS}; it holds {list(archive)}.")
                y_key = next((k for k in LABEL_KEYS if k in archive), None)
                inputs = archive[x_key]
                labels = None if y_key is None else archive[y_key]
            dataset = OODDataset(inputs if labels is None else (inputs, labels), backend=backend)
    else:
        name, _, rest = spec.partition(":")
        split, _, classes = rest.partition(":")
        dataset = OODDataset(name, backend=backend, load_kwargs={"split": split or "test"})
        if classes:
            dataset = dataset.split_by_class(_classes(classes, spec))[0]
    return dataset.prepare(128, _scaler(scale) if scale else None)


def _classes(text: str, spec: str) -> list[int]:
    try:
        if "-" in text and "," not in text:
            low, high = (int(part) for part in text.split("-"))
            return list(range(low, high + 1))
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise UsageError(f"Cannot read the classes in {spec!r}: write 0-4 or 0,1,2.") from None


def _scaler(scale: float) -> Any:
    def preprocess(*inputs: Any) -> tuple[Any, ...]:
        return tuple([inputs[0] / scale] + list(inputs[1:]))

    return preprocess


def backend_of(model: Any) -> str:
    from .backends import framework_of

    return "torch" if framework_of(model) == "torch" else "tensorflow"


def run_bench(config: dict[str, Any]) -> Any:
    """Run :func:`oodscope.evaluate` from a configuration and write the report files; returns the Report."""
    from .bench import evaluate

    for key in ("model", "id", "ood", "detectors"):
        if not config.get(key):
            raise UsageError(f"bench needs {key!r} (a flag or a key of the config file).")
    model = load_model(config["model"])
    backend = backend_of(model)
    scale = config.get("scale", 255.0)
    ood = config["ood"]
    if isinstance(ood, list):
        ood = dict(_named(item) for item in ood)
    detectors = [parse_detector(d) if isinstance(d, str) else d for d in config["detectors"]]
    report = evaluate(
        model,
        load_data(config["fit"], backend, scale) if config.get("fit") else None,
        load_data(config["id"], backend, scale),
        {name: load_data(spec, backend, scale) for name, spec in ood.items()},
        detectors=detectors,
        groups=config.get("groups"),
        batch_size=int(config.get("batch_size", 128)),
    )
    out = Path(config.get("out", "oodscope_report"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(report.to_markdown() + "\n")
    report.to_csv(out / "report.csv")
    report.to_json(out / "report.json")
    try:
        report.to_html(out / "report.html")
    except ImportError as error:
        log.warning("No HTML report: %s", error)
    return report


def _named(item: str) -> tuple[str, str]:
    name, sep, spec = item.partition("=")
    if not sep or not name or not spec:
        raise UsageError(f"--ood takes NAME=SPEC (e.g. fashion=fashion_mnist:test); got {item!r}.")
    return name, spec


def read_config(path: str | Path) -> dict[str, Any]:
    try:
        config = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"No config file at {path}.") from None
    except json.JSONDecodeError as error:
        raise UsageError(f"{path} is not valid JSON: {error}.") from None
    if not isinstance(config, dict):
        raise UsageError(f"{path} must hold a JSON object.")
    return config


def run_score(
    detector_path: str, model_path: str, inputs: str, scale: float | None
) -> tuple[list[str], list]:
    """Scores (and decisions, when the detector has a threshold) of the inputs, as CSV columns and rows."""
    from .persistence import load

    if not Path(detector_path).exists():
        raise UsageError(f"No detector file at {detector_path}; write one with det.save(path).")
    model = load_model(model_path)
    detector = load(detector_path, model=model)
    data = load_data(inputs, backend_of(model), scale)
    scores = detector.score(data).scores
    columns, table = ["index", "score"], [np.arange(scores.size), scores]
    if getattr(detector, "threshold_", None) is not None:
        columns += ["is_ood", "p_value"]
        table += [(scores > detector.threshold_).astype(int), detector.pvalues(data)]
    return columns, list(zip(*table, strict=True))
