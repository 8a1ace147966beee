"""Recall through an existing FiftyOne Brain similarity index (``index="brain"``).

A Brain similarity index (``fob.compute_similarity(train_view, brain_key=...)``)
over the training samples, of any backend, replaces the run's own FAISS index:
the generated samples are embedded with the index's own model or embeddings
field, and their nearest training samples are recalled in batches (thousands of
queries per request).

Distances are on the scale of ``index="flat"`` (Euclidean): for a
``euclidean`` index the Euclidean distance itself; for a ``cosine`` (or
``dotproduct`` over unit vectors) index the Euclidean distance between the
unit-normalized vectors, ``sqrt(2 * cosine_distance)``, which ranks exactly as
the index does and equals ``flat``'s distance when the embeddings are unit
vectors. The Brain's ``sklearn`` backend is searched exactly here with FAISS
over its stored vectors: its own neighbour search centres the indexed vectors
but not the queries, which changes the neighbours.
"""

import logging

import numpy as np

from gmv_plugin import embeddings as gmve

logger = logging.getLogger(__name__)

# ``backend`` is recorded by the run and checked on every later use.
BRAIN_PARAMS = ("brain_key", "backend", "batch_size")
METRICS = ("cosine", "euclidean", "dotproduct")
# A superset index is searched for k + (extra samples) neighbours and the
# extras dropped, which is exact; beyond this many extras that costs too much.
MAX_EXTRA = 1000


class BrainIndexError(ValueError):
    """The Brain index is missing, unusable, or does not fit the run."""


def check_params(params):
    """Validates ``index_params`` of ``index="brain"``; returns a copy."""
    if params is not None and not isinstance(params, dict):
        raise ValueError("index_params must be a dict; got %r" % (params,))
    params = dict(params or {})
    unknown = set(params) - set(BRAIN_PARAMS)
    if unknown:
        raise ValueError(
            "Unknown index parameters %s for index='brain'; allowed are %s"
            % (sorted(unknown), BRAIN_PARAMS)
        )
    key = params.get("brain_key")
    if not isinstance(key, str) or not key:
        raise ValueError(
            "index='brain' needs index_params={'brain_key': <key>}, the key of a "
            "Brain similarity index over the training samples (see "
            "fiftyone.brain.compute_similarity); got %r" % (key,)
        )
    bs = params.get("batch_size")
    if bs is not None and (isinstance(bs, bool) or not isinstance(bs, (int, np.integer)) or bs < 1):
        raise ValueError("batch_size must be a positive integer; got %r" % (bs,))
    return params


def _brain_keys(dataset, key):
    if not dataset.has_brain_run(key):
        raise BrainIndexError(
            "Brain index %r does not exist on dataset %r (deleted?); brain "
            "keys present: %s. Recreate it with fiftyone.brain.compute_similarity"
            "(train_view, brain_key=%r, ...) or choose another index"
            % (key, dataset.name, dataset.list_brain_runs(), key)
        )
    info = dataset.get_brain_info(key)
    if getattr(info.config, "type", None) != "similarity":
        raise BrainIndexError(
            "Brain run %r is a %r run, not a similarity index"
            % (key, getattr(info.config, "type", None))
        )
    return info


def load_index(dataset, brain_key):
    """Loads Brain similarity index ``brain_key`` of ``dataset`` (a fresh
    copy, never the cached one, whose vectors other code may have modified).

    Raises:
        BrainIndexError: if it does not exist or cannot be opened
    """
    _brain_keys(dataset, brain_key)
    try:
        index = dataset.load_brain_results(brain_key, cache=False)
    except Exception as e:
        raise BrainIndexError(
            "Brain index %r could not be opened: %s" % (brain_key, e)
        ) from e
    if index is None:
        raise BrainIndexError("Brain index %r has no results" % brain_key)
    cfg = index.config
    if cfg.patches_field is not None or getattr(cfg, "roi_field", None) is not None:
        raise BrainIndexError(
            "Brain index %r indexes patches (%r); index='brain' needs an index "
            "of whole training samples"
            % (brain_key, cfg.patches_field or cfg.roi_field)
        )
    return index


