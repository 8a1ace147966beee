"""Cleansing scores, copy flags and digit attributes: hand cases, real MNIST
digits, and the pipeline's fields."""

import numpy as np
import pytest

from conftest import load_mnist, write_pngs
from gmv_plugin import attributes as gmva
from gmv_plugin import cleansing as gmvcl
from gmv_plugin import copies as gmvc
from gmv_plugin import knn as gmvk
from gmv_plugin.demo import corruptions as C
from gmv_plugin.evaluation import _auc, identical_labels


# ----------------------------------------------------------------- hand cases


def test_cleansing_score_is_value_order_discounted_by_implausibility():
    values = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    plain = gmvcl.cleansing_scores(values)
    assert np.all(np.diff(plain) > 0) and np.all(plain <= 0)
    np.testing.assert_allclose(plain, np.log((np.arange(5) + 0.5) / 5))
    # the most valuable image, but implausible: it goes first
    score = gmvcl.cleansing_scores(values, np.array([0.5, 0.5, 0.5, 0.5, 9.0]))
    assert np.argmin(score) == 4
    np.testing.assert_allclose(score[:4], plain[:4])  # within the margin: the value alone
    assert score[4] == pytest.approx(plain[4] - 4 * 8.5)
    assert gmvcl.cleansing_scores(values, np.full(5, 2.0), margin=1.0, weight=1.0)[0] == pytest.approx(plain[0] - 1)
    # ties share a percentile
    tied = gmvcl.cleansing_scores(np.array([0.0, 0.0, 1.0]))
    assert tied[0] == tied[1] < tied[2]
    with pytest.raises(ValueError, match="shape"):
        gmvcl.cleansing_scores(values, np.zeros(3))


def test_implausibility_robust_to_outliers():
    rng = np.random.default_rng(0)
    stats = rng.normal(size=(200, 4))
    stats[:5, 2] += 40  # five outliers in one statistic
    a = gmvcl.implausibility(stats)
    assert set(np.argsort(a)[-5:]) == set(range(5))
    assert np.median(a[5:]) < 1.0
    # a statistic constant on typical images still counts
    const = np.zeros((100, 2))
    const[0, 0] = 0.05
    assert gmvcl.implausibility(const)[0] > 100 and gmvcl.implausibility(const)[1:].max() == 0


def _shape(h=28, w=28):
    img = np.zeros((h, w), np.uint8)
    img[6:22, 12:15] = 255  # a bar
    img[6:9, 12:20] = 255  # with a flag: not mirror-symmetric
    return img


def test_copy_descriptor_invariances():
    base = _shape()
    d = gmvc.copy_descriptor(base)
    assert d.shape == (256,) and np.linalg.norm(d) == pytest.approx(1.0, abs=1e-5)
    shifted = np.roll(np.roll(base, 3, axis=0), -2, axis=1)
    darker = (base * 0.6).astype(np.uint8)
    as_float = base / 255.0
    for other in (shifted, darker, as_float):
        assert np.linalg.norm(gmvc.copy_descriptor(other) - d) < 0.05
    mirrored = base[:, ::-1]
    assert np.linalg.norm(gmvc.copy_descriptor(mirrored) - d) > 0.3
    np.testing.assert_allclose(gmvc.copy_descriptors([mirrored], flip=True)[0], d, atol=1e-5)
    assert not gmvc.copy_descriptor(np.zeros((28, 28), np.uint8)).any()


def test_copy_scores_and_flags_hand_case():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(50, 8)).astype(np.float32)
    gen = np.concatenate([train[[3, 3, 7]] + 0.001, rng.normal(size=(5, 8)).astype(np.float32)])
    out = gmvc.copy_scores(gen, None, train)
    assert (out["copy_score"][:3] > 0.9).all() and (out["copy_score"][3:] < 0.45).all()
    assert out["nearest"][:3].tolist() == [3, 3, 7]
    is_copy, copied_by = gmvc.copy_flags(out["copy_score"], out["nearest"], 50)
    assert is_copy.tolist() == [True] * 3 + [False] * 5
    assert copied_by[3] == 2 and copied_by[7] == 1 and copied_by.sum() == 3
    with pytest.raises(ValueError, match="at least 3"):
        gmvc.copy_scores(gen, None, train[:2])


