"""End-to-end valuation on real digits, runs, and bad input."""

import os

import numpy as np
import pytest
from PIL import Image

import fiftyone as fo
import gmv_plugin as gmv

FAST = dict(model="pixels", rerank="l2", quality="realism", k=10, progress=False)


def _views(ds):
    return ds.match_tags("train"), ds.match_tags("generated")


def test_fields_and_credit_conservation(digits_dataset):
    ds = digits_dataset
    train, gen = _views(ds)
    results = gmv.compute_values(train, gen, key="gmv", **FAST)

    contributors, scores, quality, dists = gen.values(
        ["gmv_contributors", "gmv_scores", "gmv_quality", "gmv_distances"]
    )
    train_ids = set(train.values("id"))
    for c, s, q, d in zip(contributors, scores, quality, dists):
        assert len(c) == len(set(c)) == 10 and set(c) <= train_ids
        assert sum(s) == pytest.approx(q)
        assert d == sorted(d)
        assert 0 <= q <= 1

    values = dict(zip(*train.values(["id", "gmv_value"])))
    hits = dict(zip(*train.values(["id", "gmv_hits"])))
    expected = dict.fromkeys(train_ids, 0.0)
    counts = dict.fromkeys(train_ids, 0)
    for c, s in zip(contributors, scores):
        for i, v in zip(c, s):
            expected[i] += v
            counts[i] += 1
    for i in train_ids:
        assert values[i] == pytest.approx(expected[i])
        assert hits[i] == counts[i]
    assert sum(1 for v in values.values() if v == 0) > 0  # outside every P_j
    assert sum(values.values()) == pytest.approx(sum(quality))

    # The App can filter and sort on these fields.
    assert isinstance(ds.get_field("gmv_value"), fo.FloatField)
    assert isinstance(ds.get_field("gmv_hits"), fo.IntField)
    top = results.top(3).values("gmv_value")
    assert top == sorted(values.values(), reverse=True)[:3]

    assert set(results.timings) == set(gmv.STAGES)
    assert results.num_train == 270 and results.num_generated == 30

    # Real digits: most contributors share the generated digit's class.
    labels = dict(zip(*train.values(["id", "ground_truth.label"])))
    ratio = np.mean([
        np.mean([labels[i] == g for i in c])
        for g, c in zip(gen.values("ground_truth.label"), contributors)
    ])
    assert ratio > 0.6


def test_quality_none_hands_out_one_per_generated_image(digits_dataset):
    train, gen = _views(digits_dataset)
    gmv.compute_values(train, gen, key="q1", model="pixels", k=5, progress=False)
    assert gen.values("q1_quality") == [1.0] * 30
    assert sum(train.values("q1_value")) == pytest.approx(30)


def test_stages_one_by_one_equal_the_whole_pipeline(digits_dataset):
    ds = digits_dataset
    train, gen = _views(ds)
    gmv.compute_values(train, gen, key="whole", **FAST)
    kw = {k: v for k, v in FAST.items() if k != "progress"}
    gmv.init_valuation(train, gen, key="staged", **kw)
    for fn in (gmv.compute_embeddings, gmv.build_index, gmv.recall_contributors,
               gmv.rerank_contributors, gmv.score_quality, gmv.assign_values):
        fn(ds, key="staged", progress=False)
    np.testing.assert_allclose(train.values("whole_value"), train.values("staged_value"))


def test_later_stage_change_reuses_embeddings_and_index(digits_dataset):
    ds = digits_dataset
    train, gen = _views(ds)
    gmv.compute_values(train, gen, key="gmv", model="pixels", k=10, progress=False)
    store = gmv.store.RunStore(ds, "gmv")
    index_file = store.manifest()["stages"]["index"]["files"]["index"]
    mtime = os.path.getmtime(store.path(index_file))
    results = gmv.compute_values(train, gen, key="gmv", model="pixels", k=10,
                                 rerank="l2", overwrite=True, progress=False)
    assert {"embed", "index", "recall"} <= set(results.reused)
    assert "rerank" not in results.reused
    assert store.manifest()["stages"]["index"]["files"]["index"] == index_file
    assert os.path.getmtime(store.path(index_file)) == mtime
    # A stage can also be re-run alone with a new parameter.
    gmv.assign_values(ds, key="gmv", temperature=0.01, progress=False)
    assert gmv.get_run_config(ds, "gmv").temperature == 0.01
    results = gmv.assign_values(ds, key="gmv", temperature="auto", progress=False)
    assert gmv.get_run_config(ds, "gmv").temperature == "auto"
    assert 0 < results.temperature < 1


