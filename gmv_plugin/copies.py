"""Near-copy (memorization) flags for generated images.

A generated image is a copy when it is much closer to one training image than
training images are to each other. Closeness is measured on a *copy
descriptor* that ignores what a copy may change without becoming a new image:

- position and zoom: the content is sampled on a square grid centred on its
  centroid and scaled by its radius of gyration (shifted and cropped copies);
- contrast and brightness: the descriptor is the background-subtracted,
  smoothed content above 20% of its peak, zero-mean and unit-norm (darker or
  washed-out copies);
- light noise: smoothing and the threshold (noised copies);
- mirroring: each generated image is compared unflipped and flipped left to
  right, the closer one counts (flipped copies).

Content is what differs from the image's border (its background), so the
descriptor suits objects on a plain background (digits, product shots);
where the content fills the image it reduces to a smoothed, normalized
thumbnail, still invariant to contrast, noise and mirroring.

The calibration uses the training set itself: each training image's distance
to its nearest other training image (its own NN distance); see
:func:`copy_scores`. ``is_copy`` is ``copy_score >= threshold`` (default
:data:`COPY_THRESHOLD`, chosen with the truth benchmark, ``benchmarks/truth.py``:
about 0.1% of the demo generators' own images reach it).
"""

import numpy as np
from scipy import ndimage

from gmv_plugin import arrays as gmvarrays
from gmv_plugin import knn as gmvk

DESCRIPTOR_SIZE = 16
SMOOTH_SIGMA = 0.7  # pixels at 28x28; scaled with the image size
CONTENT_THRESHOLD = 0.2  # share of the smoothed content's maximum
GYRATION_SPAN = 2.0  # the descriptor spans this many radii of gyration each side
COPY_THRESHOLD = 0.45
COPY_SCORE_FLOOR = -10.0  # scores below are reported as this (finite in the fields)
BLOCK_PIXELS = 50_000  # float32 pixels per block of images: the arrays stay in the CPU's cache
DUPLICATE_LOOKAHEAD = 8  # neighbours searched past exact duplicates for d2 and r
IN_MEMORY_BYTES = 64 << 20  # training descriptors up to this size are searched from memory (a search block)


def _descriptor_stack(x, size):
    """Descriptors of a float32 ``(N, H, W)`` stack in [0, 1]."""
    n, h, w = x.shape
    border = np.concatenate([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], axis=1)
    content = np.abs(x - np.median(border, axis=1)[:, None, None])
    sigma = SMOOTH_SIGMA * max(h, w) / 28.0
    smooth = ndimage.gaussian_filter(content, (0, sigma, sigma), mode="constant")
    peak = smooth.reshape(n, -1).max(axis=1)
    # content weights above a share of the peak: background noise drops out
    wgt = np.maximum(smooth - CONTENT_THRESHOLD * peak[:, None, None], 0)
    total = np.maximum(wgt.sum(axis=(1, 2)), 1e-12)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy = (wgt * yy).sum(axis=(1, 2)) / total
    cx = (wgt * xx).sum(axis=(1, 2)) / total
    r2 = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
    half = np.maximum(GYRATION_SPAN * np.sqrt((wgt * r2).sum(axis=(1, 2)) / total), 1.0)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    gy = cy[:, None, None] + grid[None, :, None] * half[:, None, None] + np.zeros((1, 1, size), np.float32)
    gx = cx[:, None, None] + grid[None, None, :] * half[:, None, None] + np.zeros((1, size, 1), np.float32)
    gi = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], gy.shape)
    d = ndimage.map_coordinates(wgt, [gi, gy, gx], order=1, mode="constant", cval=0.0).reshape(n, -1)
    d -= d.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(d, axis=1, keepdims=True)
    d = np.where(norm > 0, d / np.where(norm > 0, norm, 1.0), 0.0)
    d[peak <= 1e-6] = 0.0
    return d.astype(np.float32)


def copy_descriptor(image, size=DESCRIPTOR_SIZE):
    """The copy descriptor of one grayscale image.

    Args:
        image: ``(H, W)`` array, float in [0, 1] or uint8
        size (16): side of the square descriptor

    Returns:
        a float32 vector of ``size * size`` values, zero mean, unit norm (all
        zeros for a blank image)
    """
    return copy_descriptors([image], size=size)[0]


