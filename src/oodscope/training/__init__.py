"""Train the reference classifiers in PyTorch or Keras 3, save them and load them back.

Built-in architectures, in both frameworks (see :mod:`.keras_models` and :mod:`.torch_models` for the
layers and their names):

- ``"toy_convnet"``: Conv(32, 3, ReLU) - MaxPool(2) - Conv(64, 3, ReLU) - MaxPool(2) - Flatten -
  Dropout(0.5) - Dense(num_classes), the seed notebooks' MNIST model;
- ``"toy_mlp"``: Flatten - Dense(300, ReLU) - Dense(150, ReLU) - Dense(num_classes);
- ``"resnet20"``: the CIFAR ResNet-20 of He et al. (2016), with option-B (1x1 projection) shortcuts.

Keras models end in ``Dense(num_classes, activation="softmax")`` (probabilities, like the seed's model;
oodscope reads the pre-softmax logits from the head's weights), torch models in an ``nn.Linear`` that
outputs logits. Keras inputs are channels-last ``(H, W, C)``, torch inputs channels-first ``(C, H, W)``.

Functions:

- :func:`train_tf_model` / :func:`train_torch_model`: build (or take) a model and train it;
- :func:`load_tf_model` / :func:`load_torch_model`: load what they saved with ``save_dir=...``;
  :func:`load_model` loads either, telling the framework from the file (a file of the other framework, or
  a damaged one, raises :class:`ModelFileError` saying what it is);
- :func:`toy_convnet`, :func:`toy_mlp`, :func:`resnet20`, :func:`build_model`: the untrained models,
  ``framework="keras"`` or ``"torch"``;
- :func:`learning_rate_at`: the learning-rate schedules both trainers follow (stepped once per batch).

``import oodscope.training`` loads neither framework: each is imported when one of its functions is first
used.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._common import LR_SCHEDULERS, MODEL_NAMES, ModelFileError, check_model_file, learning_rate_at

if TYPE_CHECKING:
    from .keras_train import load_tf_model, save_tf_model, train_tf_model
    from .torch_train import evaluate_torch_model, load_torch_model, save_torch_model, train_torch_model

__all__ = [
    "LR_SCHEDULERS",
    "MODEL_NAMES",
    "ModelFileError",
    "build_model",
    "evaluate_torch_model",
    "learning_rate_at",
    "load_model",
    "load_tf_model",
    "load_torch_model",
    "resnet20",
    "save_tf_model",
    "save_torch_model",
    "toy_convnet",
    "toy_mlp",
    "train_tf_model",
    "train_torch_model",
]

_LAZY = {
    "train_tf_model": "keras_train",
    "load_tf_model": "keras_train",
    "save_tf_model": "keras_train",
    "train_torch_model": "torch_train",
    "load_torch_model": "torch_train",
    "save_torch_model": "torch_train",
    "evaluate_torch_model": "torch_train",
}
_FRAMEWORKS = {"keras": ("keras_models", "tensorflow"), "torch": ("torch_models", "torch")}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    extra = "tensorflow" if module_name.startswith("keras") else "torch"
    return getattr(_import(module_name, extra), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _import(module_name: str, extra: str) -> Any:
    try:
        return importlib.import_module(f"{__name__}.{module_name}")
    except ImportError as error:
        if error.name is not None and error.name.split(".")[0] == "oodscope":
            raise
        raise ImportError(
            f"oodscope.training.{module_name} needs {extra!r}, which could not be imported ({error}). "
            f"Install it with: pip install 'oodscope[{extra}]'"
        ) from error


def _framework_module(framework: str) -> Any:
    if framework not in _FRAMEWORKS:
        raise ValueError(f"framework must be 'keras' or 'torch'; got {framework!r}.")
    return _import(*_FRAMEWORKS[framework])


def build_model(name: str, input_shape: Sequence[int], num_classes: int = 10, *, framework: str) -> Any:
    """An untrained built-in model: ``name`` in ``MODEL_NAMES``, ``framework`` ``"keras"`` or ``"torch"``.

    ``input_shape`` is ``(H, W, C)`` for Keras and ``(C, H, W)`` for torch.
    """
    return _framework_module(framework).build_model(name, input_shape, num_classes)


def toy_convnet(input_shape: Sequence[int], num_classes: int = 10, *, framework: str) -> Any:
    """The seed notebooks' toy convnet (see :mod:`.keras_models` / :mod:`.torch_models`)."""
    return build_model("toy_convnet", input_shape, num_classes, framework=framework)


def toy_mlp(input_shape: Sequence[int], num_classes: int = 10, *, framework: str) -> Any:
    """A 300-150 ReLU MLP (see :mod:`.keras_models` / :mod:`.torch_models`)."""
    return build_model("toy_mlp", input_shape, num_classes, framework=framework)


def resnet20(input_shape: Sequence[int], num_classes: int = 10, *, framework: str) -> Any:
    """The CIFAR ResNet-20, option-B shortcuts (see :mod:`.keras_models` / :mod:`.torch_models`)."""
    return build_model("resnet20", input_shape, num_classes, framework=framework)


def load_model(path: str | os.PathLike) -> Any:
    """A model saved by :func:`save_tf_model` (``.keras``, ``.h5``) or :func:`save_torch_model` (``.pt``).

    The framework is read from the file's content and checked against its name, so a torch file named
    ``.keras`` (or a ``.keras`` archive named ``.pt``) raises :class:`ModelFileError` saying what the file
    is, before any framework tries to read it. Only that framework is imported.
    """
    if check_model_file(path) == "keras":
        return _import("keras_train", "tensorflow").load_tf_model(path)
    return _import("torch_train", "torch").load_torch_model(path)
