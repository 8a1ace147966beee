"""Nearest neighbours among the training rows for the copy flags, with
memory bounded by a block of rows whatever the training set's size.

:class:`NeighbourSearch` searches exactly (FAISS brute force over blocks of
the training array) while that costs at most :data:`EXACT_BUDGET`
multiply-adds per search, and beyond that through an inverted file: the
training rows are assigned to ``nlist`` k-means cells once, each query
probes its ``nprobe`` nearest cells, and the distances to the rows found
there are exact. Rows stay in the training array (a ``.npy`` memmap is read
a cell at a time); nothing holds a copy of them.
"""

import numpy as np

from gmv_plugin import arrays

EXACT_BUDGET = 2e11  # multiply-adds of one exact search (about 4-8 s on 2 cores)
MIN_IVF_ROWS = 50_000
PROBE_SHARE = 16  # nprobe = nlist / PROBE_SHARE
MIN_NPROBE = 32
KMEANS_POINTS = 40  # training rows per cell for k-means
SEED = 0


def nearest(queries, base, k=1, exclude_self=False, rows=None, block_mb=64):
    """Exact Euclidean nearest neighbours of ``queries`` among ``base`` (FAISS
    brute force over blocks of ``base`` of at most ``block_mb``, so memory
    does not grow with ``base``, which may be a ``.npy`` memmap).

    With ``exclude_self``, each query's own row of ``base`` is skipped: query
    ``i`` is row ``rows[i]`` (default: ``i``, i.e. the queries are ``base``).

    Returns:
        ``(distances (n, k) float32, indices (n, k) int64)``
    """
    import faiss

    kk = min(k + 1 if exclude_self else k, len(base))
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    block = max(kk, int(block_mb * 2**20 // max(1, 4 * base.shape[1])))
    heap = faiss.ResultHeap(len(queries), kk)
    for start, rows_ in arrays.iter_rows(base, block):
        d2, idx = faiss.knn(queries, rows_, min(kk, len(rows_)))
        heap.add_result(np.ascontiguousarray(d2), np.ascontiguousarray(idx + start))
    heap.finalize()
    return _finish(heap.D, heap.I, kk, exclude_self, rows)


def _finish(d2, idx, kk, exclude_self, rows):
    """Distances from squared ones; with ``exclude_self``, each query's own
    row dropped (or the last column when duplicates took its place)."""
    d = np.sqrt(np.maximum(d2, 0))
    if exclude_self:
        own = np.arange(len(d)) if rows is None else np.asarray(rows)
        keep = idx != own[:, None]
        first = np.argmin(keep, axis=1)
        drop = np.where(keep.all(axis=1), kk - 1, first)
        mask = np.ones_like(keep)
        mask[np.arange(len(d)), drop] = False
        d = d[mask].reshape(len(d), kk - 1)
        idx = idx[mask].reshape(len(idx), kk - 1)
    return d.astype(np.float32), idx.astype(np.int64)


class NeighbourSearch(object):
    """Nearest rows of ``base`` (``(N, D)``, array or ``.npy`` memmap) for
    about ``num_queries`` queries per search: exact when a search costs at
    most ``exact_budget`` (default :data:`EXACT_BUDGET`) multiply-adds or
    ``base`` has fewer than :data:`MIN_IVF_ROWS` rows, else an inverted file
    with exact distances (see the module). Deterministic: the same rows give
    the same cells.

    ``describe()`` says which, for the run's results.
    """

    def __init__(self, base, num_queries, exact_budget=None):
        self.base = base
        n, d = base.shape
        exact_budget = EXACT_BUDGET if exact_budget is None else exact_budget
        self.exact = n < MIN_IVF_ROWS or float(num_queries) * n * d <= exact_budget
        self.nlist = self.nprobe = None
        if not self.exact:
            self.nlist = int(min(4096, max(64, round(np.sqrt(n)))))
            self.nprobe = max(MIN_NPROBE, self.nlist // PROBE_SHARE)
            self._build()

    def describe(self):
        if self.exact:
            return {"method": "exact"}
        return {"method": "ivf", "nlist": self.nlist, "nprobe": self.nprobe}

    def _build(self):
        import faiss

        n, d = self.base.shape
        rng = np.random.default_rng(SEED)
        sample = np.sort(rng.choice(n, size=min(n, KMEANS_POINTS * self.nlist), replace=False))
        km = faiss.Kmeans(d, self.nlist, niter=10, seed=SEED, max_points_per_centroid=KMEANS_POINTS)
        km.train(arrays.gather_rows(self.base, sample))
        self.centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
        cell = np.empty(n, dtype=np.int64)
        for start, rows in arrays.iter_rows(self.base, 65_536):
            cell[start : start + len(rows)] = faiss.knn(rows, self.centroids, 1)[1][:, 0]
        self.members = np.argsort(cell, kind="stable")
        self.bounds = np.searchsorted(cell[self.members], np.arange(self.nlist + 1))

    def search(self, queries, k, exclude_self=False, rows=None):
        """Like :func:`nearest`: ``(distances (m, k), indices (m, k))``."""
        if self.exact:
            return nearest(queries, self.base, k, exclude_self=exclude_self, rows=rows)
        import faiss

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        m = len(queries)
        kk = min(k + 1 if exclude_self else k, len(self.base))
        probes = faiss.knn(queries, self.centroids, self.nprobe)[1]
        dist = np.full((m, self.nprobe * kk), np.inf, dtype=np.float32)
        idx = np.full((m, self.nprobe * kk), -1, dtype=np.int64)
        flat = probes.ravel()
        order = np.argsort(flat, kind="stable")
        cells, starts = np.unique(flat[order], return_index=True)
        ends = np.append(starts[1:], len(order))
        for c, s, e in zip(cells, starts, ends):
            members = self.members[self.bounds[c] : self.bounds[c + 1]]
            if not len(members):
                continue
            q, slot = np.divmod(order[s:e], self.nprobe)
            got = min(kk, len(members))
            d2, i = faiss.knn(queries[q], arrays.gather_rows(self.base, members), got)
            cols = slot[:, None] * kk + np.arange(got)
            dist[q[:, None], cols] = d2
            idx[q[:, None], cols] = members[i]
        best = np.argsort(dist, axis=1, kind="stable")[:, :kk]
        d2, i = np.take_along_axis(dist, best, 1), np.take_along_axis(idx, best, 1)
        short = np.flatnonzero((i < 0).any(axis=1))
        if len(short):  # fewer than kk rows in the probed cells: search those queries exactly
            own = (np.arange(m) if rows is None else np.asarray(rows))[short]
            ed, ei = nearest(queries[short], self.base, k, exclude_self=exclude_self, rows=own)
            d, i = _finish(d2, i, kk, exclude_self, rows)
            d[short], i[short] = ed, ei
            return d, i
        return _finish(d2, i, kk, exclude_self, rows)
