"""Batch pipelines over numpy columns: a ``tf.data.Dataset`` or a torch ``DataLoader``.

Both pipelines shuffle and batch *indices*, then gather each batch from the arrays in one vectorised step
(no per-sample Python code, no copy of the data set per epoch), and call the user's functions once per
batch. The frameworks are imported only when a pipeline is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..backends import require

BatchFn = Callable[..., Any]


def _apply(functions: Sequence[BatchFn], batch: tuple[Any, ...]) -> Any:
    for function in functions:
        batch = function(*batch) if isinstance(batch, tuple) else function(batch)
    return batch


def tf_pipeline(
    columns: Sequence[np.ndarray],
    batch_size: int,
    functions: Sequence[BatchFn],
    shuffle: bool,
    shuffle_buffer_size: int | None,
    seed: int | None,
    drop_remainder: bool,
) -> Any:
    """A ``tf.data.Dataset`` of tuples of batches of ``columns`` (channels as stored), prefetched."""
    tf = require("tensorflow", "tensorflow")
    tensors = tuple(tf.convert_to_tensor(column) for column in columns)
    n = len(columns[0])
    indices = tf.data.Dataset.range(n)
    if shuffle:
        buffer = n if shuffle_buffer_size is None else int(shuffle_buffer_size)
        indices = indices.shuffle(max(buffer, 1), seed=seed, reshuffle_each_iteration=True)
    indices = indices.batch(batch_size, drop_remainder=drop_remainder)

    def gather(batch_indices: Any) -> tuple[Any, ...]:
        return tuple(tf.gather(tensor, batch_indices) for tensor in tensors)

    dataset = indices.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    for function in functions:
        dataset = dataset.map(function, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


class _ArrayBatches:
    """A map-style dataset whose items are whole batches: ``batches[list_of_indices]`` gathers one batch.

    A torch ``DataLoader`` needs only ``__getitem__`` and ``__len__`` from its dataset.
    """

    def __init__(self, columns: Sequence[np.ndarray], channels_first: bool, functions: Sequence[BatchFn]):
        # a transposed view: np.take below writes each batch straight into channels-first order
        self.columns = [
            column.transpose(0, 3, 1, 2) if channels_first and index == 0 else column
            for index, column in enumerate(columns)
        ]
        self.functions = list(functions)

    def __len__(self) -> int:
        return len(self.columns[0])

    def __getitem__(self, indices: Sequence[int]) -> Any:
        import torch

        positions = np.asarray(indices, dtype=np.intp)
        batch = tuple(torch.from_numpy(np.take(column, positions, axis=0)) for column in self.columns)
        return _apply(self.functions, batch)


def _whole_batch(batch: Any) -> Any:
    return batch


def torch_pipeline(
    columns: Sequence[np.ndarray],
    batch_size: int,
    functions: Sequence[BatchFn],
    shuffle: bool,
    seed: int | None,
    drop_remainder: bool,
) -> Any:
    """A torch ``DataLoader`` of tuples of batch tensors; 4-D image inputs become [B, C, H, W]."""
    torch = require("torch", "torch")
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

    batches = _ArrayBatches(columns, channels_first=columns[0].ndim == 4, functions=functions)
    generator = None if seed is None else torch.Generator().manual_seed(int(seed))
    order = RandomSampler(batches, generator=generator) if shuffle else SequentialSampler(batches)
    return DataLoader(
        batches,
        batch_size=None,
        sampler=BatchSampler(order, batch_size, drop_last=drop_remainder),
        collate_fn=_whole_batch,
        generator=generator,
    )
