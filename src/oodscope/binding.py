"""A model bound to the options of its passes: the one place these options are declared and checked.

``fit(model, data, ...)``, ``score(data)``, ``calibrate``, ``evaluate``, ``tune``, the CLI and
``load(path, model=...)`` all take the model and its pass options through :func:`bind`::

    bound = bind(model, head_layer_id="fc", batch_size=256)
    det = KNN().fit(bound, train_data)  # as KNN().fit(model, train_data, head_layer_id="fc", ...)
    report = evaluate(bound, train_data, id_data, ood_sets, detectors)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from ._batches import check_batch_size

__all__ = ["BoundModel", "bind"]

#: the options saved with a fitted detector (functions and display choices are not)
SAVED_OPTIONS = ("feature_layers_id", "head_layer_id", "batch_size", "input_key", "label_key")


@dataclasses.dataclass(frozen=True, eq=False)
class BoundModel:
    """A model and the options of its passes.

    Parameters
    ----------
    model : torch.nn.Module or keras.Model
        The classifier; only referenced, never modified.
    feature_layers_id : layer id or list of layer ids, optional
        Layers to extract instead of what each detector declares (its ``needs().layers``).
    head_layer_id : layer id, default -1
        The classifier's final layer; its pre-softmax output is taken as the logits.
    postproc_fns : dict or list, optional
        Per layer, a function from the raw activation batch to a [B, D] array (default: global average
        pooling of feature maps). A dict ``{layer_id: fn}``, or a list aligned with ``feature_layers_id``.
    batch_size : int, default=128
        Batch size for arrays and map-style datasets (iterables keep their own batching).
    input_key, label_key : str, optional
        Keys of the input and the label in dict batches.
    progress : bool, optional
        ``True`` always shows a progress bar (on standard error), ``False`` never; by default one appears
        after 2 seconds, and only when standard error is a terminal.
    """

    model: Any
    feature_layers_id: Any = None
    head_layer_id: Hashable = -1
    postproc_fns: Mapping[Hashable, Callable | None] | Sequence[Callable | None] | None = None
    batch_size: int = 128
    input_key: str | None = None
    label_key: str | None = None
    progress: bool | None = None

    def __post_init__(self) -> None:
        from .backends import get_backend

        get_backend(self.model)  # a clear error for anything that is not a model
        check_batch_size(self.batch_size)
        for name in ("input_key", "label_key"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a string or None; got {value!r}.")
        if self.progress not in (None, True, False):
            raise TypeError(f"progress must be True, False or None; got {self.progress!r}.")

    @property
    def backend(self) -> Any:
        """The backend class of the model's framework."""
        from .backends import get_backend

        return get_backend(self.model)

    def replace(self, **options: Any) -> BoundModel:
        """A copy with some options replaced (None leaves an option as it is)."""
        _check_names(options)
        given = {name: value for name, value in options.items() if value is not None}
        return dataclasses.replace(self, **given) if given else self

    def options(self, names: Sequence[str] = SAVED_OPTIONS) -> dict[str, Any]:
        """The named options as a dict."""
        return {name: getattr(self, name) for name in names}

    def __repr__(self) -> str:
        defaults = {field.name: field.default for field in dataclasses.fields(self)}
        shown = [
            f"{name}={getattr(self, name)!r}"
            for name in defaults
            if name != "model" and getattr(self, name) is not defaults[name]
        ]
        return f"BoundModel({type(self.model).__name__}{''.join(', ' + item for item in shown)})"


def bind(model: Any, **options: Any) -> BoundModel:
    """``model`` bound to pass options; a :class:`BoundModel` given as the model gets the options replaced.

    >>> bind(object())
    Traceback (most recent call last):
    ...
    TypeError: oodscope cannot run a model of type builtins.object: ...
    """
    _check_names(options)
    if isinstance(model, BoundModel):
        return model.replace(**options)
    return BoundModel(model, **{name: value for name, value in options.items() if value is not None})


def _check_names(options: Mapping[str, Any]) -> None:
    valid = [field.name for field in dataclasses.fields(BoundModel) if field.name != "model"]
    unknown = [name for name in options if name not in valid]
    if unknown:
        raise TypeError(f"Unknown pass option(s) {unknown}; the options of a model pass are {valid}.")
