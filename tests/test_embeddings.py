"""Embedding at I/O speed: raw field reads, parallel pixel decoding, grayscale."""

import numpy as np
import pytest
from PIL import Image

import fiftyone as fo

from conftest import load_mnist, write_pngs
from gmv_plugin import embeddings as gmve


def _views(ds):
    return ds.match_tags("train"), ds.match_tags("generated")


def test_gray_images_embed_as_one_channel(digits_dataset, tmp_path):
    train, _ = _views(digits_dataset)
    embedder = gmve.PixelEmbedder()
    ids, emb = gmve.embed_to_file(train, str(tmp_path / "e.npy"), model=embedder)
    assert emb.shape == (270, 32 * 32) and embedder.resolved == "L"
    assert ids == train.values("id")
    # equal to the in-memory embedder on the decoded images
    first = np.asarray(Image.open(train.first().filepath))
    np.testing.assert_allclose(emb[0], gmve.PixelEmbedder().embed_all([first])[0], rtol=1e-6)
    # isometric to the RGB embedding: same distances, a third of the dimensions
    rgb = gmve.PixelEmbedder(mode="RGB")
    _, emb_rgb = gmve.embed_to_file(train, str(tmp_path / "rgb.npy"), model=rgb)
    assert emb_rgb.shape == (270, 3 * 32 * 32)
    np.testing.assert_allclose(gmve.gray_to_rgb(emb), emb_rgb, atol=1e-6)
    d1 = np.linalg.norm(emb[:20, None] - emb[None, :20], axis=-1)
    d3 = np.linalg.norm(emb_rgb[:20, None] - emb_rgb[None, :20], axis=-1)
    np.testing.assert_allclose(d1, d3, atol=1e-5)


def test_a_colour_image_makes_the_run_rgb(tmp_path):
    images, _ = load_mnist(40)
    gray = write_pngs(images, tmp_path, prefix="g")
    colour = str(tmp_path / "colour.png")
    rgb_img = np.stack([images[0], images[1], images[2]], axis=-1)
    Image.fromarray(rgb_img).save(colour)
    paths = gray[:30] + [colour] + gray[30:]  # colour after a first chunk of gray ones
    out = str(tmp_path / "mixed.npy")
    mode, failed = gmve.embed_paths(paths, out, gmve.PixelEmbedder(), chunk_size=8, workers=2)
    assert mode == "RGB" and failed == []
    emb = np.load(out)
    assert emb.shape == (41, 3072)
    ref = gmve.PixelEmbedder(mode="RGB")
    expected = np.stack([ref._embed_one(np.asarray(Image.open(p).convert("RGB"))) for p in paths])
    np.testing.assert_allclose(emb, expected, atol=1e-6)

    # Several collections of one run: the gray one is converted too.
    a, b = str(tmp_path / "a.npy"), str(tmp_path / "b.npy")
    mode, _ = gmve.embed_pixel_sets([gray, [colour]], [a, b])
    assert mode == "RGB" and np.load(a).shape == (40, 3072)
    np.testing.assert_allclose(np.load(a), expected[[i for i, p in enumerate(paths) if p != colour]], atol=1e-6)


def test_unreadable_images_are_named(digits_dataset, tmp_path):
    train, _ = _views(digits_dataset)
    bad = train.first().filepath
    with open(bad, "wb") as f:
        f.write(b"not a png")
    with pytest.raises(gmve.EmbeddingError, match="unreadable images.*%s" % bad.split("/")[-1]):
        gmve.embed_to_file(train, str(tmp_path / "e.npy"), model=gmve.PixelEmbedder())
    assert not (tmp_path / "e.npy").exists()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_field_read_equals_values(digits_dataset, tmp_path, dtype):
    ds = digits_dataset
    rng = np.random.default_rng(0)
    ids = ds.values("id")
    vecs = rng.standard_normal((len(ids), 128)).astype(dtype)
    ds.set_values("emb", dict(zip(ids, list(vecs))), key_field="id")
    assert isinstance(ds.get_field("emb"), fo.VectorField)
    view = ds.match_tags("train").skip(3)
    fast_ids, fast = gmve.read_field_embeddings(view, "emb", chunk_size=50)
    assert fast_ids == view.values("id")
    np.testing.assert_array_equal(fast, np.stack(view.values("emb")).astype(np.float32))
    out_ids, arr = gmve.embed_to_file(view, str(tmp_path / "f.npy"), embeddings_field="emb", chunk_size=50)
    assert out_ids == fast_ids
    np.testing.assert_array_equal(arr, fast)


