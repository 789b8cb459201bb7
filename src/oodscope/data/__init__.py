"""Data for OOD experiments: load named or in-memory data, split it by class, mix ID with OOD data, batch it.

:class:`OODDataset` holds a data set as numpy arrays (images uint8 [N, H, W, C] and int64 labels for the
named sets) and turns it into a ``tf.data.Dataset`` or a torch ``DataLoader`` with :meth:`OODDataset.prepare`.
Named data sets are read from local files or offline packages, never downloaded; :mod:`oodscope.data.sources`
lists where each comes from. Importing this package imports neither TensorFlow nor torch.

>>> from oodscope.data import OODDataset
>>> train = OODDataset("digits", load_kwargs=dict(split="train"), backend="torch")
>>> ds_in, ds_out = train.split_by_class([0, 1, 2, 3, 4])
>>> len(train), len(ds_in) + len(ds_out), ds_in.num_classes
(1000, 1000, 10)
"""

from ._safe_pickle import RestrictedUnpickler, safe_load
from .dataset import OODDataset, default_backend
from .sources import DATASETS, SOURCES, DatasetNotAvailableError, known_datasets, load_named

__all__ = [
    "DATASETS",
    "SOURCES",
    "DatasetNotAvailableError",
    "OODDataset",
    "RestrictedUnpickler",
    "default_backend",
    "known_datasets",
    "load_named",
    "safe_load",
]
