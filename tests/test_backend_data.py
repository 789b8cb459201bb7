"""oodscope.backends.data: framework data recognised by type, counted, batched, and made numpy."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from oodscope._batches import count_batches, count_rows, iter_batches
from oodscope.backends import data as kinds
from oodscope.backends.data import (
    TF_DATASET,
    TF_TENSOR,
    TORCH_MAP_DATASET,
    TORCH_TENSOR,
    DataKind,
    data_kind,
    tensor_kind,
    to_numpy,
)


def test_plain_data_has_no_kind():
    for data in (np.zeros((4, 2)), [np.zeros((2, 2))], (np.zeros(2), np.zeros(2)), {"x": np.zeros(2)}, "x"):
        assert data_kind(data) is None
        assert tensor_kind(data) is None
    assert to_numpy([[1, 2], [3, 4]]).tolist() == [[1, 2], [3, 4]]
    array = np.arange(3.0)
    assert to_numpy(array) is array


def test_torch_kinds():
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, IterableDataset, TensorDataset

    x, y = torch.arange(10.0).reshape(5, 2), torch.tensor([0, 1, 0, 1, 1])
    dataset = TensorDataset(x, y)
    assert data_kind(dataset) is TORCH_MAP_DATASET
    assert count_rows(dataset) == 5 and count_batches(dataset, 2) == 3
    batches = list(iter_batches(dataset, batch_size=2))
    assert [len(inputs) for inputs, _ in batches] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([labels for _, labels in batches]), [0, 1, 0, 1, 1])

    class Stream(IterableDataset):
        def __iter__(self):
            yield x

    # a DataLoader and an iterable dataset are iterables of batches, read as they come
    assert data_kind(DataLoader(dataset, batch_size=2)) is None
    assert data_kind(Stream()) is None

    tensor = (x * 2).requires_grad_(True)
    assert tensor_kind(tensor) is TORCH_TENSOR and TORCH_TENSOR.channels_first
    np.testing.assert_array_equal(to_numpy(tensor), np.arange(10.0).reshape(5, 2) * 2)
    assert tensor_kind(torch.Size([2, 3])) is None  # defined in torch, but no tensor
    assert to_numpy(torch.Size([2, 3])).tolist() == [2, 3]


def test_tensorflow_kinds():
    tf = pytest.importorskip("tensorflow")

    dataset = tf.data.Dataset.from_tensor_slices((np.arange(10.0).reshape(5, 2), np.arange(5))).batch(2)
    assert data_kind(dataset) is TF_DATASET
    assert count_rows(dataset) is None  # a dataset counts batches, not rows
    assert "dataset.batch(128)" in TF_DATASET.failure_hint
    batches = list(iter_batches(dataset, batch_size=100))  # the dataset's own batches
    assert [len(inputs) for inputs, _ in batches] == [2, 2, 1]
    assert all(isinstance(inputs, np.ndarray) for inputs, _ in batches)

    tensor = tf.constant([[1.0, 2.0]])
    assert tensor_kind(tensor) is TF_TENSOR and not TF_TENSOR.channels_first
    assert to_numpy(tensor).tolist() == [[1.0, 2.0]]
    assert to_numpy(tf.Variable([3, 4])).tolist() == [3, 4]


def test_recognition_reads_the_type_and_imports_nothing():
    code = (
        "import json, sys\n"
        "from oodscope.backends.data import data_kind, tensor_kind\n"
        "Fake = type('DatasetV2', (), {'__module__': 'tensorflow.python.data.ops.dataset_ops',\n"
        "                              'as_numpy_iterator': lambda self: iter(())})\n"
        "Tensor = type('Tensor', (), {'__module__': 'torch', 'detach': lambda self: self})\n"
        "print(json.dumps([data_kind(Fake()).name, tensor_kind(Tensor()).framework,\n"
        "                  sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tensorflow'))]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["tf.data.Dataset", "torch", []]


class _Table:
    """Stands for a data set type of a library oodscope does not know yet (rows of a column store)."""

    def __init__(self, images, labels):
        self.columns = {"image": images, "label": labels}

    def __len__(self):
        return len(self.columns["label"])


def test_a_new_kind_is_one_entry(monkeypatch):
    table_kind = DataKind(
        name="table",
        recognises=lambda data: isinstance(data, _Table),
        batches=lambda data, batch_size: (
            {key: column[start : start + batch_size] for key, column in data.columns.items()}
            for start in range(0, len(data), batch_size)
        ),
        rows=len,
        failure_hint="Tables are read in row order.",
    )
    monkeypatch.setattr(kinds, "DATA_KINDS", (*kinds.DATA_KINDS, table_kind))
    table = _Table(np.arange(14.0).reshape(7, 2), np.arange(7) % 3)
    assert data_kind(table) is table_kind and count_batches(table, 3) == 3
    batches = list(iter_batches(table, batch_size=3))
    assert [inputs.shape for inputs, _ in batches] == [(3, 2), (3, 2), (1, 2)]
    np.testing.assert_array_equal(batches[2][1], [0])

    from oodscope._batches import note_failed_batch

    error = ValueError("boom")
    note_failed_batch(error, 1, batches[0][0], table)
    if hasattr(error, "__notes__"):
        assert error.__notes__[0].endswith("Tables are read in row order.")
