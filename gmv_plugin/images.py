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


# --- batched decoding for the pixel embedder's workers ------------------------

_PRECISION = 22  # PIL's fixed-point bits for 8-bit resampling (32 - 8 - 2)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # a complete file ends with its empty IEND chunk


def _bilinear_weights(in_size, out_size):
    """PIL's fixed-point bilinear weights from ``in_size`` to ``out_size``
    pixels as a dense float64 ``(out_size, in_size)`` matrix of integers
    (the same support, rounding and normalization as Pillow's resampler)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = filterscale
    ss = 1.0 / filterscale
    weights = np.zeros((out_size, in_size))
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        k = [max(0.0, 1.0 - abs((x + xmin - center + 0.5) * ss)) for x in range(xmax)]
        total = 0.0
        for w in k:
            total += w
        for x, w in enumerate(k):
            if total != 0.0:
                w = w / total
            weights[xx, xmin + x] = int(0.5 + w * (1 << _PRECISION))
    return weights


def _taps(in_size, out_size):
    """The weights as taps: ``(index, weight)``, two int ``(out_size, K)``
    arrays (K: the most input pixels one output pixel reads)."""
    weights = _bilinear_weights(in_size, out_size)
    nz = weights != 0
    first = np.where(nz.any(axis=1), nz.argmax(axis=1), 0)
    k = max(1, int((in_size - nz[:, ::-1].argmax(axis=1) - first).max()))
    idx = np.minimum(first[:, None] + np.arange(k), in_size - 1)
    w = np.take_along_axis(weights, idx, axis=1)
    w[first[:, None] + np.arange(k) >= in_size] = 0
    return idx, w.astype(np.int32)


def _resample(stack, taps):
    """One PIL pass along the last axis of a uint8 stack (int32 sums: at most
    255 * 2**22 plus rounding)."""
    idx, w = taps
    acc = np.full(stack.shape[:-1] + (len(idx),), 1 << (_PRECISION - 1), np.int32)
    for t in range(idx.shape[1]):
        acc += stack[..., idx[:, t]] * w[:, t]
    acc >>= _PRECISION
    return np.clip(acc, 0, 255).astype(np.uint8)


_PLANS = {}


PLAN_MIN_IMAGES = 8  # a pair of sizes is checked for at least this many images (the check costs two PIL resizes)
MAX_PLANS = 256


def resize_gray(stack, width, height):
    """``Image.resize((width, height), Image.BILINEAR)`` of each uint8
    ``(N, H, W)`` grayscale image, bit for bit, in two vectorized passes; or
    None when this Pillow's result for these sizes is not reproduced (each
    pair of sizes is checked once against the installed Pillow on random
    images, which also tells which pass Pillow runs first), or when the
    sizes are new and there are fewer than :data:`PLAN_MIN_IMAGES` images
    (then PIL image by image costs less than the check)."""
    n, h, w = stack.shape
    key = (h, w, height, width)
    if key not in _PLANS:
        if n < PLAN_MIN_IMAGES:
            return None
        if len(_PLANS) >= MAX_PLANS:  # many sizes: keep the memory bounded
            _PLANS.clear()
        _PLANS[key] = _plan(h, w, height, width)
    plan = _PLANS[key]
    if plan is None:
        return None
    return _run_plan(stack, plan)


def _run_plan(stack, plan):
    out = stack
    for axis, taps in plan:
        if axis == 2:
            out = _resample(out, taps)
        else:
            out = np.ascontiguousarray(_resample(out.transpose(0, 2, 1), taps).transpose(0, 2, 1))
    return out


def _plan(h, w, height, width):
    """The passes that reproduce Pillow for these sizes, or None. Pillow runs
    the vertical pass first for some sizes: the order is the one of the two
    that alone matches Pillow on random probe images (at least 4,096 output
    pixels); when both match, the probes cannot tell and PIL is used."""
    horizontal = [(2, _taps(w, width))] if w != width else []
    vertical = [(1, _taps(h, height))] if h != height else []
    count = int(min(256, max(2, -(-4096 // min(h * w, height * width)))))
    probe = np.random.default_rng(0).integers(0, 256, (count, h, w)).astype(np.uint8)
    probe[0] = 255
    expected = np.stack([np.asarray(Image.fromarray(p).resize((width, height), Image.BILINEAR)) for p in probe])
    orders = [horizontal + vertical] + ([vertical + horizontal] if horizontal and vertical else [])
    found = [plan for plan in orders if np.array_equal(_run_plan(probe, plan), expected)]
    return found[0] if len(found) == 1 else None


def read_gray_png(path):
    """A plain 8-bit grayscale PNG (no transparency) as a uint8 ``(H, W)``
    array, decoded with OpenCV (about twice as fast as PIL on small images;
    the pixels are the same); None for any other file, which the caller
    then reads with PIL."""
    try:
        import cv2
    except ImportError:  # PIL reads it
        return None

    fd = os.open(path, os.O_RDONLY)  # plain system calls: a third of open()'s cost on small files
    try:
        parts = [os.read(fd, os.fstat(fd).st_size + 1)]
        while parts[-1]:  # a short read, or the file grew
            parts.append(os.read(fd, 1 << 20))
    finally:
        os.close(fd)
    data = b"".join(parts)
    # IHDR follows the signature: length, type, width, height, bit depth, colour type
    if data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR" or len(data) < 45 or data[24] != 8 \
            or data[25] != 0 or not data.endswith(_PNG_END) or b"tRNS" in data:
        return None
    pixels = int.from_bytes(data[16:20], "big") * int.from_bytes(data[20:24], "big")
    if Image.MAX_IMAGE_PIXELS is not None and pixels > Image.MAX_IMAGE_PIXELS:
        return None  # PIL's decompression-bomb check decides
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint8 or arr.ndim != 2:
        return None
    return arr
