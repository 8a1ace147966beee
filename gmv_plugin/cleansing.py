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
MIN_SIDE = 3  # smaller images are edge-padded to this side for the statistics


LEVELS = np.arange(256) / 255.0  # the float value of each 8-bit level, as images are read


def _largest_blocks(q, flat_level, bright_level):
    """Side of the largest flat bright square and of the largest bright square
    (1..MAX_BLOCK) per uint8 image: for each side ``k``, whether some pixel's
    ``k x k`` window (scipy.ndimage's filter windows, borders reflected) has
    all levels within 2 of each other and at least ``flat_level``, or all at
    least ``bright_level``. Window minima and maxima of side ``k`` are those of
    four windows of side ``k - 1``; an image stops at its first side without
    such a window (a window's sub-windows qualify too)."""
    n, h, w = q.shape
    pad = MAX_BLOCK // 2
    qp = np.pad(q, ((0, 0), (pad, pad), (pad, pad)), mode="symmetric")
    out = []
    for level, flat in ((flat_level, True), (bright_level, False)):
        best = np.ones(n)
        rows = np.arange(n)
        lv = np.asarray(level, dtype=np.int16)[:, None, None]
        mn = mx = qp
        for k in range(2, MAX_BLOCK + 1):
            mn = np.minimum(np.minimum(mn[:, :-1, :-1], mn[:, 1:, 1:]), np.minimum(mn[:, :-1, 1:], mn[:, 1:, :-1]))
            o = pad - k // 2  # the window of pixel (i, j) starts at (i - k // 2, j - k // 2)
            ok = mn[:, o : o + h, o : o + w] >= lv
            if flat:
                mx = np.maximum(np.maximum(mx[:, :-1, :-1], mx[:, 1:, 1:]), np.maximum(mx[:, :-1, 1:], mx[:, 1:, :-1]))
                ok &= mx[:, o : o + h, o : o + w] - mn[:, o : o + h, o : o + w] <= 2
            has = ok.any(axis=(1, 2))
            if not has.any():
                break
            rows, lv, mn = rows[has], lv[has], mn[has]
            if flat:
                mx = mx[has]
            best[rows] = k
        out.append(best)
    return out


def _largest_blocks_small(x, lo3, rng3):
    """:func:`_largest_blocks` with scipy.ndimage's filters, for images too
    small for its padding."""

    def largest(ok_for_size):
        best = np.ones(len(x))
        for k in range(2, MAX_BLOCK + 1):
            has = ok_for_size(k).any(axis=(1, 2))
            best[has] = k
            if not has.any():
                break
        return best

    def flat_ok(k):
        mx = ndimage.maximum_filter(x, size=(1, k, k))
        mn = ndimage.minimum_filter(x, size=(1, k, k))
        return ((mx - mn) < 2.5 / 255) & (mn > lo3 + 0.3 * rng3)

    def bright_ok(k):
        return ndimage.minimum_filter(x, size=(1, k, k)) > lo3 + 0.5 * rng3

    return largest(flat_ok), largest(bright_ok)


def _level_above(threshold):
    """The lowest 8-bit level whose value exceeds ``threshold``, per image."""
    return np.searchsorted(LEVELS, threshold, side="right")


def _med3(a, b, c):
    return np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))


def _median3x3(q):
    """scipy.ndimage's 3x3 median filter (borders reflected) of a uint8
    ``(N, H, W)`` stack: the median of nine is the median of the largest
    column minimum, the median of column medians and the smallest column
    maximum (columns of three sorted once, shared by neighbouring windows)."""
    p = np.pad(q, ((0, 0), (1, 1), (1, 1)), mode="symmetric")
    a, b, c = p[:, :-2], p[:, 1:-1], p[:, 2:]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    mid = np.maximum(lo, np.minimum(hi, c))
    lo, hi = np.minimum(lo, c), np.maximum(hi, c)
    most_lo = np.maximum(np.maximum(lo[:, :, :-2], lo[:, :, 1:-1]), lo[:, :, 2:])
    least_hi = np.minimum(np.minimum(hi[:, :, :-2], hi[:, :, 1:-1]), hi[:, :, 2:])
    return _med3(most_lo, _med3(mid[:, :, :-2], mid[:, :, 1:-1], mid[:, :, 2:]), least_hi)