def test_run_is_listed_loaded_renamed_and_deleted(digits_dataset):
    ds = digits_dataset
    train, gen = _views(ds)
    gmv.compute_values(train, gen, key="gmv", **FAST)
    assert gmv.list_runs(ds) == ["gmv"] and "gmv" in ds.list_runs()
    info = ds.get_run_info("gmv")
    assert info.config.method == "gmvaluator" and info.config.k == 10
    loaded = ds.load_run_results("gmv", cache=False)
    assert isinstance(loaded, gmv.GMValuationResults)
    assert loaded.timings.keys() == set(gmv.STAGES)
    old_dir = gmv.runs.run_dir(ds, "gmv")

    gmv.rename_run(ds, "gmv", "gmv2")
    assert gmv.list_runs(ds) == ["gmv2"]
    assert ds.has_field("gmv2_value") and not ds.has_field("gmv_value")
    assert ds.has_field("gmv2_contributors") and not os.path.exists(old_dir)
    assert gmv.load_results(ds, "gmv2").top(1).values("gmv2_value")

    gmv.delete_run(ds, "gmv2")
    assert gmv.list_runs(ds) == []
    assert not any(f.startswith("gmv2_") for f in ds.get_field_schema())
    assert not os.path.exists(gmv.runs.run_dir(ds, "gmv2"))


def test_existing_key_is_refused_and_kept(digits_dataset):
    train, gen = _views(digits_dataset)
    gmv.compute_values(train, gen, key="gmv", **FAST)
    before = train.values("gmv_value")
    with pytest.raises(ValueError, match="already exists"):
        gmv.compute_values(train, gen, key="gmv", **FAST)
    assert train.values("gmv_value") == before


def test_overwrite_replaces_fields_consistently(digits_dataset):
    ds = digits_dataset
    train, gen = _views(ds)
    gmv.compute_values(train, gen, key="gmv", **FAST)
    smaller = gen.limit(10)
    gmv.compute_values(train, smaller, key="gmv", overwrite=True, **FAST)
    assert len(ds.exists("gmv_contributors")) == 10
    assert sum(train.values("gmv_value")) == pytest.approx(sum(smaller.values("gmv_quality")))


def test_incremental_generated_samples_equal_full_recomputation(digits_dataset):
    ds = digits_dataset
    train, gen = _views(ds)
    ids = gen.values("id")
    first, second = ds.select(ids[:15]), ds.select(ids[15:])
    gmv.compute_values(train, gen, key="full", **FAST)
    gmv.compute_values(train, first, key="inc", **FAST)
    stages = gmv.store.RunStore(ds, "inc").manifest()["stages"]
    results = gmv.update_values(ds, "inc", second, progress=False)
    assert results.num_generated == 30
    after = gmv.store.RunStore(ds, "inc").manifest()["stages"]
    assert after["index"] == stages["index"]  # index kept
    assert after["embed_train"] == stages["embed_train"]
    # Equal up to float32 rounding in FAISS distance batches.
    np.testing.assert_allclose(train.values("full_value"), train.values("inc_value"), rtol=1e-6, atol=1e-9)
    assert train.values("full_hits") == train.values("inc_hits")
    # Re-adding known samples changes nothing.
    again = gmv.update_values(ds, "inc", second, progress=False)
    assert again.num_generated == 30


def test_new_embeddings_field_is_filled_and_reused(digits_dataset):
    ds = digits_dataset
    train, gen = _views(ds)
    gmv.compute_values(train, gen, key="a", model="pixels", embeddings_field="px", k=5, progress=False)
    assert len(ds.exists("px")) == 300
    assert isinstance(ds.get_field("px"), fo.VectorField)
    first = ds.first()["px"]
    np.testing.assert_allclose(first, gmv.PixelEmbedder().embed_all([np.asarray(Image.open(ds.first().filepath))])[0], rtol=1e-6)
    gmv.compute_values(train, gen, key="b", model=None, embeddings_field="px", k=5, progress=False)
    assert gen.values("a_contributors") == gen.values("b_contributors")


def test_existing_embeddings_field_is_used(digits_dataset):
    ds = digits_dataset
    train, gen = _views(ds)
    ds.compute_embeddings(gmv.PixelEmbedder(), embeddings_field="emb", progress=False)
    gmv.compute_values(train, gen, key="a", model="pixels", k=5, progress=False)
    gmv.compute_values(train, gen, key="b", model=None, embeddings_field="emb", k=5, progress=False)
    assert gen.values("a_contributors") == gen.values("b_contributors")


# bad input ------------------------------------------------------------------


def test_empty_views(digits_dataset):
    train, gen = _views(digits_dataset)
    with pytest.raises(ValueError, match="empty"):
        gmv.compute_values(train, gen.limit(0), **FAST)
    with pytest.raises(ValueError, match="empty"):
        gmv.compute_values(train.match_tags("nope"), gen, **FAST)


