"""Measurable attributes of handwritten digits, for C2 (identical attributes) on MNIST.

MNIST has no attribute labels, so C2 uses attributes measured from the pixels
of each digit (ink = pixels at or above half the image's maximum):

- ``thickness``: mean stroke width in pixels, ``2 * ink area / ink perimeter``
  (perimeter = number of ink/background pixel edges, 4-neighbourhood): a
  stroke of length L and width w has area ``L * w`` and perimeter about
  ``2 * L``;
- ``slant``: shear of the ink, ``-mu11 / mu02`` from its second central
  moments (x per unit of y, image y pointing down): > 0 leans right, as in
  the classic MNIST deskewing;
- ``width``: width of the ink's bounding box, in pixels (MNIST digits are
  scaled to a 20-pixel box on their longer side, so height is nearly
  constant and width carries the size);
- ``ink``: the ink's share of the image area (how much of the frame the
  digit fills).

:func:`bin_attributes` turns them into ``low`` / ``mid`` / ``high`` with edges
at the training set's terciles, so C2 compares like with like: the share of a
generated digit's top-k contributors in the same bin, chance being about 1/3.
"""

import numpy as np

ATTRIBUTES = ("thickness", "slant", "width", "ink")
BIN_NAMES = ("low", "mid", "high")


def digit_attributes(images):
    """Measures :data:`ATTRIBUTES` of grayscale digits.

    Args:
        images: ``(N, H, W)`` array, uint8 or float, white ink on black

    Returns:
        a dict mapping each attribute name to a float64 ``(N,)`` array
    """
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError("images must be an (N, H, W) array; got shape %s" % (x.shape,))
    n, h, w = x.shape
    peak = x.reshape(n, -1).max(axis=1)
    ink = x >= 0.5 * np.maximum(peak, 1e-12)[:, None, None]
    ink &= (peak > 0)[:, None, None]
    area = ink.sum(axis=(1, 2)).astype(np.float64)
    padded = np.pad(ink, ((0, 0), (1, 1), (1, 1)))
    perim = (np.diff(padded, axis=1) != 0).sum(axis=(1, 2)) + (np.diff(padded, axis=2) != 0).sum(axis=(1, 2))
    safe = np.maximum(area, 1.0)
    thickness = 2.0 * area / np.maximum(perim, 1)

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy = (ink * yy).sum(axis=(1, 2)) / safe
    cx = (ink * xx).sum(axis=(1, 2)) / safe
    dy = yy[None] - cy[:, None, None]
    dx = xx[None] - cx[:, None, None]
    mu11 = (ink * dx * dy).sum(axis=(1, 2)) / safe
    mu02 = (ink * dy * dy).sum(axis=(1, 2)) / safe
    slant = -mu11 / np.maximum(mu02, 1e-12)

    cols = ink.any(axis=1)
    first = np.argmax(cols, axis=1)
    last = w - 1 - np.argmax(cols[:, ::-1], axis=1)
    width = np.where(cols.any(axis=1), last - first + 1, 0).astype(np.float64)
    return {
        "thickness": thickness,
        "slant": slant,
        "width": width,
        "ink": area / (h * w),
    }


def bin_edges(train_values, n_bins=3):
    """Edges at the quantiles ``1/n_bins, ..., (n_bins-1)/n_bins`` of ``train_values``."""
    q = np.linspace(0, 1, n_bins + 1)[1:-1]
    return np.quantile(np.asarray(train_values, dtype=np.float64), q)


def bin_attributes(attributes, edges):
    """Bins each attribute at ``edges[name]``; returns name -> array of bin names.

    With three bins the names are :data:`BIN_NAMES`; otherwise ``"b0"``, ``"b1"``...
    """
    out = {}
    for name, vals in attributes.items():
        e = np.asarray(edges[name])
        names = BIN_NAMES if len(e) == 2 else tuple("b%d" % i for i in range(len(e) + 1))
        out[name] = np.asarray(names, dtype=object)[np.searchsorted(e, vals, side="right")]
    return out
