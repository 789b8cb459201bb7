"""The planner: the fewest model passes that give every detector the Features it needs.

Detectors declare their needs as data (:class:`~oodscope.needs.Needs`). A :class:`Plan` groups them by the
kind of pass they need (:class:`~oodscope.needs.PassKind`) -- the plain forward pass; a forward pass over
inputs perturbed along the gradient of a loss; one with edited layers; one that differentiates a loss -- and
runs each kind once per dataset: every layer that any detector of the group reads is extracted once, with
every distinct post-processing of it side by side, and every gradient target of the group's loss once.
Each detector then gets exactly the :class:`~oodscope.Features` its own ``fit(model)`` / ``score(data)``
would have seen (:meth:`Plan.features`). A detector that reads several passes (``Needs.also``) has each of
them planned like a detector of its own, and gets what they gave as ``FromPass`` keys of its Features. A
single detector's ``fit`` and ``score`` use a plan of one; so do ``evaluate`` and ``tune`` with many.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from .extract import _postproc_map, global_average_pool, run_pass
from .features import Features
from .needs import LOGITS, FromPass, Needs, PassKind, Unperturbed, layer_tuple, same_function_key

__all__ = ["Plan"]

log = logging.getLogger("oodscope.plan")


class _Stacked:
    """Several post-processings of one layer in one pass: their [B, D_i] results side by side.

    :meth:`split` cuts the extracted array back into the parts, each in the precision it was computed in.
    """

    def __init__(self, layer: Hashable, fns: Sequence[Any], channels_last: bool) -> None:
        self.layer, self.fns, self.channels_last = layer, list(fns), channels_last
        self.widths: list[int] = []
        self.dtypes: list[np.dtype] = []

    def __call__(self, values: np.ndarray) -> np.ndarray:
        parts = [
            global_average_pool(values, self.channels_last) if fn is None else np.asarray(fn(values))
            for fn in self.fns
        ]
        for part in parts:
            if part.ndim != 2 or part.shape[0] != values.shape[0]:
                raise ValueError(
                    f"A post-processing of layer {self.layer!r} must return a 2-D array [batch, features]; "
                    f"it returned shape {part.shape} for a batch of {values.shape[0]}."
                )
        self.widths = [part.shape[1] for part in parts]
        self.dtypes = [part.dtype for part in parts]
        return np.concatenate(parts, axis=1)

    def split(self, stacked: np.ndarray) -> list[np.ndarray]:
        edges = np.cumsum(self.widths)[:-1]
        return [
            np.ascontiguousarray(part, dtype=dtype)
            for part, dtype in zip(np.split(stacked, edges, axis=1), self.dtypes, strict=True)
        ]


class _Group:
    """The detectors that share one kind of pass, and what that pass extracts for them."""

    def __init__(self, kind: PassKind) -> None:
        self.kind = kind
        self.wrt: list[Hashable] = []  # the gradient targets of all members
        self.fns: dict[Hashable, list[Any]] = {}  # layer -> distinct post-processings
        self.keys: dict[Hashable, list[Hashable]] = {}
        self.wants: dict[str, dict[Hashable, int]] = {}  # detector -> {layer: index of its post-processing}
        self.head = False

    def add(self, name: str, needs: Needs, user: Mapping[Hashable, Any], channels_last: bool) -> None:
        wants = {}
        if needs.gradient is not None:
            self.wrt += [target for target in needs.gradient.wrt if target not in self.wrt]
        for layer in needs.keys():
            base = layer.target if isinstance(layer, Unperturbed) else layer
            if base in user:  # the user's choice wins, as in fit(); a layer before a perturbation like after
                fn = user[base]
            elif layer in needs.reductions:
                fn = functools.partial(needs.reductions[layer], channels_last=channels_last)
            else:
                fn = None
            keys = self.keys.setdefault(layer, [])
            key = same_function_key(fn)
            if key not in keys:
                keys.append(key)
                self.fns.setdefault(layer, []).append(fn)
            wants[layer] = keys.index(key)
        self.wants[name] = wants
        self.head = self.head or needs.head

    def run(self, bound: Any, data: Any, label: str, strict: bool) -> Features:
        channels_last = bound.backend.channels_last
        postproc: dict[Hashable, Any] = {}
        for layer, fns in self.fns.items():
            if len(fns) > 1:
                postproc[layer] = _Stacked(layer, fns, channels_last)
            elif fns[0] is not None:
                postproc[layer] = fns[0]
        features = run_pass(
            bound,
            data,
            list(self.fns),
            postproc,
            with_head=(True if strict else None) if self.head else False,
            kind=self.kind,
            wrt=self.wrt,
            description=label if self.kind == PassKind() else f"{label} ({self.kind})",
        )
        blocks = {}
        for layer, values in features.layers.items():
            stacked = postproc.get(layer)
            parts = stacked.split(values) if isinstance(stacked, _Stacked) else [values]
            blocks.update({(layer, i): part for i, part in enumerate(parts)})
        return Features._unchecked(
            logits=features.logits,
            layers=blocks,
            labels=features.labels,
            head_weight=features.head_weight,
            head_bias=features.head_bias,
            pass_kind=features.pass_kind,
        )

    def view(self, features: Features, name: str) -> Features:
        return Features._unchecked(
            logits=features.logits,
            layers={layer: features.layers[(layer, i)] for layer, i in self.wants[name].items()},
            labels=features.labels,
            head_weight=features.head_weight,
            head_bias=features.head_bias,
            pass_kind=features.pass_kind,
        )


class Plan:
    """The passes of one bound model that serve many detectors.

    Parameters
    ----------
    bound : BoundModel or None
        The model and its pass options; None when every dataset will be given as Features.
    strict : bool, default False
        Require the head's weights when a detector needs them (a single detector's ``fit``: the error says
        why the head is not linear); otherwise they are read when available, and a detector that needs them
        fails on its own.

    ``add(name, needs)`` registers a detector's needs; ``features(data, label)`` runs the passes over ``data``
    (none for :class:`~oodscope.Features`, which are handed to every detector as they are) and returns
    ``{name: Features}``. The same data object given again (e.g. as fit and ID data) is not run again until
    :meth:`forget` is called for it.
    """

    def __init__(self, bound: Any, strict: bool = False) -> None:
        self.bound = bound
        self.strict = strict
        self._groups: dict[Any, _Group] = {}
        self._group_of: dict[
            Hashable, _Group
        ] = {}  # detector names, and (name, pass name) for their ``also``
        self._also: dict[str, dict[Hashable, Hashable]] = {}  # name -> {pass name: its key in _group_of}
        self._done: list[tuple[Any, dict[Any, Features]]] = []
        self._user: dict[Hashable, Any] = {}
        if bound is not None and bound.postproc_fns is not None:
            if isinstance(bound.postproc_fns, Mapping):
                self._user = dict(bound.postproc_fns)
            else:
                self._user = _postproc_map(bound.postproc_fns, layer_tuple(bound.feature_layers_id))

    def add(self, name: str, needs: Needs) -> None:
        """Register detector ``name`` with its needs (the layers already chosen, see ``Detector.needs``)."""
        needs.check(name)
        self._add(name, needs)
        self._also[name] = {}
        for other, need in needs.also.items():
            self._add((name, other), need)
            self._also[name][other] = (name, other)

    def _add(self, name: Hashable, needs: Needs) -> None:
        kind = needs.kind()
        if self.bound is not None:
            if kind.perturbation is not None or kind.loss is not None:
                self.bound.backend.require("gradients", name)
            if kind.edits:
                self.bound.backend.require("edits", name)
        channels_last = False if self.bound is None else self.bound.backend.channels_last
        group = self._groups.get(kind)
        if group is None:
            group = self._groups[kind] = _Group(kind)
        group.add(name, needs, self._user, channels_last)
        self._group_of[name] = group

    @property
    def names(self) -> list[str]:
        return list(self._also)

    def passes(self) -> int:
        """The number of passes per dataset (one per kind of pass)."""
        return len(self._groups)

    def kinds(self) -> list[PassKind]:
        """The kinds of pass run over each dataset, one pass each, in the order they were first needed."""
        return list(self._groups)

    def features(
        self, data: Any, label: str = "data", timings: dict[str, float] | None = None, names: Any = None
    ) -> dict[str, Features]:
        """``{name: Features}`` for the registered detectors (or those in ``names``) on ``data``.

        Passes are run for the kinds of pass those detectors need, each once; ``timings[label]`` gets the
        seconds spent. Features given as ``data`` go to every detector as they are.
        """
        wanted = self.names if names is None else [name for name in names if name in self._also]
        if isinstance(data, Features):
            if timings is not None:
                timings[label] = 0.0
            return dict.fromkeys(wanted, data)
        done = next((extracted for known, extracted in self._done if known is data), None)
        if done is None:
            done = {}
            self._done.append((data, done))
        start, ran = time.perf_counter(), 0
        entries = [entry for name in wanted for entry in (name, *self._also[name].values())]
        for group in dict.fromkeys(self._group_of[entry] for entry in entries):
            if group.kind not in done:
                if self.bound is None:
                    raise TypeError(
                        f"The {label!r} data is a {type(data).__name__}, not oodscope.Features, and no model "
                        "was given to run over it: pass model=... or precomputed Features."
                    )
                done[group.kind] = group.run(self.bound, data, label, self.strict)
                ran += 1
        seconds = time.perf_counter() - start if ran else 0.0  # data seen before costs nothing
        if timings is not None:
            timings[label] = timings.get(label, 0.0) + seconds
        log.info("%r: %d pass(es) in %.2f s.", label, ran, seconds)
        return {name: self._view(done, name) for name in wanted}

    def _view(self, done: Mapping[PassKind, Features], name: str) -> Features:
        group = self._group_of[name]
        features = group.view(done[group.kind], name)
        if not self._also[name]:
            return features
        layers = dict(features.layers)
        for other, entry in self._also[name].items():
            part = self._group_of[entry]
            given = part.view(done[part.kind], entry)
            layers.update({FromPass(other, key): values for key, values in given.layers.items()})
            layers[FromPass(other, LOGITS)] = given.logits
            if features.head_weight is None:  # the same head in every pass, read by whichever asked for it
                features = dataclasses.replace(
                    features, head_weight=given.head_weight, head_bias=given.head_bias
                )
        return Features._unchecked(
            logits=features.logits,
            layers=layers,
            labels=features.labels,
            head_weight=features.head_weight,
            head_bias=features.head_bias,
            pass_kind=features.pass_kind,
        )

    def forget(self, data: Any) -> None:
        """Drop the features kept for ``data``."""
        self._done = [(known, extracted) for known, extracted in self._done if known is not data]