def _lerp(a, b, t):
    """numpy's linear interpolation of quantiles, operation for operation (so
    the result equals ``np.percentile``'s bit for bit)."""
    diff = b - a
    return np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)


def _virtual_ranks(count, pct):
    """``np.percentile``'s (linear method) neighbouring ranks and weight of
    percentile ``pct`` among ``count`` sorted values."""
    vi = (count - 1) * (pct / 100)
    if vi >= count - 1:
        return count - 1, count - 1, vi - np.floor(vi)
    lo = int(np.floor(vi))
    return lo, lo + 1, vi - lo


def _row_percentile(a, pct):
    """``np.percentile(a, pct, axis=1)`` of a float ``(N, M)`` array, with one
    partition of the two ranks it needs."""
    r0, r1, t = _virtual_ranks(a.shape[1], pct)
    part = np.partition(a, sorted({r0, r1}), axis=1)
    return _lerp(part[:, r0], part[:, r1], t)


def _statistics_same_size(q):
    """:func:`image_statistics` for a uint8 ``(N, H, W)`` stack. Comparisons
    of levels run on the uint8 levels; what is averaged is float64 in [0, 1].
    Level percentiles and shares of levels come from each image's histogram
    of levels (order statistics and counts are exact)."""
    n, h, w = q.shape
    if n == 1:  # numpy reduces a single image in another order: one of two, as in any block
        return _statistics_same_size(np.concatenate([q, q]))[:1]
    npx = h * w
    x = LEVELS.take(q)
    rows = np.arange(n, dtype=np.intp)
    hist = np.bincount((q.reshape(n, -1) + (rows * 256)[:, None]).ravel(), minlength=256 * n).reshape(n, 256)
    cum = hist.cumsum(axis=1)

    def level_percentile(pct):
        r0, r1, t = _virtual_ranks(npx, pct)
        return _lerp(LEVELS[(cum <= r0).sum(axis=1)], LEVELS[(cum <= r1).sum(axis=1)], t)

    def share(mask):  # share of the pixels whose level is in ``mask`` (n, 256)
        return (hist * mask).sum(axis=1) / npx

    border = np.concatenate([x[:, 0, :], x[:, -1, :], x[:, :, 0], x[:, :, -1]], axis=1)
    lo, hi = level_percentile(5), level_percentile(99.5)
    rng = np.maximum(hi - lo, 1e-3)
    rng3 = rng[:, None, None]
    z = (LEVELS[None, :] - lo[:, None]) / rng[:, None]  # per level, as (x - lo) / rng per pixel
    out = {"border_median": np.median(border, axis=1), "range": rng, "p05": lo}
    out["midtone"] = share((z > 0.15) & (z < 0.85))
    resid = x - LEVELS.take(_median3x3(q))
    np.abs(resid, out=resid)
    out["impulse"] = resid.mean(axis=(1, 2)) / rng
    out["impulse_share"] = (resid > 0.5 * rng3).mean(axis=(1, 2))
    gy, gx = np.gradient(x, axis=(1, 2))
    grad = np.hypot(gx, gy)
    lap = x[:, 1:-1, 1:-1] * 4
    for nb in (x[:, :-2, 1:-1], x[:, 2:, 1:-1], x[:, 1:-1, :-2], x[:, 1:-1, 2:]):
        lap -= nb
    np.abs(lap, out=lap)
    out["lap_over_grad"] = lap.mean(axis=(1, 2)) / np.maximum(grad.mean(axis=(1, 2)), 1e-6)
    out["sharpness"] = _row_percentile(grad.reshape(n, -1), 99) / rng
    # flat pairs (levels within 1) among bright pairs (either level above lo + 0.2 range)
    bright = _level_above(lo + 0.2 * rng)
    level8 = np.minimum(bright, 255).astype(np.uint8)[:, None, None]
    pairs = eq = 0
    for a, b in ((q[:, :, 1:], q[:, :, :-1]), (q[:, 1:, :], q[:, :-1, :])):
        top = np.maximum(a, b)
        act = top >= level8
        act[bright > 255] = False  # no level reaches 256
        top -= np.minimum(a, b)  # |a - b| in uint8
        pairs = pairs + np.count_nonzero(act, axis=(1, 2))
        eq = eq + np.count_nonzero((top <= 1) & act, axis=(1, 2))
    out["plateau"] = eq / np.maximum(pairs, 1)
    colb, rowb = np.arange(w - 1) % 8 == 7, np.arange(h - 1) % 8 == 7
    if colb.any() and rowb.any():
        dx, dy = np.diff(x, axis=2), np.diff(x, axis=1)
        np.abs(dx, out=dx)
        np.abs(dy, out=dy)
        edge = dx[:, :, colb].mean(axis=(1, 2)) + dy[:, rowb, :].mean(axis=(1, 2))
        inner = dx[:, :, ~colb].mean(axis=(1, 2)) + dy[:, ~rowb, :].mean(axis=(1, 2))
        out["block8"] = edge / np.maximum(inner, 1e-6)
    else:
        out["block8"] = np.ones(n)
    out["levels"] = (hist > 0).sum(axis=1) / 256.0
    out["ink"] = share(z > 0.5)

    if min(h, w) > MAX_BLOCK // 2:
        out["flat_block"], out["bright_block"] = _largest_blocks(
            q, _level_above(lo + 0.3 * rng), _level_above(lo + 0.5 * rng)
        )
    else:
        out["flat_block"], out["bright_block"] = _largest_blocks_small(x, lo[:, None, None], rng3)
    return np.stack([out[s] for s in STATISTICS], axis=1)