def describe(index):
    """A JSON-serializable description of a Brain index, for run configs."""
    cfg = index.config
    model = cfg.model if isinstance(cfg.model, str) or cfg.model is None else type(cfg.model).__name__
    return {
        "brain_key": index.key,
        "backend": cfg.method,
        "metric": _metric(index),
        "model": model,
        "embeddings_field": cfg.embeddings_field,
    }


def _metric(index):
    metric = getattr(index.config, "metric", None) or "cosine"  # qdrant's None means cosine
    return str(metric).lower()


def _searcher(index):
    method = index.config.method
    cls = {
        "sklearn": _SklearnSearcher,
        "lancedb": _LanceDBSearcher,
        "pgvector": _PgVectorSearcher,
        "milvus": _MilvusSearcher,
    }
    return cls.get(method, _GenericSearcher)(index)


class BrainRecall(object):
    """Batched k-NN recall of query vectors among a run's training samples
    through Brain index ``brain_key``.

    Args:
        dataset: the dataset holding the index
        brain_key: the Brain key
        train_ids: the run's training sample ids, in the run's order; the
            returned ``idx`` indexes into it
        batch_size (None): queries per request (backend default if None)
        required (None): a boolean mask of the ``train_ids`` the index must
            hold (default: all; samples deleted since the run began need not)

    Raises:
        BrainIndexError: if the index is missing, uses an unsupported metric,
            or does not cover every training sample
    """

    def __init__(self, dataset, brain_key, train_ids, batch_size=None, required=None):
        self.brain_key = brain_key
        self._required = required
        self.index = load_index(dataset, brain_key)
        self.metric = _metric(self.index)
        if self.metric not in METRICS:
            raise BrainIndexError(
                "Brain index %r uses metric %r; index='brain' supports %s"
                % (brain_key, self.metric, METRICS)
            )
        self.train_ids = np.asarray(train_ids).astype(str)
        self._order = np.argsort(self.train_ids, kind="stable")
        self._sorted = self.train_ids[self._order]
        try:
            self.searcher = _searcher(self.index)
            self.dim = self.searcher.dim(self)
            self.extra = self._check_coverage()
        except BrainIndexError:
            raise
        except Exception as e:
            raise BrainIndexError(
                "Brain index %r (backend %r) could not be read: %s"
                % (brain_key, self.index.config.method, e)
            ) from e
        self.batch_size = batch_size or self.searcher.batch_size

    def describe(self):
        info = describe(self.index)
        info.update(dim=int(self.dim), size=int(len(self.train_ids) + self.extra))
        return info

    def _check_coverage(self):
        ids = self.searcher.ids()
        if ids is None:  # backend cannot list ids: compare sizes
            size = int(self.index.total_index_size)
            if size < len(self.train_ids):
                raise BrainIndexError(
                    "Brain index %r holds %d vectors but the run has %d training "
                    "samples; index every training sample"
                    % (self.brain_key, size, len(self.train_ids))
                )
            return size - len(self.train_ids)
        ids = np.unique(np.asarray(ids).astype(str))
        required = self.train_ids if self._required is None else self.train_ids[np.asarray(self._required)]
        missing = np.setdiff1d(required, ids)
        if len(missing):
            raise BrainIndexError(
                "Brain index %r does not cover %d of the run's %d training samples "
                "(e.g. %s); add them (index.add_to_index or compute_similarity over "
                "the training view) or build a new index"
                % (self.brain_key, len(missing), len(self.train_ids), missing[:3].tolist())
            )
        extra = int((self._rows(ids) < 0).sum())
        if extra > MAX_EXTRA and not self.searcher.filters:
            raise BrainIndexError(
                "Brain index %r holds %d samples that are not training samples of "
                "the run (at most %d are supported for backend %r); build an index "
                "over exactly the training samples: fob.compute_similarity("
                "train_view, ...)" % (self.brain_key, extra, MAX_EXTRA, self.index.config.method)
            )
        return extra

    def _rows(self, ids):
        """Positions of ``ids`` in ``train_ids``, -1 where absent."""
        ids = np.asarray(ids).astype(str)
        pos = np.searchsorted(self._sorted, ids)
        pos = np.minimum(pos, len(self._sorted) - 1)
        found = self._sorted[pos] == ids
        return np.where(found, self._order[pos], -1)

    def search(self, queries, k, progress=None):
        """Recalls the ``k`` nearest training samples of each query.

        Returns:
            ``(dists, idx)``: float32 Euclidean-scale distances (see the
            module doc) and int64 rows of ``train_ids``, both
            ``(len(queries), k)``, nearest first
        """
        import fiftyone.core.utils as fou

        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise BrainIndexError(
                "Query embeddings have shape %s but Brain index %r has dimension "
                "%d; embed the generated samples with the index's own model or "
                "embeddings field" % (queries.shape, self.brain_key, self.dim)
            )
        if k > len(self.train_ids):
            raise ValueError("k=%d exceeds the %d training samples" % (k, len(self.train_ids)))
        if self.metric == "dotproduct":
            norms = np.linalg.norm(queries, axis=1)
            if not np.allclose(norms, 1, atol=1e-3):
                raise BrainIndexError(
                    "Brain index %r ranks by inner product, which is a distance "
                    "only between unit vectors; these queries have norms in "
                    "[%.3g, %.3g]. Use a cosine or euclidean index"
                    % (self.brain_key, norms.min(), norms.max())
                )
        fetch = k if self.searcher.filters else min(k + self.extra, len(self.train_ids) + self.extra)
        n = len(queries)
        dists = np.empty((n, k), dtype=np.float32)
        idx = np.empty((n, k), dtype=np.int64)
        with fou.ProgressBar(total=n, progress=progress) as pb:
            for s in range(0, n, self.batch_size):
                q = np.ascontiguousarray(queries[s : s + self.batch_size])
                try:
                    ids, raw = self.searcher.search(q, fetch, self)
                except BrainIndexError:
                    raise
                except Exception as e:
                    raise BrainIndexError(
                        "Recall through Brain index %r (backend %r) failed: %s"
                        % (self.brain_key, self.index.config.method, e)
                    ) from e
                d, i = self._finish(ids, raw, k)
                dists[s : s + len(q)] = d
                idx[s : s + len(q)] = i
                pb.update(len(q))
        return dists, idx

    def _finish(self, ids, raw, k):
        """Maps backend ids to training rows, drops non-training results,
        converts distances and keeps ``k`` per row, nearest first."""
        rows = self._rows(np.asarray(ids).ravel()).reshape(np.shape(ids))
        d = self.to_euclidean(np.asarray(raw, dtype=np.float64))
        d = np.where(rows >= 0, d, np.inf)
        order = np.argsort(d, axis=1, kind="stable")[:, :k]
        d = np.take_along_axis(d, order, axis=1)
        rows = np.take_along_axis(rows, order, axis=1)
        if (rows < 0).any() or np.isinf(d).any():
            raise BrainIndexError(
                "Brain index %r returned fewer than k=%d training samples for some "
                "queries; raise the backend's search breadth (e.g. ef_search, "
                "probes) or use an exact index" % (self.brain_key, k)
            )
        return d.astype(np.float32), rows.astype(np.int64)

    def to_euclidean(self, raw):
        """Searchers' raw distances (smaller is nearer: squared L2 for
        ``euclidean``, ``1 - cos`` for ``cosine``, ``-ip`` for
        ``dotproduct``) as Euclidean distances (see the module doc)."""
        if self.metric == "euclidean":
            return np.sqrt(np.maximum(raw, 0))
        if self.metric == "cosine":
            return np.sqrt(np.maximum(2 * raw, 0))
        return np.sqrt(np.maximum(2 + 2 * raw, 0))


