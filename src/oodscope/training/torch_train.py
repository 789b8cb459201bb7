"""Train, save and load PyTorch classifiers: :func:`train_torch_model` and :func:`load_torch_model`."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._batches import as_labels, count_batches, is_array_like, iter_batches
from ..backends.data import TORCH_MAP_DATASET
from ..extract import progress_bar
from ._common import (
    SGD_MOMENTUM,
    TORCH_SUFFIXES,
    ModelFileError,
    check_label_range,
    check_model_file,
    check_model_name,
    check_training_args,
    lr_factor,
    resolve_save_path,
)
from .torch_models import architecture_of, build_model

__all__ = ["load_torch_model", "save_torch_model", "train_torch_model"]

log = logging.getLogger("oodscope.training")

_METADATA_FORMAT = "oodscope-torch-model"
#: update the progress bar's loss / accuracy every this many batches (each update syncs with the device)
_POSTFIX_EVERY = 10

OptimizerFactory = Callable[[Any], torch.optim.Optimizer]


def train_torch_model(
    train_data: Any,
    model: str | nn.Module = "toy_convnet",
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    epochs: int = 5,
    batch_size: int = 128,
    optimizer: str | OptimizerFactory = "adam",
    learning_rate: float = 1e-3,
    lr_scheduler: str | None = None,
    weight_decay: float = 0.0,
    validation_data: Any = None,
    save_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    seed: int | None = None,
    verbose: bool | None = None,
) -> nn.Module:
    """Train a PyTorch classifier that outputs logits with ``nn.CrossEntropyLoss``.

    Shows a tqdm bar per epoch on standard error (over the batches, with the running loss and accuracy;
    see ``verbose``) and logs each
    epoch's loss, accuracy, validation accuracy and learning rate at INFO level on the
    ``"oodscope.training"`` logger.

    Parameters
    ----------
    train_data
        Channels-first inputs ``[B, C, H, W]`` with labels, as

        - a ``DataLoader`` (or any re-iterable of batches) of ``(x, y)`` tuples or dicts with input and label
          keys (see :mod:`oodscope._batches`), used as is: its own batch size and shuffling apply;
        - a tuple ``(x, y)`` of numpy arrays or tensors, or a map-style ``torch.utils.data.Dataset`` of
          ``(x, y)`` samples: shuffled every epoch, in batches of ``batch_size``;
        - a ``tf.data.Dataset`` of ``(x, y)`` batches (iterated as numpy).

        ``y`` holds class indices (one-hot rows are turned into indices). Floating inputs are cast to
        float32; scale and normalise them beforehand.
    model : {"toy_convnet", "toy_mlp", "resnet20"} or nn.Module, default "toy_convnet"
        A built-in architecture (see :mod:`oodscope.training.torch_models`; each ends in an
        ``nn.Linear`` named ``head`` that outputs logits) or your own module returning logits, trained in
        place.
    input_shape : tuple of int, optional
        ``(C, H, W)`` of one input, for a built-in model. Default: read from the first batch.
    num_classes : int, optional
        Number of outputs of a built-in model. Default: ``max(label) + 1``, read with one pass over the
        data (no pass for arrays).
    epochs : int, default 5
    batch_size : int, default 128
        Used for arrays and map-style datasets only.
    optimizer : {"adam", "adamw", "sgd", "rmsprop"} or callable, default "adam"
        A name (``"sgd"`` has momentum 0.9), built with ``learning_rate`` and ``weight_decay``, or a
        callable ``params -> torch.optim.Optimizer`` (e.g. ``lambda p: torch.optim.SGD(p, lr=0.1)``).
    learning_rate : float, default 1e-3
        The initial learning rate (for an optimizer factory, the rate it sets is used instead).
    lr_scheduler : {None, "cosine", "steps"}, default None
        Stepped **once per batch** (after every ``optimizer.step()``), over ``epochs * batches_per_epoch``
        steps, with the formulas of :func:`oodscope.training.learning_rate_at` (a ``LambdaLR``):
        ``"cosine"`` decays to about 0, ``"steps"`` multiplies the rate by 0.1 at 50% and at 75% of the
        steps. ``train_tf_model`` uses the same formulas. Data of unknown length is counted with one pass.
    weight_decay : float, default 0
        Passed to the torch optimizer (an L2 term in the gradient, decoupled for ``"adamw"``).
    validation_data, optional
        Data in any of the forms above; its accuracy is computed after every epoch and logged.
    save_dir : str or path, optional
        Where to save the trained weights after the last epoch: a path ending in ``.pt`` / ``.pth`` is the
        file, any other path a directory that gets ``<architecture>.pt``. The file is the model's
        ``state_dict`` (``model.load_state_dict(torch.load(path, weights_only=True))`` works); next to it,
        ``<file>.json`` records the architecture name, ``input_shape`` and ``num_classes``, so that
        :func:`load_torch_model` rebuilds a built-in model from the path alone.
    device : str or torch.device, optional
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... Default: where a module given as ``model`` already is when
        that is not the CPU, else ``"cuda"`` when available, else ``"cpu"``. The model is moved there and
        returned there.
    seed : int, optional
        Seeds torch's generators for the initialisation, dropout and shuffling, inside
        ``torch.random.fork_rng`` so that the caller's global random state is left as it was. Runs are
        reproducible on CPU (CUDA kernels may add nondeterminism).
    verbose : bool, optional
        Show the progress bars: True always, False never, None (default) when standard error is a terminal.

    Returns
    -------
    nn.Module
        The trained model, in eval mode, on ``device`` (the same object when ``model`` was a module).
    """
    schedule = check_training_args(
        epochs,
        batch_size,
        learning_rate,
        lr_scheduler,
        optimizer,
        weight_decay=weight_decay,
        seed=seed,
        num_classes=num_classes,
        input_shape=input_shape,
    )
    if not isinstance(model, (str, nn.Module)):
        raise TypeError(
            f"model must be a built-in model name or a torch nn.Module; got {type(model).__name__}."
        )
    target = _target_device(device, model)
    train = _Batches(train_data, batch_size, shuffle=True, pin_memory=target.type == "cuda")
    valid = None
    if validation_data is not None:
        valid = _Batches(validation_data, batch_size, shuffle=False, pin_memory=target.type == "cuda")

    cuda_devices = []
    if target.type == "cuda":
        cuda_devices = [target.index if target.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda_devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(int(seed))
        if isinstance(model, str):
            name = check_model_name(model)
            shape = tuple(input_shape) if input_shape is not None else train.input_shape()
            if train._arrays is not None and tuple(train._arrays[0].shape[1:]) != shape:
                raise ValueError(
                    f"input_shape={shape} but the inputs have shape {tuple(train._arrays[0].shape[1:])}; "
                    "leave input_shape out to read it from the data."
                )
            classes = int(num_classes) if num_classes is not None else train.num_classes()
            model = build_model(name, shape, classes)
        model.to(target)
        parameters = [param for param in model.parameters() if param.requires_grad]
        if not parameters:
            raise ValueError("The model has no trainable parameters.")
        opt = _make_optimizer(optimizer, parameters, learning_rate, weight_decay)
        n_batches = train.known_length()
        scheduler = None
        if schedule is not None:
            total_steps = epochs * (n_batches if n_batches is not None else train.count())
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda step: lr_factor(step, total_steps, schedule)
            )
        loss_fn = nn.CrossEntropyLoss()
        for epoch in range(epochs):
            metrics = _train_epoch(
                model,
                train,
                valid,
                opt,
                scheduler,
                loss_fn,
                target,
                f"Epoch {epoch + 1}/{epochs}",
                n_batches,
                verbose,
            )
            shown = ", ".join(f"{key} {value:.4f}" for key, value in metrics.items())
            log.info("epoch %d/%d: %s, lr %.3g", epoch + 1, epochs, shown, opt.param_groups[0]["lr"])
    model.eval()
    if save_dir is not None:
        save_torch_model(model, save_dir)
    return model


def evaluate_torch_model(
    model: nn.Module, data: Any, batch_size: int = 128, device: str | torch.device | None = None
) -> dict[str, float]:
    """``{"loss": mean cross-entropy, "accuracy": ...}`` of ``model`` (logits) on labelled ``data``.

    Runs in eval mode under ``torch.no_grad()``; the model's training flag is restored. ``data`` takes the
    forms :func:`train_torch_model` accepts; ``device`` defaults to the model's.
    """
    batches = data if isinstance(data, _Batches) else _Batches(data, batch_size, shuffle=False)
    target = torch.device(device) if device is not None else _device_of(model)
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    try:
        with torch.no_grad():
            for x, y in batches.tensors(target, _dtype_of(model)):
                logits = model(x)
                if batches.n_outputs is None:
                    batches.n_outputs = int(logits.shape[1])
                    check_label_range(y.cpu().numpy(), batches.n_outputs)
                total_loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(dim=1) == y).sum())
                count += int(y.numel())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("The evaluation data yielded no samples.")
    return {"loss": total_loss / count, "accuracy": correct / count}


def save_torch_model(model: nn.Module, save_dir: str | os.PathLike) -> Path:
    """Save ``model.state_dict()`` as :func:`train_torch_model` does and return the file's path.

    A path ending in ``.pt`` / ``.pth`` is the file; any other path is a directory that gets
    ``<architecture>.pt`` (the built-in name, or the class name in lower case). ``<file>.json`` next to it
    records ``architecture`` (None for a module that is not built in), ``class``, ``input_shape`` and
    ``num_classes`` (when the module has them).
    """
    architecture = architecture_of(model)
    path = resolve_save_path(save_dir, f"{architecture or type(model).__name__.lower()}.pt", TORCH_SUFFIXES)
    torch.save(model.state_dict(), path)
    input_shape = getattr(model, "input_shape", None)
    num_classes = getattr(model, "num_classes", None)
    metadata = {
        "format": _METADATA_FORMAT,
        "version": 1,
        "architecture": architecture,
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "input_shape": list(input_shape) if input_shape is not None else None,
        "num_classes": num_classes,
    }
    _metadata_path(path).write_text(json.dumps(metadata, indent=2) + "\n")
    log.info("Saved the weights to %s", path)
    return path


def load_torch_model(
    path: str | os.PathLike,
    model: str | nn.Module | None = None,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """Load weights saved by :func:`train_torch_model` into a model and return it in eval mode.

    Parameters
    ----------
    path : str or path
        The ``.pt`` / ``.pth`` state dict.
    model : str or nn.Module, optional
        Where to load the weights: a module you built (any architecture; its device is kept), a built-in
        name, or None to use the architecture recorded in ``<path>.json``.
    input_shape, num_classes : optional
        For a built-in model; default: the values recorded in ``<path>.json``.
    map_location : str or torch.device, default "cpu"
        Device the weights are loaded to (and a model built here is moved to).

    Returns
    -------
    nn.Module

    Raises
    ------
    FileNotFoundError
        When there is no file at ``path``.
    ModelFileError
        For a file that is not a torch state dict (a Keras model, say, or a whole pickled module, which
        could run code when loaded), saying what it is; a damaged file; weights that do not fit the model.
    """
    path = Path(path).expanduser()
    check_model_file(path, "torch")
    try:
        state_dict = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise ModelFileError(
            f"{path} holds pickled objects other than tensors (e.g. a whole model saved with "
            "torch.save(model)). oodscope reads state dicts only, which load without running code: save "
            "model.state_dict() instead (oodscope.training.save_torch_model does)."
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise ModelFileError(
            f"torch could not read {path} ({type(error).__name__}: {error}); it may be truncated or damaged."
        ) from error
    if not isinstance(state_dict, dict):
        raise ModelFileError(f"{path} holds a {type(state_dict).__name__}, not a state dict of tensors.")
    if not isinstance(model, nn.Module):
        metadata = _read_metadata(path)
        name = model if model is not None else metadata.get("architecture")
        if name is None and not metadata:
            raise ModelFileError(
                f"{path} holds weights without {_metadata_path(path).name}, the file next to it that records "
                "the architecture (written by save_torch_model). Keep that file with the weights, or build "
                "the model yourself and pass it: load_torch_model(path, model=MyNet(...))."
            )
        if name is None:
            raise ValueError(
                f"{path} holds the weights of a {metadata.get('class', 'custom')} module, which oodscope "
                "cannot rebuild; build it yourself and pass it: load_torch_model(path, model=MyNet(...))."
            )
        shape = input_shape if input_shape is not None else metadata.get("input_shape")
        classes = num_classes if num_classes is not None else metadata.get("num_classes")
        if shape is None or classes is None:
            raise ValueError(
                f"Pass input_shape= and num_classes= to rebuild {name!r}: {path} does not record them."
            )
        model = build_model(name, shape, classes).to(map_location)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise ModelFileError(
            f"The weights in {path} do not fit the {type(model).__name__} model: {error}"
        ) from error
    return model.eval()


# --- data ---------------------------------------------------------------------------------------------


class _Batches:
    """Re-iterable ``(x, y)`` batches from the accepted data forms; shuffles arrays and map datasets."""

    def __init__(self, data: Any, batch_size: int, shuffle: bool, pin_memory: bool = False) -> None:
        self.data = data
        self._arrays: tuple[Any, Any] | None = None
        if isinstance(data, tuple) and len(data) == 2 and all(map(is_array_like, data)):
            x, y = data
            if len(x) != len(y):
                raise ValueError(f"x and y have different lengths: {len(x)} and {len(y)}.")
            if len(x) == 0:
                raise ValueError("The data (x, y) holds no samples; give at least one batch of them.")
            check_label_range(as_labels(y), None)
            self._arrays = (x, y)
            dataset = torch.utils.data.TensorDataset(_as_tensor(x), torch.as_tensor(as_labels(y)).long())
            self._loader: Any = torch.utils.data.DataLoader(
                dataset, batch_size=batch_size, shuffle=shuffle, pin_memory=pin_memory
            )
        elif TORCH_MAP_DATASET.recognises(data):
            self._loader = torch.utils.data.DataLoader(
                data, batch_size=batch_size, shuffle=shuffle, pin_memory=pin_memory
            )
        elif isinstance(data, Iterator):
            raise TypeError(
                "train_data is a one-shot iterator; pass something that can be iterated once per epoch "
                "(a DataLoader, a list of batches, a tf.data.Dataset or (x, y) arrays)."
            )
        else:
            self._loader = data
        self._batch_size = batch_size
        #: the model's number of outputs, once known: later batches' labels are checked against it on the CPU
        self.n_outputs: int | None = None

    def numpy_batches(self) -> Iterator[tuple[Any, np.ndarray | None]]:
        return iter_batches(self._loader, self._batch_size)

    def tensors(
        self, device: torch.device, dtype: torch.dtype = torch.float32
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(inputs, labels)`` on ``device``; floating and uint8 inputs as ``dtype``, labels as int64."""
        non_blocking = device.type == "cuda"
        for x, y in self.numpy_batches():
            if y is None:
                raise ValueError("Training and validation batches need labels: (x, y) pairs.")
            check_label_range(y, self.n_outputs)
            x = _as_tensor(x, dtype).to(device, non_blocking=non_blocking)
            yield x, torch.as_tensor(y).long().to(device, non_blocking=non_blocking)

    def known_length(self) -> int | None:
        """Batches per epoch when the data tells without being read."""
        return count_batches(self._loader, self._batch_size)

    def count(self) -> int:
        """Batches per epoch, read with one pass when the data does not tell."""
        known = self.known_length()
        if known is not None:
            return known
        counted = sum(1 for _ in self.numpy_batches())
        log.info("Counted %d batches per epoch (one pass over the data).", counted)
        return counted

    def input_shape(self) -> tuple[int, ...]:
        x = self._arrays[0] if self._arrays is not None else next(self.numpy_batches())[0]
        return tuple(int(size) for size in x.shape[1:])

    def num_classes(self) -> int:
        if self._arrays is not None:
            return int(as_labels(self._arrays[1]).max()) + 1
        top = -1
        for _, y in self.numpy_batches():
            if y is None:
                raise ValueError("Training batches need labels: (x, y) pairs.")
            top = max(top, int(np.max(y)))
        log.info("num_classes not given; read %d from the labels (one pass over the data).", top + 1)
        return top + 1


