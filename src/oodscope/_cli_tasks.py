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

import argparse
import ast
import contextlib
import dataclasses
import difflib
import importlib.util
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ._params import Interval
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

#: the numeric flags' constraints: argparse types (:func:`oodscope._params.argument_type`) and the check of
#: the same settings read from a ``bench --config`` file are built from these, so both say the same
BATCH_SIZE = Interval(int, 1, None)
SCALE = Interval(float, 0, None, closed="neither")
TPR = Interval(float, 0, 1, closed="right")
EPOCHS = Interval(int, 1, None)
LEARNING_RATE = Interval(float, 0, None, closed="neither")
SEED = Interval(int, 0, 2**32 - 1)  # what numpy, torch and Keras all accept


def check_value(flag: str, value: Any, constraint: Interval) -> Any:
    """``value`` (a setting given as a Python value, e.g. from a config file) when it meets ``constraint``;
    :class:`UsageError` naming ``flag`` in argparse's words otherwise."""
    if not constraint.is_satisfied_by(value):
        raise UsageError(f"argument {flag}: must be {constraint.describe()}; got {value!r}.")
    return constraint.kind(value)


# --- detectors --------------------------------------------------------------------------------------------

#: ``module.path:ClassName`` inside a detector expression: a detector from the user's own module
_DOTTED = re.compile(r"\b([A-Za-z_][\w.]*):([A-Za-z_]\w*)")


def parse_detector(text: Any) -> Detector:
    """``"GEN(gamma=0.1)"`` -> ``GEN(gamma=0.1)``: only registered classes and literal arguments.

    A class from the user's own module is written ``"mypkg.mymod:MyDetector(k=3)"``; its module is imported
    (it must be importable, e.g. with ``PYTHONPATH``), and the call is still parsed, never evaluated.
    """
    from .detectors import available
    from .detectors._registry import resolve

    if isinstance(text, Detector):  # already parsed (by the argparse type of --detector)
        return text
    if not isinstance(text, str):
        raise UsageError(f"A detector is written as a call such as 'KNN(k=50)'; got {text!r}.")
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


def detector_argument(text: Any, flag: str) -> Detector:
    """:func:`parse_detector` for a flag (or a key of the config file): a :class:`UsageError` names it."""
    try:
        return parse_detector(text)
    except UsageError as error:
        raise UsageError(f"argument {flag}: {error}") from None


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


#: the grammar of a data specification, shown with every error in one
SPEC_GRAMMAR = (
    "A data spec is NAME[:SPLIT[:CLASSES]], e.g. mnist:test:0-4, fashion_mnist:train or mnist:test:1,3 "
    "(split test by default; classes as LOW-HIGH or a comma-separated list), or a .npz / .npy file."
)
#: names an OOD set cannot have: they stand for the other data sets of a report
RESERVED_OOD_NAMES = ("fit", "id")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """A checked data specification (see the module docstring); nothing is loaded yet."""

    text: str
    flag: str
    path: Path | None = None
    name: str | None = None
    split: str = "test"
    classes: tuple[int, ...] | None = None


class _SpecError(ValueError):
    """What is wrong with a data specification, without the flag (argparse or :class:`UsageError` adds it)."""


def parse_data_spec(text: Any, flag: str) -> DataSpec:
    """Check a data specification without loading anything; :class:`UsageError` naming ``flag`` if bad."""
    try:
        return _data_spec(text, flag)
    except _SpecError as error:
        raise UsageError(f"argument {flag}: {error} {SPEC_GRAMMAR}") from None


def data_spec_type(flag: str) -> Any:
    """The argparse ``type=`` of a data-spec flag: a bad spec exits with code 2, naming the flag and showing
    the grammar (``argument --id: unknown data set 'mnsit' ... A data spec is NAME[:SPLIT[:CLASSES]]...``)."""

    def data_spec(text: str) -> DataSpec:
        try:
            return _data_spec(text, flag)
        except _SpecError as error:
            raise argparse.ArgumentTypeError(f"{error} {SPEC_GRAMMAR}") from None

    return data_spec