def test_copy_scores_from_known_neighbours_and_blocks_equal_one_search(tmp_path):
    rng = np.random.default_rng(3)
    train = rng.normal(size=(3000, 16)).astype(np.float32)
    gen = np.concatenate([train[:20] + 0.01, rng.normal(size=(30, 16)).astype(np.float32)])
    np.save(tmp_path / "t.npy", train)
    mm = np.load(tmp_path / "t.npy", mmap_mode="r")
    plain = gmvc.copy_scores(gen, None, train)
    d, idx = gmvk.nearest(gen, mm, 50, block_mb=0.01)  # 160-row blocks, as a recall would give
    known = gmvc.copy_scores(gen, None, mm, neighbours=(d, idx))
    for name in ("copy_score", "nearest", "train_nn"):
        np.testing.assert_allclose(known[name], plain[name], rtol=1e-5)
    assert (plain["copy_score"][:20] > 0.9).all()


def test_copies_of_duplicated_training_images_are_still_copies():
    rng = np.random.default_rng(2)
    train = rng.normal(size=(40, 8)).astype(np.float32)
    train[10] = train[11] = train[12]  # one image three times in the training set
    gen = np.stack([train[12] + 0.01, train[12], train[30] + 0.01])
    out = gmvc.copy_scores(gen, None, train)
    assert (out["copy_score"] > 0.9).all()
    assert out["nearest"][2] == 30 and out["nearest"][0] in (10, 11, 12)


def test_digit_attributes_hand_cases():
    bar = np.zeros((1, 28, 28))
    bar[0, 5:20, 10:13] = 1.0  # 3 wide, 15 tall
    a = gmva.digit_attributes(bar)
    assert a["width"][0] == 3 and a["thickness"][0] == pytest.approx(2 * 45 / 36)
    assert a["slant"][0] == pytest.approx(0, abs=1e-9) and a["ink"][0] == pytest.approx(45 / 784)
    lean = np.zeros((1, 28, 28))
    for r in range(5, 20):  # top to the right
        c = 8 + (20 - r) // 2
        lean[0, r, c : c + 3] = 1.0
    assert gmva.digit_attributes(lean)["slant"][0] > 0.3
    thick = np.zeros((1, 28, 28))
    thick[0, 5:20, 10:16] = 1.0
    assert gmva.digit_attributes(thick)["thickness"][0] > a["thickness"][0] + 1
    edges = gmva.bin_edges(np.arange(9.0))
    assert gmva.bin_attributes({"x": np.array([0.0, 4.0, 8.0])}, {"x": edges})["x"].tolist() == ["low", "mid", "high"]


def test_identical_labels_hand_case():
    gen = np.array(["a", "b"])
    train = np.array(["a", "a", "b", "c"])
    contributors = np.array([[0, 2, 1], [2, 3, 0]])
    assert identical_labels(gen, train, contributors, [1, 3]) == {1: 1.0, 3: pytest.approx((2 / 3 + 1 / 3) / 2)}
    with pytest.raises(ValueError, match="exceeds"):
        identical_labels(gen, train, contributors, [4])


# ----------------------------------------------------------------- real MNIST


@pytest.fixture(scope="module")
def mnist():
    return load_mnist(1000)


def test_implausibility_finds_corrupted_mnist_digits(mnist):
    images, _ = mnist
    clean = images[:600]
    rng = np.random.default_rng(0)
    bad = {name: fn(images[600 + 20 * i : 620 + 20 * i], rng) for i, (name, fn) in enumerate(C.CORRUPTIONS.items())}
    stack = np.concatenate([clean] + list(bad.values()))
    a = gmvcl.implausibility(gmvcl.image_statistics(stack))
    start = len(clean)
    for name, imgs in bad.items():
        pos = np.r_[np.zeros(len(clean), bool), np.zeros(len(stack) - len(clean), bool)]
        pos[start : start + len(imgs)] = True
        sel = pos.copy()
        sel[: len(clean)] = True
        assert _auc(pos[sel], a[sel]) > 0.95, name
        start += len(imgs)


