"""FAISS recall indexes over training embeddings.

``flat`` is exact; ``pq`` and ``ivfpq`` store product-quantized codes
(M sub-vectors of ``2**nbits`` centroids each). ``refine`` re-scores a
shortlist of ``refine * K`` PQ candidates with exact distances (FAISS's
``IndexRefineFlat``), which restores near-exact recall at the cost of keeping
the raw vectors; ``refine=0`` keeps only the codes. The index is trained on a
sample and filled in batches. ``brain`` recalls through an existing FiftyOne
Brain similarity index instead (:mod:`gmv_plugin.brain`).
"""

import logging

import faiss
import numpy as np

logger = logging.getLogger(__name__)

INDEX_TYPES = ("auto", "flat", "pq", "ivfpq", "brain")
INDEX_PARAMS = ("M", "nbits", "nlist", "nprobe", "refine", "train_size")

# Below this many training images exact search is cheap and PQ codebooks
# cannot be trained well; above the second, an inverted file pays off.
AUTO_FLAT_MAX = 10_000
AUTO_PQ_MAX = 200_000


def resolve_index_type(index, n):
    """Resolves ``"auto"`` to a concrete index type for ``n`` vectors."""
    if index not in INDEX_TYPES:
        raise ValueError(
            "Unknown index %r; allowed values are %s" % (index, INDEX_TYPES)
        )
    if index != "auto":
        return index
    if n <= AUTO_FLAT_MAX:
        return "flat"
    return "pq" if n <= AUTO_PQ_MAX else "ivfpq"


def check_params(params, index="auto", n=None, d=None):
    """Raises a ValueError naming every unknown or out-of-range entry of
    ``params``; ``n`` (training vectors) and ``d`` (dimension) enable the
    checks that need them."""
    if index == "brain":
        from gmv_plugin import brain as gmvb

        gmvb.check_params(params)
        return
    if params is None:
        return
    if not isinstance(params, dict):
        raise ValueError("index_params must be a dict; got %r" % (params,))
    errors = []
    unknown = set(params) - set(INDEX_PARAMS)
    if unknown:
        errors.append("Unknown index parameters %s; allowed are %s" % (sorted(unknown), INDEX_PARAMS))
    nlist = params.get("nlist")
    highs = {"M": d, "nbits": 16, "nlist": n, "nprobe": nlist if _is_int(nlist) else n}
    lows = {"M": 1, "nbits": 1, "nlist": 1, "nprobe": 1, "refine": 0, "train_size": 1}
    for name in INDEX_PARAMS:
        value = params.get(name)
        if value is None:
            continue
        low, high = lows[name], highs.get(name)
        if not _is_int(value) or value < low or (high is not None and value > high):
            span = "between %d and %d inclusive" % (low, high) if high is not None else ">= %d" % low
            errors.append("index_params %s must be an integer %s; got %r" % (name, span, value))
        elif name == "M" and d is not None and d % value:
            errors.append("index_params M=%d must divide the embedding dimension %d" % (value, d))
    if errors:
        raise ValueError("; ".join(errors))


