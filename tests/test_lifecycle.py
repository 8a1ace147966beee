"""User mistakes, samples that change after a run, and the dataset lifecycle:
clear errors before any work, user data never touched, no stale ids."""

import os

import numpy as np
import pytest
from PIL import Image

import fiftyone as fo
import gmv_plugin as gmv
from gmv_plugin import runs as gmvruns
from gmv_plugin import store as gmvstore

FAST = dict(model="pixels", rerank="l2", quality="realism", k=10, progress=False)


def _views(ds):
    return ds.match_tags("train"), ds.match_tags("generated")


def _nothing_written(ds, key):
    assert key not in ds.list_runs()
    assert not os.path.exists(gmvruns.run_dir(ds, key))


def test_user_fields_named_like_run_fields_are_refused(digits_dataset):
    ds = digits_dataset
    ds.set_values("gmv_quality", [0.5] * len(ds))
    train, gen = _views(ds)
    with pytest.raises(ValueError, match=r"already has field\(s\) gmv_quality, which run key 'gmv' would write"):
        gmv.compute_values(train, gen, key="gmv", **FAST)
    assert ds.values("gmv_quality") == [0.5] * len(ds)
    _nothing_written(ds, "gmv")


@pytest.mark.parametrize("key, match", [
    ("_priv", "cannot start with '_'"),
    ("x" * 300, "at most 64 characters"),
    ("a-b", "must be a Python identifier"),
])
def test_bad_keys_fail_before_any_work(digits_dataset, key, match):
    train, gen = _views(digits_dataset)
    with pytest.raises(ValueError, match=match):
        gmv.compute_values(train, gen, key=key, **FAST)
    _nothing_written(digits_dataset, key)


@pytest.mark.parametrize("kwargs, match", [
    (dict(index="pq", index_params={"M": 0}), r"M must be an integer between 1 and 1024"),
    (dict(index="pq", index_params={"nbits": 0}), r"nbits must be an integer between 1 and 16"),
    (dict(index="ivfpq", index_params={"nlist": 5000}), r"nlist must be an integer between 1 and 270"),
    (dict(index="ivfpq", index_params={"nlist": -1}), r"nlist must be an integer between 1 and 270"),
    (dict(index="ivfpq", index_params={"nprobe": 0}), r"nprobe must be an integer between 1"),
    (dict(index="pq", index_params={"M": 7}), r"M=7 must divide the embedding dimension 1024"),
    (dict(rerank_params={"sise": 3}), r"Unknown rerank_params \['sise'\] for rerank='l2'"),
    (dict(rerank_params={"size": 0}), r"rerank_params size must be an integer >= 1; got 0"),
    (dict(batch_size=0), r"batch_size must be an integer >= 1; got 0"),
    (dict(progress="yes"), r"progress must be True, False, None or a callable"),
    (dict(temperature=0), r"temperature must be a finite number > 0"),
    (dict(k=2.5), r"k must be an integer between 1 and 270"),
])
def test_bad_parameters_fail_before_any_work(digits_dataset, kwargs, match):
    train, gen = _views(digits_dataset)
    with pytest.raises(ValueError, match=match):
        gmv.compute_values(train, gen, key="bad", **dict(FAST, **kwargs))
    _nothing_written(digits_dataset, "bad")


def test_validation_reports_every_problem_per_field():
    errors = gmv.validation.param_errors(n_train=100, k=0, recall_k=500, temperature=-1, batch_size=0)
    assert set(errors) == {"k", "recall_k", "temperature", "batch_size"}
    assert errors["k"] == "k must be an integer between 1 and 100 inclusive (the number of training samples); got 0"


def test_nan_embeddings_are_rejected_with_ids(digits_dataset):
    ds = digits_dataset
    rng = np.random.default_rng(0)
    vectors = rng.random((len(ds), 8))
    vectors[5, 3] = np.nan
    ds.set_values("emb", list(vectors))
    train, gen = _views(ds)
    bad_id = ds.skip(5).first().id
    with pytest.raises(gmv.embeddings.EmbeddingError, match="1 embeddings contain NaN or inf values, e.g. samples .*%s" % bad_id):
        gmv.compute_values(train, gen, key="nan", model=None, embeddings_field="emb", k=5, progress=False)
    assert "nan" not in ds.list_runs()