def test_copies_of_mnist_digits_are_flagged_and_others_not(mnist):
    images, _ = mnist
    train, novel = images[:800], images[800:900]
    rng = np.random.default_rng(3)
    sources = np.arange(10, 70, 10)
    copies = np.concatenate([fn(train[[s]], rng) for s, fn in zip(sources, C.COPY_KINDS.values())])
    gen = np.concatenate([novel, copies])
    out = gmvcl.truth_columns(np.ones(len(train)), train_images=train, gen_images=gen)
    flags = out["generated"]["is_copy"]
    assert flags[len(novel):].all()
    assert out["generated"]["copy_of"][len(novel):].tolist() == sources.tolist()
    assert flags[: len(novel)].sum() <= 1
    assert out["train"]["copied_by"][sources].tolist() == [1] * 6


def test_truth_columns_from_paths_equal_arrays(mnist, tmp_path):
    images, _ = mnist
    train, gen = images[:120], images[120:150]
    values = np.random.default_rng(0).random(len(train))
    train_paths = write_pngs(train, tmp_path, "t")
    gen_paths = write_pngs(gen, tmp_path, "g")
    a = gmvcl.truth_columns(values, train_paths=train_paths, gen_paths=gen_paths)
    b = gmvcl.truth_columns(values, train_images=train, gen_images=gen)
    np.testing.assert_array_equal(a["train"]["cleansing"], b["train"]["cleansing"])
    np.testing.assert_array_equal(a["generated"]["copy_score"], b["generated"]["copy_score"])
    # without images: the value alone, and copies from embeddings
    c = gmvcl.truth_columns(values, train_emb=train.reshape(120, -1) / 255.0, gen_emb=train[:5].reshape(5, -1) / 255.0)
    np.testing.assert_array_equal(c["train"]["cleansing"], gmvcl.cleansing_scores(values))
    assert c["generated"]["is_copy"].all() and c["train"]["implausibility"] is None


def test_read_features_in_workers_equal_one_process_and_name_unreadable_files(mnist, tmp_path):
    from gmv_plugin.images import ImageReadError

    images, _ = mnist
    paths = write_pngs(images[:300], tmp_path, "w")
    many = gmvcl.read_features(paths, workers=2, chunk_size=64)
    one = gmvcl.image_features(gmvc.read_gray(paths))
    for name in ("desc", "stats"):
        np.testing.assert_array_equal(many[name], one[name])
    assert set(gmvcl.read_features(paths[:5], stats=False)) == {"desc"}
    bad = str(tmp_path / "broken.png")
    with open(bad, "wb") as f:
        f.write(b"not a png")
    with pytest.raises(ImageReadError, match="broken.png"):
        gmvcl.read_features(paths[:100] + [bad], workers=2, chunk_size=64)


# ----------------------------------------------------------------- pipeline


