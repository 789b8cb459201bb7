"""Train, save and load Keras 3 classifiers: :func:`train_tf_model` and :func:`load_tf_model`."""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from .._batches import as_labels, is_array_like
from ..backends.data import TF_DATASET
from ._common import (
    KERAS_SUFFIXES,
    SGD_MOMENTUM,
    ModelFileError,
    check_label_range,
    check_model_file,
    check_training_args,
    resolve_save_path,
    step_milestones,
)
from .keras_models import build_model

__all__ = ["load_tf_model", "save_tf_model", "train_tf_model"]

log = logging.getLogger("oodscope.training")


def train_tf_model(
    train_data: Any,
    model: str | keras.Model = "toy_convnet",
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    epochs: int = 5,
    batch_size: int = 128,
    optimizer: str | keras.optimizers.Optimizer = "adam",
    learning_rate: float = 1e-3,
    lr_scheduler: str | None = None,
    weight_decay: float = 0.0,
    validation_data: Any = None,
    save_dir: str | os.PathLike | None = None,
    seed: int | None = None,
    from_logits: bool | None = None,
    steps_per_epoch: int | None = None,
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    verbose: int | str | None = None,
) -> keras.Model:
    """Train a Keras classifier with a cross-entropy loss and return it compiled.

    The model is compiled with a (sparse) categorical cross-entropy loss and an ``"accuracy"`` metric, so
    ``model.evaluate(data)`` returns ``[loss, accuracy]`` and ``model.history.history`` holds ``"loss"``,
    ``"accuracy"`` (and ``"val_loss"``, ``"val_accuracy"`` with ``validation_data``). Keras shows its usual
    progress bar on a terminal (see ``verbose``); each epoch's metrics are also logged at INFO level on the
    ``"oodscope.training"`` logger.

    Parameters
    ----------
    train_data
        - a ``tf.data.Dataset`` of ``(x, y)`` **batches**, already preprocessed (e.g. the output of
          ``OODDataset.prepare(128, preprocess_fn, shuffle=True)``); ``batch_size`` does not apply (a
          dataset of single samples, recognised by inputs with one axis less than the model's, is batched
          with ``batch_size``, and so is ``validation_data``);
        - a tuple ``(x, y)`` of arrays: shuffled every epoch and cut into batches of ``batch_size``;
        - anything else ``keras.Model.fit`` accepts (a ``keras.utils.PyDataset``, a torch ``DataLoader``),
          passed as is; then ``input_shape`` and ``num_classes`` must be given for a built-in model.

        ``y`` holds class indices or one-hot rows (then the loss is the categorical cross-entropy).
    model : {"toy_convnet", "toy_mlp", "resnet20"} or keras.Model, default "toy_convnet"
        A built-in architecture (see :mod:`oodscope.training.keras_models`; all end in a softmax ``Dense``
        named ``"head"``) or your own model, which is trained in place (and recompiled).
    input_shape : tuple of int, optional
        ``(H, W, C)`` of one input, for a built-in model. Default: read from the data.
    num_classes : int, optional
        Number of outputs of a built-in model. Default: ``max(label) + 1`` (or the one-hot width) read from
        the data, which costs one pass over a ``tf.data.Dataset`` of class indices.
    epochs : int, default 5
    batch_size : int, default 128
        Used for ``(x, y)`` arrays (and unbatched datasets) only.
    optimizer : {"adam", "adamw", "sgd", "rmsprop"} or keras.optimizers.Optimizer, default "adam"
        A name (``"sgd"`` has momentum 0.9) built with ``learning_rate``, ``lr_scheduler`` and
        ``weight_decay``, or an optimizer instance, used as is (then ``lr_scheduler`` must be None).
    learning_rate : float, default 1e-3
        The initial learning rate.
    lr_scheduler : {None, "cosine", "steps"}, default None
        Stepped **once per batch** (optimizer step), over ``epochs * batches_per_epoch`` steps: ``"cosine"``
        is ``keras.optimizers.schedules.CosineDecay`` to 0; ``"steps"`` multiplies the rate by 0.1 at 50%
        and at 75% of the steps (``PiecewiseConstantDecay``). See
        :func:`oodscope.training.learning_rate_at`; ``train_torch_model`` follows the same formulas. The
        number of batches of a ``tf.data.Dataset`` of unknown cardinality is counted with one pass.
    weight_decay : float, default 0
        Passed to the Keras optimizer (Keras applies it decoupled from the gradient).
    validation_data, optional
        Evaluated after every epoch, in any form ``keras.Model.fit`` accepts (a batched
        ``tf.data.Dataset`` of ``(x, y)``, a tuple of arrays).
    save_dir : str or path, optional
        Where to save the trained model, after the last epoch, in Keras' formats: a path ending in
        ``.keras`` (native format) or ``.h5`` / ``.hdf5`` (legacy HDF5, which Keras 3 still writes and
        reads; it logs a warning recommending ``.keras``) is used as the file; any other path is a
        directory in which ``<model.name>.keras`` is written. Reload with :func:`load_tf_model` (or
        ``keras.models.load_model``): the model comes back compiled and gives the same outputs.
    seed : int, optional
        Calls ``keras.utils.set_random_seed(seed)`` (Python, NumPy and backend global seeds) before the
        model is built, so initialisation, dropout and shuffling are reproducible on CPU. Note that it
        sets these global seeds for the rest of the session.
    from_logits : bool, optional
        Whether the model outputs logits rather than probabilities. Default: False when the last layer is
        a softmax (a ``Softmax`` layer or a layer with ``activation="softmax"``, as in the built-in models),
        True otherwise.
    steps_per_epoch : int, optional
        Passed to ``fit``; needed for an infinite (repeated) dataset.
    callbacks : list of keras.callbacks.Callback, optional
        Extra callbacks for ``fit``.
    verbose : {"auto", 0, 1, 2}, optional
        Keras' progress display, which Keras prints to standard output. Default: ``"auto"`` when standard
        output is a terminal, else 0 (none), so that piped output and logs stay clean.

    Returns
    -------
    keras.Model
        The trained, compiled model (the same object when ``model`` was a ``keras.Model``).

    Examples
    --------
    The reference flow (``ds_train`` and ``ds_in`` batched ``tf.data`` datasets of ``(x, y)``)::

        model = train_tf_model(ds_train, model="toy_convnet", input_shape=(28, 28, 1), num_classes=10,
                               batch_size=128, epochs=5, save_dir="/tmp/toy_convnet.h5",
                               validation_data=ds_in)
        loss, accuracy = model.evaluate(ds_in)
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
    if not isinstance(model, (str, keras.Model)):
        raise TypeError(f"model must be a built-in model name or a keras.Model; got {type(model).__name__}.")
    x, y, dataset = _split_train_data(train_data)
    one_hot = _labels_are_one_hot(y, dataset)

    if seed is not None:
        keras.utils.set_random_seed(int(seed))
    if isinstance(model, str):
        input_shape = _input_shape(x, dataset, input_shape)
        if x is not None and tuple(x.shape[1:]) != input_shape:
            raise ValueError(
                f"input_shape={input_shape} but the inputs have shape {tuple(x.shape[1:])}; leave "
                "input_shape out to read it from the data."
            )
        num_classes = _num_classes(y, dataset, num_classes)
        model = build_model(model, input_shape, num_classes)
    if y is not None:  # arrays: their labels against the model's outputs, before Keras sees them
        check_label_range(y, int(model.outputs[0].shape[-1]) if len(model.outputs) == 1 else None)
    if dataset is not None:
        dataset = train_data = _batched(dataset, model, batch_size, "train_data")
    if TF_DATASET.recognises(validation_data):
        validation_data = _batched(validation_data, model, batch_size, "validation_data")
    if from_logits is None:
        from_logits = not _outputs_probabilities(model)

    if isinstance(optimizer, str):
        total_steps = None
        if schedule is not None:
            batches = steps_per_epoch or _batches_per_epoch(train_data, x, dataset, batch_size)
            total_steps = None if batches is None else epochs * batches
        if schedule is not None and total_steps is None:
            raise ValueError(
                f"lr_scheduler={lr_scheduler!r} needs the number of batches per epoch, which this data does "
                "not tell; pass steps_per_epoch=..."
            )
        rate = _learning_rate(learning_rate, schedule, total_steps)
        optimizer = _make_optimizer(optimizer.lower(), rate, weight_decay)
    elif schedule is not None:
        raise ValueError(
            "lr_scheduler applies only to an optimizer given by name; give your optimizer instance a "
            "keras.optimizers.schedules.LearningRateSchedule as its learning_rate instead."
        )

    if one_hot:
        loss: Any = keras.losses.CategoricalCrossentropy(from_logits=from_logits)
        metric: Any = keras.metrics.CategoricalAccuracy(name="accuracy")
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
        metric = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    model.compile(optimizer=optimizer, loss=loss, metrics=[metric])

    fit_callbacks = [*(callbacks or ()), _EpochLog(epochs)]
    common = dict(
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        validation_data=validation_data,
        callbacks=fit_callbacks,
        verbose=_default_verbose() if verbose is None else verbose,
    )
    if x is not None:
        model.fit(x, y, batch_size=batch_size, shuffle=True, **common)
    else:  # a dataset shuffles itself (Keras would warn that shuffle=True is ignored)
        model.fit(train_data, shuffle=False, **common)
    if save_dir is not None:
        save_tf_model(model, save_dir)
    return model


def save_tf_model(model: keras.Model, save_dir: str | os.PathLike) -> Path:
    """Save ``model`` as :func:`train_tf_model` does with ``save_dir`` and return the file's path.

    A path ending in ``.keras``, ``.h5`` or ``.hdf5`` is the file; any other path is a directory that gets
    ``<model.name>.keras``.
    """
    path = resolve_save_path(save_dir, f"{model.name}.keras", KERAS_SUFFIXES)
    if path.suffix.lower() == ".keras":
        model.save(path)
    else:
        # Keras 3's legacy HDF5 writer pops "optimizer" out of the live model's compile config (Keras
        # 3.15), after which a later `.keras` save would record no optimizer; put it back.
        config = getattr(getattr(model, "_compile_config", None), "config", None)
        optimizer_config = config.get("optimizer") if isinstance(config, dict) else None
        model.save(path)
        if optimizer_config is not None and "optimizer" not in config:
            config["optimizer"] = optimizer_config
    log.info("Saved the model to %s", path)
    return path


def load_tf_model(path: str | os.PathLike, compile: bool = True) -> keras.Model:
    """Load a model saved by :func:`train_tf_model` (``.keras``, or legacy ``.h5`` / ``.hdf5``).

    A thin wrapper of ``keras.models.load_model``: with ``compile=True`` the model comes back compiled
    with its loss, metric and optimizer, so ``model.evaluate(data)`` works at once.

    Raises
    ------
    FileNotFoundError
        When there is no file at ``path``.
    ModelFileError
        For a file that is not a Keras model (a torch file, say, or a ``.keras`` archive named ``.h5``),
        saying what it is, or one Keras cannot read (truncated or damaged).
    """
    path = Path(path).expanduser()
    check_model_file(path, "keras")
    try:
        return keras.models.load_model(path, compile=compile)
    except ImportError:
        raise
    except Exception as error:
        raise ModelFileError(
            f"Keras could not load {path} ({type(error).__name__}: {error}); it may be truncated or damaged."
        ) from error


# --- data ---------------------------------------------------------------------------------------------


def _split_train_data(train_data: Any) -> tuple[np.ndarray | None, np.ndarray | None, Any]:
    """``(x, y, None)`` for arrays, ``(None, None, dataset)`` for tf.data, ``(None, None, None)`` else."""
    if TF_DATASET.recognises(train_data):
        spec = train_data.element_spec
        if not isinstance(spec, tuple) or len(spec) < 2:
            raise ValueError(
                "train_data must yield (x, y) batches; this tf.data.Dataset yields "
                f"{spec}. Map it to (inputs, labels) pairs first, e.g. ds.map(lambda b: (b['image'], "
                "b['label']))."
            )
        return None, None, train_data
    if isinstance(train_data, tuple) and len(train_data) == 2 and all(map(is_array_like, train_data)):
        x = np.asarray(train_data[0])
        y = as_labels(train_data[1])
        if len(x) != len(y):
            raise ValueError(f"x and y have different lengths: {len(x)} and {len(y)}.")
        if len(x) == 0:
            raise ValueError("train_data (x, y) holds no samples; give at least one batch of them.")
        check_label_range(y, None)
        return x, y, None
    return None, None, None


def _batched(dataset: Any, model: keras.Model, batch_size: int, name: str) -> Any:
    """``dataset`` batched with ``batch_size`` when its inputs have one axis less than the model's."""
    inputs = getattr(model, "inputs", None)
    rank = dataset.element_spec[0].shape.rank
    if not inputs or len(inputs) != 1 or rank is None or rank != len(inputs[0].shape) - 1:
        return dataset
    log.info("%s yields single samples; batching it by %d.", name, batch_size)
    return dataset.batch(batch_size)