def _as_tensor(x: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A tensor of ``x``; floating and uint8 (image) inputs cast to ``dtype``, other integers kept."""
    tensor = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if tensor.is_floating_point() or tensor.dtype == torch.uint8:
        return tensor.to(dtype)
    return tensor


# --- training -------------------------------------------------------------------------------------------


def _train_epoch(
    model: nn.Module,
    batches: _Batches,
    valid: _Batches | None,
    opt: torch.optim.Optimizer,
    scheduler: Any,
    loss_fn: nn.Module,
    device: torch.device,
    desc: str,
    n_batches: int | None,
    verbose: bool | None,
) -> dict[str, float]:
    """One pass over ``batches``, then the validation: loss, accuracy (and val_loss, val_accuracy)."""
    model.train()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count = 0
    with contextlib.closing(progress_bar(None, verbose, total=n_batches, desc=desc, unit="batch")) as bar:
        for index, (x, y) in enumerate(batches.tensors(device, _dtype_of(model))):
            opt.zero_grad(set_to_none=True)
            logits = model(x)
            if batches.n_outputs is None:  # this first batch on the device, the others before they get there
                batches.n_outputs = int(logits.shape[1])
                check_label_range(y.cpu().numpy(), batches.n_outputs)
            loss = loss_fn(logits, y)
            loss.backward()
            opt.step()
            if scheduler is not None:
                scheduler.step()
            total_loss += loss.detach() * y.numel()
            correct += (logits.detach().argmax(dim=1) == y).sum()
            count += int(y.numel())
            bar.update(1)
            if (index + 1) % _POSTFIX_EVERY == 0:
                bar.set_postfix(loss=f"{float(total_loss) / count:.4f}", acc=f"{int(correct) / count:.4f}")
        if count == 0:
            raise ValueError("The training data yielded no batches in this epoch.")
        metrics = {"loss": float(total_loss) / count, "accuracy": int(correct) / count}
        postfix = {"loss": f"{metrics['loss']:.4f}", "acc": f"{metrics['accuracy']:.4f}"}
        if valid is not None:
            scores = evaluate_torch_model(model, valid, device=device)
            metrics.update(val_loss=scores["loss"], val_accuracy=scores["accuracy"])
            postfix["val_acc"] = f"{scores['accuracy']:.4f}"
        bar.set_postfix(postfix)
    return metrics


def _make_optimizer(
    optimizer: str | OptimizerFactory, parameters: list[Any], learning_rate: float, weight_decay: float
) -> torch.optim.Optimizer:
    if not isinstance(optimizer, str):
        made = optimizer(parameters)
        if not isinstance(made, torch.optim.Optimizer):
            raise TypeError(f"The optimizer factory returned a {type(made).__name__}, not a torch optimizer.")
        return made
    name, rate, decay = optimizer.lower(), float(learning_rate), float(weight_decay)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=rate, weight_decay=decay)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=rate, weight_decay=decay)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=rate, momentum=SGD_MOMENTUM, weight_decay=decay)
    return torch.optim.RMSprop(parameters, lr=rate, weight_decay=decay)


def _target_device(device: str | torch.device | None, model: Any) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(model, nn.Module):
        placed = _device_of(model)
        if placed.type != "cpu":
            return placed
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _device_of(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _dtype_of(model: nn.Module) -> torch.dtype:
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def _metadata_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _read_metadata(path: Path) -> dict[str, Any]:
    metadata_path = _metadata_path(path)
    if not metadata_path.is_file():
        return {}
    metadata = json.loads(metadata_path.read_text())
    if not isinstance(metadata, dict) or metadata.get("format") != _METADATA_FORMAT:
        raise ValueError(f"{metadata_path} is not an oodscope model description.")
    return metadata
