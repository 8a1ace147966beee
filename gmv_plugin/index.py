"""FAISS recall indexes over training embeddings, chosen by cost.

Index types:

- ``flat``: exact search, ``N * d * 4`` bytes in memory.
- ``ivfflat``: an inverted file of ``nlist`` k-means cells of which ``nprobe``
  are scanned, over the raw vectors or (``pca`` > 0) over their PCA
  projection (FAISS ``PCA{pca},IVF{nlist},Flat``).
- ``pq`` / ``ivfpq``: product-quantized codes (``M`` sub-vectors of
  ``2**nbits`` centroids), exhaustive or behind an inverted file.
- ``auto``: the cheapest of these by :func:`plan_index`'s cost model.
- ``brain``: recall through an existing FiftyOne Brain similarity index
  instead (:mod:`gmv_plugin.brain`); nothing here is built.

Approximate indexes re-score a shortlist of ``refine * k`` candidates with
exact distances read from the training embeddings (``vectors=`` of
:func:`search`, normally the on-disk ``.npy`` memmap): read into memory once
when they fit half the memory budget, else gathered one block at a time from
the file, so no flat copy of vectors that do not fit is ever held. Unless given, ``nprobe`` and
``refine`` are calibrated at build time: 64 training rows serve as queries,
their exact neighbours are computed during the add pass, and the smallest
setting whose recall@k (self excluded) reaches :data:`CALIBRATION_RECALL` is
stored in the index.

Codebooks are trained on a sample sized by the number of centroids: at least
39 points per centroid (FAISS's minimum), never a fixed count.

FAISS threads: ``OMP_WAIT_POLICY=PASSIVE`` is set (unless already set) before
FAISS is first imported, because OpenMP's default busy-waiting collapses under
CPU contention (x5-6 slower PQ training beside other busy processes); each
call uses :func:`faiss_threads` threads.
"""

import json
import logging
import math
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from gmv_plugin import arrays  # noqa: E402

logger = logging.getLogger(__name__)

INDEX_TYPES = ("auto", "flat", "ivfflat", "pq", "ivfpq", "brain")
INDEX_PARAMS = ("M", "nbits", "nlist", "nprobe", "refine", "train_size", "pca", "memory_mb")

#: Memory budget of ``auto``'s index, MiB (``memory_mb`` overrides)
DEFAULT_MEMORY_MB = 1024
#: Recall@k (training rows as queries, self excluded) that calibration aims at;
#: above 0.95 because generated images lie farther from the training set
CALIBRATION_RECALL = 0.97
CALIBRATION_QUERIES = 64
#: ``pca`` defaults to this many dimensions when d >= PCA_MIN_D
PCA_DIMS = 128
PCA_MIN_D = 384
MIN_POINTS_PER_CENTROID = 39  # FAISS warns below this
KMEANS_ITERS = 10  # FAISS's default for IVF coarse quantizers
PQ_ITERS = 25  # FAISS's default for PQ codebooks

# Cost model constants, seconds per multiply-add, measured on the 2-core
# development machine (benchmarks/scale.py --calibrate prints them anew):
C_GEMM = 2.0e-11  # BLAS: flat search, k-means, assignment, PCA projection
C_PCA_TRAIN = 2.3e-10  # per sample * d * d (covariance + eigendecomposition)
C_SCAN = 3.0e-10  # scanning IVF-flat lists, per query * vector * dim
C_PQ_TRAIN = 1.0e-9  # per sample * centroid * dim * iteration (2x quiet: collapses under load)
C_PQ_SCAN = 1.5e-9  # per query * code * sub-quantizer
C_REFINE = 2.5e-9  # exact re-scoring from the embeddings, per query * candidate * dim
#: calibration typically ends near nprobe = NPROBE_SQRT * sqrt(nlist)
#: (measured on pixel embeddings: 16 of 173 lists for recall 0.97)
NPROBE_SQRT = 1.5
SPEED_MARGIN = 0.7  # an approximate index must be predicted this much cheaper than flat

# FAISS GPU (faiss-gpu, classic implementation) runs these on the device:
# flat, IVF-flat and IVF-PQ with 8-bit codes and these bytes per code; k and
# nprobe at most 1024 (2048 in FAISS >= 1.7.3; the lower bound is kept).
GPU_MAX_K = 1024
GPU_PQ_BYTES = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 48, 56, 64, 96)
GPU_PQ_FLOAT16_ABOVE = 48  # larger M need float16 lookup tables


