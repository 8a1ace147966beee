"""Reading images from disk into fixed-size float arrays."""

import os

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageReadError(ValueError):
    """An image file is missing or cannot be decoded."""


def read_image(path, size=None, mode="RGB"):
    """Reads one image as a float32 ``(C, H, W)`` array in ``[0, 1]``.

    Args:
        path: the image path
        size (None): resize to ``size x size`` (bilinear) when given
        mode ("RGB"): PIL mode to convert to, ``"RGB"`` or ``"L"``

    Raises:
        ImageReadError: if the file is missing or is not a readable image
    """
    if not os.path.isfile(path):
        raise ImageReadError("Image file not found: %s" % path)
    try:
        with Image.open(path) as img:
            img = _to_8bit(img).convert(mode)
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ImageReadError("Cannot read image %s: %s" % (path, e)) from e
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return arr


def _to_8bit(img):
    """16-bit images keep their top 8 bits, as FiftyOne's own image loader
    (OpenCV) does, so every stage sees the same pixels."""
    if img.mode.startswith("I;16") or img.mode == "I":
        arr = np.asarray(img).astype(np.uint32)
        return Image.fromarray((arr >> 8).clip(0, 255).astype(np.uint8), "L")
    return img


def read_images(paths, size, mode="RGB"):
    """Reads images as a float32 ``(N, C, size, size)`` array in ``[0, 1]``."""
    channels = 1 if mode == "L" else 3
    out = np.empty((len(paths), channels, size, size), dtype=np.float32)
    for i, path in enumerate(paths):
        out[i] = read_image(path, size=size, mode=mode)
    return out


def to_pil(arr, mode="RGB"):
    """Converts a numpy image (HxW, HxWxC, uint8 or float in [0, 1]) to PIL."""
    arr = np.asarray(arr)
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return Image.fromarray(arr).convert(mode)


def find_unreadable(paths, limit=None):
    """Returns the paths among ``paths`` that are missing or undecodable."""
    bad = []
    for path in paths:
        if not os.path.isfile(path):
            bad.append(path)
        else:
            try:
                with Image.open(path) as img:
                    img.verify()
            except Exception:
                bad.append(path)
        if limit is not None and len(bad) >= limit:
            break
    return bad