def test_pipeline_writes_cleansing_and_copy_fields(mnist, tmp_path):
    import fiftyone as fo
    import gmv_plugin as gmv

    images, labels = mnist
    train, novel = images[:600], images[800:830]  # a sparse training set makes look-alikes copy-like
    copies = np.stack([train[5], train[40][:, ::-1]])
    blurred = C.blur(images[900:902], np.random.default_rng(0))
    train_imgs = np.concatenate([train, blurred])
    gen_imgs = np.concatenate([novel, copies])
    ds = fo.Dataset()
    try:
        ds.add_samples([fo.Sample(filepath=p, tags=["train"]) for p in write_pngs(train_imgs, tmp_path, "t")])
        ds.add_samples([fo.Sample(filepath=p, tags=["generated"]) for p in write_pngs(gen_imgs, tmp_path, "g")])
        tv, gv = ds.match_tags("train"), ds.match_tags("generated")
        results = gmv.compute_values(tv, gv, key="gmv", model="pixels", rerank="l2", k=10, progress=False)
        assert results.config.temperature == "auto"

        for name, ftype in (("gmv_cleansing", fo.FloatField), ("gmv_copied_by", fo.IntField),
                            ("gmv_copy_score", fo.FloatField), ("gmv_is_copy", fo.BooleanField)):
            assert isinstance(ds.get_field(name), ftype), name
        values, cleansing, copied_by, paths = tv.values(["gmv_value", "gmv_cleansing", "gmv_copied_by", "filepath"])
        score, is_copy, gen_paths = gv.values(["gmv_copy_score", "gmv_is_copy", "filepath"])
        expected = gmvcl.truth_columns(np.array(values), train_paths=paths, gen_paths=gen_paths)
        np.testing.assert_allclose(cleansing, expected["train"]["cleansing"])
        np.testing.assert_allclose(score, expected["generated"]["copy_score"])
        assert is_copy == [False] * 30 + [True, True]
        assert copied_by[5] == 1 and copied_by[40] == 1 and sum(copied_by) == 2
        # the blurred training digits go first, whatever their value
        assert set(np.argsort(cleansing)[:2]) == {600, 601}
        assert gv.match(fo.ViewField("gmv_is_copy")).count() == 2

        from gmv_plugin import evaluation as ev

        ds.set_values("blurry", [p in paths[600:] for p in ds.values("filepath")])
        by_cleansing = ev.cleansing(ds, "gmv", "blurry", score="cleansing")
        assert by_cleansing["auc"] == 1.0 and by_cleansing["score"] == "cleansing"
        assert ev.cleansing(ds, "gmv", "blurry")["auc"] < 1.0  # blur looks like nothing wrong to the value
        with pytest.raises(ValueError, match="score must be one of"):
            ev.cleansing(ds, "gmv", "blurry", score="hits")

        from gmv_plugin.report import build_report, report_markdown

        report = build_report(ds, "gmv", n=2, data_url=False)
        assert {r["filepath"] for r in report["remove_first"]} == {paths[600], paths[601]}
        assert report["possible_copies"]["count"] == 2
        assert {r["filepath"] for r in report["possible_copies"]["rows"]} == set(gen_paths[30:])
        md = report_markdown(report)
        assert "Possible copies**: 2 generated samples flagged" in md and "Remove first" in md
    finally:
        ds.delete()


def test_pipeline_without_image_files_uses_the_value_alone(mnist, tmp_path):
    import os

    import fiftyone as fo
    import gmv_plugin as gmv

    images, _ = mnist
    train, gen = images[:300], np.concatenate([images[300:320], images[[7]]])
    ds = fo.Dataset()
    try:
        ds.add_samples([fo.Sample(filepath=p, tags=["train"]) for p in write_pngs(train, tmp_path, "t")])
        ds.add_samples([fo.Sample(filepath=p, tags=["generated"]) for p in write_pngs(gen, tmp_path, "g")])
        emb = gmv.PixelEmbedder(size=28, mode="L")
        ids, paths = ds.values(["id", "filepath"])
        from PIL import Image

        ds.set_values("emb", dict(zip(ids, [emb.embed(np.asarray(Image.open(p))) for p in paths])), key_field="id")
        tv, gv = ds.match_tags("train"), ds.match_tags("generated")
        from gmv_plugin.store import RunStore

        # a run from an embeddings field reads no images, even where they exist
        res = gmv.compute_values(tv, gv, key="f", model=None, embeddings_field="emb", k=5, progress=False)
        assert RunStore(ds, "f").manifest()["stages"]["values"]["truth"]["source"] == "embeddings"
        assert res.truth["source"] == "embeddings" and res.truth["copy_search"] == {"method": "exact"}
        for p in ds.match_tags("train").values("filepath")[:3]:
            os.remove(p)  # some training files are gone: the pixels can't be read
        gmv.compute_values(tv, gv, key="e", model=None, embeddings_field="emb", k=5, progress=False)
        values, cleansing = tv.values(["e_value", "e_cleansing"])
        np.testing.assert_allclose(cleansing, gmvcl.cleansing_scores(np.array(values)))
        is_copy, score = gv.values(["e_is_copy", "e_copy_score"])
        assert is_copy[-1] and not any(is_copy[:-1])  # the exact copy, found on embeddings
        assert RunStore(ds, "e").manifest()["stages"]["values"]["truth"]["source"] == "embeddings"
        with_images = gmvcl.truth_columns(np.array(values[3:]), train_images=train[3:])["train"]["cleansing"]
        assert not np.allclose(with_images, gmvcl.cleansing_scores(np.array(values[3:])))  # images would change it
    finally:
        ds.delete()