def _normalize(x):
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1)


def _raw_from_unit_sq(metric, d2):
    """Raw distances (see :meth:`BrainRecall.to_euclidean`) from squared
    distances between unit vectors, ``|a - b|^2 = 2 (1 - cos)``."""
    return d2 / 2.0 if metric == "cosine" else d2 / 2.0 - 1.0


class _Searcher(object):
    batch_size = 4096
    filters = False  # whether search() itself keeps only training samples

    def __init__(self, index):
        self.index = index
        self.metric = _metric(index)

    def ids(self):
        return None

    def dim(self, recall):
        raise NotImplementedError

    def search(self, q, k, recall):
        raise NotImplementedError


class _SklearnSearcher(_Searcher):
    """Exact search with FAISS over the index's stored vectors, restricted to
    the training samples; the Brain's own search centres the indexed vectors
    and not the queries."""

    filters = True

    def __init__(self, index):
        super().__init__(index)
        self._faiss = None

    def ids(self):
        return self.index.sample_ids

    def dim(self, recall):
        return int(np.shape(self.index.embeddings)[1])

    def _build(self, recall):
        import faiss

        rows = recall._rows(self.index.sample_ids)
        keep = np.nonzero(rows >= 0)[0]
        x = np.asarray(self.index.embeddings, dtype=np.float32)[keep]
        if self.metric != "euclidean":
            x = _normalize(x)
        index = faiss.IndexFlatL2(x.shape[1])
        index.add(np.ascontiguousarray(x))
        self._faiss = (index, np.asarray(self.index.sample_ids).astype(str)[keep])

    def search(self, q, k, recall):
        if self._faiss is None:
            self._build(recall)
        index, ids = self._faiss
        if self.metric != "euclidean":
            q = _normalize(q)
        d2, ii = index.search(q, k)
        raw = d2 if self.metric == "euclidean" else _raw_from_unit_sq(self.metric, d2)
        return ids[ii], raw


