"""What the ``oodscope`` commands do, apart from argument parsing.

Data specifications (``--data``, ``--fit``, ``--id``, ``--ood NAME=SPEC``, ``--inputs``, ``--calibrate``) are
either a named data set with an optional split and class list, ``mnist:test:0-4`` / ``fashion_mnist:test`` /
``mnist:train:0,1,2,3,4`` (split ``test`` by default), or a path to a ``.npz`` file holding the inputs under
``x`` (or ``inputs`` / ``image`` / ``images``) and optionally labels under ``y`` (or ``labels`` / ``label``),
or a ``.npy`` file of inputs. Images are channels-last ``[N, H, W, C]`` (or ``[N, H, W]``), as the named data
sets are; for a torch model they are transposed to ``[N, C, H, W]`` batch by batch (inputs that are plainly
channels-first already are left so). Inputs reach the model as float32 ``x / scale``.

Detectors are written as Python calls with literal arguments, ``GEN(gamma=0.1)``, ``KNN(k=50)``,
``ReAct(GEN(), percentile=90)``, or, for a detector in the user's own module, ``mypkg.mymod:MyDetector(k=3)``;
they are parsed, never evaluated as code.

Every argument is checked before any model or data is loaded; a bad one raises :class:`UsageError` (exit
code 2) naming it.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import importlib.util
import json
import logging
import math
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .detectors.base import Detector
from .metrics import conformal_pvalues

log = logging.getLogger(__name__)

INPUT_KEYS = ("x", "inputs", "image", "images")
LABEL_KEYS = ("y", "labels", "label")
DEFAULT_SCALE = 255.0
DEFAULT_BATCH_SIZE = 128


class UsageError(ValueError):
    """A problem with the command's arguments or configuration (exit code 2)."""


# --- quiet frameworks -------------------------------------------------------------------------------------

_QUIET = {"imports": False}


def quiet_frameworks(verbose: bool) -> None:
    """Keep framework log noise out of the command's output, unless ``verbose``.

    Must run before TensorFlow is imported: TensorFlow reads ``TF_CPP_MIN_LOG_LEVEL`` (its C++ log lines)
    once, at import. A value the user set is kept. Python loggers of TensorFlow and absl are raised to
    ERROR; and TensorFlow's own import, which prints a few lines to the process's standard error before any
    setting applies, runs with that stream silenced (:func:`import_framework`).
    """
    _QUIET["imports"] = not verbose
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in ("absl", "tensorflow", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)


def import_framework(module: str) -> Any:
    """``import module`` with the process's standard error silenced meanwhile when the command is quiet:
    native libraries write there directly. For ``keras``, TensorFlow is imported first when it is installed,
    whatever the Keras backend: Keras reads arrays and files through it on every backend, later."""
    if not _QUIET["imports"]:
        return __import__(module)
    wanted = [module]
    if module == "keras" and importlib.util.find_spec("tensorflow") is not None:
        wanted.insert(0, "tensorflow")
    with (
        _native_stderr_silenced()
        if any(name not in sys.modules for name in wanted)
        else contextlib.nullcontext()
    ):
        for name in wanted:
            imported = __import__(name)
    return imported


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no file descriptor 2 to silence
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# --- numbers ----------------------------------------------------------------------------------------------