def test_truth_features_are_stored_and_read_once_per_image(mnist, tmp_path, monkeypatch):
    """The pixel embedder's workers compute the truth features of the images
    they decode; later values stages reuse the stored ones and read only new
    or edited images; the columns equal those from the files."""
    import os

    import fiftyone as fo
    import gmv_plugin as gmv
    from PIL import Image

    from gmv_plugin.store import RunStore

    images, _ = mnist
    train, gen = images[:200], np.concatenate([images[300:325], images[[4]]])
    reads = []
    real = gmvcl.read_features
    monkeypatch.setattr(gmvcl, "read_features", lambda paths, **kw: reads.append(list(paths)) or real(paths, **kw))
    ds = fo.Dataset()
    try:
        ds.add_samples([fo.Sample(filepath=p, tags=["train"]) for p in write_pngs(train, tmp_path, "t")])
        ds.add_samples([fo.Sample(filepath=p, tags=["generated"]) for p in write_pngs(gen, tmp_path, "g")])
        tv, gv = ds.match_tags("train"), ds.match_tags("generated")
        paths, gpaths = tv.values("filepath"), gv.values("filepath")

        def check(key, generated):
            values, cleansing, copied_by = tv.values(["%s_value" % key, "%s_cleansing" % key, "%s_copied_by" % key])
            exp = gmvcl.truth_from_features(np.array(values), real(paths), real(generated.values("filepath"), stats=False))
            np.testing.assert_array_equal(cleansing, exp["train"]["cleansing"])
            np.testing.assert_array_equal(copied_by, exp["train"]["copied_by"])
            np.testing.assert_array_equal(generated.values("%s_copy_score" % key), exp["generated"]["copy_score"])
            return RunStore(ds, key).manifest()["stages"]

        gmv.compute_values(tv, gv.limit(20), key="gmv", model="pixels", k=5, progress=False)
        stages = check("gmv", gv.limit(20))
        assert reads == []  # computed by the embedding workers
        assert stages["truth_train"]["count"] == 200 and stages["truth_generated"]["count"] == 20
        gmv.assign_values(ds, key="gmv", progress=False)
        assert reads == [] and check("gmv", gv.limit(20))["truth_train"] == stages["truth_train"]
        gmv.update_values(ds, "gmv", gv, progress=False)
        assert reads == [gpaths[20:]]  # only the new generated images
        after = check("gmv", gv)
        assert after["truth_train"] == stages["truth_train"] and after["truth_generated"]["count"] == 26
        assert gv.values("gmv_is_copy")[-1]

        # embeddings from a field, re-ranked on pixels: the values stage reads the images, once
        emb = gmv.PixelEmbedder(size=28, mode="L")
        ids, all_paths = ds.values(["id", "filepath"])
        ds.set_values("emb", dict(zip(ids, [emb.embed(np.asarray(Image.open(p))) for p in all_paths])), key_field="id")
        del reads[:]
        field = dict(model=None, embeddings_field="emb", rerank="l2", k=5, progress=False)
        gmv.compute_values(tv, gv, key="e", **field)
        assert reads == [paths, gpaths]
        gmv.assign_values(ds, key="e", progress=False)
        assert reads == [paths, gpaths]
        Image.fromarray(255 - train[7]).save(paths[7])  # edited: its key changes with size/mtime
        st = os.stat(paths[7])
        os.utime(paths[7], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        gmv.compute_values(tv, gv, key="e", overwrite=True, **field)
        assert reads == [paths, gpaths, [paths[7]]]
        check("e", gv)
    finally:
        ds.delete()


def test_digit_attribute_fields_give_c2(digits_dataset):
    import gmv_plugin as gmv
    from gmv_plugin import evaluation as ev

    ds = digits_dataset
    train, gen = ds.match_tags("train"), ds.match_tags("generated")
    gmv.compute_values(train, gen, key="gmv", model="pixels", k=10, progress=False)
    fields = ev.digit_attribute_fields(ds, train)
    assert fields == ["digit_thickness", "digit_slant", "digit_width", "digit_ink"]
    counts = train.count_values("digit_slant")
    assert set(counts) == {"low", "mid", "high"} and min(counts.values()) >= 80  # terciles of 270
    c2 = ev.identical_attributes(ds, "gmv", fields, ks=(5, 10))["identical_attributes"]
    # real digits: neighbours in pixel space share slant and width far above chance (1/3)
    assert c2["digit_slant"][5] > 0.45 and c2["digit_width"][5] > 0.45


def test_block_sizes_equal_scipy_filters(mnist):
    """The square-block statistics from window recurrences equal scipy.ndimage's
    min/max filters (reflected borders), on digits, noise, plateaus and stripes."""
    images, _ = mnist
    rng = np.random.default_rng(5)
    stacks = [images[:300]]
    for h, w in ((8, 8), (9, 13), (28, 28), (33, 64)):
        kinds = [rng.integers(0, 256, (40, h, w)), np.clip(rng.normal(128, 2, (40, h, w)), 0, 255),
                 rng.integers(0, 4, (40, h, w)) * 60 + rng.integers(0, 3, (40, h, w))]
        box = np.zeros((40, h, w))
        for b in box:
            b[rng.integers(0, h):, rng.integers(0, w):] = 200
        stacks += [k.astype(np.uint8) for k in kinds] + [box.astype(np.uint8)]
    for q in stacks:
        x = q.astype(np.float64) / 255.0
        flat = x.reshape(len(x), -1)
        lo = np.percentile(flat, 5, axis=1)
        rng_ = np.maximum(np.percentile(flat, 99.5, axis=1) - lo, 1e-3)
        fast = gmvcl._largest_blocks(q, gmvcl._level_above(lo + 0.3 * rng_), gmvcl._level_above(lo + 0.5 * rng_))
        ref = gmvcl._largest_blocks_small(x, lo[:, None, None], rng_[:, None, None])
        np.testing.assert_array_equal(fast[0], ref[0])
        np.testing.assert_array_equal(fast[1], ref[1])
    assert ref[0].max() > 1 and ref[1].max() > 1  # the cases reach past the smallest block


def _reference_statistics(x):
    """image_statistics written plainly in float64 with scipy.ndimage filters
    (the original formulation), for one (N, H, W) stack of 8-bit levels."""
    from scipy import ndimage

    n, h, w = x.shape
    flat = x.reshape(n, -1)
    border = np.concatenate([x[:, 0, :], x[:, -1, :], x[:, :, 0], x[:, :, -1]], axis=1)
    lo, hi = np.percentile(flat, 5, axis=1), np.percentile(flat, 99.5, axis=1)
    rng = np.maximum(hi - lo, 1e-3)
    lo3, rng3 = lo[:, None, None], rng[:, None, None]
    z = (x - lo3) / rng3
    out = {"border_median": np.median(border, axis=1), "range": rng, "p05": lo}
    out["midtone"] = ((z > 0.15) & (z < 0.85)).mean(axis=(1, 2))
    med = ndimage.median_filter(x, size=(1, 3, 3))
    out["impulse"] = np.abs(x - med).mean(axis=(1, 2)) / rng
    out["impulse_share"] = (np.abs(x - med) > 0.5 * rng3).mean(axis=(1, 2))
    gy, gx = np.gradient(x, axis=(1, 2))
    grad = np.hypot(gx, gy)
    lap = np.abs(4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:])
    out["lap_over_grad"] = lap.mean(axis=(1, 2)) / np.maximum(grad.mean(axis=(1, 2)), 1e-6)
    out["sharpness"] = np.percentile(grad.reshape(n, -1), 99, axis=1) / rng
    dx, dy = np.abs(np.diff(x, axis=2)), np.abs(np.diff(x, axis=1))
    act_x = np.maximum(x[:, :, 1:], x[:, :, :-1]) > lo3 + 0.2 * rng3
    act_y = np.maximum(x[:, 1:, :], x[:, :-1, :]) > lo3 + 0.2 * rng3
    eq = ((dx < 1.5 / 255) & act_x).sum(axis=(1, 2)) + ((dy < 1.5 / 255) & act_y).sum(axis=(1, 2))
    out["plateau"] = eq / np.maximum(act_x.sum(axis=(1, 2)) + act_y.sum(axis=(1, 2)), 1)
    colb, rowb = np.arange(w - 1) % 8 == 7, np.arange(h - 1) % 8 == 7
    if colb.any() and rowb.any():
        edge = dx[:, :, colb].mean(axis=(1, 2)) + dy[:, rowb, :].mean(axis=(1, 2))
        inner = dx[:, :, ~colb].mean(axis=(1, 2)) + dy[:, ~rowb, :].mean(axis=(1, 2))
        out["block8"] = edge / np.maximum(inner, 1e-6)
    else:
        out["block8"] = np.ones(n)
    q = np.clip((x * 255).round(), 0, 255).astype(np.int64).reshape(n, -1)
    present = np.zeros((n, 256), bool)
    present[np.arange(n)[:, None], q] = True
    out["levels"] = present.sum(axis=1) / 256.0
    out["ink"] = (z > 0.5).mean(axis=(1, 2))
    out["flat_block"], out["bright_block"] = gmvcl._largest_blocks_small(x, lo3, rng3)
    return np.stack([out[s] for s in gmvcl.STATISTICS], axis=1)