def copy_descriptors(images, flip=False, size=DESCRIPTOR_SIZE, batch_size=None):
    """Descriptors (see :func:`copy_descriptor`) of grayscale images: an
    ``(N, H, W)`` array or a list of ``(H, W)`` arrays of any sizes, uint8
    or float in [0, 1]. ``flip=True`` describes the images mirrored left to
    right: the sampling grid is symmetric about the content's centroid, so
    that is the descriptor mirrored.

    Returns:
        a float32 ``(N, size * size)`` array
    """
    groups = {}
    for i, im in enumerate(images):
        groups.setdefault((np.shape(im), np.asarray(im).dtype == np.uint8), []).append(i)
    out = np.empty((len(images), size * size), np.float32)
    for (shape, is_u8), rows in groups.items():
        if len(shape) != 2:
            raise ValueError("copy descriptors take grayscale (H, W) images; got shape %s" % (shape,))
        step = batch_size or max(1, (2 * BLOCK_PIXELS) // max(1, shape[0] * shape[1]))
        for s in range(0, len(rows), step):
            part = rows[s : s + step]
            x = np.stack([np.asarray(images[i]) for i in part]).astype(np.float32)
            if is_u8:
                x /= 255.0
            out[part] = _descriptor_stack(x, size)
    return flip_descriptors(out, size) if flip else out


def flip_descriptors(desc, size=DESCRIPTOR_SIZE):
    """The descriptors of the images mirrored left to right, from theirs."""
    return np.asarray(desc).reshape(-1, size, size)[:, :, ::-1].reshape(-1, size * size).copy()


def gray_array(image, max_side=64):
    """An open PIL image as a uint8 ``(H, W)`` grayscale array (PIL's "L"
    conversion), downscaled so that the longer side is at most ``max_side``."""
    from PIL import Image

    im = image.convert("L")
    h, w = gray_size(im.size[1], im.size[0], max_side)
    if (h, w) != (im.size[1], im.size[0]):
        im = im.resize((w, h), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def gray_size(h, w, max_side=64):
    """``(height, width)`` of an ``h x w`` image in :func:`gray_array`."""
    if max(h, w) <= max_side:
        return h, w
    s = max_side / float(max(h, w))
    return max(1, round(h * s)), max(1, round(w * s))


def read_gray(paths, max_side=64):
    """Reads images as a list of uint8 ``(H, W)`` grayscale arrays (see :func:`gray_array`)."""
    from PIL import Image

    from gmv_plugin.images import ImageReadError

    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                out.append(gray_array(im, max_side))
        except (OSError, SyntaxError) as e:
            raise ImageReadError("Cannot read image %s: %s" % (p, e)) from e
    return out


def copy_scores(gen_desc, gen_desc_flipped, train_desc, neighbours=None):
    """Copy scores of generated images from their descriptors.

    With ``d1`` and ``d2`` the distances from a generated image to its nearest
    and second-nearest training images, and ``r`` the nearest training
    image's own distance to its nearest other training image (exact
    duplicates in the training set count as one image), the score is
    ``1 - d1 / min(r, d2)``: 1 for an exact copy, about 0 or below for an
    image as far from its nearest training image as training images are from
    each other. Dividing by ``r`` calibrates the distance against how crowded
    that part of the training set is (a generated "1" must be much closer to
    a training "1" than training "1"s are to each other); dividing by ``d2``
    asks that the match be unique, as a copy of one image is.

    Args:
        gen_desc: ``(m, D)`` descriptors of the generated images
        gen_desc_flipped: ``(m, D)`` descriptors of the mirrored generated
            images, or None to ignore mirroring
        train_desc: ``(n, D)`` descriptors of the training images, ``n >= 3``
        neighbours (None): the exact ``(distances, indices)`` of ``gen_desc``
            among ``train_desc`` when already known (at least
            :data:`DUPLICATE_LOOKAHEAD` columns), e.g. a flat index's recall

    Searches are exact while cheap, else approximate with exact distances
    (:class:`gmv_plugin.knn.NeighbourSearch`).

    Returns:
        a dict with ``copy_score`` (float64 ``(m,)``, at least
        :data:`COPY_SCORE_FLOOR`), ``nearest`` (int64
        ``(m,)``: the closest training row), ``distance`` (float32 ``(m,)``:
        ``d1``), ``flipped`` (bool ``(m,)``: the mirrored image matched
        closer), ``train_nn`` (float32 ``(m,)``: ``r`` of the closest
        training image) and ``search`` (how neighbours were found:
        :meth:`gmv_plugin.knn.NeighbourSearch.describe`)
    """
    if len(train_desc) < 3:
        raise ValueError("copy scores need at least 3 training images; got %d" % len(train_desc))
    if isinstance(train_desc, np.memmap):
        # a large float32 memmap stays on disk; a small one is read once (one
        # read instead of a system call per gathered row)
        if train_desc.dtype != np.float32 or train_desc.nbytes <= IN_MEMORY_BYTES:
            train_desc = np.array(train_desc, dtype=np.float32)
    else:
        train_desc = np.asarray(train_desc, dtype=np.float32)  # no copy of float32 arrays
    kk = min(DUPLICATE_LOOKAHEAD, len(train_desc))
    search = gmvk.NeighbourSearch(train_desc, len(gen_desc))
    if neighbours is not None and np.shape(neighbours[1])[1] >= kk:
        d, idx = (np.asarray(a)[:, :kk] for a in neighbours)
    else:
        d, idx = search.search(gen_desc, kk)
    if gen_desc_flipped is not None:
        df, idf = search.search(gen_desc_flipped, kk)
        flipped = df[:, 0] < d[:, 0]
        d = np.where(flipped[:, None], df, d)
        idx = np.where(flipped[:, None], idf, idx)
    else:
        flipped = np.zeros(len(d), bool)
    j = idx[:, 0]
    # exact duplicates of the nearest training image are the same image:
    # d2 is the distance to the nearest training image that differs from it
    near = gmvarrays.gather_rows(train_desc, idx.ravel()).reshape(idx.shape + (-1,))
    same = np.linalg.norm(near - near[:, :1], axis=2) <= 1e-6
    d2 = _first_where(d, ~same)
    # r only for the training images that are some generated image's nearest
    # (a search of the whole training set against itself grows as N^2)
    rows, inverse = np.unique(j, return_inverse=True)
    td, _ = search.search(gmvarrays.gather_rows(train_desc, rows), kk - 1, exclude_self=True, rows=rows)
    tnn = _first_where(td, td > 1e-6)[inverse.reshape(-1)]
    d1 = d[:, 0].astype(np.float64)
    unit = np.minimum(tnn.astype(np.float64), d2.astype(np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(unit > 0, d1 / np.where(unit > 0, unit, 1.0), np.where(d1 > 0, np.inf, 0.0))
    return {
        "copy_score": np.maximum(1.0 - ratio, COPY_SCORE_FLOOR),
        "nearest": j.astype(np.int64),
        "distance": d[:, 0].astype(np.float32),
        "flipped": flipped,
        "train_nn": tnn.astype(np.float32),
        "search": search.describe(),
    }


def _first_where(d, ok):
    """Per row, the first ``d`` where ``ok``; the row's last ``d`` if none."""
    has = ok.any(axis=1)
    first = np.argmax(ok, axis=1)
    return np.where(has, d[np.arange(len(d)), first], d[:, -1]).astype(np.float32)


def copy_flags(copy_score, nearest_train, num_train, threshold=COPY_THRESHOLD):
    """``is_copy`` per generated image and ``copied_by`` per training image.

    Args:
        copy_score: ``(m,)`` copy scores from :func:`copy_scores`
        nearest_train: ``(m,)`` the closest training row of each generated image
        num_train: the number of training images
        threshold (0.45): ``is_copy = copy_score >= threshold``

    Returns:
        ``(is_copy bool (m,), copied_by int64 (num_train,))``
    """
    is_copy = np.asarray(copy_score) >= threshold
    copied_by = np.bincount(np.asarray(nearest_train)[is_copy], minlength=num_train).astype(np.int64)
    return is_copy, copied_by