class _LanceDBSearcher(_Searcher):
    """Multi-vector queries: one request returns the neighbours of a whole
    batch (``query_index`` says which query each row answers)."""

    batch_size = 1024

    def __init__(self, index):
        super().__init__(index)
        self.table = index.table
        if self.table is None:
            raise BrainIndexError(
                "LanceDB table %r of Brain index %r does not exist at %r (dropped?)"
                % (index.config.table_name, index.key, index.config.uri)
            )

    def ids(self):
        res = self.table.search().select(["id"]).limit(None).to_arrow()
        return res.column("id").to_numpy(zero_copy_only=False)

    def dim(self, recall):
        return int(self.table.schema.field("vector").type.list_size)

    def search(self, q, k, recall):
        metric = {"cosine": "cosine", "euclidean": "l2", "dotproduct": "dot"}[self.metric]
        query = self.table.search(list(q)).limit(k).select(["id"])
        query = query.distance_type(metric) if hasattr(query, "distance_type") else query.metric(metric)
        res = query.to_arrow()
        if "query_index" in res.column_names:
            qi = res.column("query_index").to_numpy()
        else:
            qi = np.zeros(res.num_rows, dtype=np.int64)
        ids = res.column("id").to_numpy(zero_copy_only=False).astype(str)
        dist = res.column("_distance").to_numpy().astype(np.float64)
        if self.metric == "dotproduct":
            dist = dist - 1.0  # lance's dot distance is 1 - ip
        return _by_query(qi, ids, dist, len(q), k)


