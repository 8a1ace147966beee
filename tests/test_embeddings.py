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
