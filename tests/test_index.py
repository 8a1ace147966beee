"""FAISS recall indexes on real embeddings (pixel embeddings of MNIST)."""

import numpy as np
import pytest

from conftest import load_mnist
from gmv_plugin import index as gmvi
from gmv_plugin.embeddings import PixelEmbedder


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


@pytest.mark.parametrize("index_type", ["pq", "ivfpq"])
def test_pq_recall_against_flat(embeddings, exact, index_type):
    train, queries = embeddings
    params = gmvi.default_params(index_type, *train.shape)
    index = gmvi.build_index(train, index_type, params)
    _, idx = gmvi.search(index, queries, 20, params)
    assert gmvi.recall_at_k(idx, exact[1]) >= 0.9

    raw = dict(params, refine=0)
    _, idx_raw = gmvi.search(gmvi.build_index(train, index_type, raw), queries, 20, raw)
    # Refinement is what brings PQ close to exact.
    assert gmvi.recall_at_k(idx_raw, exact[1]) < gmvi.recall_at_k(idx, exact[1])


def test_index_round_trips_through_a_file(tmp_path, embeddings, exact):
    train, queries = embeddings
    path = str(tmp_path / "i.faiss")
    gmvi.save_index(gmvi.build_index(train, "flat", {}), path)
    _, idx = gmvi.search(gmvi.load_index(path), queries, 20)
    np.testing.assert_array_equal(idx, exact[1])


def test_auto_picks_by_training_set_size():
    assert gmvi.resolve_index_type("auto", 5_000) == "flat"
    assert gmvi.resolve_index_type("auto", 50_000) == "pq"
    assert gmvi.resolve_index_type("auto", 1_000_000) == "ivfpq"


def test_bad_index_arguments_list_allowed_values():
    with pytest.raises(ValueError, match="flat"):
        gmvi.resolve_index_type("hnsw", 10)
    with pytest.raises(ValueError, match="nprobe"):
        gmvi.default_params("pq", 1000, 64, {"nprob": 3})
    with pytest.raises(ValueError, match="divide"):
        gmvi.default_params("pq", 1000, 64, {"M": 7})
    with pytest.raises(ValueError, match="at least"):
        gmvi.default_params("pq", 10, 64, {"nbits": 8})


def test_recall_at_k():
    assert gmvi.recall_at_k([[1, 2, 3]], [[3, 2, 9]]) == pytest.approx(2 / 3)
