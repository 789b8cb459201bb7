"""Image batches in numpy: channel conversion and resizing, channels-last [N, H, W, C].

Resizing follows the half-pixel-centre convention of ``tf.image.resize`` and of torch's ``interpolate``
with ``align_corners=False`` (``"nearest"`` matches torch's ``"nearest-exact"``), without antialiasing.
uint8 images come back as uint8 (rounded), other dtypes as float32.
"""

from __future__ import annotations

import numpy as np

RESIZE_METHODS = ("bilinear", "nearest")
# ITU-R BT.601 luma, as tf.image.rgb_to_grayscale
_LUMA = np.array([0.2989, 0.5870, 0.1140], dtype=np.float32)


def _back_to(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.uint8:
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return values.astype(np.float32, copy=False)


def convert_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """``images`` [N, H, W, C] with ``channels`` channels: 1 -> 3 repeats the grey level (a broadcast view,
    no copy); 3 or 4 -> 1 is the BT.601 luma of RGB; 4 -> 3 drops alpha.

    >>> grey = np.array([[[[10], [200]]]], dtype=np.uint8)
    >>> convert_channels(grey, 3)[0, 0]
    array([[ 10,  10,  10],
           [200, 200, 200]], dtype=uint8)
    >>> convert_channels(convert_channels(grey, 3), 1)[0, 0, :, 0]
    array([ 10, 200], dtype=uint8)
    """
    have = images.shape[-1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return np.broadcast_to(images, (*images.shape[:-1], 3))
    if have in (3, 4) and channels == 1:
        luma = images[..., :3].astype(np.float32) @ _LUMA
        return _back_to(luma[..., None], images.dtype)
    if have == 4 and channels == 3:
        return images[..., :3]
    raise ValueError(f"Cannot convert images with {have} channels to {channels} channels.")


def _source_coords(out_size: int, in_size: int) -> np.ndarray:
    scale = in_size / out_size
    return (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5


def _linear_axis(images: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    in_size = images.shape[axis]
    coords = np.clip(_source_coords(out_size, in_size), 0, in_size - 1)
    low = np.floor(coords).astype(np.intp)
    high = np.minimum(low + 1, in_size - 1)
    weight = (coords - low).astype(np.float32)
    shape = [1] * images.ndim
    shape[axis] = out_size
    weight = weight.reshape(shape)
    below, above = np.take(images, low, axis=axis), np.take(images, high, axis=axis)
    return below * (1 - weight) + above * weight


def resize_images(images: np.ndarray, size: tuple[int, int], method: str = "bilinear") -> np.ndarray:
    """Resize ``images`` [N, H, W, C] to ``size`` = (height, width) with ``"bilinear"`` or ``"nearest"``.

    >>> images = np.arange(4, dtype=np.uint8).reshape(1, 2, 2, 1) * 60
    >>> resize_images(images, (4, 4), "nearest")[0, :, :, 0]
    array([[  0,   0,  60,  60],
           [  0,   0,  60,  60],
           [120, 120, 180, 180],
           [120, 120, 180, 180]], dtype=uint8)
    >>> resize_images(images, (4, 4))[0, :, :, 0]
    array([[  0,  15,  45,  60],
           [ 30,  45,  75,  90],
           [ 90, 105, 135, 150],
           [120, 135, 165, 180]], dtype=uint8)
    """
    if method not in RESIZE_METHODS:
        raise ValueError(f"Unknown resize method {method!r}; expected one of {RESIZE_METHODS}.")
    height, width = (int(side) for side in size)
    if images.shape[1:3] == (height, width):
        return images
    if method == "nearest":
        rows = np.minimum(np.floor((np.arange(height) + 0.5) * images.shape[1] / height), images.shape[1] - 1)
        cols = np.minimum(np.floor((np.arange(width) + 0.5) * images.shape[2] / width), images.shape[2] - 1)
        return images[:, rows.astype(np.intp)][:, :, cols.astype(np.intp)]
    values = images.astype(np.float32, copy=False)
    values = _linear_axis(_linear_axis(values, height, axis=1), width, axis=2)
    return _back_to(values, images.dtype)