def _labels_are_one_hot(y: np.ndarray | None, dataset: Any) -> bool:
    if dataset is not None:
        shape = dataset.element_spec[1].shape
        return shape.rank == 2 and (shape[-1] is None or shape[-1] > 1)
    return False  # arrays went through as_labels: class indices


def _input_shape(x: np.ndarray | None, dataset: Any, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    if input_shape is not None:
        return tuple(int(size) for size in input_shape)
    if x is not None:
        return tuple(x.shape[1:])
    if dataset is not None:
        shape = dataset.element_spec[0].shape
        if shape.rank is not None and shape.rank >= 2 and None not in shape[1:]:
            return tuple(int(size) for size in shape[1:])
    raise ValueError("Cannot read the input shape from train_data; pass input_shape=(H, W, C).")


def _num_classes(y: np.ndarray | None, dataset: Any, num_classes: int | None) -> int:
    if num_classes is not None:
        return int(num_classes)
    if y is not None:
        return int(y.max()) + 1
    if dataset is not None:
        shape = dataset.element_spec[1].shape
        if shape.rank == 2 and shape[-1] is not None and shape[-1] > 1:
            return int(shape[-1])
        import tensorflow as tf

        labels = dataset.map(lambda *batch: tf.reduce_max(tf.cast(batch[1], tf.int64)))
        top = labels.reduce(tf.constant(-1, tf.int64), tf.maximum)
        log.info("num_classes not given; read %d from the labels (one pass over the data).", int(top) + 1)
        return int(top) + 1
    raise ValueError("Cannot read the number of classes from train_data; pass num_classes=...")


def _batches_per_epoch(train_data: Any, x: np.ndarray | None, dataset: Any, batch_size: int) -> int | None:
    if x is not None:
        return math.ceil(len(x) / batch_size)
    if dataset is None:  # a PyDataset, a DataLoader...: trust len() when there is one
        try:
            return int(len(train_data))
        except TypeError:
            return None
    import tensorflow as tf

    cardinality = int(dataset.cardinality())
    if cardinality == tf.data.INFINITE_CARDINALITY:
        return None
    if cardinality == tf.data.UNKNOWN_CARDINALITY:
        cardinality = int(dataset.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))
        log.info("Counted %d batches per epoch (one pass over the data).", cardinality)
    return cardinality