def test_user_embeddings_field_of_another_dimension_is_never_written(digits_dataset):
    ds = digits_dataset
    ids = ds.values("id")
    ds.set_values("emb16", {i: np.ones(16) for i in ids[:100]}, key_field="id")
    train, gen = _views(ds)
    with pytest.raises(gmv.embeddings.EmbeddingError, match="field 'emb16' holds 16-d vectors; nothing was written"):
        gmv.compute_values(train, gen, key="dim", model="pixels", embeddings_field="emb16", k=5, progress=False)
    dims = {len(v) for v in ds.exists("emb16").values("emb16")}
    assert dims == {16} and ds.exists("emb16").count() == 100


def test_16bit_palette_and_rgba_images_read_the_same_everywhere(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    paths = []
    for i in range(12):
        img = np.roll(base, i, axis=1)
        p = str(tmp_path / ("t%d.png" % i))
        Image.fromarray(img).save(p)
        paths.append(p)
    sixteen = str(tmp_path / "g16.png")
    Image.fromarray(base.astype(np.uint16) * 257).save(sixteen)  # same picture, 16-bit
    palette = str(tmp_path / "gp.png")
    Image.fromarray(base).convert("P").save(palette)
    rgba = str(tmp_path / "ga.png")
    Image.fromarray(np.dstack([base] * 3 + [np.full_like(base, 255)]), "RGBA").save(rgba)
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=p, tags=["train"]) for p in paths])
    ds.add_samples([fo.Sample(filepath=p, tags=["generated"]) for p in (sixteen, palette, rgba)])
    gmv.compute_values(ds.match_tags("train"), ds.match_tags("generated"), key="m", model="pixels",
                       rerank="l2", k=1, progress=False)
    train0 = ds.match_tags("train").first().id
    for c, d in zip(*ds.match_tags("generated").values(["m_contributors", "m_distances"])):
        assert c == [train0] and d[0] == pytest.approx(0, abs=1e-6)
    assert gmv.images.read_image(sixteen).max() == pytest.approx(base.max() / 255)
    ds.delete()


def test_generated_samples_added_then_update_with_the_same_view(digits_dataset, tmp_path):
    ds = digits_dataset
    train, gen = _views(ds)
    gmv.compute_values(train, gen, key="inc", **FAST)
    extra = ds.match_tags("train").limit(20)
    paths = []
    for i, p in enumerate(extra.values("filepath")):
        q = str(tmp_path / ("new_%d.png" % i))
        Image.open(p).rotate(10).save(q)
        paths.append(q)
    ds.add_samples([fo.Sample(filepath=p, tags=["generated"]) for p in paths])
    results = gmv.update_values(ds, "inc", ds.match_tags("generated"), progress=False)
    assert results.num_generated == 50
    gmv.compute_values(train, ds.match_tags("generated"), key="full", **FAST)
    np.testing.assert_allclose(train.values("inc_value"), train.values("full_value"), rtol=1e-6, atol=1e-9)
    # the same view again: nothing new, nothing changes
    before = train.values("inc_value")
    gmv.update_values(ds, "inc", ds.match_tags("generated"), progress=False)
    assert train.values("inc_value") == before


def test_deleted_generated_samples_drop_out(digits_dataset):
    ds = digits_dataset
    train, gen = _views(ds)
    gmv.compute_values(train, gen, key="g", **dict(FAST, quality="none"))
    ds.delete_samples(gen.limit(10))
    results = gmv.assign_values(ds, key="g", progress=False)
    assert results.num_generated == 20
    assert sum(train.values("g_value")) == pytest.approx(20.0)  # each generated image hands out q = 1
    results = gmv.update_values(ds, "g", ds.match_tags("generated"), progress=False)
    assert results.num_generated == 20


def test_deleted_training_samples_are_pruned_from_contributors(digits_dataset):
    ds = digits_dataset
    train, gen = _views(ds)
    gmv.compute_values(train, gen, key="t", **dict(FAST, quality="none"))
    before = gen.values("t_contributors")
    top = set(c[0] for c in before)
    ds.delete_samples(list(top))
    results = gmv.assign_values(ds, key="t", progress=False)
    assert results.num_train == 270 - len(top)
    contributors = gen.values("t_contributors")
    assert contributors == [[i for i in c if i not in top] for c in before]
    assert sum(ds.match_tags("train").values("t_value")) == pytest.approx(30.0)
    view = gmv.contributors_view(ds, "t", gen.first().id)
    assert len(view) == len(gen.first()["t_contributors"])


