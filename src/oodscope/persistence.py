"""Save and load fitted detectors in a format that cannot execute code when read.

A saved detector is one zip file holding ``detector.json`` (format, library version, class, hyperparameters,
learned state, extraction options and, for a detector fitted on a model, the model's fingerprint) and one
``.npy`` entry per array, read with ``allow_pickle=False``.
Detector classes are looked up in the registry of imported detectors (:func:`oodscope.detectors.available`),
never imported by name from the file, and nothing is unpickled: a pickle (or any other foreign file) is
refused before anything in it runs. Arrays round-trip bit for bit, so scores after loading are identical.

The fingerprint (:mod:`oodscope.fingerprint`: framework, weight-holding layers and their shapes, a hash of
the head's weights) is an optional entry of format 1: files without one (older files, detectors fitted on
Features) load as before, and older oodscope versions read files with one.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .detectors._layerwise import Aggregator
from .detectors._registry import available, registry_name
from .detectors.base import Detector, is_learned_name
from .features import Features
from .fingerprint import ModelFingerprint, ModelMismatchError, fingerprint
from .needs import FromPass, GradientOf, PassKind, Unperturbed

__all__ = ["load", "save", "DetectorFileError", "ModelMismatchError"]

FORMAT = "oodscope-detector"
FORMAT_VERSION = 1
_META = "detector.json"


class DetectorFileError(ValueError):
    """The file is not a readable oodscope detector file (foreign, truncated, tampered or too new)."""


def save(detector: Detector, path: str | Path) -> Path:
    """Write ``detector`` to ``path`` (conventionally ending in ``.oodscope``); returns the path.

    A detector fitted on a model also records the model's fingerprint (of its weights as they are now), which
    :func:`load` checks against the model it is given.
    """
    if not isinstance(detector, Detector):
        raise TypeError(f"save() expects an oodscope detector; got {type(detector).__name__}.")
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    bound = detector._bound
    if bound is not None and bound.postproc_fns is not None:
        raise ValueError(
            "This detector was fitted with postproc_fns, which are functions and cannot be saved safely. "
            "Save it after fitting on Features, or re-create the post-processing after loading."
        )
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "oodscope_version": __version__,
        "detector": _encode(detector, arrays, "detector"),
        "extraction": None if bound is None else _encode(bound.options(), arrays, "extraction"),
    }
    if bound is not None:
        meta["model"] = fingerprint(bound.model, bound.head_layer_id).to_json()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(_META, json.dumps(meta, indent=1, allow_nan=False))
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, _in_its_own_order(array), allow_pickle=False)
            archive.writestr(f"{name}.npy", buffer.getvalue())
    return path


def _in_its_own_order(array: np.ndarray) -> np.ndarray:
    """The array as written: a Fortran-ordered one stays so (``.npy`` records the order), any other is made
    C-contiguous. Keeping the order keeps scores bit-identical after loading: a matrix product may round
    differently when an operand comes back in the other memory order (Mahalanobis' whitening matrix is
    Fortran-ordered)."""
    if array.ndim > 1 and array.flags.f_contiguous and not array.flags.c_contiguous:
        return array
    return np.ascontiguousarray(array)


def load(path: str | Path, model: Any = None, *, check_model: bool = True) -> Detector:
    """Read a detector written by :meth:`Detector.save`.

    Parameters
    ----------
    path : str or Path
        The file.
    model : torch.nn.Module or keras.Model, optional
        The model to score data through, bound to the pass options saved with the detector (layers, head,
        batch size, keys). Without it the loaded detector scores :class:`~oodscope.Features`.
    check_model : bool, default True
        When the file records the fingerprint of the model the detector was fitted on, check that ``model``
        matches it (framework, weight-holding layers and their shapes, the head's weights). False skips the
        check, for an expert who knows that the two models are interchangeable.

    Raises
    ------
    DetectorFileError
        For a file that is not an oodscope detector file (e.g. a pickle, which is never unpickled), a
        truncated or tampered file, or one written by a newer, incompatible format.
    ModelMismatchError
        When ``model`` is not the model the detector was fitted on (and ``check_model`` is True).
    """
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head[:1] == b"\x80" or head[:4] != b"PK\x03\x04":
        kind = "a pickle, which oodscope never loads" if head[:1] == b"\x80" else "not a zip archive"
        raise DetectorFileError(
            f"{path} is not an oodscope detector file ({kind}); write one with det.save()."
        )
    try:
        with zipfile.ZipFile(path) as archive:
            meta = _read_meta(archive, path)
            arrays = _ArrayReader(archive, path)
            detector = _decode(meta["detector"], arrays)
            options = _decode(meta["extraction"], arrays) if meta.get("extraction") else None
            saved_model = None if meta.get("model") is None else ModelFingerprint.from_json(meta["model"])
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, ValueError) as error:
        if isinstance(error, DetectorFileError):
            raise
        raise DetectorFileError(f"{path} is damaged or truncated ({error}).") from error
    if not isinstance(detector, Detector):
        raise DetectorFileError(f"{path} does not hold a detector.")
    detector._validate_params()
    _check_loaded_state(detector, path)
    if model is not None:
        from .binding import SAVED_OPTIONS, bind

        # a detector fitted on Features has no saved options: the model's own (or the defaults) apply
        saved = {key: options[key] for key in SAVED_OPTIONS if key in options} if options else {}
        bound = bind(model, **saved)
        if check_model and saved_model is not None:
            differences = saved_model.differences(fingerprint(bound.model, bound.head_layer_id))
            if differences:
                raise ModelMismatchError(
                    f"{path} holds a detector fitted on another model: {'; '.join(differences)}. Pass the "
                    "model it was fitted on, or fit the detector on this one. To use it with this model "
                    "anyway, pass check_model=False.",
                    differences,
                )
        detector._bound = bound
    return detector


def _check_loaded_state(detector: Detector, path: Path) -> None:
    """Refuse a file whose learned arrays do not fit its detector: their declared shapes first
    (``_state_shapes``), then one sample of the fit widths scored through the whole detector, so that a
    tampered state fails here with the file's name rather than inside numpy at ``score``."""
    try:
        detector._check_state()
    except ValueError as error:
        raise DetectorFileError(f"{path} holds a state that does not fit its detector: {error}") from None
    probe = _probe_features(detector)
    if probe is None:
        return
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            detector._score_features(probe)
    except Exception as error:  # any failure on a well-formed sample means the state is broken
        raise DetectorFileError(
            f"{path} holds a state that does not fit its detector: scoring one sample of the fit widths "
            f"failed ({type(error).__name__}: {error})."
        ) from None


def _probe_features(detector: Detector) -> Features | None:
    """One all-ones sample of the widths the fitted detector saw, or None when they are not recorded."""
    widths = getattr(detector, "fit_widths_", None)
    if not isinstance(widths, dict) or (detector._needs_fit() and not detector._learned_attributes()):
        return None
    n_classes, layers = widths.get("logits"), widths.get("layers", {})
    if n_classes is None and not layers:
        return None
    head_weight = None
    if "head" in detector.requires:
        if n_classes is None or "penultimate" not in layers:
            return None
        head_weight = np.zeros((n_classes, layers["penultimate"]))
    kind = detector.needs(layers=()).kind()
    return Features._unchecked(
        logits=None if n_classes is None else np.ones((1, n_classes)),
        layers={key: np.ones((1, width)) for key, width in layers.items()},
        head_weight=head_weight,
        head_bias=None if head_weight is None else np.zeros(n_classes),
        pass_kind=None if kind == PassKind() else kind,
    )


def _read_meta(archive: zipfile.ZipFile, path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(archive.read(_META))
    except KeyError:
        raise DetectorFileError(f"{path} is a zip archive but not an oodscope detector file.") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DetectorFileError(f"{path} is not an oodscope detector file (format {meta.get('format')!r}).")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DetectorFileError(
            f"{path} uses detector-file format {version!r}, written by oodscope "
            f"{meta.get('oodscope_version')}; this oodscope ({__version__}) reads format {FORMAT_VERSION} "
            "and older. Upgrade oodscope to load it."
        )
    return meta


class _ArrayReader:
    def __init__(self, archive: zipfile.ZipFile, path: Path) -> None:
        self.archive, self.path = archive, path

    def __call__(self, name: str) -> np.ndarray:
        try:
            data = self.archive.read(f"{name}.npy")
        except KeyError:
            raise DetectorFileError(
                f"{self.path} lacks the array {name!r}: it is truncated or tampered."
            ) from None
        return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


#: the objects saved as class name, hyperparameters and learned state, with the tag that marks them
_OBJECTS = (("__detector__", Detector), ("__aggregator__", Aggregator))


#: the keys of ``Features.layers`` besides layer ids, which a detector's state may hold (its fit widths)
_KEYS = {cls.__name__: cls for cls in (GradientOf, Unperturbed, FromPass)}


def _encode(value: Any, arrays: dict[str, np.ndarray], key: str) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, (np.ndarray, np.generic)):
        array = np.asarray(value)
        if array.dtype.hasobject:
            raise TypeError(f"Cannot save {key}: object arrays are not supported.")
        arrays[key] = array
        return {"__array__": key, "scalar": isinstance(value, np.generic)}
    if isinstance(value, (list, tuple)):
        items = [_encode(item, arrays, f"{key}.{i}") for i, item in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        return {
            "__items__": [
                [_encode(k, arrays, f"{key}.key{i}"), _encode(v, arrays, f"{key}.{i}")]
                for i, (k, v) in enumerate(value.items())
            ]
        }
    if type(value) in _KEYS.values():  # a key of Features.layers, e.g. in the fit widths
        fields = [getattr(value, field.name) for field in dataclasses.fields(value)]
        return {"__key__": type(value).__name__, "fields": _encode(fields, arrays, f"{key}.fields")}
    for tag, base in _OBJECTS:
        if isinstance(value, base):
            return {
                tag: _class_name(type(value), base),
                "params": _encode(value.get_params(deep=False), arrays, f"{key}.params"),
                "state": _encode(value._get_state(), arrays, f"{key}.state"),
            }
    raise TypeError(
        f"Cannot save {key} of type {type(value).__name__}: only numbers, strings, arrays, lists, dicts, "
        "detectors and aggregators are saved. A detector holding other objects must override _get_state / "
        "_set_state."
    )


def _decode(value: Any, arrays: _ArrayReader) -> Any:
    if isinstance(value, list):
        return [_decode(item, arrays) for item in value]
    if not isinstance(value, dict):
        return value
    if "__float__" in value:
        return float(value["__float__"])
    if "__array__" in value:
        array = arrays(value["__array__"])
        return array[()] if value.get("scalar") else array
    if "__tuple__" in value:
        return tuple(_decode(item, arrays) for item in value["__tuple__"])
    if "__items__" in value:
        return {_decode(k, arrays): _decode(v, arrays) for k, v in value["__items__"]}
    if "__key__" in value:
        cls = _KEYS.get(value["__key__"])
        if cls is None:
            raise DetectorFileError(f"Unknown layer key {value['__key__']!r} in the detector file.")
        return cls(*_decode(value["fields"], arrays))
    for tag, base in _OBJECTS:
        if tag in value:
            cls = _known(base).get(value[tag]) or _known(base).get(_former_name(value[tag]))
            if cls is None:
                kind = base.__name__.lower()
                raise DetectorFileError(
                    f"Unknown {kind} class {value[tag]!r}; import the module defining it first."
                )
            state = _decode(value["state"], arrays)
            if not isinstance(state, dict) or not all(is_learned_name(name) for name in state):
                raise DetectorFileError(f"Malformed {base.__name__.lower()} state in the detector file.")
            obj = cls(**_decode(value["params"], arrays))
            obj._set_state(state)
            return obj
    raise DetectorFileError(f"Unexpected entry in the detector file: {sorted(value)}.")


def _class_name(cls: type, base: type) -> str:
    if base is Detector:
        return registry_name(cls)
    return f"{cls.__module__}.{cls.__qualname__}"


def _former_name(name: Any) -> Any:
    """Files of format 1 named oodscope's detectors by module path (``oodscope.shaping.ReAct``); the
    registry knows them by class name."""
    if isinstance(name, str) and name.startswith("oodscope.") and ":" not in name:
        return name.rsplit(".", 1)[-1]
    return None


def _known(base: type) -> dict[str, type]:
    """The classes a file may name: the detector registry, or every imported aggregator class (nothing is
    imported by name from the file)."""
    if base is Detector:
        return available()
    found: dict[str, type] = {}
    stack = [base]
    while stack:
        for sub in stack.pop().__subclasses__():
            found[_class_name(sub, base)] = sub
            stack.append(sub)
    return found