# --- optimisation ---------------------------------------------------------------------------------------


def _learning_rate(learning_rate: float, schedule: str | None, total_steps: int | None) -> Any:
    if schedule is None:
        return float(learning_rate)
    assert total_steps is not None
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            float(learning_rate), decay_steps=total_steps, alpha=0.0
        )
    first, second = step_milestones(total_steps)
    # PiecewiseConstantDecay keeps values[i] while step <= boundaries[i]: step < first <=> step <= first - 1
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        boundaries=[first - 1, second - 1],
        values=[float(learning_rate), learning_rate * 0.1, learning_rate * 0.1**2],
    )


def _make_optimizer(name: str, learning_rate: Any, weight_decay: float) -> keras.optimizers.Optimizer:
    decay = float(weight_decay) if weight_decay else None
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate, weight_decay=decay)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=float(weight_decay))
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=SGD_MOMENTUM, weight_decay=decay)
    return keras.optimizers.RMSprop(learning_rate=learning_rate, weight_decay=decay)


def _outputs_probabilities(model: keras.Model) -> bool:
    """Whether the model's last layer applies a softmax."""
    last = model.layers[-1] if model.layers else None
    if isinstance(last, keras.layers.Softmax):
        return True
    activation = getattr(last, "activation", None)
    return getattr(activation, "__name__", None) == "softmax"


def _default_verbose() -> int | str:
    try:
        return "auto" if sys.stdout.isatty() else 0
    except (AttributeError, ValueError):
        return 0


class _EpochLog(keras.callbacks.Callback):
    """Log each epoch's metrics and learning rate (Keras prints its own progress)."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        metrics = ", ".join(f"{key} {float(value):.4f}" for key, value in (logs or {}).items())
        rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        log.info("epoch %d/%d: %s, lr %.3g", epoch + 1, self.epochs, metrics, rate)