def _is_int(x):
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def default_params(index_type, n, d, params=None):
    """Fills in defaults for M, nbits, nlist, nprobe, refine and train_size.

    M defaults to the largest divisor of ``d`` giving sub-vectors of at least
    4 dimensions, at most 64; nbits to 8, reduced so that every centroid has
    at least 39 training points; nlist to about ``4 * sqrt(n)``, at most
    ``n / 39``; nprobe to a quarter of nlist (at least 8); refine to 4.
    """
    check_params(params)
    params = dict(params or {})
    if index_type == "flat":
        return {}
    out = {}
    m = params.get("M")
    if m is None:
        m = _default_m(d)
    if d % int(m):
        raise ValueError("M=%d must divide the embedding dimension %d" % (m, d))
    out["M"] = int(m)
    nbits = params.get("nbits")
    if nbits is None:
        nbits = 8
        while nbits > 4 and n < 39 * 2**nbits:
            nbits -= 1
    out["nbits"] = int(nbits)
    if n < 2 ** out["nbits"]:
        raise ValueError(
            "%s needs at least 2**nbits = %d training vectors; got %d. Use "
            "index='flat' or a smaller nbits" % (index_type, 2 ** out["nbits"], n)
        )
    if index_type == "ivfpq":
        nlist = params.get("nlist")
        if nlist is None:
            nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))
        out["nlist"] = int(nlist)
        nprobe = params.get("nprobe")
        out["nprobe"] = int(nprobe if nprobe is not None else min(out["nlist"], max(8, out["nlist"] // 4)))
    out["refine"] = int(params.get("refine", 4) or 0)
    out["train_size"] = int(params.get("train_size") or max(100_000, 64 * 2 ** out["nbits"]))
    return out


def _default_m(d):
    divisors = [x for x in range(1, min(64, d) + 1) if d % x == 0 and d // x >= 4]
    return max(divisors) if divisors else 1


def _gpu_resources():
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        return faiss.StandardGpuResources()
    return None


def build_index(embeddings, index_type, params, batch_size=50_000, seed=0, progress=None):
    """Builds a FAISS index over the rows of ``embeddings`` (array or memmap).

    Returns:
        a CPU FAISS index
    """
    import fiftyone.core.utils as fou

    n, d = embeddings.shape
    if index_type == "flat":
        index = faiss.IndexFlatL2(d)
    elif index_type == "pq":
        index = faiss.IndexPQ(d, params["M"], params["nbits"])
    elif index_type == "ivfpq":
        quantizer = faiss.IndexFlatL2(d)
        index = faiss.IndexIVFPQ(quantizer, d, params["nlist"], params["M"], params["nbits"])
    else:
        raise ValueError("Unknown index type %r" % index_type)

    if index_type != "flat":
        rng = np.random.default_rng(seed)
        size = min(n, params["train_size"])
        rows = np.sort(rng.choice(n, size=size, replace=False))
        sample = np.ascontiguousarray(embeddings[rows], dtype=np.float32)
        index.train(sample)
        if params.get("refine"):
            index = faiss.IndexRefineFlat(index)
            index.k_factor = float(params["refine"])

    with fou.ProgressBar(total=n, progress=progress) as pb:
        for start in range(0, n, batch_size):
            batch = np.ascontiguousarray(embeddings[start : start + batch_size], dtype=np.float32)
            index.add(batch)
            pb.update(len(batch))
    return index


def search(index, queries, k, params=None, batch_size=4096):
    """Searches ``index`` for the ``k`` nearest rows to each query.

    Returns:
        ``(distances, indices)``: Euclidean (not squared) distances, float32,
        and int64 row indices, both ``(len(queries), k)``
    """
    params = params or {}
    if params.get("nprobe") is not None:
        faiss.extract_index_ivf(index).nprobe = params["nprobe"]
    gpu = _gpu_resources()
    if gpu is not None and not isinstance(index, faiss.IndexRefine):
        index = faiss.index_cpu_to_gpu(gpu, 0, index)
    n = len(queries)
    dists = np.empty((n, k), dtype=np.float32)
    idx = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, batch_size):
        q = np.ascontiguousarray(queries[start : start + batch_size], dtype=np.float32)
        dd, ii = index.search(q, k)
        dists[start : start + len(q)] = np.sqrt(np.maximum(dd, 0))
        idx[start : start + len(q)] = ii
    if (idx < 0).any():
        raise RuntimeError(
            "The index returned fewer than k=%d neighbours for some queries; "
            "raise nprobe or use index='flat'" % k
        )
    return dists, idx


def save_index(index, path):
    faiss.write_index(index, path)


def load_index(path):
    return faiss.read_index(path)


def recall_at_k(approx_idx, exact_idx):
    """Mean share of each query's exact top-K found in its approximate top-K."""
    approx_idx = np.asarray(approx_idx)
    exact_idx = np.asarray(exact_idx)
    k = exact_idx.shape[1]
    hits = [len(np.intersect1d(a, e)) for a, e in zip(approx_idx, exact_idx)]
    return float(np.mean(hits) / k)
