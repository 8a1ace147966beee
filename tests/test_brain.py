"""Recall through FiftyOne Brain similarity indexes (index="brain") on real
engines: the Brain's sklearn backend, LanceDB (embedded) and PostgreSQL +
pgvector (a server these tests start), compared with index="flat".
"""

import importlib.util
import os

import numpy as np
import pytest

from conftest import write_pngs
from gmv_testdata import load_digit_images

N_TRAIN, N_GEN = 400, 120
K = 10


def _engine_missing(module, what):
    if importlib.util.find_spec(module) is None:
        return "%s is not installed (pip install %s; scripts/setup.sh installs it)" % (module, what)
    return None


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Real MNIST digits with unit-norm pixel embeddings in field ``emb``
    (training and generated samples alike)."""
    import fiftyone as fo

    from gmv_plugin.embeddings import PixelEmbedder

    d = tmp_path_factory.mktemp("brain-digits")
    images, _ = load_digit_images(N_TRAIN + N_GEN)
    paths = write_pngs(images, d)
    ds = fo.Dataset()
    ds.add_samples(
        [fo.Sample(filepath=p, tags=["train" if i < N_TRAIN else "generated"]) for i, p in enumerate(paths)],
        progress=False,
    )
    model = PixelEmbedder(size=28, mode="L")  # 784-d: pgvector indexes up to 2000-d
    ds.compute_embeddings(model, embeddings_field="emb", progress=False)
    yield ds
    ds.delete()


def _views(ds):
    return ds.match_tags("train"), ds.match_tags("generated")


def _arrays(ds):
    train, gen = _views(ds)
    return (
        np.asarray(train.values("id")),
        np.stack(train.values("emb")).astype(np.float32),
        np.asarray(gen.values("id")),
        np.stack(gen.values("emb")).astype(np.float32),
    )


def _flat(train_emb, gen_emb, k):
    from gmv_plugin import index as gmvi

    index = gmvi.build_index(train_emb, "flat", {}, progress=False)
    return gmvi.search(index, gen_emb, k)


def _check_equal_to_flat(ds, brain_key, k=K, min_recall=1.0):
    from gmv_plugin import brain as gmvb
    from gmv_plugin import index as gmvi

    train_ids, train_emb, _, gen_emb = _arrays(ds)
    recall = gmvb.BrainRecall(ds, brain_key, train_ids)
    dists, idx = recall.search(gen_emb, k)
    f_dists, f_idx = _flat(train_emb, gen_emb, k)
    assert dists.shape == idx.shape == (len(gen_emb), k)
    r = gmvi.recall_at_k(idx, f_idx)
    assert r >= min_recall, r
    if min_recall == 1.0:
        assert all(set(a) == set(b) for a, b in zip(idx, f_idx))
        np.testing.assert_allclose(dists, f_dists, atol=2e-3)
    # distances are the true ones of the returned rows, nearest first
    true = np.linalg.norm(gen_emb[:, None, :] - train_emb[idx], axis=2)
    np.testing.assert_allclose(dists, true, atol=2e-3)
    assert (np.diff(dists, axis=1) >= -1e-6).all()
    return recall


def test_sklearn_equals_flat_despite_centering(digits):
    import fiftyone.brain as fob

    train, _ = _views(digits)
    fob.compute_similarity(train, embeddings="emb", brain_key="sk", backend="sklearn", progress=False)
    try:
        # The Brain's own search centres the indexed vectors (in place) and
        # not the queries: its neighbours are not the true ones.
        index = digits.load_brain_results("sk")
        gen_emb = _arrays(digits)[3]
        before = np.array(index.embeddings, copy=True)
        index.sort_by_similarity(gen_emb[0], k=K)
        centred = not np.allclose(index.embeddings, before)
        recall = _check_equal_to_flat(digits, "sk")
        info = recall.describe()
        assert info["backend"] == "sklearn" and info["brain_key"] == "sk"
        assert info["metric"] == "cosine" and info["dim"] == 784 and info["embeddings_field"] == "emb"
        # the index's field also covers the generated samples: they are never recalled
        assert info["size"] == N_TRAIN + N_GEN
    finally:
        digits.delete_brain_run("sk")


def test_sklearn_euclidean_and_brain_sort_differs(digits):
    import fiftyone.brain as fob

    train_ids, train_emb, gen_ids, gen_emb = _arrays(digits)
    train, _ = _views(digits)
    # Scaled vectors: euclidean and cosine rank differently, so a wrong
    # metric mapping would fail.
    scale = np.linspace(0.5, 2.0, len(train_emb)).astype(np.float32)[:, None]
    fob.compute_similarity(
        train, embeddings=train_emb * scale, brain_key="sk_l2", backend="sklearn",
        metric="euclidean", progress=False,
    )
    try:
        from gmv_plugin import brain as gmvb

        recall = gmvb.BrainRecall(digits, "sk_l2", train_ids)
        dists, idx = recall.search(gen_emb, K)
        f_dists, f_idx = _flat(train_emb * scale, gen_emb, K)
        assert all(set(a) == set(b) for a, b in zip(idx, f_idx))
        np.testing.assert_allclose(dists, f_dists, atol=2e-3)
        # The Brain's own sklearn search (centred index, raw queries) disagrees
        index = digits.load_brain_results("sk_l2", cache=False)
        sk_ids, _ = index._kneighbors(query=gen_emb[:20], k=K)
        f_sets = [set(train_ids[r]) for r in f_idx[:20]]
        agree = np.mean([len(set(s) & f) / K for s, f in zip(sk_ids, f_sets)])
        assert agree < 0.9, agree
    finally:
        digits.delete_brain_run("sk_l2")


def test_refuses_mismatch_and_missing(digits):
    import fiftyone.brain as fob

    from gmv_plugin import brain as gmvb

    train_ids, train_emb, _, gen_emb = _arrays(digits)
    train, _ = _views(digits)
    with pytest.raises(ValueError, match="brain_key"):
        gmvb.check_params({})
    with pytest.raises(ValueError, match="allowed are"):
        gmvb.check_params({"brain_key": "x", "nprobe": 3})
    with pytest.raises(gmvb.BrainIndexError, match="does not exist"):
        gmvb.BrainRecall(digits, "nope", train_ids)
    # an index over only part of the training samples
    fob.compute_similarity(train.limit(300), embeddings=train_emb[:300], brain_key="part", backend="sklearn", progress=False)
    try:
        with pytest.raises(gmvb.BrainIndexError, match="does not cover 100 of the run's 400"):
            gmvb.BrainRecall(digits, "part", train_ids)
        r = gmvb.BrainRecall(digits, "part", train_ids[:300])
        with pytest.raises(gmvb.BrainIndexError, match="dimension 784"):
            r.search(gen_emb[:, :100], K)
    finally:
        digits.delete_brain_run("part")


def test_deleted_index_is_named(digits):
    import fiftyone.brain as fob

    from gmv_plugin import brain as gmvb

    train_ids, _, _, gen_emb = _arrays(digits)
    train, _ = _views(digits)
    fob.compute_similarity(train, embeddings="emb", brain_key="gone", backend="sklearn", progress=False)
    gmvb.BrainRecall(digits, "gone", train_ids).search(gen_emb[:5], K)
    digits.delete_brain_run("gone")
    with pytest.raises(gmvb.BrainIndexError, match="'gone' does not exist.*deleted"):
        gmvb.BrainRecall(digits, "gone", train_ids)


def test_embed_queries_from_field_or_refuses(digits, tmp_path):
    import fiftyone.brain as fob

    from gmv_plugin import brain as gmvb

    train_ids, train_emb, gen_ids, gen_emb = _arrays(digits)
    train, gen = _views(digits)
    fob.compute_similarity(train, embeddings="emb", brain_key="fld", backend="sklearn", progress=False)
    fob.compute_similarity(train, embeddings=train_emb, brain_key="arr", backend="sklearn", progress=False)
    try:
        ids, emb = gmvb.embed_queries(gen, "fld", str(tmp_path / "q.npy"))
        assert list(ids) == list(gen_ids)
        np.testing.assert_array_equal(np.asarray(emb), gen_emb)
        with pytest.raises(gmvb.BrainIndexError, match="no stored model"):
            gmvb.embed_queries(gen, "arr", str(tmp_path / "q2.npy"))
    finally:
        digits.delete_brain_run("fld")
        digits.delete_brain_run("arr")


# -- LanceDB (embedded) --------------------------------------------------------


@pytest.fixture
def lancedb_uri(tmp_path, monkeypatch):
    reason = _engine_missing("lancedb", "lancedb")
    if reason:
        pytest.skip(reason)
    import fiftyone.brain as fob

    uri = str(tmp_path / "lancedb")
    backends = dict(fob.brain_config.similarity_backends)
    backends["lancedb"] = dict(backends.get("lancedb", {}), uri=uri)
    monkeypatch.setattr(fob.brain_config, "similarity_backends", backends)
    return uri


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_lancedb_equals_flat(digits, lancedb_uri, metric):
    import fiftyone.brain as fob

    from gmv_plugin import brain as gmvb

    train, _ = _views(digits)
    key = "lance_" + metric
    fob.compute_similarity(train, embeddings="emb", brain_key=key, backend="lancedb", metric=metric, progress=False)
    try:
        recall = _check_equal_to_flat(digits, key)
        assert recall.describe()["backend"] == "lancedb"
        assert recall.batch_size >= 1000  # thousands of queries per request
        train_ids = _arrays(digits)[0]
        # dropping the table outside FiftyOne is reported as such
        import lancedb

        lancedb.connect(lancedb_uri).drop_table(recall.index.config.table_name)
        with pytest.raises(gmvb.BrainIndexError, match="does not exist"):
            gmvb.BrainRecall(digits, key, train_ids)
    finally:
        digits.delete_brain_run(key)


def test_lancedb_batches_queries(digits, lancedb_uri, monkeypatch):
    """One search request per batch of queries, not one per query."""
    import fiftyone.brain as fob

    from gmv_plugin import brain as gmvb

    train, _ = _views(digits)
    fob.compute_similarity(train, embeddings="emb", brain_key="lance_b", backend="lancedb", progress=False)
    try:
        train_ids, _, _, gen_emb = _arrays(digits)
        recall = gmvb.BrainRecall(digits, "lance_b", train_ids, batch_size=50)
        calls = []
        table = recall.searcher.table
        orig = table.search

        def counting(q=None, *a, **kw):
            calls.append(len(q) if q is not None else 0)
            return orig(q, *a, **kw)

        monkeypatch.setattr(table, "search", counting)
        recall.search(gen_emb, K)
        assert calls == [50, 50, 20]
    finally:
        digits.delete_brain_run("lance_b")


# -- PostgreSQL + pgvector (a server started here) ----------------------------


@pytest.fixture(scope="module")
def pg_uri(tmp_path_factory):
    reason = _engine_missing("pgserver", "pgserver") or _engine_missing("psycopg2", "psycopg2-binary")
    if reason:
        pytest.skip(reason)
    import pgserver

    srv = pgserver.get_server(str(tmp_path_factory.mktemp("pg")), cleanup_mode="delete")
    try:
        yield srv.get_uri()
    finally:
        srv.cleanup()


@pytest.fixture
def pgvector(pg_uri, monkeypatch):
    import fiftyone.brain as fob

    backends = dict(fob.brain_config.similarity_backends)
    backends["pgvector"] = dict(backends.get("pgvector", {}), connection_string=pg_uri)
    monkeypatch.setattr(fob.brain_config, "similarity_backends", backends)
    return pg_uri


@pytest.mark.parametrize("metric,index_type", [("cosine", "hnsw"), ("euclidean", "ivfflat")])
def test_pgvector_equals_flat(digits, pgvector, metric, index_type):
    import fiftyone.brain as fob

    train, _ = _views(digits)
    key = "pg_%s_%s" % (metric, index_type)
    fob.compute_similarity(
        train, embeddings="emb", brain_key=key, backend="pgvector", metric=metric,
        index_type=index_type, progress=False,
    )
    try:
        # HNSW is approximate: recall@k >= 0.99 at the Brain's defaults
        recall = _check_equal_to_flat(digits, key, k=K, min_recall=0.99 if index_type == "hnsw" else 1.0)
        info = recall.describe()
        assert info["backend"] == "pgvector" and info["metric"] == metric
    finally:
        digits.delete_brain_run(key)


def test_pgvector_k_above_ef_search(digits, pgvector):
    """An HNSW scan returns at most ef_search (default 40) rows; recall of
    k=60 must still return 60 neighbours."""
    import fiftyone.brain as fob

    train, _ = _views(digits)
    fob.compute_similarity(train, embeddings="emb", brain_key="pg_k", backend="pgvector", progress=False)
    try:
        _check_equal_to_flat(digits, "pg_k", k=60, min_recall=0.99)
    finally:
        digits.delete_brain_run("pg_k")


# -- Milvus Lite (a local Milvus server process) -------------------------------


@pytest.fixture
def milvus_uri(tmp_path, monkeypatch):
    reason = _engine_missing("pymilvus", "pymilvus") or _engine_missing("milvus_lite", "milvus-lite")
    if reason:
        pytest.skip(reason)
    import fiftyone.brain as fob

    uri = str(tmp_path / "milvus.db")
    backends = dict(fob.brain_config.similarity_backends)
    backends["milvus"] = dict(backends.get("milvus", {}), uri=uri)
    monkeypatch.setattr(fob.brain_config, "similarity_backends", backends)
    return uri


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_milvus_equals_flat(digits, milvus_uri, metric):
    import fiftyone.brain as fob

    train, _ = _views(digits)
    key = "milvus_" + metric
    fob.compute_similarity(train, embeddings="emb", brain_key=key, backend="milvus", metric=metric, progress=False)
    try:
        recall = _check_equal_to_flat(digits, key, min_recall=0.99)
        assert recall.describe()["backend"] == "milvus"
    finally:
        digits.delete_brain_run(key)


def test_generic_backend_path(digits, milvus_uri, monkeypatch):
    """Backends without a dedicated searcher go through the Brain's own
    multi-query interface, with distances recomputed from the vectors."""
    import fiftyone.brain as fob

    from gmv_plugin import brain as gmvb

    train, _ = _views(digits)
    fob.compute_similarity(train, embeddings="emb", brain_key="milvus_g", backend="milvus", metric="euclidean", progress=False)
    monkeypatch.setattr(gmvb, "_MilvusSearcher", gmvb._GenericSearcher)
    try:
        recall = _check_equal_to_flat(digits, "milvus_g", min_recall=0.99)
        assert isinstance(recall.searcher, gmvb._GenericSearcher)
    finally:
        digits.delete_brain_run("milvus_g")


# -- the pipeline: compute_values(index="brain") -------------------------------


def _fields(ds, key):
    _, gen = _views(ds)
    train, _ = _views(ds)
    return (
        gen.values("%s_contributors" % key),
        np.array(gen.values("%s_distances" % key), dtype=object),
        np.array(train.values("%s_value" % key), dtype=float),
    )


@pytest.mark.parametrize("engine", ["sklearn", "lancedb", "pgvector"])
def test_compute_values_brain_equals_flat(digits, engine, request):
    import fiftyone.brain as fob

    import gmv_plugin as gmv
    from gmv_plugin import pipeline as gmvp
    from gmv_plugin import runs as gmvruns

    kwargs = {}
    if engine == "lancedb":
        request.getfixturevalue("lancedb_uri")
    elif engine == "pgvector":
        request.getfixturevalue("pgvector")
        kwargs = {"index_type": "ivfflat", "metric": "euclidean"}  # exact at this size
    train, gen = _views(digits)
    fob.compute_similarity(train, embeddings="emb", brain_key="bk", backend=engine, progress=False, **kwargs)
    try:
        flat = gmvp.compute_values(train, gen, key="flatrun", model=None, embeddings_field="emb",
                                   index="flat", k=K, progress=False)
        res = gmvp.compute_values(train, gen, key="brainrun", index="brain",
                                  index_params={"brain_key": "bk"}, k=K, progress=False)
        assert res.index_type == "brain"
        assert res.index_params["brain_key"] == "bk" and res.index_params["backend"] == engine
        cfg = gmvruns.get_run_config(digits, "brainrun")
        assert cfg.index == "brain" and cfg.index_params == {"brain_key": "bk", "backend": engine}
        assert cfg.embeddings_field == "emb"
        c_f, d_f, v_f = _fields(digits, "flatrun")
        c_b, d_b, v_b = _fields(digits, "brainrun")
        assert [set(a) for a in c_b] == [set(a) for a in c_f]
        np.testing.assert_allclose(np.stack(d_b).astype(float), np.stack(d_f).astype(float), atol=2e-3)
        np.testing.assert_allclose(v_b, v_f, atol=1e-4)

        # a later stage call re-checks the index; a deleted one is named
        digits.delete_brain_run("bk")
        with pytest.raises(ValueError, match="Brain index 'bk' does not exist.*deleted"):
            gmv.recall_contributors(digits, key="brainrun", progress=False)
    finally:
        if digits.has_brain_run("bk"):
            digits.delete_brain_run("bk")
        for key in ("flatrun", "brainrun"):
            if key in gmvruns.list_runs(digits):
                gmvruns.delete_run(digits, key)


def test_compute_values_brain_validation(digits):
    import fiftyone.brain as fob

    from gmv_plugin import pipeline as gmvp

    train, gen = _views(digits)
    with pytest.raises(ValueError, match="brain_key"):
        gmvp.compute_values(train, gen, key="bv", index="brain", k=K)
    with pytest.raises(ValueError, match="'missing' does not exist"):
        gmvp.compute_values(train, gen, key="bv", index="brain", index_params={"brain_key": "missing"}, k=K)
    fob.compute_similarity(train, embeddings="emb", brain_key="bv_idx", backend="sklearn", progress=False)
    try:
        with pytest.raises(ValueError, match="own model"):
            gmvp.compute_values(train, gen, key="bv", model="pixels", index="brain",
                                index_params={"brain_key": "bv_idx"}, k=K)
        with pytest.raises(ValueError, match="realism"):
            gmvp.compute_values(train, gen, key="bv", index="brain", quality="realism",
                                index_params={"brain_key": "bv_idx"}, k=K)
        with pytest.raises(ValueError, match="now uses backend 'sklearn'"):
            gmvp.compute_values(train, gen, key="bv", index="brain",
                                index_params={"brain_key": "bv_idx", "backend": "lancedb"}, k=K)
        assert "bv" not in digits.list_runs()
    finally:
        digits.delete_brain_run("bv_idx")


def test_update_values_brain_equals_full(digits):
    """Generated samples added later are embedded from the index's field and
    recalled through it; the result equals a full run."""
    import fiftyone.brain as fob

    from gmv_plugin import pipeline as gmvp
    from gmv_plugin import runs as gmvruns

    train, gen = _views(digits)
    gen_ids = gen.values("id")
    fob.compute_similarity(train, embeddings="emb", brain_key="bu", backend="sklearn", progress=False)
    try:
        params = dict(index="brain", index_params={"brain_key": "bu"}, k=K, progress=False)
        gmvp.compute_values(train, digits.select(gen_ids[:70]), key="part", **params)
        gmvp.update_values(digits, "part", gen, progress=False)
        gmvp.compute_values(train, gen, key="full", **params)
        c_p, d_p, v_p = _fields(digits, "part")
        c_f, d_f, v_f = _fields(digits, "full")
        assert [set(a) for a in c_p] == [set(a) for a in c_f]
        np.testing.assert_allclose(v_p, v_f, atol=1e-5)
    finally:
        digits.delete_brain_run("bu")
        for key in ("part", "full"):
            if key in gmvruns.list_runs(digits):
                gmvruns.delete_run(digits, key)
