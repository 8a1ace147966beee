"""Corrupted images and planted copies for the truth benchmark and tests.

Every function takes ``uint8`` images ``(N, H, W)`` (grayscale, 0..255) and a
``numpy.random.Generator`` and returns new ``uint8`` images of the same shape;
the inputs are never modified.

- :data:`CORRUPTIONS`: name -> function, the corruption suite of the cleansing
  benchmark (Gaussian noise, salt-and-pepper, blur, JPEG artefacts, occlusion,
  contrast/brightness shift, pixelation).
- :data:`UNSEEN_CORRUPTIONS`: kinds that were *not* looked at while designing
  the cleansing score (reported separately, as a check of generalization).
- :data:`COPY_KINDS`: name -> function, the near-copies planted among generated
  images (exact, flipped, shifted, cropped, noised, contrast-changed).
"""

import io

import numpy as np
from scipy import ndimage


def _f(x):
    return np.asarray(x, dtype=np.float64) / 255.0


def _u8(x):
    return (np.clip(x, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def gaussian_noise(images, rng, sigma=0.4):
    """Additive Gaussian noise, std ``sigma`` on the [0, 1] scale, clipped."""
    x = _f(images)
    return _u8(x + rng.normal(0.0, sigma, x.shape))


def salt_and_pepper(images, rng, amount=0.1):
    """A share ``amount`` of the pixels set to black or white (half each)."""
    x = _f(images).copy()
    u = rng.random(x.shape)
    x[u < amount / 2] = 0.0
    x[(u >= amount / 2) & (u < amount)] = 1.0
    return _u8(x)


def blur(images, rng, sigma=1.5):
    """Gaussian blur of std ``sigma`` pixels."""
    x = _f(images)
    return _u8(np.stack([ndimage.gaussian_filter(im, sigma) for im in x]))


def jpeg(images, rng, quality=8):
    """JPEG compression at ``quality`` (block and ringing artefacts)."""
    from PIL import Image

    out = []
    for im in np.asarray(images):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        out.append(np.asarray(Image.open(buf).convert("L")))
    return np.stack(out).astype(np.uint8)


def occlusion(images, rng, size=10, value=1.0):
    """A ``size`` x ``size`` square of ``value`` at a random place over the digit's
    central region (a white occluder; cutout)."""
    x = _f(images).copy()
    h, w = x.shape[1:]
    for im in x:
        top = rng.integers(h // 4 - size // 4, 3 * h // 4 - 3 * size // 4 + 1)
        left = rng.integers(w // 4 - size // 4, 3 * w // 4 - 3 * size // 4 + 1)
        im[top : top + size, left : left + size] = value
    return _u8(x)


def contrast_brightness(images, rng, contrast=0.5, brightness=0.35):
    """``contrast * x + brightness``: a washed-out, grey-background image."""
    return _u8(contrast * _f(images) + brightness)


def pixelate(images, rng, block=4):
    """Mean over ``block`` x ``block`` cells, shown at full size (mosaic)."""
    x = _f(images)
    n, h, w = x.shape
    cells = x.reshape(n, h // block, block, w // block, block).mean(axis=(2, 4))
    return _u8(np.repeat(np.repeat(cells, block, axis=1), block, axis=2))


def inversion(images, rng):
    """White background, black strokes (``1 - x``)."""
    return _u8(1.0 - _f(images))


def scanlines(images, rng, period=3, value=0.6):
    """Every ``period``-th row raised to at least ``value`` (scanner stripes)."""
    x = _f(images).copy()
    x[:, ::period, :] = np.maximum(x[:, ::period, :], value)
    return _u8(x)


def speckle(images, rng, sigma=0.6):
    """Multiplicative noise ``x * (1 + n)`` plus a faint background haze."""
    x = _f(images)
    return _u8(x * (1.0 + rng.normal(0.0, sigma, x.shape)) + 0.15 * rng.random(x.shape))


CORRUPTIONS = {
    "gaussian_noise": gaussian_noise,
    "salt_and_pepper": salt_and_pepper,
    "blur": blur,
    "jpeg": jpeg,
    "occlusion": occlusion,
    "contrast_brightness": contrast_brightness,
    "pixelate": pixelate,
}

UNSEEN_CORRUPTIONS = {
    "inversion": inversion,
    "scanlines": scanlines,
    "speckle": speckle,
}


# --------------------------------------------------------------------------- copies


def copy_exact(images, rng):
    """The training image itself."""
    return np.asarray(images).copy()


def copy_flipped(images, rng):
    """Mirrored left to right."""
    return np.asarray(images)[:, :, ::-1].copy()


def _content_box(im):
    rows = np.flatnonzero(im.any(axis=1))
    cols = np.flatnonzero(im.any(axis=0))
    if not rows.size:
        return 0, im.shape[0], 0, im.shape[1]
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def copy_shifted(images, rng, max_shift=4):
    """Moved by up to ``max_shift`` pixels in each direction (at least 1 in one),
    as far as the content stays inside the frame (zero fill)."""
    out = []
    for im in np.asarray(images):
        top, bottom, left, right = _content_box(im)
        h, w = im.shape
        lo_y, hi_y = max(-top, -max_shift), min(h - bottom, max_shift)
        lo_x, hi_x = max(-left, -max_shift), min(w - right, max_shift)
        dy, dx = 0, 0
        while dy == 0 and dx == 0 and (lo_y < hi_y or lo_x < hi_x):
            dy, dx = rng.integers(lo_y, hi_y + 1), rng.integers(lo_x, hi_x + 1)
        out.append(ndimage.shift(im, (dy, dx), order=0, mode="constant", cval=0))
    return np.stack(out).astype(np.uint8)


def copy_cropped(images, rng, keep=(0.75, 0.9)):
    """A random crop keeping ``keep`` of each side (and the whole content where
    it fits), resized back: a zoomed-in copy."""
    from PIL import Image

    out = []
    for im in np.asarray(images):
        h, w = im.shape
        s = rng.uniform(*keep)
        ch, cw = int(round(h * s)), int(round(w * s))
        ctop, cbottom, cleft, cright = _content_box(im)
        top_lo, top_hi = max(0, cbottom - ch), min(ctop, h - ch)
        left_lo, left_hi = max(0, cright - cw), min(cleft, w - cw)
        top = rng.integers(top_lo, top_hi + 1) if top_lo <= top_hi else rng.integers(0, h - ch + 1)
        left = rng.integers(left_lo, left_hi + 1) if left_lo <= left_hi else rng.integers(0, w - cw + 1)
        crop = Image.fromarray(im[top : top + ch, left : left + cw])
        out.append(np.asarray(crop.resize((w, h), Image.BILINEAR)))
    return np.stack(out).astype(np.uint8)


def copy_noised(images, rng, sigma=0.15):
    """Gaussian noise of std ``sigma`` (a lightly perturbed copy)."""
    return gaussian_noise(images, rng, sigma=sigma)


def copy_contrast(images, rng, gain=(0.5, 0.8)):
    """Intensities scaled by a random gain (a darker copy)."""
    x = _f(images)
    g = rng.uniform(*gain, size=(len(x), 1, 1))
    return _u8(x * g)


COPY_KINDS = {
    "exact": copy_exact,
    "flipped": copy_flipped,
    "shifted": copy_shifted,
    "cropped": copy_cropped,
    "noised": copy_noised,
    "contrast": copy_contrast,
}