BLOCK_PIXELS = 50_000  # pixels per block of images: its float64 arrays stay in the CPU's cache


def block_rows(shape):
    """Images of ``shape`` computed together: per-image statistics do not
    depend on the block, and blocks small enough for the cache run about 1.5x
    faster than large ones."""
    return max(1, BLOCK_PIXELS // max(1, int(np.prod(shape))))


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
        step = block_rows(shape)
        for s in range(0, len(rows), step):
            q = stack[s : s + step]
            if q.dtype != np.uint8:  # 8-bit levels, as images on disk have
                q = np.round(np.clip(q.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
            if min(q.shape[1:]) < MIN_SIDE:  # gradients and the Laplacian need 3 pixels a side
                grow = [(0, 0)] + [(0, max(0, MIN_SIDE - n)) for n in q.shape[1:]]
                q = np.pad(q, grow, mode="edge")
            out[rows[s : s + step]] = _statistics_same_size(q)
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


FEATURES_VERSION = 1  # bump when image_features' output changes: stored features are recomputed


def image_features(images, stats=True):
    """What the truth columns need of each image, computed once per image
    (the pipeline stores it with the run): ``{"desc": copy descriptors
    (float32 (N, 256)), "stats": image statistics (float64 (N, F), when
    ``stats``; training images only need them)}``.

    Args:
        images: a ``(N, H, W)`` array or a list of ``(H, W)`` arrays, uint8
            or float in [0, 1] (see :func:`image_statistics`)
        stats (True): whether to compute the statistics too
    """
    out = {"desc": gmvc.copy_descriptors(images)}
    if stats:
        out["stats"] = image_statistics(images)
    return out


def _features_chunk(args):
    """Worker: :func:`image_features` of image files, each read once;
    ``(features, [(position, error), ...])``."""
    from PIL import Image

    paths, stats = args
    images, failed = [], []
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                images.append(gmvc.gray_array(im))
        except (OSError, SyntaxError) as e:
            failed.append((i, str(e)))
            images.append(np.zeros((1, 1), np.uint8))
    if failed:
        return None, failed
    return image_features(images, stats=stats), failed


def read_features(paths, stats=True, workers=None, chunk_size=1024):
    """:func:`image_features` of image files (grayscale, longer side at most
    64 pixels, see :func:`gmv_plugin.copies.read_gray`), decoded in worker
    processes (default :func:`gmv_plugin.embeddings.decode_workers`).

    Raises:
        ImageReadError: naming an image that cannot be read
    """
    from gmv_plugin import embeddings as gmve
    from gmv_plugin.images import ImageReadError

    paths = list(paths)
    tasks = [(paths[s : s + chunk_size], stats) for s in range(0, len(paths), chunk_size)]
    parts = []
    for t, (feats, failed) in zip(tasks, gmve.map_chunks(_features_chunk, tasks, workers)):
        if failed:
            i, err = failed[0]
            raise ImageReadError("Cannot read image %s: %s" % (t[0][i], err))
        parts.append(feats)
    return concat_features(parts, stats)


def concat_features(parts, stats=True):
    """The row-wise concatenation of :func:`image_features` outputs."""
    out = {"desc": np.concatenate([p["desc"] for p in parts]) if parts else
           np.zeros((0, gmvc.DESCRIPTOR_SIZE**2), np.float32)}
    if stats:
        out["stats"] = (np.concatenate([p["stats"] for p in parts]) if parts else
                        np.zeros((0, len(STATISTICS))))
    return out


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
        see :func:`truth_from_features`
    """
    train = gen = None
    if train_images is not None:
        train = image_features(train_images)
    elif train_paths is not None:
        train = read_features(train_paths)
    if gen_images is not None:
        gen = image_features(gen_images, stats=False)
    elif gen_paths is not None:
        gen = read_features(gen_paths, stats=False)
    return truth_from_features(values, train, gen, train_emb=train_emb, gen_emb=gen_emb,
                               gen_neighbours=gen_neighbours, copy_threshold=copy_threshold,
                               margin=margin, weight=weight)


def truth_from_features(
    values,
    train=None,
    gen=None,
    train_emb=None,
    gen_emb=None,
    gen_neighbours=None,
    copy_threshold=gmvc.COPY_THRESHOLD,
    margin=ANOMALY_MARGIN,
    weight=ANOMALY_WEIGHT,
):
    """:func:`truth_columns` from :func:`image_features` of the training
    images (``train``, with statistics) and of the generated ones (``gen``);
    the other arguments as there.

    Returns:
        ``{"train": {"cleansing": float64 (n,), "copied_by": int64 (n,),
        "implausibility": float64 (n,) or None}, "generated": {"copy_score":
        float64 (m,), "is_copy": bool (m,), "copy_of": int64 (m,): the
        closest training row}, "search": how the copy flags' neighbours were
        searched (None without copy flags)}``
    """
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if train is not None and len(train["desc"]) != n:
        raise ValueError("%d training images for %d values" % (len(train["desc"]), n))

    implausible = None
    if train is not None:
        implausible = implausibility(train["stats"])
    cleansing = cleansing_scores(values, implausible, margin=margin, weight=weight)

    if train is not None and gen is not None:
        train_desc, gen_desc = train["desc"], gen["desc"]
        gen_flip = gmvc.flip_descriptors(gen_desc)
    elif train_emb is not None and gen_emb is not None:
        train_desc = train_emb if isinstance(train_emb, np.memmap) else np.asarray(train_emb, dtype=np.float32)
        gen_desc, gen_flip = np.asarray(gen_emb, dtype=np.float32), None
    else:
        train_desc = None
    if train_desc is not None and n >= 3:
        known = gen_neighbours if gen_flip is None else None
        cs = gmvc.copy_scores(gen_desc, gen_flip, train_desc, neighbours=known)
        copy_score, copy_of, search = cs["copy_score"], cs["nearest"], cs["search"]
    else:
        search = None
        m = len(gen["desc"]) if gen is not None else (len(gen_emb) if gen_emb is not None else 0)
        copy_score, copy_of = np.full(m, -np.inf), np.full(m, -1, np.int64)
    is_copy, copied_by = gmvc.copy_flags(copy_score, np.maximum(copy_of, 0), n, copy_threshold)
    return {
        "train": {"cleansing": cleansing, "copied_by": copied_by, "implausibility": implausible},
        "generated": {"copy_score": copy_score, "is_copy": is_copy, "copy_of": copy_of},
        "search": search,
    }
