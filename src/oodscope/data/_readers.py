"""Readers for the file formats that image data sets are published in. numpy only (scipy for ``.mat``).

- IDX (MNIST, Fashion-MNIST, KMNIST...): ``*-images-idx3-ubyte`` / ``*-labels-idx1-ubyte``, plain or ``.gz``;
- the CIFAR "python version" batches (pickles, read with the restricted unpickler), extracted or inside the
  published ``.tar.gz``;
- SVHN's cropped-digit ``.mat`` files (``X`` [32, 32, 3, N], ``y`` [N, 1] with 10 standing for digit 0);
- ``.npz`` archives of arrays.
"""

from __future__ import annotations

import gzip
import tarfile
from pathlib import Path

import numpy as np

from ._safe_pickle import safe_load

# IDX type codes -> big-endian numpy dtypes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (gzip-compressed or not), in native byte order.

    >>> import tempfile, os
    >>> header = bytes([0, 0, 0x08, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = os.path.join(folder, "tiny-images-idx2-ubyte")
    ...     _ = open(path, "wb").write(header + bytes(range(6)))
    ...     read_idx(path)
    array([[0, 1, 2],
           [3, 4, 5]], dtype=uint8)
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as file:
        raw = file.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()}).")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: the header announces {expected} bytes for shape {shape}; found {len(raw)}."
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_file(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` or ``folder/stem.gz``, whichever exists (the plain file first)."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx_pair(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(images [N, H, W, 1] uint8, labels [N] int64)`` from ``{prefix}-images-idx3-ubyte(.gz)`` and
    ``{prefix}-labels-idx1-ubyte(.gz)`` in ``folder``, or None when either file is missing."""
    images_path = find_file(folder, f"{prefix}-images-idx3-ubyte")
    labels_path = find_file(folder, f"{prefix}-labels-idx1-ubyte")
    if images_path is None or labels_path is None:
        return None
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{images_path} and {labels_path} do not hold N images and N labels.")
    return images[..., None], labels.astype(np.int64)


def _cifar_batches(records: list[dict], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    data = np.concatenate([np.asarray(record[b"data"], dtype=np.uint8) for record in records])
    labels = np.concatenate([np.asarray(record[label_key], dtype=np.int64) for record in records])
    # rows are 3072 bytes: the red plane, then green, then blue, each 32x32 row-major
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), labels


def _byte_keys(record: dict) -> dict:
    return {key.encode("latin1") if isinstance(key, str) else key: value for key, value in record.items()}


def read_cifar(location: Path, member_names: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 32, 32, 3] uint8 and labels [N] int64 from CIFAR python batches.

    ``location`` is the extracted folder (``cifar-10-batches-py``) or the ``.tar.gz`` it was extracted from;
    ``member_names`` the batch files in order (``data_batch_1``... or ``train``).
    """
    key = label_key.encode()
    if location.is_dir():
        records = [_byte_keys(safe_load(location / name)) for name in member_names]
    else:
        with tarfile.open(location, "r:*") as archive:
            by_name = {Path(member.name).name: member for member in archive.getmembers() if member.isfile()}
            records = []
            for name in member_names:
                file = archive.extractfile(by_name[name])
                if file is None:
                    raise ValueError(f"{location}: {name} is not a regular file.")
                records.append(_byte_keys(safe_load(file)))
    return _cifar_batches(records, key)


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 32, 32, 3] uint8 and labels [N] int64 (digit 0 labelled 0, not 10) from SVHN ``.mat``."""
    from scipy.io import loadmat

    content = loadmat(path)
    images = np.ascontiguousarray(np.asarray(content["X"], dtype=np.uint8).transpose(3, 0, 1, 2))
    labels = np.asarray(content["y"], dtype=np.int64).reshape(-1)
    return images, np.where(labels == 10, 0, labels)


def read_npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray | None] | None:
    """``(inputs, labels or None)`` of ``split`` from an ``.npz``, or None when it lacks that split.

    Accepted keys: ``x_{split}`` / ``y_{split}`` (Keras' ``mnist.npz`` layout), else, for a file holding one
    split, ``x`` / ``image`` / ``images`` / ``inputs`` and ``y`` / ``label`` / ``labels``.
    """
    with np.load(path, allow_pickle=False) as archive:
        keys = set(archive.files)
        if f"x_{split}" in keys:
            labels_key = f"y_{split}" if f"y_{split}" in keys else None
            return archive[f"x_{split}"], None if labels_key is None else archive[labels_key]
        if any(key.startswith("x_") for key in keys):
            return None
        input_key = next((key for key in ("x", "image", "images", "inputs") if key in keys), None)
        if input_key is None:
            raise ValueError(
                f"{path} has no inputs under x_{split}, x, image, images or inputs: {sorted(keys)}"
            )
        label_key = next((key for key in ("y", "label", "labels") if key in keys), None)
        return archive[input_key], None if label_key is None else archive[label_key]