def _by_query(qi, ids, dist, n, k):
    """Reshapes flat (query, id, raw distance) rows into ``(n, k)`` arrays,
    nearest first, padding rows with fewer than ``k`` results by a missing
    id."""
    out_ids = np.full((n, k), "", dtype=object)
    out_d = np.full((n, k), np.inf)
    order = np.lexsort((dist, qi))
    qi, ids, dist = qi[order], ids[order], dist[order]
    starts = np.searchsorted(qi, np.arange(n))
    ends = np.searchsorted(qi, np.arange(n), side="right")
    for j in range(n):
        m = min(k, ends[j] - starts[j])
        out_ids[j, :m] = ids[starts[j] : starts[j] + m]
        out_d[j, :m] = dist[starts[j] : starts[j] + m]
    return out_ids, out_d


class _PgVectorSearcher(_Searcher):
    """One SQL statement per batch: a LATERAL join runs the index scan for
    each query of the batch on the server."""

    batch_size = 1024
    _OPS = {"cosine": "<=>", "euclidean": "<->", "dotproduct": "<#>"}

    def __init__(self, index):
        super().__init__(index)
        import psycopg2

        cfg = index.config
        ssl = {n: getattr(cfg, a) for n, a in (("sslcert", "ssl_cert"), ("sslkey", "ssl_key"), ("sslrootcert", "ssl_root_cert")) if getattr(cfg, a, None)}
        self.conn = psycopg2.connect(cfg.connection_string, **ssl)
        self.conn.autocommit = True
        self.table = cfg.table_name
        with self.conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s)", ('"%s"' % self.table.replace('"', '""'),))
            if cur.fetchone()[0] is None:
                raise BrainIndexError(
                    "pgvector table %r of Brain index %r does not exist (dropped?)"
                    % (self.table, index.key)
                )

    def _sql(self, text):
        from psycopg2 import sql

        return sql.SQL(text).format(table=sql.Identifier(self.table))

    def ids(self):
        with self.conn.cursor() as cur:
            cur.execute(self._sql("SELECT id FROM {table}"))
            return np.array([r[0] for r in cur.fetchall()], dtype=str)

    def dim(self, recall):
        with self.conn.cursor() as cur:
            cur.execute(self._sql("SELECT vector_dims(embedding_vector::vector) FROM {table} LIMIT 1"))
            row = cur.fetchone()
        if row is None:
            raise BrainIndexError("pgvector table %r is empty" % self.table)
        return int(row[0])

    def search(self, q, k, recall):
        cfg = self.index.config
        op = self._OPS[self.metric]
        cast = cfg.vector_type
        with self.conn.cursor() as cur:
            if cfg.index_type == "ivfflat":
                probes = self.index._resolve_ivfflat_probes()
                cur.execute("SET ivfflat.probes = %d" % int(probes))
            else:
                # An HNSW scan yields at most ef_search rows, so k must fit;
                # unset, 2 k keeps recall@k >= 0.99 (benchmarks/brain.py).
                ef = int(cfg.hnsw_ef_search) if cfg.hnsw_ef_search else max(40, 2 * int(k))
                cur.execute("SET hnsw.ef_search = %d" % max(ef, int(k)))
            texts = ["[" + ",".join(map(repr, map(float, v))) + "]" for v in q]
            # The array is cast once: a per-row cast in ORDER BY would parse
            # the query text for every row and defeat the index scan.
            cur.execute(
                self._sql(
                    "SELECT q.i, n.id, n.d FROM unnest(%s::" + cast + "[]) WITH ORDINALITY AS q(v, i) "
                    "CROSS JOIN LATERAL (SELECT id, embedding_vector " + op + " q.v AS d "
                    "FROM {table} ORDER BY embedding_vector " + op + " q.v LIMIT %s) n"
                ),
                (texts, int(k)),
            )
            rows = cur.fetchall()
        qi = np.array([r[0] - 1 for r in rows], dtype=np.int64)
        ids = np.array([r[1] for r in rows], dtype=object)
        d = np.array([r[2] for r in rows], dtype=np.float64)
        if self.metric == "euclidean":
            d = d**2  # <-> is the Euclidean distance; <#> is already -ip
        return _by_query(qi, ids, d, len(q), k)

    def __del__(self):
        try:
            self.conn.close()
        except Exception:
            pass