def test_list_field_and_missing_values(digits_dataset, tmp_path):
    ds = digits_dataset
    train, _ = _views(ds)
    ids = train.values("id")
    ds.set_values("lst", {i: [float(j), 1.0] for j, i in enumerate(ids[:-1])}, key_field="id")
    got_ids, vecs = next(gmve.iter_field_embeddings(train, "lst", chunk_size=1000))
    assert vecs[-1] is None and list(vecs[3]) == [3.0, 1.0]
    with pytest.raises(gmve.EmbeddingError, match="1 of 270 samples have no 'lst'"):
        gmve.read_field_embeddings(train, "lst")
    with pytest.raises(gmve.EmbeddingError, match="no model"):
        gmve.embed_to_file(train, str(tmp_path / "x.npy"), embeddings_field="lst")


def test_embedding_memory_is_bounded_by_the_chunk(tmp_path):
    """Writing and reading embeddings goes through plain file I/O, not a
    memmap whose touched pages would count in RSS."""
    import resource
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import resource, numpy as np, sys
        from gmv_plugin.arrays import NpyWriter, iter_rows
        n, d = 200_000, 1024   # 800 MB of float32
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        chunk = np.ones((4096, d), np.float32)
        with NpyWriter(sys.argv[1], n) as w:
            for s in range(0, n, 4096):
                w.write(s, chunk[: min(4096, n - s)])
        mm = np.load(sys.argv[1], mmap_mode="r")
        total = 0.0
        for _, rows in iter_rows(mm, 8192):
            total += float(rows[:, 0].sum())
        assert total == n
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "big.npy")],
                         capture_output=True, text=True, check=True, cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    grown_mb = int(out.stdout.strip().splitlines()[-1])
    assert grown_mb < 200, grown_mb  # vs ~800 MB through a memmap


def _pil_chunk(paths, size, mode, truth=None):
    """_decode_chunk as it was before the OpenCV path: PIL, image by image."""
    from gmv_plugin import cleansing as gmvcl
    from gmv_plugin import copies as gmvc

    vecs, gray, failed, grays = [], [], [], []
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as img:
                if truth is not None:
                    grays.append(gmvc.gray_array(img))
                m = mode if mode != "auto" else ("L" if img.mode in gmve.GRAY_MODES else "RGB")
                img = img.convert(m) if img.mode != m else img
                img = img.resize((size, size), Image.BILINEAR)
                vecs.append(gmve._normalized(np.asarray(img, dtype=np.float32).ravel() / 255.0))
                gray.append(m == "L")
        except Exception:
            failed.append(i)
            vecs.append(np.zeros(size * size, np.float32))
            gray.append(True)
            if truth is not None and len(grays) == i:
                grays.append(np.zeros((1, 1), np.uint8))
    feats = gmvcl.image_features(grays, stats=truth["stats"]) if truth is not None and not failed else None
    return gmve._stack_modes(vecs, gray), not all(gray), failed, feats


def _mixed_files(tmp_path):
    rng = np.random.default_rng(0)
    images, _ = load_mnist(20)

    def save(name, img, **kw):
        path = str(tmp_path / name)
        img.save(path, **kw)
        return path

    def noise(h, w):
        return rng.integers(0, 256, (h, w)).astype(np.uint8)

    paths = write_pngs(images, tmp_path, prefix="digit") + [
        save("g32.png", Image.fromarray(noise(32, 32))),
        save("tall.png", Image.fromarray(noise(100, 37))),  # gray_array downscales it
        save("big.png", Image.fromarray(noise(300, 301))),
        save("rgb.png", Image.fromarray(rng.integers(0, 256, (40, 30, 3)).astype(np.uint8))),
        save("gray.jpg", Image.fromarray(noise(50, 20))),
        save("deep.png", Image.fromarray(rng.integers(0, 65535, (20, 20)).astype(np.uint16))),
        save("palette.png", Image.fromarray(noise(20, 20)).convert("P")),
        save("la.png", Image.fromarray(np.stack([noise(20, 20)] * 2, axis=2), "LA")),
        save("trns.png", Image.fromarray(noise(20, 20)), transparency=5),
        save("bits.png", Image.fromarray(noise(28, 28) > 128)),
    ]
    whole = open(paths[0], "rb").read()
    for name, data in (("cut.png", whole[:60]), ("junk.png", whole[:8] + b"x" * 100)):
        with open(tmp_path / name, "wb") as f:
            f.write(data)
    return paths, [str(tmp_path / "cut.png"), str(tmp_path / "junk.png"), str(tmp_path / "missing.png")]