def test_image_statistics_equal_the_plain_float64_formulation(mnist):
    """The uint8-level shortcuts (median network, level comparisons, block
    recurrences) give the plain float64/scipy statistics bit for bit."""
    images, _ = mnist
    rng = np.random.default_rng(9)
    cases = [images[:400], np.concatenate([fn(images[400 + 20 * i : 420 + 20 * i], rng)
                                           for i, fn in enumerate(C.CORRUPTIONS.values())])]
    for h, w in ((3, 9), (9, 13), (64, 33)):
        cases.append(rng.integers(0, 256, (30, h, w)).astype(np.uint8))
        cases.append((rng.integers(0, 4, (30, h, w)) * 60 + rng.integers(0, 3, (30, h, w))).astype(np.uint8))
    for q in cases:
        np.testing.assert_array_equal(gmvcl.image_statistics(q), _reference_statistics(q / 255.0))
    floats = [im.astype(np.float32) / 255 + 1e-4 for im in images[:50]]
    np.testing.assert_array_equal(gmvcl.image_statistics(floats), _reference_statistics(images[:50] / 255.0))


def test_tiny_images_get_finite_statistics_and_descriptors(tmp_path):
    from PIL import Image

    from gmv_plugin import embeddings as gmve

    shapes = [(1, 1), (1, 7), (7, 1), (2, 2), (3, 1)]
    images = [np.arange(h * w, dtype=np.uint8).reshape(h, w) * 40 for h, w in shapes]
    stats = gmvcl.image_statistics(images)
    assert stats.shape == (len(shapes), len(gmvcl.STATISTICS)) and np.isfinite(stats).all()
    assert np.isfinite(gmvcl.image_features(images)["desc"]).all()
    # the embedding workers compute them too: a 1-pixel PNG does not fail a run
    paths = []
    for i, img in enumerate(images + [np.zeros((28, 28), np.uint8)]):
        paths.append(str(tmp_path / ("%d.png" % i)))
        Image.fromarray(img).save(paths[-1])
    truth = {"stats": True}
    mode, failed = gmve.embed_paths(paths, str(tmp_path / "e.npy"), gmve.PixelEmbedder(), workers=1, truth=truth)
    assert not failed and np.isfinite(truth["features"]["stats"]).all()