def test_deleted_dataset_files_are_swept(digits_dataset):
    ds = digits_dataset.clone()
    train, gen = _views(ds)
    gmv.compute_values(train, gen, key="s", **FAST)
    ddir = gmvstore.dataset_dir(ds._doc.id)
    assert os.path.isdir(ddir)
    ds.delete()
    assert os.path.isdir(ddir)
    removed = gmv.cleanup_runs()
    assert ddir in removed and not os.path.exists(ddir)


def test_clone_runs_work_and_say_what_to_recompute(digits_dataset):
    ds = digits_dataset
    train, gen = _views(ds)
    gmv.compute_values(train, gen, key="c", **FAST)
    clone = ds.clone()
    assert clone.values("c_value") == ds.values("c_value")
    results = gmv.assign_values(clone, key="c", temperature=0.05, progress=False)
    assert results.num_generated == 30 and results.run_dir == gmvruns.run_dir(clone, "c")
    orphan = ds.clone()
    ds.delete_run("c")
    with pytest.raises(ValueError, match=r"cloned from dataset .*whose arrays are gone; its fields are intact"):
        gmv.assign_values(orphan, key="c", progress=False)
    assert orphan.exists("c_value").count() == 270
    clone.delete()
    orphan.delete()


def test_rename_keeps_run_dir_and_refuses_private_keys(digits_dataset):
    ds = digits_dataset
    train, gen = _views(ds)
    gmv.compute_values(train, gen, key="r", **FAST)
    with pytest.raises(ValueError, match="cannot start with '_'"):
        gmv.rename_run(ds, "r", "_x")
    assert ds.has_field("r_value") and "r" in gmv.list_runs(ds)
    gmv.rename_run(ds, "r", "r2")
    results = gmv.load_results(ds, "r2")
    assert results.run_dir == gmvruns.run_dir(ds, "r2") and os.path.isdir(results.run_dir)
    assert gmv.assign_values(ds, key="r2", progress=False).num_generated == 30
    assert "r2_value" in ds.list_indexes()


def test_colour_generated_images_follow_a_grayscale_training_set(digits_dataset, tmp_path):
    ds = digits_dataset
    train, gen = _views(ds)
    gmv.compute_values(train, gen, key="col", **FAST)
    paths = []
    for i, p in enumerate(train.limit(5).values("filepath")):
        g = np.asarray(Image.open(p))
        q = str(tmp_path / ("colour_%d.png" % i))
        Image.fromarray(np.dstack([g, g // 2, np.zeros_like(g)])).save(q)
        paths.append(q)
    ds.add_samples([fo.Sample(filepath=p, tags=["generated"]) for p in paths])
    results = gmv.update_values(ds, "col", ds.match_tags("generated"), progress=False)
    assert results.num_generated == 35
    store = gmvstore.RunStore(ds, "col")
    dims = {p: store.load_array(store.manifest()["stages"][p]["files"]["emb"]).shape[1]
            for p in ("embed_train", "embed_generated")}
    assert dims == {"embed_train": 1024, "embed_generated": 1024}


def test_edited_embeddings_in_a_field_are_never_reused(digits_dataset):
    ds = digits_dataset
    train, gen = _views(ds)
    rng = np.random.default_rng(0)
    ids = ds.values("id")
    ds.set_values("emb", dict(zip(ids, rng.normal(size=(len(ids), 8)))), key_field="id")
    kwargs = dict(model=None, embeddings_field="emb", k=5, progress=False)
    gmv.compute_values(train, gen, key="e", **kwargs)
    before = train.values("e_value")
    # the same run again reuses its stored embeddings (the field is unchanged) ...
    stored = gmvstore.RunStore(ds, "e").manifest()["stages"]["embed_train"]["files"]["emb"]
    gmv.compute_values(train, gen, key="e", overwrite=True, **kwargs)
    assert gmvstore.RunStore(ds, "e").manifest()["stages"]["embed_train"]["files"]["emb"] == stored
    assert train.values("e_value") == before
    # ... but not once some vectors were replaced: the run equals a fresh one
    edited = train.limit(40).values("id")
    ds.set_values("emb", dict(zip(edited, rng.normal(size=(40, 8)))), key_field="id")
    gmv.compute_values(train, gen, key="e", overwrite=True, **kwargs)
    gmv.compute_values(train, gen, key="fresh", **kwargs)
    assert train.values("e_value") == pytest.approx(train.values("fresh_value"))
    assert train.values("e_value") != pytest.approx(before)
    results = gmv.assign_values(ds, key="e", progress=False)  # stage by stage still finds its inputs fresh
    assert results.num_train == len(train)