def test_fast_decode_equals_pil_bit_for_bit(tmp_path):
    """Plain gray PNGs decoded by OpenCV and resized in numpy give PIL's
    embeddings, truth features, colour flags and failures exactly; other
    files still go through PIL."""
    good, broken = _mixed_files(tmp_path)
    gray_only = [p for p in good if p.endswith(".png") and not p.endswith(("rgb.png", "deep.png"))]
    for paths in (good, gray_only, good[:5] + broken[:1] + good[5:] + broken[1:]):
        for mode in ("auto", "L", "RGB"):
            for truth in (None, {"stats": True}, {"stats": False}):
                extra = () if truth is None else (truth,)
                got = gmve._decode_chunk((paths, 32, mode) + extra)
                want = _pil_chunk(paths, 32, mode, truth)
                assert got[1:3] == want[1:3]
                np.testing.assert_array_equal(got[0], want[0])
                assert (got[3] is None) == (want[3] is None)
                for name in (got[3] or {}):
                    np.testing.assert_array_equal(got[3][name], want[3][name])


def test_resize_gray_equals_pil():
    from gmv_plugin.images import PLAN_MIN_IMAGES, resize_gray

    rng = np.random.default_rng(5)
    for h, w in ((28, 28), (2, 3), (31, 33), (100, 37), (300, 301)):
        stack = rng.integers(0, 256, (max(PLAN_MIN_IMAGES, 40000 // (h * w)), h, w)).astype(np.uint8)
        stack[0] = 255
        assert resize_gray(stack[:2], w + 1, h + 1) is None  # too few images of new sizes: PIL decides
        for width, height in ((32, 32), (w, 17), (64, h), (1, 1), (64, 23), (5, 90)):
            want = np.stack([np.asarray(Image.fromarray(a).resize((width, height), Image.BILINEAR))
                             for a in stack])
            got = resize_gray(stack, width, height)
            assert got is not None or min(h, w) < 3  # only tiny images may be left to PIL
            if got is not None:
                np.testing.assert_array_equal(got, want)
    # where Pillow's pass order shows only in a few images out of hundreds
    stack = rng.integers(0, 256, (400, 100, 37)).astype(np.uint8)
    got = resize_gray(stack, 1, 1)
    want = np.stack([np.asarray(Image.fromarray(a).resize((1, 1), Image.BILINEAR)) for a in stack])
    assert got is None or np.array_equal(got, want)


def _pid(_):
    import os
    import time

    time.sleep(0.02)  # long enough for both workers to take tasks
    return os.getpid()


def test_one_decode_pool_for_several_collections(tmp_path):
    """Inside decode_pool, every collection is decoded by the same workers, a
    colour image after many gray ones still turns the file RGB, and failures
    are reported by position, as with a pool per call."""
    images, _ = load_mnist(60)
    gray = write_pngs(images, tmp_path, prefix="g")
    colour = str(tmp_path / "colour.png")
    Image.fromarray(np.stack([images[0], images[1], images[2]], axis=-1)).save(colour)
    broken = str(tmp_path / "broken.png")
    with open(broken, "wb") as f:
        f.write(b"not a png")
    late = gray[:50] + [colour] + gray[50:]
    with gmve.decode_pool(workers=2):
        first = set(gmve.map_chunks(_pid, list(range(8)), workers=2))
        mode, failed = gmve.embed_paths(late, str(tmp_path / "late.npy"), gmve.PixelEmbedder(),
                                        chunk_size=8, workers=2)
        truth = {"stats": True}
        _, bad = gmve.embed_paths(gray[:20] + [broken] + gray[20:], str(tmp_path / "bad.npy"),
                                  gmve.PixelEmbedder(), chunk_size=8, workers=2, truth=truth)
        again = set(gmve.map_chunks(_pid, list(range(8)), workers=2))
    assert len(first | again) == 2  # the same two workers throughout
    assert mode == "RGB" and failed == [] and bad == [20] and "features" not in truth
    mode_ref, _ = gmve.embed_paths(late, str(tmp_path / "ref.npy"), gmve.PixelEmbedder(), chunk_size=8,
                                   workers=2)
    assert mode_ref == "RGB"
    np.testing.assert_array_equal(np.load(str(tmp_path / "late.npy")), np.load(str(tmp_path / "ref.npy")))
    assert set(gmve.map_chunks(_pid, list(range(8)), workers=2)).isdisjoint(first)  # pool gone


def _rows(n):
    return np.arange(n, dtype=np.float32) * 3, n


def test_worker_results_come_back_through_shared_slots_or_pickled():
    """Leading arrays come back through shared memory (more tasks than slots,
    so slots are reused), arrays larger than a slot and other results are
    pickled as before; either way every result is intact and in order."""
    sizes = [1000 + i for i in range(12)] + [gmve.SLOT_BYTES // 4 + 10, 5]
    for held in (False, True):
        with gmve.decode_pool(enabled=held, workers=2):
            got = list(gmve.map_chunks(_rows, sizes, workers=2))
        assert [n for _, n in got] == sizes
        for arr, n in got:
            np.testing.assert_array_equal(arr, np.arange(n, dtype=np.float32) * 3)
    assert list(gmve.map_chunks(abs, [-1, -2, 3], workers=2)) == [1, 2, 3]


def test_read_gray_png_reads_large_files_and_leaves_bombs_to_pil(tmp_path, monkeypatch):
    from gmv_plugin.images import read_gray_png

    big = np.random.default_rng(1).integers(0, 256, (1200, 1100)).astype(np.uint8)
    path = str(tmp_path / "big.png")
    Image.fromarray(big).save(path)  # over a megabyte: several reads
    np.testing.assert_array_equal(read_gray_png(path), big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert read_gray_png(path) is None  # PIL decides (DecompressionBombError/Warning)


def test_prefetched_chunks_equal_decoding_them_later(tmp_path):
    """The generated images' first chunks, decoded while the training images'
    last ones finish, give the same file, features and flags; a colour image
    among them is decoded again as gray; a colour training set drops them."""
    images, _ = load_mnist(80)
    train = write_pngs(images[:50], tmp_path, prefix="t")
    gen = write_pngs(images[50:], tmp_path, prefix="g")
    colour = str(tmp_path / "colour.png")
    Image.fromarray(np.stack([images[0], images[1], images[2]], axis=-1)).save(colour)

    def run(train_paths, gen_paths, prefetch):
        embedder, truth = gmve.PixelEmbedder(), {"stats": False}
        out = str(tmp_path / ("gen_%s.npy" % prefetch))
        with gmve.decode_pool(workers=2):
            if prefetch:
                gmve.prefetch_paths(gen_paths, embedder, truth=truth, chunk_size=8)
            gmve.embed_paths(train_paths, str(tmp_path / "train.npy"), embedder, chunk_size=8, workers=2,
                             truth={"stats": True})
            used = gmve._HELD.prefetched is not None
            mode, failed = gmve.embed_paths(gen_paths, out, embedder, chunk_size=8, workers=2, truth=truth)
        return used, mode, failed, np.load(out), truth["features"]["desc"]

    for train_paths, gen_paths, expect_used in (
            (train, gen, True), (train, gen[:3] + [colour] + gen[3:], True),
            (train[:3] + [colour] + train[3:], gen, False),  # known RGB before the last chunk is out
            (train[:45] + [colour] + train[45:], gen, True)):  # found later: prefetched, then dropped
        used, *got = run(train_paths, gen_paths, True)
        _, *want = run(train_paths, gen_paths, False)
        assert used == expect_used
        assert got[:2] == want[:2]
        np.testing.assert_array_equal(got[2], want[2])
        np.testing.assert_array_equal(got[3], want[3])