def check_positive_int(flag: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UsageError(f"{flag} must be a positive integer; got {value!r}.")
    return int(value)


def check_positive_number(flag: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (math.isfinite(value) and value > 0)
    ):
        raise UsageError(f"{flag} must be a positive number; got {value!r}.")
    return float(value)


def check_tpr(flag: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise UsageError(f"{flag} must be in (0, 1], e.g. 0.95 (keep 95% of ID data); got {value!r}.")
    return float(value)


# --- detectors --------------------------------------------------------------------------------------------

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
    detector = _build(tree, text, known)
    try:
        detector._validate_params()
    except (TypeError, ValueError) as error:
        raise UsageError(f"In {text!r}: {error}") from None
    return detector


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


def detector_file_name(name: str) -> str:
    """A file name for a detector named ``name`` (its repr): ``KNN(k=5)`` -> ``KNN_k=5.oodscope``."""
    stem = re.sub(r"[^A-Za-z0-9=.,+-]+", "_", name).strip("_.") or "detector"
    return f"{stem}.oodscope"


# --- data -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """A checked data specification (see the module docstring); nothing is loaded yet."""

    text: str
    flag: str
    path: Path | None = None
    name: str | None = None
    split: str = "test"
    classes: tuple[int, ...] | None = None


def parse_data_spec(text: Any, flag: str) -> DataSpec:
    """Check a data specification without loading anything; :class:`UsageError` naming ``flag`` if bad."""
    from .data.sources import resolve_name

    if not isinstance(text, str) or not text.strip():
        raise UsageError(
            f"{flag} takes a data specification such as mnist:test:0-4 or data.npz; got {text!r}."
        )
    path = Path(text)
    if path.suffix.lower() in (".npz", ".npy"):
        if not path.is_file():
            raise UsageError(f"{flag}: no data file at {path}.")
        return DataSpec(text, flag, path=path)
    name, _, rest = text.partition(":")
    split, _, classes = rest.partition(":")
    try:
        spec = resolve_name(name)
    except ValueError:
        from .data import known_datasets

        close = difflib.get_close_matches(name.strip().lower(), known_datasets(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UsageError(
            f"{flag}: unknown data set {name!r} in {text!r}.{hint} Known: {', '.join(known_datasets())}; "
            "or give a .npz / .npy file."
        ) from None
    split = split or "test"
    if split not in spec.splits:
        raise UsageError(
            f"{flag}: {spec.name} has the splits {', '.join(spec.splits)}; got {split!r} in {text!r}."
        )
    chosen = None
    if classes:
        chosen = tuple(_classes(classes, text, flag))
        wrong = [c for c in chosen if not 0 <= c < spec.num_classes]
        if wrong:
            raise UsageError(
                f"{flag}: {spec.name} has classes 0 to {spec.num_classes - 1}; got {wrong} in {text!r}."
            )
    return DataSpec(text, flag, name=spec.name, split=split, classes=chosen)


def _classes(text: str, spec: str, flag: str) -> list[int]:
    try:
        if "-" in text and "," not in text:
            low, high = (int(part) for part in text.split("-"))
            if low > high:
                raise ValueError
            return list(range(low, high + 1))
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise UsageError(f"{flag}: cannot read the classes in {spec!r}; write 0-4 or 0,1,2.") from None


@dataclasses.dataclass
class LoadedData:
    """The arrays of a data specification: channels-last inputs, labels (or None), the number of classes."""

    spec: DataSpec
    inputs: np.ndarray
    labels: np.ndarray | None
    num_classes: int | None

    def describe(self) -> str:
        return f"{len(self.inputs)} samples of {self.spec.text}"


def load_arrays(spec: DataSpec) -> LoadedData:
    """The arrays of ``spec``: named data sets through :class:`oodscope.data.OODDataset`, files with numpy."""
    from .data import OODDataset

    if spec.path is not None:
        inputs, labels = _read_file(spec)
        if len(inputs) == 0:
            raise UsageError(f"{spec.flag}: {spec.path} holds no samples.")
        if labels is not None and len(labels) != len(inputs):
            raise UsageError(f"{spec.flag}: {spec.path} holds {len(inputs)} inputs but {len(labels)} labels.")
        dataset = OODDataset(inputs if labels is None else (inputs, labels))
    else:
        dataset = OODDataset(spec.name, load_kwargs={"split": spec.split})
        if spec.classes is not None:
            dataset = dataset.split_by_class(list(spec.classes))[0]
            if len(dataset) == 0:
                raise UsageError(f"{spec.flag}: {spec.text} selects no samples.")
    return LoadedData(spec, dataset.inputs, dataset.labels, dataset.num_classes)


def _read_file(spec: DataSpec) -> tuple[np.ndarray, np.ndarray | None]:
    path = spec.path
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False), None
        with np.load(path, allow_pickle=False) as archive:
            x_key = next((k for k in INPUT_KEYS if k in archive), None)
            if x_key is None:
                keys = ", ".join(INPUT_KEYS)
                raise UsageError(f"{spec.flag}: {path} has no inputs under {keys}; it holds {list(archive)}.")
            y_key = next((k for k in LABEL_KEYS if k in archive), None)
            return archive[x_key], None if y_key is None else archive[y_key]
    except (ValueError, OSError) as error:
        if isinstance(error, UsageError):
            raise
        raise UsageError(f"{spec.flag}: cannot read {path} with numpy ({error}).") from None


class ModelInputs:
    """Batches for the model: float32 ``inputs / scale`` (channels-first for a torch model) with the labels.

    Re-iterable, since a detector may need more than one pass (ODIN), and counted (``len`` is the number of
    batches), so a progress bar knows its length. Only one batch is converted at a time.
    """

    def __init__(
        self, data: LoadedData, scale: float, channels_first: bool, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> None:
        self.data, self.scale, self.batch_size = data, float(scale), int(batch_size)
        inputs = data.inputs
        self.transpose = channels_first and inputs.ndim == 4 and not _plainly_channels_first(inputs)

    def __len__(self) -> int:
        return -(-len(self.data.inputs) // self.batch_size)

    def batch(self, start: int, stop: int) -> np.ndarray:
        x = self.data.inputs[start:stop].astype(np.float32)
        if self.scale != 1.0:
            x /= np.float32(self.scale)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if self.transpose else x

    def __iter__(self) -> Iterator[Any]:
        labels = self.data.labels
        for start in range(0, len(self.data.inputs), self.batch_size):
            stop = start + self.batch_size
            x = self.batch(start, stop)
            yield x if labels is None else (x, labels[start:stop])

    def arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        """All inputs converted at once, with the labels (for training)."""
        return self.batch(0, len(self.data.inputs)), self.data.labels


def _plainly_channels_first(inputs: np.ndarray) -> bool:
    return inputs.shape[1] in (1, 3, 4) and inputs.shape[3] not in (1, 3, 4)


# --- models -----------------------------------------------------------------------------------------------


def check_model_path(path: Any, flag: str = "--model") -> Path:
    """The model file's path, checked to exist and to be a Keras or torch model file (by its content)."""
    from .training import ModelFileError, check_model_file

    if not path:
        raise UsageError(f"{flag} is required: a saved model (.keras / .h5 for Keras, .pt for torch).")
    path = Path(path)
    try:
        check_model_file(path)
    except FileNotFoundError:
        raise UsageError(f"{flag}: no model file at {path}.") from None
    except ModelFileError as error:
        raise UsageError(f"{flag}: {error}") from None
    return path


def load_model(path: Path, flag: str = "--model") -> Any:
    """The model saved at ``path`` (checked by :func:`check_model_path`)."""
    from .training import ModelFileError, check_model_file, load_model

    if check_model_file(path) == "keras":
        import_framework("keras")
    try:
        return load_model(path)
    except ModelFileError as error:
        raise UsageError(f"{flag}: {error}") from None


def is_torch(model: Any) -> bool:
    from .backends import framework_of

    return framework_of(model) == "torch"


# --- the commands -----------------------------------------------------------------------------------------


def run_train(args: Any) -> list[str]:
    """``oodscope train``: train a built-in model on a data specification and save it; returns the lines
    to print."""
    from .training._common import KERAS_SUFFIXES, TORCH_SUFFIXES

    out = Path(args.out)
    suffix = out.suffix.lower()
    if suffix not in KERAS_SUFFIXES + TORCH_SUFFIXES:
        raise UsageError(
            f"--out {out}: the file name says which framework trains the model: .keras (or .h5) for Keras, "
            ".pt for torch."
        )
    framework = "keras" if suffix in KERAS_SUFFIXES else "torch"
    epochs = check_positive_int("--epochs", args.epochs)
    batch_size = check_positive_int("--batch-size", args.batch_size)
    learning_rate = check_positive_number("--learning-rate", args.learning_rate)
    scale = check_positive_number("--scale", args.scale)
    spec = parse_data_spec(args.data, "--data")
    validation = parse_data_spec(args.validation, "--validation") if args.validation else None

    data = load_arrays(spec)
    if data.labels is None:
        raise UsageError(f"--data: {spec.text} has no labels to train on (a .npz file needs them under 'y').")
    inputs = ModelInputs(data, scale, channels_first=framework == "torch", batch_size=batch_size)
    x, y = inputs.arrays()
    options = dict(
        model=args.architecture,
        input_shape=tuple(x.shape[1:]),
        num_classes=data.num_classes,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=args.seed,
    )
    if framework == "keras":
        import_framework("keras")
        from .training import save_tf_model, train_tf_model

        model = train_tf_model((x, y), verbose=0, **options)  # epochs are logged with --verbose
        path = save_tf_model(model, out)
    else:
        from .training import save_torch_model, train_torch_model

        model = train_torch_model((x, y), **options)
        path = save_torch_model(model, out)
    del x
    lines = [
        f"Trained {args.architecture} ({framework}) on {data.describe()} for {epochs} "
        f"epoch{'s' if epochs > 1 else ''}."
    ]
    if validation is not None:
        held_out = load_arrays(validation)
        if held_out.labels is None:
            raise UsageError(f"--validation: {validation.text} has no labels.")
        lines.append(
            f"Accuracy on {held_out.describe()}: {_accuracy(model, held_out, scale, batch_size):.4f}"
        )
    lines.append(f"Saved the model to {path}")
    return lines


def _accuracy(model: Any, data: LoadedData, scale: float, batch_size: int) -> float:
    from .extract import extract

    features = extract(model, ModelInputs(data, scale, is_torch(model), batch_size), batch_size=batch_size)
    return float((features.logits.argmax(axis=1) == features.labels).mean())


def run_fit(args: Any) -> list[str]:
    """``oodscope fit``: fit one detector on a model and data, optionally calibrate it, save it."""
    detector = parse_detector(args.detector)
    batch_size = check_positive_int("--batch-size", args.batch_size)
    scale = check_positive_number("--scale", args.scale)
    if args.tpr is not None and not args.calibrate:
        raise UsageError("--tpr sets the threshold of --calibrate; give --calibrate SPEC too.")
    tpr = check_tpr("--tpr", 0.95 if args.tpr is None else args.tpr)
    spec = parse_data_spec(args.data, "--data") if args.data else None
    if spec is None and detector._needs_fit():
        raise UsageError(
            f"{detector!r} learns from in-distribution data: give --data SPEC (e.g. the model's training "
            "data)."
        )
    calibration = parse_data_spec(args.calibrate, "--calibrate") if args.calibrate else None
    model_path = check_model_path(args.model)

    model = load_model(model_path)
    channels_first = is_torch(model)
    lines = []
    if spec is not None and detector._needs_fit():
        data = load_arrays(spec)
        detector.fit(model, ModelInputs(data, scale, channels_first, batch_size), batch_size=batch_size)
        lines.append(f"Fitted {detector!r} on {data.describe()}.")
    else:
        detector.fit(model, batch_size=batch_size)
        lines.append(f"{detector!r} learns nothing from data: bound to the model.")
    if calibration is not None:
        held_out = load_arrays(calibration)
        detector.calibrate(ModelInputs(held_out, scale, channels_first, batch_size), tpr=tpr)
        lines.append(
            f"Calibrated on {held_out.describe()}: threshold {detector.threshold_:.6g} keeps {tpr:.0%} of "
            "them as in-distribution; higher scores are flagged OOD."
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines.append(f"Saved to {detector.save(out)}")
    return lines


def run_bench(config: dict[str, Any]) -> tuple[Any, list[str]]:
    """``oodscope bench``: :func:`oodscope.evaluate` from a configuration; writes the report files (and the
    fitted detectors with ``save_detectors``). Returns the Report and the lines to print after its table."""
    from .bench import evaluate

    for key in ("model", "id", "ood", "detectors"):
        if not config.get(key):
            raise UsageError(f"bench needs {key!r} (a flag or a key of the config file).")
    batch_size = check_positive_int("--batch-size", config.get("batch_size", DEFAULT_BATCH_SIZE))
    scale = check_positive_number("--scale", config.get("scale", DEFAULT_SCALE))
    ood = config["ood"]
    if isinstance(ood, list):
        ood = dict(_named(item) for item in ood)
    if not isinstance(ood, dict):
        raise UsageError(
            '\'ood\' must map names to data specifications, e.g. {"fashion": "fashion_mnist:test"}.'
        )
    detector_specs = config["detectors"]
    if isinstance(detector_specs, str) or not isinstance(detector_specs, list):
        raise UsageError('\'detectors\' must be a list, e.g. ["GEN()", "KNN(k=50)"].')
    detectors = [parse_detector(d) if isinstance(d, str) else d for d in detector_specs]
    specs = {"fit": parse_data_spec(config["fit"], "--fit") if config.get("fit") else None}
    specs["id"] = parse_data_spec(config["id"], "--id")
    ood_specs = {name: parse_data_spec(spec, f"--ood {name}") for name, spec in ood.items()}
    model_path = check_model_path(config["model"])
    out = Path(config.get("out") or "oodscope_report")
    save_to = Path(config["save_detectors"]) if config.get("save_detectors") else None

    model = load_model(model_path)
    channels_first = is_torch(model)

    def batches(spec: DataSpec) -> ModelInputs:
        return ModelInputs(load_arrays(spec), scale, channels_first, batch_size)

    report = evaluate(
        model,
        batches(specs["fit"]) if specs["fit"] is not None else None,
        batches(specs["id"]),
        {name: batches(spec) for name, spec in ood_specs.items()},
        detectors=detectors,
        groups=config.get("groups"),
        batch_size=batch_size,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(report.to_markdown() + "\n")
    report.to_csv(out / "report.csv")
    report.to_json(out / "report.json")
    written = ["report.md", "report.csv", "report.json"]
    try:
        report.to_html(out / "report.html")
        written.append("report.html")
    except ImportError as error:
        log.warning("No HTML report: %s", error)
    lines = [f"Report written to {out}{os.sep} ({', '.join(written)})"]
    if save_to is not None and report.detectors:
        save_to.mkdir(parents=True, exist_ok=True)
        names = []
        for name, detector in report.detectors.items():
            path = save_to / detector_file_name(name)
            detector.save(path)
            names.append(path.name)
        lines.append(f"Fitted detectors saved to {save_to}{os.sep}: {', '.join(names)}")
    return report, lines


def _named(item: str) -> tuple[str, str]:
    name, sep, spec = item.partition("=")
    if not sep or not name or not spec:
        raise UsageError(f"--ood takes NAME=SPEC (e.g. fashion=fashion_mnist:test); got {item!r}.")
    return name, spec


def read_config(path: str | Path) -> dict[str, Any]:
    try:
        config = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"--config: no config file at {path}.") from None
    except json.JSONDecodeError as error:
        raise UsageError(f"--config: {path} is not valid JSON: {error}.") from None
    if not isinstance(config, dict):
        raise UsageError(f"--config: {path} must hold a JSON object.")
    return config


def run_score(
    detector_path: str,
    model_path: str,
    inputs: str,
    scale: float = DEFAULT_SCALE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    check_model: bool = True,
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Scores of the inputs and, for a calibrated detector, decisions and conformal p-values, all from one
    pass of the model; as CSV columns and rows."""
    from .persistence import DetectorFileError, ModelMismatchError, load

    batch_size = check_positive_int("--batch-size", batch_size)
    scale = check_positive_number("--scale", scale)
    spec = parse_data_spec(inputs, "--inputs")
    if not Path(detector_path).is_file():
        raise UsageError(f"--detector: no detector file at {detector_path}; write one with oodscope fit.")
    checked_model = check_model_path(model_path)

    model = load_model(checked_model)
    try:
        detector = load(detector_path, model=model, check_model=check_model)
    except DetectorFileError as error:
        raise UsageError(f"--detector: {error}") from None
    except ModelMismatchError as error:
        raise UsageError(
            f"--model: {model_path} is not the model that {detector_path} was fitted on: "
            f"{'; '.join(error.differences)}. Give the model it was fitted on, or fit the detector on this "
            "one (oodscope fit); --ignore-model-mismatch scores with this model anyway."
        ) from None
    data = ModelInputs(load_arrays(spec), scale, is_torch(model), batch_size)
    scores = detector.score(data, batch_size=batch_size).scores
    columns, table = ["index", "score"], [np.arange(scores.size), scores]
    if getattr(detector, "threshold_", None) is not None:
        columns += ["is_ood", "p_value"]
        table += [
            (scores > detector.threshold_).astype(int),
            conformal_pvalues(scores, detector.calibration_scores_),
        ]
    return columns, list(zip(*table, strict=True))
