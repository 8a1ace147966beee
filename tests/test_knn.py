"""The copy flags' neighbour search: exact while cheap, an inverted file with
exact distances beyond, equal to exact search on clustered data."""

import numpy as np
import pytest

from gmv_plugin import copies as gmvc
from gmv_plugin import knn as gmvk


def _clusters(n, d=32, centers=200, seed=0):
    c = np.random.default_rng(0).normal(size=(centers, d)).astype(np.float32) * 4
    rng = np.random.default_rng(seed)
    return c[rng.integers(0, centers, n)] + rng.normal(size=(n, d)).astype(np.float32) * 0.5


@pytest.fixture
def ivf_always(monkeypatch):
    monkeypatch.setattr(gmvk, "MIN_IVF_ROWS", 0)
    monkeypatch.setattr(gmvk, "EXACT_BUDGET", 0)


def test_small_or_cheap_searches_are_exact():
    base = _clusters(1000)
    assert gmvk.NeighbourSearch(base, 10).describe() == {"method": "exact"}
    assert gmvk.NeighbourSearch(base, 10, exact_budget=0).describe() == {"method": "exact"}  # < MIN_IVF_ROWS


def test_inverted_file_finds_the_exact_neighbours(ivf_always, tmp_path):
    base = _clusters(20_000)
    np.save(tmp_path / "b.npy", base)
    mm = np.load(tmp_path / "b.npy", mmap_mode="r")
    queries = _clusters(500, seed=1)
    search = gmvk.NeighbourSearch(mm, len(queries))
    info = search.describe()
    assert info["method"] == "ivf" and info["nprobe"] < info["nlist"]
    d, i = search.search(queries, 8)
    ed, ei = gmvk.nearest(queries, base, 8)
    assert (i[:, 0] == ei[:, 0]).mean() >= 0.99
    np.testing.assert_allclose(d[:, 0], ed[:, 0], rtol=1e-4)
    assert (np.diff(d, axis=1) >= 0).all()  # sorted by distance
    rows = np.arange(0, 20_000, 97)
    td, ti = search.search(base[rows], 7, exclude_self=True, rows=rows)
    etd, eti = gmvk.nearest(base[rows], base, 7, exclude_self=True, rows=rows)
    assert not (ti == rows[:, None]).any()
    assert (ti[:, 0] == eti[:, 0]).mean() >= 0.99
    # queries far from every cluster: their nearest rows are nearly tied
    far = np.random.default_rng(5).normal(size=(500, 32)).astype(np.float32) * 4
    d, i = search.search(far, 1)
    ed, ei = gmvk.nearest(far, base, 1)
    assert (i[:, 0] == ei[:, 0]).mean() >= 0.98 and (d[:, 0] <= ed[:, 0] * 1.15).all()
    d, i = search.search(queries, 8)
    # deterministic: the same cells and answers again
    d2, i2 = gmvk.NeighbourSearch(base, len(queries)).search(queries, 8)
    assert (i2 == i).all()


def test_queries_whose_cells_hold_too_few_rows_are_searched_exactly(ivf_always):
    base = _clusters(20_000)
    search = gmvk.NeighbourSearch(base, 100)
    search.nprobe = 1
    sizes = np.diff(search.bounds)
    k = int(sizes.max()) + 1  # more neighbours than any one cell holds
    rows = np.arange(0, 20_000, 200)
    d, i = search.search(base[rows], k, exclude_self=True, rows=rows)
    ed, ei = gmvk.nearest(base[rows], base, k, exclude_self=True, rows=rows)
    assert (i >= 0).all() and not (i == rows[:, None]).any()
    np.testing.assert_allclose(d, ed, rtol=1e-5)


def test_copy_scores_through_the_inverted_file_equal_exact(ivf_always):
    base = _clusters(20_000, seed=2)
    rng = np.random.default_rng(3)
    gen = np.concatenate([base[:50] + 0.01, _clusters(450, seed=4)])
    approx = gmvc.copy_scores(gen, None, base)
    assert approx["search"]["method"] == "ivf"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gmvk, "MIN_IVF_ROWS", 10**9)
        exact = gmvc.copy_scores(gen, None, base)
    assert exact["search"] == {"method": "exact"}
    assert (approx["copy_score"][:50] > 0.9).all()
    agree = np.isclose(approx["copy_score"], exact["copy_score"], atol=1e-4)
    assert agree.mean() >= 0.99
    assert rng is not None
