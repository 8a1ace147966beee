"""A cleansing score per training image: which training images to remove first.

GMValuator's value ``phi`` credits training images that look like the
generations. A generator that learnt blur or artefacts from its data credits
the blurred and artefact-laden training images too (on the truth benchmark,
blurred MNIST digits get the *highest* values: ROC AUC 0.00-0.01 for the value
as a detector). The cleansing score therefore combines the value with
evidence that the training image itself is implausible for this collection:

1. :func:`image_statistics`: weight-free, no-reference statistics of each
   training image (background level, intensity range, share of mid-tones,
   impulse residual, Laplacian/gradient ratio, edge sharpness, flat plateaus,
   8x8 blockiness, grey levels, ink share, largest flat block, largest bright
   block);
2. :func:`implausibility`: how far each image's statistics lie from the
   collection's own typical values, in robust z units (median and MAD over
   the training set itself, so most images must be clean; no pristine corpus
   and no weights are needed): the mean squared z;
3. :func:`cleansing_scores`: ``log(value percentile) - 4 * max(0,
   implausibility - 0.5)``. Typical images keep the value's order; an
   implausible image drops below plausible ones of similar value, in
   proportion to how implausible it is. Lower = remove first; the score is
   <= 0.

Measured on the truth benchmark (MNIST, ten corruption kinds at 1% each),
neighbour-based evidence in the embedding (a local outlier factor; the value
relative to the training neighbours' values) did not help: corrupted images
of one kind sit next to each other and share their credit, so those terms
are not part of the score. See the README section "Cleansing and copies".

:func:`truth_columns` is the pipeline's entry point: it computes the cleansing
score of every training image and the copy flags of :mod:`gmv_plugin.copies`.
"""

import numpy as np
from scipy import ndimage
from scipy.stats import rankdata

from gmv_plugin import copies as gmvc

STATISTICS = (
    "border_median",
    "range",
    "p05",
    "midtone",
    "impulse",
    "impulse_share",
    "lap_over_grad",
    "sharpness",
    "plateau",
    "block8",
    "levels",
    "ink",
    "flat_block",
    "bright_block",
)
Z_CLIP = 30.0
ANOMALY_MARGIN = 0.5
ANOMALY_WEIGHT = 4.0
MAX_BLOCK = 15


def _largest_block(ok_for_size, n):
    """Largest k (1..MAX_BLOCK) for which ``ok_for_size(k)`` holds somewhere, per image."""
    best = np.ones(n)
    for k in range(2, MAX_BLOCK + 1):
        has = ok_for_size(k).any(axis=(1, 2))
        best[has] = k
        if not has.any():
            break
    return best


def _statistics_same_size(x):
    """:func:`image_statistics` for a float64 ``(N, H, W)`` stack in [0, 1]."""
    n, h, w = x.shape
    flat = x.reshape(n, -1)
    border = np.concatenate([x[:, 0, :], x[:, -1, :], x[:, :, 0], x[:, :, -1]], axis=1)
    lo = np.percentile(flat, 5, axis=1)
    hi = np.percentile(flat, 99.5, axis=1)
    rng = np.maximum(hi - lo, 1e-3)
    lo3, rng3 = lo[:, None, None], rng[:, None, None]
    z = (x - lo3) / rng3
    out = {"border_median": np.median(border, axis=1), "range": rng, "p05": lo}
    out["midtone"] = ((z > 0.15) & (z < 0.85)).mean(axis=(1, 2))
    med = ndimage.median_filter(x, size=(1, 3, 3))
    out["impulse"] = np.abs(x - med).mean(axis=(1, 2)) / rng
    out["impulse_share"] = (np.abs(x - med) > 0.5 * rng3).mean(axis=(1, 2))
    gy, gx = np.gradient(x, axis=(1, 2))
    grad = np.hypot(gx, gy)
    lap = np.abs(4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:])
    out["lap_over_grad"] = lap.mean(axis=(1, 2)) / np.maximum(grad.mean(axis=(1, 2)), 1e-6)
    out["sharpness"] = np.percentile(grad.reshape(n, -1), 99, axis=1) / rng
    dx, dy = np.abs(np.diff(x, axis=2)), np.abs(np.diff(x, axis=1))
    act_x = np.maximum(x[:, :, 1:], x[:, :, :-1]) > lo3 + 0.2 * rng3
    act_y = np.maximum(x[:, 1:, :], x[:, :-1, :]) > lo3 + 0.2 * rng3
    eq = ((dx < 1.5 / 255) & act_x).sum(axis=(1, 2)) + ((dy < 1.5 / 255) & act_y).sum(axis=(1, 2))
    out["plateau"] = eq / np.maximum(act_x.sum(axis=(1, 2)) + act_y.sum(axis=(1, 2)), 1)
    colb, rowb = np.arange(w - 1) % 8 == 7, np.arange(h - 1) % 8 == 7
    if colb.any() and rowb.any():
        edge = dx[:, :, colb].mean(axis=(1, 2)) + dy[:, rowb, :].mean(axis=(1, 2))
        inner = dx[:, :, ~colb].mean(axis=(1, 2)) + dy[:, ~rowb, :].mean(axis=(1, 2))
        out["block8"] = edge / np.maximum(inner, 1e-6)
    else:
        out["block8"] = np.ones(n)
    q = np.clip((x * 255).round(), 0, 255).astype(np.int64).reshape(n, -1)
    present = np.zeros((n, 256), bool)
    present[np.arange(n)[:, None], q] = True
    out["levels"] = present.sum(axis=1) / 256.0
    out["ink"] = (z > 0.5).mean(axis=(1, 2))

    def flat_ok(k):
        mx = ndimage.maximum_filter(x, size=(1, k, k))
        mn = ndimage.minimum_filter(x, size=(1, k, k))
        return ((mx - mn) < 2.5 / 255) & (mn > lo3 + 0.3 * rng3)

    def bright_ok(k):
        return ndimage.minimum_filter(x, size=(1, k, k)) > lo3 + 0.5 * rng3

    out["flat_block"] = _largest_block(flat_ok, n)
    out["bright_block"] = _largest_block(bright_ok, n)
    return np.stack([out[s] for s in STATISTICS], axis=1)


