"""Framework-free pieces of training: argument checks, the learning-rate schedules, save paths.

Both frameworks step their schedule once per optimizer step (per batch), from the same formulas, so a torch
and a Keras run with the same ``epochs`` and number of batches see the same learning rate at every step.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._params import Interval, validate_params

MODEL_NAMES = ("toy_convnet", "toy_mlp", "resnet20")
LR_SCHEDULERS = (None, "cosine", "steps")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
#: momentum of the "sgd" optimizer in both frameworks (He et al. 2016 train ResNet-20 with it)
SGD_MOMENTUM = 0.9
#: factor applied by the "steps" schedule at each milestone
STEP_GAMMA = 0.1


def check_model_name(model: Any) -> str:
    """``model`` lower-cased if it names a built-in architecture; ValueError otherwise."""
    name = model.lower() if isinstance(model, str) else model
    if name not in MODEL_NAMES:
        raise ValueError(f"Unknown model {model!r}; built-in models are {', '.join(map(repr, MODEL_NAMES))}.")
    return name


#: the trainers' numeric arguments: the constraint each must meet and how messages say it
_TRAINING_ARGS = {
    "epochs": (Interval(int, 1, None), "a positive int"),
    "batch_size": (Interval(int, 1, None), "a positive int"),
    "learning_rate": (Interval(float, 0, None, closed="neither"), "a positive, finite number"),
    "weight_decay": (Interval(float, 0, None), "a non-negative, finite number"),
    "seed": (Interval(int, 0, 2**32 - 1), "None or an int in [0, 2**32 - 1]"),  # what all frameworks take
    "num_classes": (Interval(int, 1, None), "a positive int"),
}


def _check_argument(name: str, value: Any) -> None:
    constraint, words = _TRAINING_ARGS[name]
    if not constraint.is_satisfied_by(value):
        raise ValueError(f"{name} must be {words}; got {value!r}.")


def check_training_args(
    epochs: Any,
    batch_size: Any,
    learning_rate: Any,
    lr_scheduler: Any,
    optimizer: Any,
    weight_decay: Any = 0.0,
    seed: Any = None,
    num_classes: Any = None,
    input_shape: Any = None,
) -> str | None:
    """Validate the arguments shared by both trainers; return the normalised schedule name."""
    given = {"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate}
    given.update(weight_decay=weight_decay, seed=seed, num_classes=num_classes)
    for name, value in given.items():
        if value is not None or name not in ("seed", "num_classes"):
            _check_argument(name, value)
    if input_shape is not None:
        check_input_shape(input_shape)
    schedule = check_scheduler(lr_scheduler)
    if isinstance(optimizer, str) and optimizer.lower() not in OPTIMIZERS:
        raise ValueError(
            f"Unknown optimizer {optimizer!r}; choose one of {', '.join(map(repr, OPTIMIZERS))}."
        )
    return schedule


def check_scheduler(lr_scheduler: Any) -> str | None:
    """The schedule's name in lower case; ValueError for anything but None, "cosine" or "steps"."""
    schedule = lr_scheduler.lower() if isinstance(lr_scheduler, str) else lr_scheduler
    if schedule not in LR_SCHEDULERS:
        raise ValueError(f"lr_scheduler must be None, 'cosine' or 'steps'; got {lr_scheduler!r}.")
    return schedule


def check_input_shape(input_shape: Any) -> tuple[int, ...]:
    """``input_shape`` as a tuple of positive ints, e.g. (28, 28, 1); ValueError otherwise."""
    ok = isinstance(input_shape, Sequence) and not isinstance(input_shape, str) and len(input_shape) > 0
    if ok:
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in input_shape)
    if not ok:
        raise ValueError(
            f"input_shape must be the shape of one input as positive ints, e.g. (28, 28, 1) for Keras or "
            f"(1, 28, 28) for torch; got {input_shape!r}."
        )
    return tuple(int(v) for v in input_shape)


def check_num_classes(num_classes: Any) -> int:
    """``num_classes`` as an int >= 1; ValueError otherwise."""
    _check_argument("num_classes", num_classes)
    return int(num_classes)