class _MilvusSearcher(_Searcher):
    """One ``Collection.search`` per batch (Milvus takes many vectors per
    request; the Brain's own query sends one)."""

    batch_size = 1024
    _METRICS = {"cosine": "COSINE", "euclidean": "L2", "dotproduct": "IP"}
    ef = None  # HNSW search breadth; None: max(64, 4 k), recall@k >= 0.99 measured

    def __init__(self, index):
        super().__init__(index)
        self.collection = index._collection
        if self.collection is None:
            raise BrainIndexError(
                "Milvus collection %r of Brain index %r does not exist (dropped?)"
                % (index.config.collection_name, index.key)
            )

    def ids(self):
        it = self.collection.query_iterator(batch_size=16384, output_fields=["pk"])
        out = []
        try:
            while True:
                rows = it.next()
                if not rows:
                    break
                out.extend(r["pk"] for r in rows)
        finally:
            it.close()
        return np.array(out, dtype=str)

    def dim(self, recall):
        for field in self.collection.schema.fields:
            if field.name == "vector":
                return int(field.params["dim"])
        raise BrainIndexError("Milvus collection has no 'vector' field")

    def search(self, q, k, recall):
        # HNSW's ef bounds the results; the Brain's stored search params are
        # not in the form Milvus reads, so set them here.
        ef = int(self.ef) if self.ef else max(64, 4 * int(k))
        param = {"metric_type": self._METRICS[self.metric], "params": {"ef": max(ef, int(k))}}
        res = self.collection.search(data=[v.tolist() for v in q], anns_field="vector", limit=int(k), param=param)
        out_ids = np.full((len(q), k), "", dtype=object)
        out_d = np.full((len(q), k), np.inf)
        for j, hits in enumerate(res):
            ids = [h.id for h in hits][:k]
            d = np.array([h.distance for h in hits][:k], dtype=np.float64)
            if self.metric == "cosine":
                d = 1.0 - d  # Milvus reports the cosine similarity
            elif self.metric == "dotproduct":
                d = -d
            out_ids[j, : len(ids)] = ids
            out_d[j, : len(ids)] = d  # L2 is reported squared
        return out_ids, out_d


class _GenericSearcher(_Searcher):
    """Any other backend (Qdrant, Pinecone, Redis, MongoDB, Elasticsearch,
    ...): the backend's own multi-query ``_kneighbors``, with
    distances recomputed from the recalled vectors (backends report scores on
    different scales)."""

    batch_size = 1024

    def ids(self):
        return self.index.sample_ids

    def dim(self, recall):
        emb, _, _ = self.index.get_embeddings(sample_ids=recall.train_ids[:1].tolist())
        if emb is None or len(emb) == 0:
            raise BrainIndexError(
                "Cannot read the dimension of Brain index %r (backend %r)"
                % (self.index.key, self.index.config.method)
            )
        return int(np.shape(emb)[1])

    def search(self, q, k, recall):
        res = self.index._kneighbors(query=q, k=k, return_dists=False)
        ids = res[0]
        if len(q) == 1 and ids and isinstance(ids[0], str):
            ids = [ids]
        uniq = sorted({i for row in ids for i in row})
        emb, got, _ = self.index.get_embeddings(sample_ids=uniq)
        lookup = {s: j for j, s in enumerate(np.asarray(got).astype(str))}
        x = np.asarray(emb, dtype=np.float32)
        qq = q
        if self.metric != "euclidean":
            x, qq = _normalize(x), _normalize(q)
        out_ids = np.full((len(q), k), "", dtype=object)
        out_d = np.full((len(q), k), np.inf)
        for j, row in enumerate(ids):
            m = min(k, len(row))
            out_ids[j, :m] = row[:m]
            rows = [lookup[s] for s in row[:m]]
            d2 = ((x[rows] - qq[j]) ** 2).sum(1)
            out_d[j, :m] = d2 if self.metric == "euclidean" else _raw_from_unit_sq(self.metric, d2)
        return out_ids, out_d