def image_statistics(images):
    """No-reference statistics of grayscale images, weight-free.

    Args:
        images: a ``(N, H, W)`` array (uint8 0..255, or float in [0, 1],
            rounded to 8-bit levels) or a list of ``(H, W)`` arrays of any
            sizes (see :func:`gmv_plugin.copies.read_gray`)

    Returns:
        a float64 ``(N, len(STATISTICS))`` array, columns in :data:`STATISTICS`
        order: background level (median of the border pixels), intensity
        range (99.5th - 5th percentile), 5th percentile, share of mid-tones,
        mean impulse residual (``|x - median3x3(x)|`` / range), mean
        ``|Laplacian|`` / mean gradient, 99th-percentile gradient / range,
        share of flat neighbour pairs among bright ones, 8x8 blockiness
        (differences across 8-pixel block edges / inside blocks), distinct
        grey levels / 256, ink share (above half the range), largest flat
        bright square side and largest bright square side (pixels, up to 15)
    """
    if isinstance(images, np.ndarray) and images.ndim == 3:
        groups = {images.shape[1:]: np.arange(len(images))}
        items = images
    else:
        items = [np.asarray(im) for im in images]
        groups = {}
        for i, im in enumerate(items):
            groups.setdefault(im.shape, []).append(i)
    out = np.empty((len(items), len(STATISTICS)))
    for shape, rows in groups.items():
        rows = np.asarray(rows)
        stack = np.stack([items[i] for i in rows]) if not isinstance(items, np.ndarray) else items[rows]
        if len(stack) and len(shape) != 2:
            raise ValueError("image_statistics takes grayscale (H, W) images; got shape %s" % (shape,))
        for s in range(0, len(rows), 2048):  # float64 copies only per block
            x = stack[s : s + 2048].astype(np.float64)
            if stack.dtype == np.uint8:
                x /= 255.0
            else:  # 8-bit levels, as images on disk have
                x = np.round(np.clip(x, 0.0, 1.0) * 255.0) / 255.0
            out[rows[s : s + 2048]] = _statistics_same_size(x)
    return out


def implausibility(stats, reference=None):
    """How far each image's statistics lie from the collection's typical ones.

    Each statistic is turned into a robust z score (distance to the median
    over ``reference``, divided by 1.4826 * MAD, floored at
    ``1e-3 * (1 + |median|)`` so a statistic that is constant on clean images
    still counts), clipped at :data:`Z_CLIP`; the implausibility is the mean
    squared z.

    Args:
        stats: ``(N, F)`` statistics from :func:`image_statistics`
        reference (None): ``(M, F)`` statistics defining "typical"; the rows
            of ``stats`` themselves when None

    Returns:
        a float64 ``(N,)`` array, >= 0 (about 0.5 for a typical image)
    """
    stats = np.asarray(stats, dtype=np.float64)
    ref = stats if reference is None else np.asarray(reference, dtype=np.float64)
    if ref.ndim != 2 or stats.ndim != 2 or ref.shape[1] != stats.shape[1]:
        raise ValueError("stats and reference must be (N, F) arrays with the same F")
    med = np.median(ref, axis=0)
    mad = 1.4826 * np.median(np.abs(ref - med), axis=0)
    scale = np.maximum(mad, 1e-3 * (1.0 + np.abs(med)))
    z = np.minimum(np.abs(stats - med) / scale, Z_CLIP)
    return (z * z).mean(axis=1)


def value_percentiles(values):
    """Percentiles of ``values`` in (0, 1), ties averaged (rank - 0.5) / n."""
    v = np.asarray(values, dtype=np.float64)
    return (rankdata(v) - 0.5) / len(v)


