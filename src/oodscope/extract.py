"""One forward pass of a model over data, gathered into :class:`~oodscope.Features`.

``extract`` is the single place where a model is run for scoring. Fit and score any number of detectors,
with any hyperparameters, on the ``Features`` it returns; none of them runs the model again::

    feats_fit = extract(model, train_data, feature_layers_id=["penultimate"])
    feats_in = extract(model, id_data, feature_layers_id=["penultimate"])
    for detector in (GEN(), MSP(), Energy(), ReAct(Energy())):
        detector.fit(feats_fit)
        scores, _ = detector.score(feats_in)
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ._batches import count_batches, count_rows, iter_batches, note_failed_batch, to_numpy
from .backends import INPUT, Backend, HeadNotLinearError, get_backend
from .features import Features
from .needs import GradientOf, PassKind, Unperturbed, layer_tuple

__all__ = ["extract", "global_average_pool", "run_pass", "spatial_sum"]

log = logging.getLogger(__name__)

PostprocFn = Callable[[np.ndarray], np.ndarray]


def progress_bar(iterable: Any = None, progress: bool | None = None, **options: Any) -> Any:
    """A tqdm bar on standard error: ``progress=True`` always, ``False`` never, ``None`` (the default of every
    ``progress`` option) only when standard error is a terminal, and then only for loops that last over 2
    seconds. So piped output, logs and CI stay clean, and library code never writes to standard output."""
    shown = _stderr_is_terminal() if progress is None else bool(progress)
    if shown:
        from tqdm.auto import tqdm  # a notebook widget where one can be drawn
    else:
        from tqdm import tqdm  # tqdm.auto would warn in a notebook without ipywidgets, even for no bar
    return tqdm(iterable, disable=not shown, delay=2.0 if progress is None else 0, **options)


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def spatial_sum(values: np.ndarray, channels_last: bool = False) -> np.ndarray:
    """Sum feature maps over their spatial axes to [B, C]; 2-D arrays pass through, 1-D become [B, 1].

    ``channels_last`` says whether maps are [B, ..., C] (Keras) or [B, C, ...] (torch). Float32 and float64
    maps are summed by ``einsum`` over one flattened spatial axis (two to four times faster than ``sum`` over
    several axes; not BLAS, whose worker threads would compete with the framework's between batches); other
    dtypes by ``sum``.
    """
    values = np.asarray(values)
    if values.ndim <= 2:
        return values.reshape(len(values), -1)
    batch = values.shape[0]
    channels = values.shape[-1] if channels_last else values.shape[1]
    if values.dtype not in (np.float32, np.float64):
        axes = tuple(range(1, values.ndim - 1)) if channels_last else tuple(range(2, values.ndim))
        return values.sum(axis=axes)
    if channels_last:
        return np.einsum("bsc->bc", values.reshape(batch, -1, channels))
    return np.einsum("bcs->bc", values.reshape(batch, channels, -1))


def global_average_pool(values: np.ndarray, channels_last: bool = False) -> np.ndarray:
    """Average feature maps over their spatial axes to [B, C]; 2-D arrays pass through, 1-D become [B, 1].

    ``channels_last`` says whether maps are [B, ..., C] (Keras) or [B, C, ...] (torch).
    """
    if values.ndim <= 1:
        return values.reshape(-1, 1)
    if values.ndim == 2:
        return values
    if values.dtype not in (np.float32, np.float64):
        axes = tuple(range(1, values.ndim - 1)) if channels_last else tuple(range(2, values.ndim))
        return values.mean(axis=axes)
    positions = values.size // (values.shape[0] * (values.shape[-1] if channels_last else values.shape[1]))
    return spatial_sum(values, channels_last) / values.dtype.type(max(positions, 1))


def _postproc_map(postproc_fns: Any, layer_ids: Sequence[Hashable]) -> dict[Hashable, PostprocFn | None]:
    if postproc_fns is None:
        return {}
    if isinstance(postproc_fns, Mapping):
        unknown = [key for key in postproc_fns if key not in layer_ids]
        if unknown:
            raise ValueError(f"postproc_fns has entries for {unknown}, which are not in feature_layers_id.")
        mapping = dict(postproc_fns)
    else:
        fns = list(postproc_fns)
        if len(fns) != len(layer_ids):
            raise ValueError(
                f"postproc_fns has {len(fns)} functions for {len(layer_ids)} layers; give one per layer "
                "(None keeps the default pooling) or a dict {layer_id: fn}."
            )
        mapping = dict(zip(layer_ids, fns, strict=True))
    for layer_id, fn in mapping.items():
        if fn is not None and not callable(fn):
            raise TypeError(
                f"postproc_fns[{layer_id!r}] is {fn!r}, not a function: give fn(activations) -> [batch, "
                "features], or None for the default pooling."
            )
    return mapping


@contextlib.contextmanager
def model_pass(
    model: Any,
    data: Any,
    layer_ids: Sequence[Hashable] = (),
    head_layer_id: Hashable = -1,
    *,
    batch_size: int = 128,
    input_key: str | None = None,
    label_key: str | None = None,
    progress: bool | None = None,
    description: str = "oodscope",
    edits: Mapping[Hashable, Any] | None = None,
) -> Iterator[tuple[Backend, Iterator[tuple[Any, np.ndarray | None]]]]:
    """Open one pass of ``model`` over ``data``: yields the backend and the batch iterator.

    The backend's set-up (hooks, eval mode) is undone when the block exits, also on an exception. An
    exception raised in the block while it works on a batch (the model's own, most often) gets a note saying
    which batch that was (see :func:`~oodscope._batches.note_failed_batch`).
    """
    runner = get_backend(model).for_pass(model, list(layer_ids), head_layer_id, edits or None)
    batches = iter_batches(data, batch_size, input_key, label_key)
    bar = progress_bar(
        batches, progress, total=count_batches(data, batch_size), desc=description, unit="batch", leave=False
    )
    stream = _Current(bar)
    with runner:
        try:
            yield runner, stream
        except Exception as error:
            if stream.number:
                note_failed_batch(error, stream.number, stream.inputs, data)
            raise
        finally:
            bar.close()


class _Current:
    """Iterates over the batches and remembers the one handed out last, until the next is asked for.

    ``number`` counts from 1 and is 0 while no batch is being worked on: before the first, while the next
    is read (an error there is the data's, not a batch's) and after the last.
    """

    def __init__(self, batches: Any) -> None:
        self._batches = iter(batches)
        self._count = self.number = 0
        self.inputs: Any = None

    def __iter__(self) -> _Current:
        return self

    def __next__(self) -> tuple[Any, np.ndarray | None]:
        self.number, self.inputs = 0, None
        inputs, labels = next(self._batches)
        self._count += 1
        self.number, self.inputs = self._count, inputs
        return inputs, labels


class _Columns:
    """Per-batch arrays of one output gathered into one array, without quadratic copying.

    When the number of rows is known, each batch is copied straight into an array of that size (one copy,
    and each batch's array is freed at once: half the peak memory); otherwise, or when the batches turn out
    not to fit, the batches are concatenated once at the end.
    """

    def __init__(self, rows: int | None = None) -> None:
        self.rows = rows
        self.parts: list[np.ndarray] = []
        self.out: np.ndarray | None = None
        self.filled = 0

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values)
        if self.rows is not None and self.out is None and not self.parts:
            self.out = np.empty((self.rows, *values.shape[1:]), dtype=values.dtype)
        if self.out is not None:
            stop = self.filled + len(values)
            if (
                stop <= len(self.out)
                and values.shape[1:] == self.out.shape[1:]
                and values.dtype == self.out.dtype
            ):
                self.out[self.filled : stop] = values
                self.filled = stop
                return
            self.parts.append(self.out[: self.filled])  # not as expected: concatenate at the end instead
            self.out = None
        self.parts.append(values)

    def result(self) -> np.ndarray:
        if self.out is not None:
            return self.out if self.filled == len(self.out) else self.out[: self.filled].copy()
        return np.concatenate(self.parts, axis=0)


def extract(
    model: Any,
    data: Any,
    feature_layers_id: Hashable | Sequence[Hashable] | None = None,
    head_layer_id: Hashable | None = None,
    postproc_fns: Mapping[Hashable, PostprocFn | None] | Sequence[PostprocFn | None] | None = None,
    *,
    with_head: bool | None = None,
    **pass_options: Any,
) -> Features:
    """Run ``model`` over ``data`` once and return its :class:`~oodscope.Features`.

    Parameters
    ----------
    model : torch.nn.Module or keras.Model or BoundModel
        The trained classifier; it is not modified (see the backends for what that guarantees). A
        :class:`~oodscope.BoundModel` brings its pass options along.
    data
        Inputs, optionally with labels: an array or tensor, a tuple ``(inputs, labels)``, a dict of arrays, a
        ``tf.data.Dataset`` of batches, a torch ``Dataset`` or ``DataLoader``, or any iterable of batches
        (tuples ``(inputs, labels, ...)``, dicts, or bare inputs). Arrays are cut into ``batch_size`` batches;
        iterables keep their own batching.
    feature_layers_id : layer id or list of layer ids, optional
        Layers whose activations to keep: names, integer indices (see the backend's documentation for what
        they count) or ``"penultimate"`` (the input of the head layer).
    head_layer_id : layer id, optional
        The classifier's final layer (default -1, the last one); its pre-softmax output is the logits.
    postproc_fns : dict or list, optional
        Per layer, a function from the raw activation batch (numpy, in the framework's layout) to a 2-D
        [B, D] array. The default is global average pooling of 3-D and higher maps
        (:func:`global_average_pool`).
    with_head : bool, optional
        Include the head's (W, b). ``None`` (default): include them when the head is a linear layer.
        ``True``: require them (raises :class:`~oodscope.backends.HeadNotLinearError` otherwise).
    **pass_options
        ``batch_size`` (default 128), ``input_key``, ``label_key``, ``progress``: see
        :class:`~oodscope.BoundModel`.

    Returns
    -------
    Features
        Logits [N, C], the requested layers {id: [N, D]}, labels [N] when every batch had them, and the head
        weights when available.

    Raises
    ------
    Exception
        An error raised by the model keeps its type and message; on Python 3.11 and later it carries a note
        with the batch number, the batch's shape and dtype, and a hint when the inputs are integers or the
        data was a list or an unbatched ``tf.data.Dataset``.
    """
    from .binding import bind

    bound = bind(
        model,
        feature_layers_id=feature_layers_id,
        head_layer_id=head_layer_id,
        postproc_fns=postproc_fns,
        **pass_options,
    )
    layer_ids = list(layer_tuple(bound.feature_layers_id))
    postproc = _postproc_map(bound.postproc_fns, layer_ids)
    return run_pass(bound, data, layer_ids, postproc, with_head=with_head)


def run_pass(
    bound: Any,
    data: Any,
    layer_ids: Sequence[Hashable],
    postproc: Mapping[Hashable, PostprocFn | None],
    *,
    with_head: bool | None = None,
    kind: PassKind | None = None,
    wrt: Sequence[Hashable] = (),
    description: str = "extract",
) -> Features:
    """One pass of a :class:`~oodscope.BoundModel` over ``data``: the engine behind :func:`extract` and the
    planner (:mod:`oodscope.plan`).

    ``layer_ids`` are the keys of the Features' layers: layer ids; in a pass that differentiates a loss,
    ``GradientOf(target)`` for targets in ``wrt``; in a perturbed pass, ``Unperturbed(layer)`` for a layer as
    the forward on the original inputs (the one the perturbation's gradient is taken in) gave it.
    ``postproc`` maps them to ``fn(raw_batch) -> [B, D]`` (missing or None: global average pooling). The
    :class:`~oodscope.needs.PassKind` says what else the pass does, batch by batch: move the inputs against
    the gradient of a loss first (a forward and a backward pass), run the forward with edits, and
    differentiate a loss in the forward that gives the Features.
    """
    kind = kind or PassKind()
    taps = [key.target if isinstance(key, Unperturbed) else key for key in layer_ids]
    taps = list(dict.fromkeys(key for key in taps if not isinstance(key, GradientOf)))
    taps += [target for target in wrt if target != INPUT and target not in taps]
    taps += [layer for layer in kind.reads() if layer not in taps]  # what its losses read
    unperturbed = [key for key in layer_ids if isinstance(key, Unperturbed)]
    if unperturbed and kind.perturbation is None:
        raise ValueError(f"{unperturbed[0]!r} is read in {kind}, which perturbs nothing.")
    rows = count_rows(data)
    logits, labels = _Columns(rows), _Columns(rows)
    layers = {layer_id: _Columns(rows) for layer_id in layer_ids}
    batches_with_labels = batches = 0
    with model_pass(
        bound.model,
        data,
        taps,
        bound.head_layer_id,
        batch_size=bound.batch_size,
        input_key=bound.input_key,
        label_key=bound.label_key,
        progress=bound.progress,
        description=description,
        edits=dict(kind.edits),
    ) as (runner, stream):
        if kind.perturbation is not None or kind.loss is not None:
            runner.require("gradients", f"{kind}")
        for inputs, batch_labels in stream:
            x = inputs
            if kind.perturbation is not None:
                x = _numpy_inputs(inputs)
                _, original, gradients = runner.gradients(x, kind.perturbation.loss, (INPUT,))
                x = kind.perturbation.apply(x, gradients[INPUT])
                original = {key: original[key.target] for key in unperturbed}
            if kind.loss is None:
                batch_logits, activations = runner.run_batch(x)
            else:
                batch_logits, activations, gradients = runner.gradients(x, kind.loss, tuple(wrt))
                activations.update({GradientOf(target): value for target, value in gradients.items()})
            if unperturbed:
                activations.update(original)
            logits.add(batch_logits)
            for layer_id in layer_ids:
                layers[layer_id].add(_reduce(layer_id, activations[layer_id], postproc.get(layer_id), runner))
            if batch_labels is not None:
                labels.add(batch_labels)
                batches_with_labels += 1
            batches += 1
        head = _head(runner, with_head)
    if batches == 0:
        raise ValueError("The data yielded no batches; there is nothing to extract.")
    if 0 < batches_with_labels < batches:
        raise ValueError(f"Only {batches_with_labels} of {batches} batches carry labels; all or none must.")
    return Features(
        logits=logits.result(),
        layers={layer_id: columns.result() for layer_id, columns in layers.items()},
        labels=labels.result() if batches_with_labels else None,
        head_weight=None if head is None else head[0],
        head_bias=None if head is None else head[1],
        pass_kind=None if kind == PassKind() else kind,
    )


def _numpy_inputs(inputs: Any) -> Any:
    """The batch's inputs as numpy (a structure of arrays for a model with several inputs)."""
    if isinstance(inputs, Mapping):
        return {key: to_numpy(value) for key, value in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(to_numpy(value) for value in inputs)
    return to_numpy(inputs)


def _reduce(layer_id: Hashable, values: np.ndarray, fn: PostprocFn | None, runner: Backend) -> np.ndarray:
    reduced = global_average_pool(values, runner.channels_last) if fn is None else np.asarray(fn(values))
    if reduced.ndim != 2 or reduced.shape[0] != values.shape[0]:
        raise ValueError(
            f"The post-processing of layer {layer_id!r} must return a 2-D array [batch, features] with one "
            f"row per input; it returned shape {reduced.shape} for a batch of {values.shape[0]}."
        )
    return reduced


def _head(runner: Backend, with_head: bool | None) -> tuple[np.ndarray, np.ndarray] | None:
    if with_head is False:
        return None
    try:
        return runner.head_weights()
    except HeadNotLinearError:
        if with_head:
            raise
        log.debug("The head is not linear; Features will hold no head weights.")
        return None