def test_k_larger_than_training_set(digits_dataset):
    train, gen = _views(digits_dataset)
    with pytest.raises(ValueError, match=r"k must be an integer between 1 and 270 inclusive \(the number of training samples\); got 500"):
        gmv.compute_values(train, gen, **dict(FAST, k=500))
    with pytest.raises(ValueError, match="recall_k"):
        gmv.compute_values(train, gen, recall_k=5, **FAST)
    assert gmv.list_runs(digits_dataset) == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(model="no-such-model"), "Unknown model"),
        (dict(index="hnsw"), "auto"),
        (dict(rerank="ssim"), "lpips"),
        (dict(quality=3), "realism"),
        (dict(key="not a key"), "identifier"),
        (dict(temperature=0), "temperature"),
        (dict(index_params={"nlists": 3}), "nlist"),
    ],
)
def test_bad_arguments_list_allowed_values(digits_dataset, kwargs, match):
    train, gen = _views(digits_dataset)
    with pytest.raises(ValueError, match=match):
        gmv.compute_values(train, gen, **dict(FAST, **kwargs))
    assert gmv.list_runs(digits_dataset) == []


def test_views_must_share_a_dataset_and_not_overlap(digits_dataset):
    train, gen = _views(digits_dataset)
    other = fo.Dataset()
    other.add_sample(fo.Sample(filepath=gen.first().filepath))
    with pytest.raises(ValueError, match="same dataset"):
        gmv.compute_values(train, other, **FAST)
    with pytest.raises(ValueError, match="both"):
        gmv.compute_values(digits_dataset, gen, **FAST)


def test_missing_image_file(digits_dataset):
    train, gen = _views(digits_dataset)
    path = gen.first().filepath
    os.remove(path)
    with pytest.raises(gmv.ImageReadError, match="missing.*" + os.path.basename(path)):
        gmv.compute_values(train, gen, **FAST)
    assert gmv.list_runs(digits_dataset) == []


def test_corrupt_image_is_named_and_nothing_is_lost(digits_dataset):
    ds = digits_dataset
    train, gen = _views(ds)
    gmv.compute_values(train, gen, key="gmv", **FAST)
    before = train.values("gmv_value")
    path = gen.last().filepath
    with open(path, "wb") as f:
        f.write(b"not a png at all")
    with pytest.raises(ValueError, match=os.path.basename(path)):
        gmv.compute_values(train, gen, key="gmv", overwrite=True, **FAST)
    assert train.values("gmv_value") == before
    assert gmv.load_results(ds, "gmv").num_generated == 30


def test_mixed_sizes_and_channels(tmp_path):
    rng = np.random.default_rng(0)
    samples = []
    for i, (mode, size) in enumerate([("L", 28), ("RGB", 40), ("RGBA", 17), ("P", 64), ("I;16", 30)] * 6):
        arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        path = str(tmp_path / ("m%d.png" % i))
        Image.fromarray(arr).convert(mode).save(path)
        samples.append(fo.Sample(filepath=path, tags=["generated" if i < 5 else "train"]))
    ds = fo.Dataset()
    ds.add_samples(samples)
    gmv.compute_values(ds.match_tags("train"), ds.match_tags("generated"), **dict(FAST, k=3))
    assert len(ds.exists("gmv_contributors")) == 5


def test_lpips_rerank_and_pyiqa_quality_run_through_the_pipeline(digits_dataset):
    """The LPIPS wiring (random backbone: no weights here) and a weight-free
    pyiqa metric, end to end; stage reuse reloads them from the config."""
    from gmv_plugin.iqa import PyiqaQuality
    from gmv_plugin.perceptual import LPIPSReranker

    ds = digits_dataset
    train, gen = _views(ds)
    results = gmv.compute_values(
        train, gen, key="lp", model="pixels", k=5, recall_k=10,
        rerank=LPIPSReranker(net="alex", size=32, random_backbone=True),
        quality=PyiqaQuality(metric="entropy"), progress=False,
    )
    cfg = gmv.get_run_config(ds, "lp")
    assert cfg.rerank["name"] == "lpips" and cfg.quality["name"] == "entropy"
    dists, quality, scores = gen.values(["lp_distances", "lp_quality", "lp_scores"])
    assert all(len(d) == 5 and d == sorted(d) for d in dists)
    assert all(q > 0 for q in quality)
    for s, q in zip(scores, quality):
        assert sum(s) == pytest.approx(q, rel=1e-6)
    assert results.timings["rerank"] > 0
    # A later stage re-run rebuilds both from the stored config.
    again = gmv.assign_values(ds, key="lp", temperature="auto", progress=False)
    assert {"rerank", "quality"} <= set(gmv.store.RunStore(ds, "lp").manifest()["stages"])
    assert again.num_generated == 30