def test_training_embeddings_on_disk_stay_on_disk_for_the_copy_flags(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "t.npy", rng.normal(size=(500, 8)).astype(np.float32))
    mm = np.load(tmp_path / "t.npy", mmap_mode="r")
    seen = []
    real = gmvc.copy_scores

    def spy(gen, flipped, train, neighbours=None):
        seen.append(type(train))
        return real(gen, flipped, train, neighbours=neighbours)

    monkeypatch.setattr(gmvc, "copy_scores", spy)
    gmvcl.truth_from_features(np.ones(500), train_emb=mm, gen_emb=np.asarray(mm[:20]) + 0.01)
    assert seen == [np.memmap]  # a 10^6 x 128 field's 512 MB were copied into memory


def test_copy_scores_search_in_memory_descriptors_without_copying_them(monkeypatch):
    from gmv_plugin import knn as gmvk

    train = np.random.default_rng(1).normal(size=(300, 8)).astype(np.float32)
    bases = []
    real = gmvk.NeighbourSearch.__init__

    def spy(self, base, *a, **k):
        bases.append(base)
        real(self, base, *a, **k)

    monkeypatch.setattr(gmvk.NeighbourSearch, "__init__", spy)
    gmvc.copy_scores(train[:10] + 0.01, None, train)
    assert np.shares_memory(bases[0], train)  # 1 GB of descriptors at 10^6 images
