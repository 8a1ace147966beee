"""FAISS recall indexes on real embeddings (pixel embeddings of MNIST)."""

import numpy as np
import pytest

from conftest import load_mnist
from gmv_plugin import index as gmvi
from gmv_plugin.embeddings import PixelEmbedder

SMALL_PQ = {"M": 8, "nbits": 6}  # PQ codebooks train slowly on a shared CPU


@pytest.fixture(scope="module")
def embeddings():
    images, _ = load_mnist(3000)
    emb = PixelEmbedder(size=28, mode="L").embed_all(list(images))
    return emb[300:].astype(np.float32), emb[:300].astype(np.float32)


@pytest.fixture(scope="module")
def exact(embeddings):
    train, queries = embeddings
    index = gmvi.build_index(train, "flat", {})
    return gmvi.search(index, queries, 20)


def test_flat_is_exact(embeddings, exact):
    train, queries = embeddings
    d2 = (queries**2).sum(1)[:, None] - 2 * queries @ train.T + (train**2).sum(1)[None]
    d2 = np.maximum(d2, 0)
    np.testing.assert_array_equal(exact[1][:, 0], d2.argmin(axis=1))
    np.testing.assert_allclose(exact[0][:, 0], np.sqrt(d2.min(axis=1)), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("index_type,params", [
    ("pq", SMALL_PQ), ("ivfpq", SMALL_PQ), ("ivfflat", {}),
])
def test_approximate_recall_against_flat(embeddings, exact, index_type, params, capfd):
    train, queries = embeddings
    params = gmvi.default_params(index_type, *train.shape, params=params)
    assert params["pca"] == gmvi.PCA_DIMS  # 784-d pixels are projected
    index = gmvi.build_index(train, index_type, params, k=20)
    _, idx = gmvi.search(index, queries, 20, params)
    recall = gmvi.recall_at_k(idx, exact[1])
    assert recall >= 0.95
    assert index.meta["calibration"]["recall"] >= gmvi.CALIBRATION_RECALL
    assert index.meta["params"]["refine"] >= 1
    assert "please provide" not in capfd.readouterr().err  # training sample sized by centroids

    raw = dict(params, refine=0)
    _, idx_raw = gmvi.search(gmvi.build_index(train, index_type, raw, k=20), queries, 20, raw)
    # Exact re-scoring is what brings PCA/PQ close to exact.
    assert gmvi.recall_at_k(idx_raw, exact[1]) < recall


def test_index_round_trips_through_a_file(tmp_path, embeddings, exact):
    train, queries = embeddings
    path = str(tmp_path / "i.faiss")
    gmvi.save_index(gmvi.build_index(train, "flat", {}), path)
    _, idx = gmvi.search(gmvi.load_index(path), queries, 20)
    np.testing.assert_array_equal(idx, exact[1])


def test_refine_reads_the_memmap_not_a_flat_copy(tmp_path, embeddings, exact):
    train, queries = embeddings
    npy = str(tmp_path / "train.npy")
    np.save(npy, train)
    mm = np.load(npy, mmap_mode="r")
    index = gmvi.build_index(mm, "ivfflat", gmvi.default_params("ivfflat", *mm.shape), k=20)
    assert index.vectors is None and index.vectors_path == npy
    # The FAISS index holds PCA-128 lists only, not the 784-d vectors.
    assert not isinstance(gmvi.faiss.downcast_index(index.index), gmvi.faiss.IndexRefine)
    path = str(tmp_path / "i.faiss")
    gmvi.save_index(index, path)
    loaded = gmvi.load_index(path)
    assert loaded.meta["params"] == index.meta["params"]  # calibrated nprobe/refine kept
    _, a = gmvi.search(index, queries, 20)  # re-scored from the file it was built from
    _, b = gmvi.search(loaded, queries, 20, vectors=mm)
    np.testing.assert_array_equal(a, b)
    # a budget too small to read the file: candidates gathered block by block
    _, c = gmvi.search(loaded, queries, 20, {"memory_mb": 1}, vectors=mm)
    np.testing.assert_array_equal(a, c)
    assert gmvi.recall_at_k(a, exact[1]) >= 0.95
    gmvi.faiss.read_index(path)  # still a plain FAISS file
    with pytest.raises(ValueError, match="vectors="):
        gmvi.search(loaded, queries, 20)


def test_auto_chooses_by_cost():
    # few queries or few vectors: exact search is cheapest
    assert gmvi.plan_index(5_000, 1024, n_queries=2_000)["index_type"] == "flat"
    assert gmvi.plan_index(100_000, 1024, n_queries=50)["index_type"] == "flat"
    # many queries over many pixel embeddings: PCA + IVF pays
    plan = gmvi.plan_index(100_000, 1024, n_queries=10_000)
    assert plan["index_type"] == "ivfflat" and plan["params"]["pca"] == 128
    # a flat 10^6 x 1024 index (4 GB) is over the default 1 GiB budget
    plan = gmvi.plan_index(1_000_000, 1024, n_queries=10_000)
    assert plan["index_type"] != "flat" and plan["estimates"]["flat"]["memory_mb"] > 1024
    # 10^8 x 128: only product-quantized codes fit
    assert gmvi.plan_index(10**8, 128, n_queries=10_000)["index_type"] == "ivfpq"
    # auto is never predicted slower than flat when flat fits the budget
    for n in (10_000, 30_000, 100_000, 1_000_000):
        for d in (128, 1024, 3072):
            for m in (100, 2_000, 10_000):
                plan = gmvi.plan_index(n, d, n_queries=m, memory_mb=10**6)
                est = plan["estimates"]
                assert est[plan["index_type"]]["total_s"] <= est["flat"]["total_s"]
    assert gmvi.resolve_index_type("auto", 5_000) == "flat"
    assert gmvi.resolve_index_type("auto", 10**6, d=128, n_queries=10**4, params={"memory_mb": 100}) != "flat"


def test_training_sample_is_sized_by_centroids():
    p = gmvi.default_params("ivfflat", 1_000_000, 128)
    assert p["nlist"] == 1000 and p["train_size"] == 39 * 1000
    p = gmvi.default_params("ivfpq", 1_000_000, 128)
    assert p["train_size"] == 39 * max(p["nlist"], 2 ** p["nbits"])
    p = gmvi.default_params("pq", 4_000, 128)
    assert p["nbits"] == 6 and p["train_size"] == 39 * 64  # no fixed 100,000


@pytest.mark.parametrize("params,message", [
    ({"nprob": 3}, "nprob.*allowed are"),
    ({"M": 0}, "M must be an integer between 1 and 64 inclusive; got 0"),
    ({"M": 7}, "M=7 must divide the embedding dimension 64"),
    ({"M": 6, "pca": 32}, "M=6 must divide the pca dimension 32"),
    ({"nbits": 17}, "nbits must be an integer between 1 and 16 inclusive; got 17"),
    ({"nbits": 0}, "nbits must be an integer between 1 and 16"),
    ({"nlist": 0}, "nlist must be an integer between 1 and 1000"),
    ({"nlist": 2000}, "nlist must be an integer between 1 and 1000 inclusive \\(n = training vectors\\); got 2000"),
    ({"nlist": 10, "nprobe": 11}, "nprobe must be an integer between 1 and 10"),
    ({"nprobe": 0}, "nprobe must be an integer between 1"),
    ({"refine": -1}, "refine must be an integer >= 0; got -1"),
    ({"train_size": 0}, "train_size must be an integer >= 1"),
    ({"pca": 65}, "pca must be an integer between 0 and 64"),
    ({"memory_mb": 0}, "memory_mb must be an integer >= 1"),
    ({"nlist": 2.5}, "nlist must be an integer or None; got 2.5"),
    ({"refine": True}, "refine must be an integer or None"),
    ({"nbits": 0, "refine": -1, "bad": 1}, "Unknown index parameters \\['bad'\\].*nbits.*refine"),
])
def test_check_params_names_allowed_ranges(params, message):
    with pytest.raises(ValueError, match=message):
        gmvi.check_params(params, index_type="ivfpq", n=1000, d=64)


def test_bad_index_arguments_list_allowed_values():
    with pytest.raises(ValueError, match="flat"):
        gmvi.resolve_index_type("hnsw", 10)
    with pytest.raises(ValueError, match="nprobe"):
        gmvi.default_params("pq", 1000, 64, {"nprob": 3})
    with pytest.raises(ValueError, match="divide"):
        gmvi.default_params("pq", 1000, 64, {"M": 7})
    with pytest.raises(ValueError, match="at least"):
        gmvi.default_params("pq", 10, 64, {"nbits": 8})
    gmvi.check_params({"M": 16, "pca": 64, "nlist": None}, index_type="ivfpq", n=1000, d=1024)


def _index(factory, d=64, n=None):
    index = gmvi.faiss.index_factory(d, factory)
    x = None
    if n:  # placement only needs the structure; search needs a trained index
        x = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
        index.train(x)
        index.add(x)
    return gmvi.Index(index, {"params": {"refine": 0}}, vectors=x), x


@pytest.mark.parametrize("factory,device", [
    ("Flat", "gpu"), ("IVF16,Flat", "gpu"), ("IVF16,PQ8x8", "gpu"), ("PCA32,IVF16,Flat", "gpu"),
    ("PQ8x8", "cpu"), ("IVF16,PQ8x6", "cpu"), ("IVF16,PQ64x8", "gpu"), ("IVF16,PQ32x4", "cpu"),
    ("HNSW8", "cpu"),
])
def test_gpu_plan_moves_only_types_faiss_runs_there(factory, device):
    index, _ = _index(factory)
    plan = gmvi.gpu_plan(index, k=10, num_gpus=1)
    assert plan["device"] == device, plan
    if device == "cpu":
        assert plan["gpu_index"] is None and plan["reason"]
    if factory.startswith("PCA"):
        assert plan["gpu_index"] == "IndexIVFFlat" and "PCAMatrix" in plan["cpu_parts"]
    assert gmvi.gpu_plan(index, k=10, num_gpus=0)["device"] == "cpu"


def test_gpu_plan_limits_k_and_nprobe():
    index, _ = _index("IVF16,Flat")
    assert gmvi.gpu_plan(index, k=1025, num_gpus=1)["device"] == "cpu"
    assert gmvi.gpu_plan(index, k=300, refine=4, num_gpus=1)["device"] == "cpu"
    assert gmvi.gpu_plan(index, k=10, nprobe=2048, num_gpus=1)["device"] == "cpu"


@pytest.mark.parametrize("factory,moved", [
    ("PCA8,IVF4,PQ2x8", "IndexIVFPQ"), ("PQ2x4", None), ("Flat", "IndexFlat"),
])
def test_search_hands_the_gpu_only_supported_cores(monkeypatch, factory, moved):
    index, x = _index(factory, d=16, n=600)
    calls = []

    def fake_to_gpu(core, plan):
        calls.append(type(core).__name__)
        return core, None  # the CPU core stands in for its GPU copy

    monkeypatch.setattr(gmvi, "_gpu_count", lambda: 1)
    monkeypatch.setattr(gmvi, "_to_gpu", fake_to_gpu)
    info = {}
    _, idx = gmvi.search(index, x[:5], 3, info=info)
    assert calls == ([moved] if moved else [])
    assert info["device"] == ("gpu" if moved else "cpu")
    if factory == "Flat":
        np.testing.assert_array_equal(idx[:, 0], np.arange(5))


def test_faiss_threads_follow_the_environment(monkeypatch):
    monkeypatch.setenv("GMV_FAISS_THREADS", "1")
    assert gmvi.faiss_threads() == 1
    monkeypatch.delenv("GMV_FAISS_THREADS")
    assert 1 <= gmvi.faiss_threads() <= len(__import__("os").sched_getaffinity(0))


def test_recall_at_k():
    assert gmvi.recall_at_k([[1, 2, 3]], [[3, 2, 9]]) == pytest.approx(2 / 3)