def embed_queries(samples, brain_key, path, batch_size=64, progress=None, index=None):
    """Embeds ``samples`` (the generated samples) into ``path`` (``.npy``) as
    Brain index ``brain_key`` embeds: from its embeddings field where every
    sample has it, else with its stored model.

    Returns:
        ``(ids, embeddings)`` like :func:`gmv_plugin.embeddings.embed_to_file`
    """
    if index is None:
        index = load_index(samples._root_dataset, brain_key)
    cfg = index.config
    field = cfg.embeddings_field
    if field and samples.has_field(field) and not samples.exists(field, False).count():
        return gmve.embed_to_file(samples, path, embeddings_field=field, batch_size=batch_size, progress=progress)
    if cfg.model is None:
        raise BrainIndexError(
            "Brain index %r has no stored model, and %s; compute the generated "
            "samples' embeddings into field %r with the model that embedded the "
            "training samples, or build the index with a zoo model "
            "(compute_similarity(model=...))"
            % (
                brain_key,
                "the generated samples lack its embeddings field %r" % field if field else "no embeddings field",
                field or "<field>",
            )
        )
    model = cfg.model
    if isinstance(model, str):
        if cfg.model_kwargs:
            model = index.get_model()
        else:
            model = gmve.resolve_model(model)  # checks for weights, fetches nothing
    return gmve.embed_to_file(samples, path, model=model, batch_size=batch_size, progress=progress)


def run_spec(dataset, index_params, model=None, embeddings_field=None, quality="none", default_model=None):
    """Settings of a run with ``index="brain"``: the generated samples are
    embedded as the Brain index embeds, so its model and embeddings field
    replace the run's; the index's backend is recorded in ``index_params``
    (and must still match when the run recorded one).

    Args:
        dataset: the dataset
        index_params: the run's ``index_params`` (``brain_key``, ...)
        model (None): the model the caller asked for; ``default_model``
            (the pipeline's default) and None mean "the index's"
        embeddings_field (None): the field the caller asked for, if any
        quality ("none"): the run's quality model

    Returns:
        a dict of ``model``, ``embeddings_field`` and ``index_params``

    Raises:
        BrainIndexError: if the index is missing, cannot embed the generated
            samples, or conflicts with the caller's settings
    """
    params = check_params(index_params)
    key = params["brain_key"]
    index = load_index(dataset, key)
    info = describe(index)
    if params.get("backend") not in (None, info["backend"]):
        raise BrainIndexError(
            "The run recorded Brain index %r with backend %r, but it now uses "
            "backend %r; choose the key of the index the run used, or start a "
            "new run" % (key, params["backend"], info["backend"])
        )
    params["backend"] = info["backend"]
    if quality == "realism":
        raise BrainIndexError(
            "quality='realism' needs the training embeddings in the run; with "
            "index='brain' they live in the Brain index. Use another quality model"
        )
    if isinstance(model, str) or model is None:
        asked = None if model in (None, default_model) else model
    else:
        asked = model
    if asked is not None and asked != info["model"]:
        raise BrainIndexError(
            "index='brain' embeds the generated samples with Brain index %r's own "
            "model (%r); got model=%r. Leave model unset" % (key, info["model"], model)
        )
    if embeddings_field not in (None, info["embeddings_field"]):
        raise BrainIndexError(
            "index='brain' reads Brain index %r's embeddings field (%r); got "
            "embeddings_field=%r. Leave it unset" % (key, info["embeddings_field"], embeddings_field)
        )
    if info["model"] is None and info["embeddings_field"] is None:
        raise BrainIndexError(
            "Brain index %r has neither a stored model nor an embeddings field, so "
            "the generated samples cannot be embedded as its training samples were; "
            "build it with compute_similarity(model=<zoo model>) or "
            "embeddings=<field>" % key
        )
    return {"model": info["model"], "embeddings_field": info["embeddings_field"], "index_params": params}