def cleansing_scores(values, implausible=None, margin=ANOMALY_MARGIN, weight=ANOMALY_WEIGHT):
    """The cleansing score: ``log(value percentile) - weight * max(0, implausible - margin)``.

    Args:
        values: ``(N,)`` GMValuator values of the training images
        implausible (None): ``(N,)`` from :func:`implausibility`; without it
            the score is the log-percentile of the value alone
        margin (0.5): implausibility tolerated without penalty (a typical
            image scores about 0.5; 90% of clean MNIST digits score below 2)
        weight (4.0): log-percentile points per unit of implausibility
            beyond the margin

    Returns:
        a float64 ``(N,)`` array, <= 0; lower = remove first
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or not len(v):
        raise ValueError("values must be a non-empty 1-D array")
    score = np.log(value_percentiles(v))
    if implausible is not None:
        a = np.asarray(implausible, dtype=np.float64)
        if a.shape != v.shape:
            raise ValueError("implausible has shape %s, values %s" % (a.shape, v.shape))
        score = score - weight * np.maximum(0.0, a - margin)
    return score


def truth_columns(
    values,
    train_paths=None,
    gen_paths=None,
    train_images=None,
    gen_images=None,
    train_emb=None,
    gen_emb=None,
    gen_neighbours=None,
    copy_threshold=gmvc.COPY_THRESHOLD,
    margin=ANOMALY_MARGIN,
    weight=ANOMALY_WEIGHT,
):
    """Cleansing scores and copy flags of one valuation, for the values stage.

    Images come from ``train_paths`` / ``gen_paths`` (read as grayscale,
    longer side at most 64 pixels) or directly as ``train_images`` /
    ``gen_images`` (``(N, H, W)`` uint8 or lists of float arrays in [0, 1]).
    Without training images the cleansing score is the value's
    log-percentile alone; without images of either set the copy flags use
    ``train_emb`` / ``gen_emb`` as descriptors (not invariant to mirroring,
    shifts or crops), and are all False when those are missing too.

    Args:
        values: ``(n,)`` the values ``phi`` of the training images, in the
            order of ``train_paths``
        train_paths, gen_paths (None): image paths, training rows in the order
            of ``values``, generated rows in the pipeline's generated order
        train_images, gen_images (None): the images instead of paths
        train_emb, gen_emb (None): ``(n, D)`` / ``(m, D)`` embeddings, used
            only when images are missing
        gen_neighbours (None): exact ``(distances, indices)`` of ``gen_emb``
            among ``train_emb`` when known (see :func:`gmv_plugin.copies.copy_scores`)
        copy_threshold (0.45): ``is_copy = copy_score >= copy_threshold``
        margin (0.5), weight (4.0): see :func:`cleansing_scores`

    Returns:
        ``{"train": {"cleansing": float64 (n,), "copied_by": int64 (n,),
        "implausibility": float64 (n,) or None}, "generated": {"copy_score":
        float64 (m,), "is_copy": bool (m,), "copy_of": int64 (m,): the
        closest training row}}``
    """
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if train_images is None and train_paths is not None:
        train_images = gmvc.read_gray(train_paths)
    if gen_images is None and gen_paths is not None:
        gen_images = gmvc.read_gray(gen_paths)
    if train_images is not None and len(train_images) != n:
        raise ValueError("%d training images for %d values" % (len(train_images), n))

    implausible = None
    if train_images is not None:
        implausible = implausibility(image_statistics(train_images))
    cleansing = cleansing_scores(values, implausible, margin=margin, weight=weight)

    if train_images is not None and gen_images is not None:
        train_desc = gmvc.copy_descriptors(train_images)
        gen_desc = gmvc.copy_descriptors(gen_images)
        gen_flip = gmvc.copy_descriptors(gen_images, flip=True)
    elif train_emb is not None and gen_emb is not None:
        train_desc = np.asarray(train_emb, dtype=np.float32)
        gen_desc, gen_flip = np.asarray(gen_emb, dtype=np.float32), None
    else:
        train_desc = None
    if train_desc is not None and n >= 3:
        known = gen_neighbours if gen_flip is None else None
        cs = gmvc.copy_scores(gen_desc, gen_flip, train_desc, neighbours=known)
        copy_score, copy_of = cs["copy_score"], cs["nearest"]
    else:
        m = len(gen_images) if gen_images is not None else (len(gen_emb) if gen_emb is not None else 0)
        copy_score, copy_of = np.full(m, -np.inf), np.full(m, -1, np.int64)
    is_copy, copied_by = gmvc.copy_flags(copy_score, np.maximum(copy_of, 0), n, copy_threshold)
    return {
        "train": {"cleansing": cleansing, "copied_by": copied_by, "implausibility": implausible},
        "generated": {"copy_score": copy_score, "is_copy": is_copy, "copy_of": copy_of},
    }