def check_label_range(labels: Any, n_classes: int | None) -> None:
    """Refuse labels that are not class indices of a model with ``n_classes`` outputs (negative ones always):
    the loss would fail inside the framework (a device-side assert on a GPU) or train on garbage."""
    labels = np.asarray(labels)
    if labels.size == 0 or labels.ndim != 1:  # one-hot rows are checked by their width
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or (n_classes is not None and high >= n_classes):
        bound = (
            "0, 1, ..." if n_classes is None else f"0 to {n_classes - 1} (the model has {n_classes} outputs)"
        )
        raise ValueError(
            f"Labels must be class indices {bound}; got {low if low < 0 else high}. Pass num_classes= large "
            "enough for a built-in model, or map the labels to indices first "
            "(np.unique(labels, return_inverse=True)[1])."
        )


def step_milestones(total_steps: int) -> tuple[int, int]:
    """Where the "steps" schedule multiplies the rate by 0.1: steps ``ceil(T/2)`` and ``ceil(3T/4)``."""
    return -(-total_steps // 2), -(-3 * total_steps // 4)


def lr_factor(step: int, total_steps: int, lr_scheduler: str | None) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based) of ``total_steps``.

    - ``None``: 1.
    - ``"cosine"``: ``0.5 * (1 + cos(pi * min(step, T) / T))``, from 1 at the first step down to
      ``0.5 * (1 + cos(pi * (T - 1) / T))`` (about ``2.5 / T**2``) at the last one; Keras' ``CosineDecay``
      with ``alpha=0``.
    - ``"steps"``: 1 before step ``ceil(T/2)``, 0.1 from there, 0.01 from step ``ceil(3T/4)``; Keras'
      ``PiecewiseConstantDecay`` with boundaries ``[ceil(T/2) - 1, ceil(3T/4) - 1]``.
    """
    if lr_scheduler is None:
        return 1.0
    if lr_scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    first, second = step_milestones(total_steps)
    return STEP_GAMMA ** ((step >= first) + (step >= second))


def learning_rate_at(
    step: int, total_steps: int, learning_rate: float = 1e-3, lr_scheduler: str | None = None
) -> float:
    """The learning rate that ``train_tf_model`` / ``train_torch_model`` use at optimizer step ``step``.

    Schedules are stepped once per batch (optimizer step), never per epoch: ``total_steps`` is
    ``epochs * batches_per_epoch``, and step ``i`` (0-based) is the ``i``-th update.

    Parameters
    ----------
    step : int
        0-based index of the optimizer step.
    total_steps : int
        Number of optimizer steps of the whole training.
    learning_rate : float, default 1e-3
        The base (initial) learning rate.
    lr_scheduler : {None, "cosine", "steps"}, default None
        ``None`` keeps the rate constant; ``"cosine"`` decays it to about 0 along half a cosine over all
        steps; ``"steps"`` multiplies it by 0.1 at 50% and again at 75% of the steps (see :func:`lr_factor`).

    Returns
    -------
    float

    Examples
    --------
    >>> [learning_rate_at(s, 8, 1.0, "steps") for s in range(8)]
    [1.0, 1.0, 1.0, 1.0, 0.1, 0.1, 0.010000000000000002, 0.010000000000000002]
    >>> round(learning_rate_at(4, 8, 1.0, "cosine"), 6)
    0.5
    """
    validate_params(
        "learning_rate_at",
        {"step": step, "total_steps": total_steps, "learning_rate": learning_rate},
        {
            "step": Interval(int, 0, None),
            "total_steps": Interval(int, 1, None),
            "learning_rate": _TRAINING_ARGS["learning_rate"][0],
        },
    )
    return learning_rate * lr_factor(step, total_steps, check_scheduler(lr_scheduler))


def resolve_save_path(save_dir: str | os.PathLike, default_name: str, suffixes: tuple[str, ...]) -> Path:
    """A file path from ``save_dir``: used as is when it ends with one of ``suffixes``, else a directory
    in which the file ``default_name`` is written. Parent directories are created."""
    path = Path(save_dir).expanduser()
    if path.suffix.lower() not in suffixes:
        path = path / default_name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# --- model files ------------------------------------------------------------------------------------------

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
TORCH_SUFFIXES = (".pt", ".pth")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class ModelFileError(ValueError):
    """A model file oodscope cannot read: missing, of the other framework, of an unknown kind, or damaged."""


def file_kind(path: Path) -> str:
    """What a file holds, from its first bytes (and a zip archive's list of entries), without loading it:

    ``"keras"`` (a ``.keras`` archive), ``"hdf5"`` (Keras' legacy format), ``"torch"`` (``torch.save``'s zip),
    ``"torchscript"``, ``"pickle"`` (``torch.save``'s legacy format, or any pickle), ``"oodscope"`` (a saved
    detector), ``"zip"`` (another zip archive), ``"damaged zip"``, ``"empty"`` or ``"unknown"``.
    """
    import zipfile

    with open(path, "rb") as handle:
        head = handle.read(8)
    if not head:
        return "empty"
    if head.startswith(_HDF5_SIGNATURE):
        return "hdf5"
    if head[:1] == b"\x80":
        return "pickle"
    if not head.startswith(b"PK"):
        return "unknown"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return "damaged zip"
    if "config.json" in names and ("model.weights.h5" in names or "metadata.json" in names):
        return "keras"
    if "detector.json" in names:
        return "oodscope"
    if any(name.endswith("/constants.pkl") for name in names):
        return "torchscript"
    if any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
        return "torch"
    return "zip"


#: what each kind of file is, for messages, and the framework that reads it
_KINDS = {
    "keras": ("a Keras model (.keras archive)", "keras", ".keras"),
    "hdf5": ("a Keras model in the legacy HDF5 format", "keras", ".h5"),
    "torch": ("a torch file (written by torch.save)", "torch", ".pt"),
    "pickle": ("a pickle (torch.save's legacy format, or another pickle)", "torch", ".pt"),
}


def check_model_file(path: str | os.PathLike, framework: str | None = None) -> str:
    """The framework (``"keras"`` or ``"torch"``) of the model file at ``path``, from its content, checked
    against its name's suffix (and ``framework`` when given); :class:`ModelFileError` otherwise."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"No model file at {path}.")
    kind = file_kind(path)
    by_name = "keras" if path.suffix.lower() in KERAS_SUFFIXES else None
    by_name = "torch" if path.suffix.lower() in TORCH_SUFFIXES else by_name
    if kind not in _KINDS:
        what = {
            "empty": "it is empty",
            "damaged zip": "it starts like a zip archive but cannot be read as one (truncated or damaged)",
            "oodscope": "it is a saved oodscope detector; give it where a detector file is expected",
            "torchscript": "it is a TorchScript archive (torch.jit.save); oodscope reads state dicts saved "
            "with torch.save(model.state_dict(), path)",
            "zip": "it is a zip archive that holds neither a Keras model nor torch tensors",
        }.get(kind, "its content is neither a Keras (.keras, .h5) nor a torch (.pt) model")
        raise ModelFileError(f"Cannot read {path} as a model: {what}.")
    described, content_framework, suffix = _KINDS[kind]
    expected = framework or by_name
    if expected is None:
        raise ModelFileError(
            f"{path} is {described}, but its name does not say so; rename it to {path.stem}{suffix}."
        )
    if content_framework != expected:
        wanted = {"keras": "a Keras model", "torch": "torch weights"}[expected]
        if framework is None:
            raise ModelFileError(
                f"{path} is {described}, but its name ends in {path.suffix!r}, which stands for {wanted}. "
                f"Rename it to {path.stem}{suffix}."
            )
        raise ModelFileError(f"{path} is {described}, not {wanted}.")
    if content_framework == "keras" and path.suffix.lower() not in KERAS_SUFFIXES:
        raise ModelFileError(f"{path} is {described}; Keras reads it only as {path.stem}{suffix}: rename it.")
    if content_framework == "keras" and (kind == "hdf5") != (path.suffix.lower() != ".keras"):
        raise ModelFileError(
            f"{path} is {described}, but its name ends in {path.suffix!r}; Keras reads it only as "
            f"{path.stem}{suffix}: rename it."
        )
    return content_framework