class NamedSpecsAction(argparse.Action):
    """``--ood NAME=SPEC ...`` into ``{name: DataSpec}``; a malformed item, a bad spec, a name given twice or
    a reserved name is an argparse error (exit code 2) naming ``--ood NAME``."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        specs: dict[str, DataSpec] = {}
        for item in values:
            try:
                name, spec = named_spec(item, specs, self.option_strings[0])
            except UsageError as error:
                parser.error(str(error))
            specs[name] = spec
        setattr(namespace, self.dest, specs)


def named_spec(item: Any, known: Any, flag: str = "--ood") -> tuple[str, DataSpec]:
    """``"far=fashion_mnist:test"`` -> ``("far", DataSpec)``, checked against the names in ``known``."""
    name, sep, text = item.partition("=") if isinstance(item, str) else ("", "", "")
    if not sep or not name or not text:
        raise UsageError(
            f"argument {flag}: takes NAME=SPEC (e.g. fashion=fashion_mnist:test); got {item!r}. "
            + SPEC_GRAMMAR
        )
    return checked_ood_name(name, known, flag), parse_data_spec(text, f"{flag} {name}")


def checked_ood_name(name: str, known: Any, flag: str = "--ood") -> str:
    """``name`` when it can name one more OOD set; :class:`UsageError` for a repeated or reserved name."""
    if name in known:
        raise UsageError(
            f"argument {flag}: the name {name!r} is given twice; give each OOD set its own name."
        )
    if name in RESERVED_OOD_NAMES:
        raise UsageError(
            f"argument {flag}: an OOD set cannot be named {name!r}, which stands for the {name} data; "
            "rename it."
        )
    return name


def _data_spec(text: Any, flag: str) -> DataSpec:
    from .data.sources import resolve_name

    if isinstance(text, DataSpec):
        return text
    if not isinstance(text, str) or not text.strip():
        raise _SpecError(f"takes a data specification such as mnist:test:0-4 or data.npz; got {text!r}.")
    path = Path(text)
    if path.suffix.lower() in (".npz", ".npy"):
        if not path.is_file():
            raise _SpecError(f"no data file at {path}.")
        return DataSpec(text, flag, path=path)
    parts = text.split(":")
    if len(parts) > 3:
        raise _SpecError(f"{text!r} has {len(parts)} parts separated by ':'; a spec has at most three.")
    name, split, classes = (parts + ["", ""])[:3]
    try:
        spec = resolve_name(name)
    except ValueError:
        from .data import known_datasets

        close = difflib.get_close_matches(name.strip().lower(), known_datasets(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise _SpecError(
            f"unknown data set {name!r} in {text!r}.{hint} Known: {', '.join(known_datasets())}."
        ) from None
    split = split or "test"
    if split not in spec.splits:
        raise _SpecError(f"{spec.name} has the splits {', '.join(spec.splits)}; got {split!r} in {text!r}.")
    chosen = None
    if classes:
        chosen = tuple(_classes(classes, text))
        wrong = [c for c in chosen if not 0 <= c < spec.num_classes]
        if wrong:
            raise _SpecError(f"{spec.name} has classes 0 to {spec.num_classes - 1}; got {wrong} in {text!r}.")
    return DataSpec(text, flag, name=spec.name, split=split, classes=chosen)


def _classes(text: str, spec: str) -> list[int]:
    try:
        if "-" in text and "," not in text:
            low, high = (int(part) for part in text.split("-"))
            if low > high:
                raise ValueError
            return list(range(low, high + 1))
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise _SpecError(f"cannot read the classes in {spec!r}; write 0-4 or 0,1,2.") from None


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
    """The arrays of ``spec``: named data sets through :class:`oodscope.data.OODDataset`, files with numpy.

    What is wrong with a file's content (no samples, inputs that are not numbers, labels that are not class
    indices) is a :class:`UsageError` naming the flag, like a malformed spec.
    """
    from .data import OODDataset

    if spec.path is None:
        dataset = OODDataset(spec.name, load_kwargs={"split": spec.split})
        if spec.classes is not None:
            dataset = dataset.split_by_class(list(spec.classes))[0]
            if len(dataset) == 0:
                raise UsageError(f"argument {spec.flag}: {spec.text} selects no samples.")
        return LoadedData(spec, dataset.inputs, dataset.labels, dataset.num_classes)
    inputs, labels = _read_file(spec)
    where = f"argument {spec.flag}: {spec.path}"
    if inputs.ndim == 0 or len(inputs) == 0:
        raise UsageError(f"{where} holds no samples (inputs of shape {inputs.shape}).")
    if inputs.dtype.kind not in "biuf":
        raise UsageError(
            f"{where} holds inputs of dtype {inputs.dtype}; they must be numbers (images as uint8 0-255, or "
            "floats with --scale 1)."
        )
    if labels is not None and (labels.ndim != 1 or len(labels) != len(inputs)):
        raise UsageError(
            f"{where} holds {len(inputs)} inputs but labels of shape {labels.shape}; give one label per "
            "input."
        )
    try:
        dataset = OODDataset(inputs if labels is None else (inputs, labels))
    except ValueError as error:  # labels that are not class indices
        raise UsageError(f"{where}: {error}") from None
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
                raise UsageError(
                    f"argument {spec.flag}: {path} has no inputs under {keys}; it holds {list(archive)}."
                )
            y_key = next((k for k in LABEL_KEYS if k in archive), None)
            return archive[x_key], None if y_key is None else archive[y_key]
    except (ValueError, OSError) as error:
        if isinstance(error, UsageError):
            raise
        raise UsageError(f"argument {spec.flag}: cannot read {path} with numpy ({error}).") from None


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
        raise UsageError(
            f"argument {flag}: it is required: a saved model (.keras / .h5 for Keras, .pt for torch)."
        )
    path = Path(path)
    try:
        check_model_file(path)
    except FileNotFoundError:
        raise UsageError(f"argument {flag}: no model file at {path}.") from None
    except ModelFileError as error:
        raise UsageError(f"argument {flag}: {error}") from None
    return path


def load_model(path: Path, flag: str = "--model") -> Any:
    """The model saved at ``path`` (checked by :func:`check_model_path`)."""
    from .training import ModelFileError, check_model_file, load_model

    if check_model_file(path) == "keras":
        import_framework("keras")
    try:
        return load_model(path)
    except ModelFileError as error:
        raise UsageError(f"argument {flag}: {error}") from None


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
            f"argument --out: {out}: the file name says which framework trains the model: .keras (or .h5) "
            "for Keras, .pt for torch."
        )
    framework = "keras" if suffix in KERAS_SUFFIXES else "torch"
    epochs = check_value("--epochs", args.epochs, EPOCHS)
    batch_size = check_value("--batch-size", args.batch_size, BATCH_SIZE)
    learning_rate = check_value("--learning-rate", args.learning_rate, LEARNING_RATE)
    scale = check_value("--scale", args.scale, SCALE)
    seed = check_value("--seed", args.seed, SEED)
    spec = parse_data_spec(args.data, "--data")
    validation = parse_data_spec(args.validation, "--validation") if args.validation else None

    data = load_arrays(spec)
    if data.labels is None:
        raise UsageError(
            f"argument --data: {spec.text} has no labels to train on (a .npz file needs them under 'y')."
        )
    inputs = ModelInputs(data, scale, channels_first=framework == "torch", batch_size=batch_size)
    x, y = inputs.arrays()
    options = dict(
        model=args.architecture,
        input_shape=tuple(x.shape[1:]),
        num_classes=data.num_classes,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
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
            raise UsageError(f"argument --validation: {validation.text} has no labels.")
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
    detector = detector_argument(args.detector, "--detector")
    batch_size = check_value("--batch-size", args.batch_size, BATCH_SIZE)
    scale = check_value("--scale", args.scale, SCALE)
    if args.tpr is not None and not args.calibrate:
        raise UsageError("argument --tpr: sets the threshold of --calibrate; give --calibrate SPEC too.")
    tpr = check_value("--tpr", 0.95 if args.tpr is None else args.tpr, TPR)
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
    batch_size = check_value("--batch-size", config.get("batch_size", DEFAULT_BATCH_SIZE), BATCH_SIZE)
    scale = check_value("--scale", config.get("scale", DEFAULT_SCALE), SCALE)
    ood = config["ood"]
    ood_specs: dict[str, DataSpec] = {}
    if isinstance(ood, list):  # NAME=SPEC items, as on the command line
        for item in ood:
            name, spec = named_spec(item, ood_specs)
            ood_specs[name] = spec
    elif isinstance(ood, dict):
        for name, text in ood.items():
            ood_specs[checked_ood_name(str(name), ood_specs)] = parse_data_spec(text, f"--ood {name}")
    else:
        raise UsageError(
            '\'ood\' must map names to data specifications, e.g. {"fashion": "fashion_mnist:test"}.'
        )
    detector_specs = config["detectors"]
    if isinstance(detector_specs, str) or not isinstance(detector_specs, list):
        raise UsageError('\'detectors\' must be a list, e.g. ["GEN()", "KNN(k=50)"].')
    detectors = [detector_argument(d, "--detectors") for d in detector_specs]
    specs = {"fit": parse_data_spec(config["fit"], "--fit") if config.get("fit") else None}
    specs["id"] = parse_data_spec(config["id"], "--id")
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


def read_config(path: str | Path) -> dict[str, Any]:
    try:
        config = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"argument --config: no config file at {path}.") from None
    except json.JSONDecodeError as error:
        raise UsageError(f"argument --config: {path} is not valid JSON: {error}.") from None
    if not isinstance(config, dict):
        raise UsageError(f"argument --config: {path} must hold a JSON object.")
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

    batch_size = check_value("--batch-size", batch_size, BATCH_SIZE)
    scale = check_value("--scale", scale, SCALE)
    spec = parse_data_spec(inputs, "--inputs")
    if not Path(detector_path).is_file():
        raise UsageError(
            f"argument --detector: no detector file at {detector_path}; write one with oodscope fit."
        )
    checked_model = check_model_path(model_path)

    model = load_model(checked_model)
    try:
        detector = load(detector_path, model=model, check_model=check_model)
    except DetectorFileError as error:
        raise UsageError(f"argument --detector: {error}") from None
    except ModelMismatchError as error:
        raise UsageError(
            f"argument --model: {model_path} is not the model that {detector_path} was fitted on: "
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