def faiss_threads():
    """Threads for FAISS: ``GMV_FAISS_THREADS`` if set, else every CPU this
    process may use. With passive waiting, all CPUs beat fewer even under
    load: PQ training (10k x 128, PQ16x8) at a load average of 10-13 on 2
    cores took 5.9-16 s with 2 passive threads, 17.8 s with 1, and
    35-74 s with 2 spinning ones."""
    env = os.environ.get("GMV_FAISS_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _set_threads():
    faiss.omp_set_num_threads(faiss_threads())


# -- parameters ---------------------------------------------------------------


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def check_params(params, index=None, n=None, d=None, index_type=None):
    """Validates index parameters before any work.

    Checks names and ranges: ``M`` > 0 (dividing the indexed dimension, ``pca``
    or ``d``, when known), ``nbits`` 1..16, ``nlist`` 1..n, ``nprobe``
    1..nlist, ``refine`` >= 0, ``train_size`` > 0, ``pca`` 0..d (0 = none),
    ``memory_mb`` > 0; ``None`` values mean automatic. ``n`` (training
    vectors) and ``d`` (dimension) enable the checks that need them.

    Raises:
        ValueError: one message naming every bad entry and its allowed range
    """
    index = index if index is not None else index_type
    if index == "brain":
        from gmv_plugin import brain as gmvb

        gmvb.check_params(params)
        return
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ValueError("index_params must be a dict; got %r" % (params,))
    errors = []
    unknown = sorted(set(params) - set(INDEX_PARAMS))
    if unknown:
        errors.append("Unknown index parameters %s; allowed are %s" % (unknown, INDEX_PARAMS))
    if index is not None and index not in INDEX_TYPES:
        errors.append("Unknown index %r; allowed values are %s" % (index, INDEX_TYPES))
    get = {k: v for k, v in params.items() if k in INDEX_PARAMS}.get

    def bad(name, low, high=None, what=""):
        span = ("between %d and %s inclusive%s" % (low, high, what) if high is not None
                else ">= %d" % low)
        errors.append("index_params %s must be an integer %s; got %r" % (name, span, params[name]))

    ok = {}
    for name in INDEX_PARAMS:
        value = get(name)
        if value is None:
            continue
        if not _is_int(value):
            errors.append("index_params %s must be an integer or None; got %r" % (name, value))
        else:
            ok[name] = value
    g = ok.get
    if g("nbits") is not None and not 1 <= g("nbits") <= 16:
        bad("nbits", 1, 16)
    if g("refine") is not None and g("refine") < 0:
        bad("refine", 0)
    if g("train_size") is not None and g("train_size") < 1:
        bad("train_size", 1)
    if g("memory_mb") is not None and g("memory_mb") < 1:
        bad("memory_mb", 1)
    if g("pca") is not None and (g("pca") < 0 or (d is not None and g("pca") > d)):
        bad("pca", 0, d if d is not None else "d", " (0 = no PCA)")
    if g("nlist") is not None and (g("nlist") < 1 or (n is not None and g("nlist") > n)):
        bad("nlist", 1, n if n is not None else "n", " (n = training vectors)")
    if g("nprobe") is not None:
        if g("nprobe") < 1 or (g("nlist") is not None and g("nprobe") > g("nlist")):
            bad("nprobe", 1, g("nlist") if g("nlist") is not None else "nlist", " (nlist)")
        elif n is not None and g("nlist") is None and g("nprobe") > n:
            bad("nprobe", 1, n, " (nlist <= n)")
    if g("M") is not None:
        dims = g("pca") or d
        if g("M") < 1 or (dims is not None and g("M") > dims):
            bad("M", 1, dims if dims is not None else "d")
        elif dims is not None and dims % g("M"):
            errors.append("index_params M=%d must divide the %s dimension %d"
                          % (g("M"), "pca" if g("pca") else "embedding", dims))
    if index == "flat" and g("pca"):
        errors.append("index='flat' is exact and takes no pca; use ivfflat or ivfpq")
    if errors:
        raise ValueError("; ".join(errors))


def resolve_index_type(index, n, d=None, n_queries=None, k=50, params=None):
    """Resolves ``"auto"`` to a concrete index type for ``n`` vectors.

    With ``d`` (and ideally ``n_queries`` and ``k``) the choice is
    :func:`plan_index`'s; without ``d`` a size rule stands in: ``flat`` up to
    20,000 vectors, else ``ivfflat``.
    """
    if index not in INDEX_TYPES:
        raise ValueError("Unknown index %r; allowed values are %s" % (index, INDEX_TYPES))
    if index != "auto":
        return index
    if d is None:
        return "flat" if n <= 20_000 else "ivfflat"
    return plan_index(n, d, n_queries=n_queries, k=k, params=params)["index_type"]


def _default_m(d, max_m=64):
    # sub-vectors of >= 8 dims: FAISS trains one k-means per sub-vector, and
    # many tiny ones cost far more than their arithmetic (x2 at M=32 vs 16)
    divisors = [x for x in range(1, min(max_m, d) + 1) if d % x == 0 and d // x >= 8]
    return max(divisors) if divisors else 1


def default_params(index_type, n, d, params=None, n_queries=None, k=50):
    """Fills in every parameter of ``index_type`` for ``n`` vectors of ``d`` dims.

    ``pca``: 128 when d >= 384 (0 = none); ``nlist``: about ``sqrt(n)``, at
    most ``n / 39``; ``M``: the largest divisor of the indexed dimension with
    sub-vectors of >= 8 dims, at most 64; ``nbits``: 8, lowered until every
    centroid gets 39 training points; ``train_size``: 39 points per centroid
    of the largest codebook, at most n (PCA is trained on the first 4 * d); ``nprobe`` and
    ``refine``: None = calibrated at build time (``refine`` is 0 for IVF-flat
    without PCA, whose distances are exact). ``auto`` resolves first.
    """
    check_params(params, index=index_type, n=n, d=d)
    params = dict(params or {})
    if index_type == "auto":
        index_type = resolve_index_type("auto", n, d=d, n_queries=n_queries, k=k, params=params)
    if index_type == "flat":
        return {}
    out = {}
    pca = params.get("pca")
    if pca is None:
        pca = PCA_DIMS if d >= PCA_MIN_D and n > PCA_DIMS else 0
        if params.get("M") and PCA_DIMS % params["M"]:
            pca = 0  # the user's M was meant for the full dimension
    out["pca"] = int(pca)
    dims = out["pca"] or d
    sizes = []
    if index_type in ("pq", "ivfpq"):
        m = params.get("M")
        out["M"] = int(m if m is not None else _default_m(dims))
        if dims % out["M"]:
            raise ValueError("index_params M=%d must divide the %s dimension %d"
                             % (out["M"], "pca" if out["pca"] else "embedding", dims))
        nbits = params.get("nbits")
        if nbits is None:
            nbits = 8
            while nbits > 4 and n < MIN_POINTS_PER_CENTROID * 2**nbits:
                nbits -= 1
        out["nbits"] = int(nbits)
        if n < 2 ** out["nbits"]:
            raise ValueError(
                "%s needs at least 2**nbits = %d training vectors; got %d. Use "
                "index='flat' or a smaller nbits" % (index_type, 2 ** out["nbits"], n)
            )
        sizes.append(MIN_POINTS_PER_CENTROID * 2 ** out["nbits"])
    if index_type in ("ivfflat", "ivfpq"):
        nlist = params.get("nlist")
        if nlist is None:
            nlist = max(1, min(int(round(math.sqrt(n))), n // MIN_POINTS_PER_CENTROID))
        out["nlist"] = int(nlist)
        out["nprobe"] = params.get("nprobe")
        if out["nprobe"] is not None and out["nprobe"] > out["nlist"]:
            raise ValueError("index_params nprobe must be an integer between 1 and %d inclusive "
                             "(nlist); got %d" % (out["nlist"], out["nprobe"]))
        sizes.append(MIN_POINTS_PER_CENTROID * out["nlist"])
    refine = params.get("refine")
    if refine is None and index_type == "ivfflat" and not out["pca"]:
        refine = 0
    out["refine"] = refine
    out["train_size"] = int(params.get("train_size") or min(n, max(sizes)))
    return out


# -- cost model ---------------------------------------------------------------


def estimate_cost(index_type, n, d, n_queries, k, params):
    """Predicted ``build_s``, ``search_s`` and ``memory_mb`` of an index.

    Times are multiply-add counts times the ``C_*`` constants of this module;
    ``nprobe`` unknown is taken as ``NPROBE_SQRT * sqrt(nlist)``; memory is
    the index's own (codes or vectors, ids, centroids, PCA matrix).
    """
    m = max(1, int(n_queries))
    if index_type == "flat":
        return {"build_s": n * d * 1e-10, "search_s": m * n * d * C_GEMM,
                "memory_mb": n * d * 4 / 2**20}
    p = params.get("pca") or 0
    dims = p or d
    ns = min(n, params.get("train_size") or n)
    build = search = 0.0
    mem = 0.0
    if p:
        build += min(ns, 4 * d) * d * d * C_PCA_TRAIN + n * d * p * C_GEMM
        search += m * d * p * C_GEMM
        mem += d * p * 4
    nlist = params.get("nlist")
    share = 1.0
    if nlist:
        build += ns * nlist * dims * KMEANS_ITERS * C_GEMM + n * nlist * dims * C_GEMM
        search += m * nlist * dims * C_GEMM
        nprobe = params.get("nprobe") or min(nlist, NPROBE_SQRT * math.sqrt(nlist))
        share = min(1.0, nprobe / nlist)
        mem += nlist * dims * 4 + n * 8
    if index_type in ("pq", "ivfpq"):
        ksub = 2 ** params["nbits"]
        build += ns * ksub * dims * PQ_ITERS * C_PQ_TRAIN + n * ksub * dims * C_GEMM
        search += m * ksub * dims * C_GEMM + m * n * share * params["M"] * C_PQ_SCAN
        mem += n * params["M"] * params["nbits"] / 8
    else:
        search += m * n * share * dims * C_SCAN
        mem += n * dims * 4
    refine = params.get("refine")
    if refine is None:
        refine = 4
    if refine:
        search += m * k * refine * d * C_REFINE
    # calibration: exact neighbours of the calibration queries + a few searches
    if params.get("nprobe") is None or params.get("refine") is None:
        build += CALIBRATION_QUERIES * n * d * C_GEMM * 2
    return {"build_s": build, "search_s": search, "memory_mb": mem / 2**20}


def plan_index(n, d, n_queries=None, k=50, params=None, memory_mb=None):
    """Chooses the index ``auto`` builds for ``n`` vectors of ``d`` dims
    searched by ``n_queries`` queries for ``k`` neighbours.

    Every candidate (flat; IVF-flat, with PCA when d >= 384; IVF-PQ) is
    costed by :func:`estimate_cost`; those over the memory budget
    (``memory_mb``, default :data:`DEFAULT_MEMORY_MB`) are dropped, and an
    approximate index is taken only when predicted at most
    :data:`SPEED_MARGIN` times the time of exact search, so ``auto`` is never
    expected to be slower than ``flat``. When nothing fits, the smallest wins.

    Returns:
        a dict with ``index_type``, ``params``, ``memory_mb`` and the
        ``estimates`` of every candidate
    """
    params = dict(params or {})
    budget = params.pop("memory_mb", None) or memory_mb or DEFAULT_MEMORY_MB
    n_queries = n_queries if n_queries is not None else min(n, 10_000)
    k = min(k, n)
    estimates = {}
    for itype in ("flat", "ivfflat", "ivfpq"):
        try:
            p = default_params(itype, n, d, params)
        except ValueError:
            continue
        if itype != "flat" and n < 4 * MIN_POINTS_PER_CENTROID:
            continue
        est = estimate_cost(itype, n, d, n_queries, k, p)
        est["total_s"] = est["build_s"] + est["search_s"]
        estimates[itype] = dict(est, params=p)
    fits = {t: e for t, e in estimates.items() if e["memory_mb"] <= budget}
    choice = None
    if "flat" in fits:
        choice = "flat"
        for t in ("ivfflat", "ivfpq"):
            if t in fits and fits[t]["total_s"] <= SPEED_MARGIN * fits["flat"]["total_s"] \
                    and fits[t]["total_s"] < fits[choice]["total_s"]:
                choice = t
    elif fits:
        choice = min(fits, key=lambda t: fits[t]["total_s"])
    else:
        choice = min(estimates, key=lambda t: estimates[t]["memory_mb"])
    return {
        "index_type": choice,
        "params": estimates[choice]["params"],
        "memory_mb": budget,
        "estimates": {t: {key: v for key, v in e.items() if key != "params"}
                      for t, e in estimates.items()},
    }


# -- the index object ---------------------------------------------------------


class Index(object):
    """A FAISS index plus what search needs to know about it: its type, the
    resolved (calibrated) parameters and where the exact vectors live."""

    def __init__(self, index, meta, vectors=None, vectors_path=None):
        self.index = index
        self.meta = meta
        self.vectors = vectors  # in-memory training vectors, when not on disk
        # the .npy it was built from; not saved (files move, runs are renamed)
        self.vectors_path = vectors_path

    @property
    def ntotal(self):
        return self.index.ntotal

    @property
    def d(self):
        return self.index.d

    def __getattr__(self, name):
        if name in ("index", "meta", "vectors", "vectors_path"):
            raise AttributeError(name)
        return getattr(self.index, name)


def index_info(index):
    """A JSON-serializable summary: type, parameters as used (calibrated
    ``nprobe``/``refine``), calibration recall, and the search placement
    (see :func:`gpu_plan`)."""
    index = _as_index(index)
    info = {key: index.meta.get(key) for key in ("index_type", "params", "calibration", "factory")}
    info["placement"] = gpu_plan(index, k=index.meta.get("k") or 50)
    return info


def _as_index(index):
    if isinstance(index, Index):
        return index
    return Index(index, {"index_type": type(faiss.downcast_index(index)).__name__,
                         "params": {}})


def _factory(index_type, d, params):
    parts = []
    if params.get("pca"):
        parts.append("PCA%d" % params["pca"])
    if index_type in ("ivfflat", "ivfpq"):
        parts.append("IVF%d" % params["nlist"])
    if index_type == "ivfflat":
        parts.append("Flat")
    elif index_type in ("pq", "ivfpq"):
        parts.append("PQ%dx%d" % (params["M"], params["nbits"]))
    else:
        parts.append("Flat")
    return ",".join(parts)


def build_index(embeddings, index_type, params, batch_size=50_000, seed=0, progress=None,
                k=50, n_queries=None):
    """Builds an index over the rows of ``embeddings`` (array or ``.npy``
    memmap, read in batches of ``batch_size`` rows, at most 64 MB, so memory
    stays bounded).

    Args:
        embeddings: ``(n, d)`` training embeddings
        index_type: one of :data:`INDEX_TYPES` (``auto`` resolves here)
        params: parameters from :func:`default_params` (missing ones are
            filled in)
        k (50): neighbours searched later, for calibration and ``auto``
        n_queries (None): queries searched later, for ``auto``

    Returns:
        an :class:`Index`
    """
    import fiftyone.core.utils as fou

    n, d = embeddings.shape
    if index_type == "auto":
        plan = plan_index(n, d, n_queries=n_queries, k=k, params=params)
        index_type, params = plan["index_type"], plan["params"]
    else:
        params = default_params(index_type, n, d, params)
    _set_threads()
    factory = _factory(index_type, d, params)
    index = faiss.index_factory(d, factory)
    k = int(min(k, n - 1)) if n > 1 else 1
    source = arrays.file_source(embeddings)
    meta = {"index_type": index_type, "params": dict(params), "factory": factory,
            "n": int(n), "d": int(d), "k": k}
    rng = np.random.default_rng(seed)

    if index_type != "flat":
        size = min(n, params["train_size"])
        rows = np.sort(rng.choice(n, size=size, replace=False))
        sample = arrays.gather_rows(embeddings, rows)
        del rows
        if params.get("pca"):  # a PCA needs ~4 * d points, not the centroids' count
            pca = faiss.downcast_VectorTransform(faiss.downcast_index(index).chain.at(0))
            pca.train(sample[: max(4 * d, 2 * params["pca"])])
        index.train(sample)
        del sample

    calibrate = index_type != "flat" and n > k + 1 and (
        params.get("refine") is None
        or (index_type in ("ivfflat", "ivfpq") and params.get("nprobe") is None)
    )
    if calibrate:
        cal_rows = np.sort(rng.choice(n, size=min(CALIBRATION_QUERIES, n), replace=False))
        cal_q = arrays.gather_rows(embeddings, cal_rows)
        exact_d = np.full((len(cal_q), 0), np.inf, dtype=np.float32)
        exact_i = np.zeros((len(cal_q), 0), dtype=np.int64)

    batch_size = max(1, min(batch_size, (64 << 20) // (4 * d)))  # <= 64 MB per batch
    with fou.ProgressBar(total=n, progress=progress) as pb:
        for start, batch in arrays.iter_rows(embeddings, batch_size):
            index.add(batch)
            if calibrate:
                kk = min(k + 1, len(batch))
                dd, ii = faiss.knn(cal_q, batch, kk)
                exact_d, exact_i = _merge_topk(exact_d, exact_i, dd, ii + start, k + 1)
            pb.update(len(batch))

    result = Index(index, meta, vectors=None if source else embeddings,
                   vectors_path=os.path.abspath(source[0]) if source else None)
    if calibrate:
        meta["calibration"] = _calibrate(result, cal_q, cal_rows, exact_i, k, params)
    else:
        meta["calibration"] = None
    if index_type in ("ivfflat", "ivfpq") and meta["params"].get("nprobe") is not None:
        faiss.extract_index_ivf(index).nprobe = int(meta["params"]["nprobe"])
    return result


def _merge_topk(d1, i1, d2, i2, k):
    d = np.concatenate([d1, d2], axis=1)
    i = np.concatenate([i1, i2], axis=1)
    if d.shape[1] > k:
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        d = np.take_along_axis(d, part, axis=1)
        i = np.take_along_axis(i, part, axis=1)
    order = np.argsort(d, axis=1, kind="stable")
    return np.take_along_axis(d, order, axis=1), np.take_along_axis(i, order, axis=1)


def _self_excluded(idx, rows, k):
    out = np.empty((len(idx), k), dtype=np.int64)
    for j, (r, row) in enumerate(zip(idx, rows)):
        r = r[r != row]
        out[j] = r[:k] if len(r) >= k else np.pad(r, (0, k - len(r)), constant_values=-1)
    return out


def _calibrate(index, cal_q, cal_rows, exact_i, k, params):
    """Smallest ``nprobe`` (doubling) and then ``refine`` (doubling from 2)
    whose recall@k on the calibration queries reaches CALIBRATION_RECALL;
    writes them into ``index.meta["params"]``."""
    itype = index.meta["index_type"]
    meta_params = index.meta["params"]
    truth = _self_excluded(exact_i, cal_rows, k)
    ivf = itype in ("ivfflat", "ivfpq")
    nlist = params.get("nlist") or 1
    nprobes = [params.get("nprobe")] if (not ivf or params.get("nprobe") is not None) else \
        sorted({min(nlist, 2**i) for i in range(0, int(math.log2(nlist)) + 2)})
    refines = [params["refine"]] if params.get("refine") is not None else [2, 4, 8, 16, 32]
    best = None
    tried = []
    for refine in refines:
        for nprobe in nprobes:
            p = dict(meta_params, nprobe=nprobe, refine=refine)
            _, idx = search(index, cal_q, k + 1, p)
            recall = recall_at_k(_self_excluded(idx, cal_rows, k), truth)
            tried.append((nprobe, refine, recall))
            if recall >= CALIBRATION_RECALL:
                best = (nprobe, refine, recall)
                break
        if best is not None:
            break
    if best is None:
        best = max(tried, key=lambda t: t[2])
        logger.warning("Index calibration reached recall %.3f < %.2f at best (nprobe=%s, refine=%s)",
                       best[2], CALIBRATION_RECALL, best[0], best[1])
    if ivf:
        meta_params["nprobe"] = int(best[0])
    meta_params["refine"] = int(best[1]) if best[1] is not None else 0
    return {"recall": float(best[2]), "queries": int(len(cal_q)), "k": int(k),
            "target": CALIBRATION_RECALL, "tried": [list(t) for t in tried]}


# -- GPU placement ------------------------------------------------------------


def _gpu_count():
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except Exception:  # noqa: BLE001 - a broken CUDA setup means no GPU
        return 0


def _core(index):
    """``(transforms, core)``: the PCA/OPQ chain and the index under it."""
    idx = faiss.downcast_index(index)
    if isinstance(idx, faiss.IndexPreTransform):
        chain = [faiss.downcast_VectorTransform(idx.chain.at(i)) for i in range(idx.chain.size())]
        return chain, faiss.downcast_index(idx.index)
    return [], idx


def gpu_plan(index, k=50, nprobe=None, refine=None, num_gpus=None):
    """Where :func:`search` runs ``index``: only flat, IVF-flat and IVF-PQ
    (8-bit codes, M in :data:`GPU_PQ_BYTES`) go to a GPU, with the PCA
    projection and exact re-scoring on the CPU; everything else (PQ without
    an inverted file, k or nprobe above :data:`GPU_MAX_K`) stays on the CPU.

    Returns:
        a dict with ``device`` ("gpu" or "cpu"), ``gpu_index`` (the FAISS
        class moved, or None), ``cpu_parts`` and ``reason``
    """
    index = _as_index(index)
    num_gpus = _gpu_count() if num_gpus is None else num_gpus
    chain, core = _core(index.index)
    params = index.meta.get("params") or {}
    refine = params.get("refine") if refine is None else refine
    nprobe = params.get("nprobe") if nprobe is None else nprobe
    if isinstance(core, faiss.IndexIVF) and nprobe is None:
        nprobe = core.nprobe
    shortlist = k * refine if refine else k
    cpu_parts = [type(t).__name__ for t in chain]
    if refine:
        cpu_parts.append("exact re-scoring")
    name = type(core).__name__
    plan = {"device": "cpu", "gpu_index": None, "cpu_parts": cpu_parts, "num_gpus": num_gpus}
    if isinstance(core, faiss.IndexFlat):
        ok, why = True, ""
    elif isinstance(core, faiss.IndexIVFFlat):
        ok, why = True, ""
    elif isinstance(core, faiss.IndexIVFPQ):
        pq = core.pq
        ok = pq.nbits == 8 and pq.M in GPU_PQ_BYTES
        why = "" if ok else "FAISS GPU IVF-PQ needs 8-bit codes and M in %s; got M=%d, nbits=%d" % (
            GPU_PQ_BYTES, pq.M, pq.nbits)
    else:
        ok, why = False, "FAISS has no GPU implementation of %s" % name
    if ok and shortlist > GPU_MAX_K:
        ok, why = False, "k x refine = %d exceeds the GPU limit %d" % (shortlist, GPU_MAX_K)
    if ok and nprobe is not None and isinstance(core, faiss.IndexIVF) and nprobe > GPU_MAX_K:
        ok, why = False, "nprobe = %d exceeds the GPU limit %d" % (nprobe, GPU_MAX_K)
    if ok and num_gpus == 0:
        ok, why = False, "no GPU (faiss-gpu not installed or no device)"
    if ok:
        plan.update(device="gpu", gpu_index=name, reason="%s runs on the GPU" % name)
    else:
        plan["cpu_parts"] = cpu_parts + [name]
        plan["reason"] = why
    return plan


def _to_gpu(core, plan):
    res = faiss.StandardGpuResources()
    co = faiss.GpuClonerOptions()
    if isinstance(core, faiss.IndexIVFPQ) and core.pq.M > GPU_PQ_FLOAT16_ABOVE:
        co.useFloat16 = True
    return faiss.index_cpu_to_gpu(res, 0, core, co), res


# -- search -------------------------------------------------------------------


# Queries per FAISS call. BLAS rounds a row's distances differently in batches
# of different sizes, so sharded valuations (gmv_plugin.shards) align their
# shards to this; 1024 is as fast as 4096 on CPU and allows finer shards.
QUERY_BATCH = 1024


def search(index, queries, k, params=None, batch_size=QUERY_BATCH, vectors=None, info=None):
    """Searches ``index`` for the ``k`` nearest rows to each query.

    Args:
        index: an :class:`Index` (or a bare FAISS index)
        queries: ``(m, d)`` array
        k: neighbours per query
        params (None): ``nprobe``/``refine`` overrides; None values keep the
            calibrated ones stored in the index
        vectors (None): the training embeddings for exact re-scoring (array or
            ``.npy`` memmap); defaults to those the index was built from while
            it is in memory; required after :func:`load_index`
        info (None): a dict that receives the placement (:func:`gpu_plan`)

    Returns:
        ``(distances, indices)``: Euclidean (not squared) distances, float32,
        and int64 row indices, both ``(len(queries), k)``
    """
    index = _as_index(index)
    meta_params = index.meta.get("params") or {}
    params = params or {}
    nprobe = params.get("nprobe")
    if nprobe is None:
        nprobe = meta_params.get("nprobe")
    refine = params.get("refine")
    if refine is None:
        refine = meta_params.get("refine") or 0
    chain, core = _core(index.index)
    if nprobe is not None and isinstance(core, faiss.IndexIVF):
        core.nprobe = int(nprobe)
    if refine:
        vectors = _refine_vectors(index, vectors)
        # Re-scoring many queries touches most rows: read the file once into
        # memory when it fits half the budget, else gather blocks from disk.
        budget = (params.get("memory_mb") or meta_params.get("memory_mb") or DEFAULT_MEMORY_MB) * 2**20
        if (arrays.file_source(vectors) is not None and vectors.nbytes <= budget / 2
                and len(queries) * k * refine >= len(vectors) / 4):
            vectors = arrays.read_rows(vectors, 0, len(vectors))
    _set_threads()
    plan = gpu_plan(index, k=k, nprobe=nprobe, refine=refine)
    if info is not None:
        info.update(plan)
    target, res = core, None
    if plan["device"] == "gpu":
        target, res = _to_gpu(core, plan)
    n = len(queries)
    ntotal = index.ntotal
    short = min(ntotal, int(k * refine)) if refine else k
    dists = np.empty((n, k), dtype=np.float32)
    idx = np.empty((n, k), dtype=np.int64)
    step = batch_size
    if refine:  # bound the gathered candidate rows to ~64 MB per batch
        step = max(1, min(batch_size, (64 << 20) // max(1, short * index.d * 4)))
    for start in range(0, n, step):
        q = np.ascontiguousarray(queries[start : start + step], dtype=np.float32)
        x = q
        for t in chain:
            x = t.apply(x)
        dd, ii = target.search(np.ascontiguousarray(x), short)
        if refine:
            dd, ii = _rescore(q, ii, vectors, k)
        else:
            dd = np.maximum(dd, 0)
        dists[start : start + len(q)] = np.sqrt(dd[:, :k])
        idx[start : start + len(q)] = ii[:, :k]
    if (idx < 0).any():
        raise RuntimeError(
            "The index returned fewer than k=%d neighbours for some queries; "
            "raise nprobe or use index='flat'" % k
        )
    return dists, idx


def _refine_vectors(index, vectors):
    if vectors is not None:
        return vectors
    if index.vectors is not None:
        return index.vectors
    path = index.vectors_path
    if path and os.path.isfile(path):
        vec = np.load(path, mmap_mode="r")
        if vec.shape == (index.meta.get("n"), index.meta.get("d")):
            return vec
    raise ValueError(
        "This index re-scores its shortlist with the exact training embeddings; "
        "pass vectors= (the (n, d) array or .npy memmap it was built from)"
    )


def _rescore(queries, cand, vectors, k):
    """Exact squared distances of each query to its candidates, best ``k``."""
    nq, short = cand.shape
    flat = cand.ravel()
    valid = flat >= 0
    uniq, inv = np.unique(flat[valid], return_inverse=True)
    rows = arrays.gather_rows(vectors, uniq)
    d2 = np.full(flat.shape, np.inf, dtype=np.float32)
    qi = np.repeat(np.arange(nq), short)[valid]
    xn = np.einsum("ij,ij->i", rows, rows)
    qn = np.einsum("ij,ij->i", queries, queries)
    d2[valid] = xn[inv] + qn[qi] - 2 * np.einsum("ij,ij->i", rows[inv], queries[qi])
    d2 = np.maximum(d2, 0).reshape(nq, short)
    order = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d2, order, axis=1), np.take_along_axis(cand, order, axis=1)


# -- files --------------------------------------------------------------------

_MAGIC = b"GMVMETA1"


def save_index(index, path):
    """Writes ``index`` to ``path`` (a FAISS file, readable by
    ``faiss.read_index``, with this module's metadata appended)."""
    index = _as_index(index)
    tmp = "%s.%d.tmp" % (path, os.getpid())
    faiss.write_index(index.index, tmp)
    meta = json.dumps(index.meta).encode()
    with open(tmp, "ab") as f:
        f.write(meta + len(meta).to_bytes(8, "little") + _MAGIC)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_index(path):
    """Reads an index written by :func:`save_index` (or a plain FAISS file)."""
    index = faiss.read_index(path)
    meta = None
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size > 16:
            f.seek(size - 16)
            tail = f.read(16)
            if tail[8:] == _MAGIC:
                length = int.from_bytes(tail[:8], "little")
                f.seek(size - 16 - length)
                meta = json.loads(f.read(length).decode())
    return Index(index, meta) if meta is not None else _as_index(index)


def recall_at_k(approx_idx, exact_idx):
    """Mean share of each query's exact top-K found in its approximate top-K."""
    approx_idx = np.asarray(approx_idx)
    exact_idx = np.asarray(exact_idx)
    k = exact_idx.shape[1]
    hits = [len(np.intersect1d(a, e)) for a, e in zip(approx_idx, exact_idx)]
    return float(np.mean(hits) / k)
