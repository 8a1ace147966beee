"""Demo data loaders, PNG writing, dataset building and the small generators."""

import gzip
import os
import pathlib

import numpy as np
import pytest
import torch
from PIL import Image

from gmv_plugin.demo import data, generators

MNIST_DIR = pathlib.Path(os.environ.get("GMV_MNIST_DIR", data.DEFAULT_MNIST_DIR))
MNIST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
needs_mnist = pytest.mark.skipif(
    not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(), reason="MNIST files absent"
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@needs_mnist
def test_load_mnist_matches_readme_counts():
    images, labels = data.load_mnist(MNIST_DIR)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    assert np.bincount(labels, minlength=10).tolist() == MNIST_COUNTS
    assert images.max() == 255 and images.min() == 0
    first, _ = data.load_mnist(MNIST_DIR, limit=5)
    np.testing.assert_array_equal(first, images[:5])


@needs_mnist
def test_load_mnist_torchvision_layout_and_uncompressed(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-images-idx3-ubyte.gz").symlink_to(MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    with gzip.open(MNIST_DIR / "t10k-labels-idx1-ubyte.gz") as f:
        (raw / "t10k-labels-idx1-ubyte").write_bytes(f.read())
    images, labels = data.load_mnist(tmp_path)
    assert images.shape == (10000, 28, 28)
    assert np.bincount(labels).tolist() == MNIST_COUNTS


def test_load_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        data.load_mnist(tmp_path)
    with pytest.raises(ValueError):
        data.load_mnist(tmp_path, split="validation")
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write((2049).to_bytes(4, "big") + bytes(12))  # a labels header
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes((2049).to_bytes(4, "big") + bytes(4))
    with pytest.raises(ValueError, match="magic"):
        data.load_mnist(tmp_path)


def test_load_digits_upsampled():
    images, labels = data.load_digits(size=32)
    assert images.shape == (1797, 32, 32) and images.dtype == np.uint8
    assert labels.shape == (1797,) and set(labels.tolist()) == set(range(10))
    assert images.max() == 255 and images.min() == 0
    small, _ = data.load_digits(size=8)
    assert small.shape == (1797, 8, 8)


def test_stratified_split():
    labels = np.repeat(np.arange(3), 10)
    a, b = data.stratified_split(labels, 0.2, seed=1)
    assert len(b) == 6 and np.bincount(labels[b]).tolist() == [2, 2, 2]
    assert sorted(np.concatenate([a, b]).tolist()) == list(range(30))


def test_write_pngs_round_trip(tmp_images):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 12, 8), dtype=np.uint8)
    paths = data.write_pngs(images, tmp_images / "x", prefix="g", start=3, batch_size=2)
    assert [pathlib.Path(p).name for p in paths] == [f"g{i:06d}.png" for i in range(3, 8)]
    for p, img in zip(paths, images):
        with Image.open(p) as im:
            assert im.mode == "L"
            np.testing.assert_array_equal(np.asarray(im), img)
    with pytest.raises(TypeError):
        data.write_pngs(images.astype(np.float32), tmp_images)


def test_make_dataset_tags_and_fields(tmp_images):
    import fiftyone as fo

    rng = np.random.default_rng(0)
    train = (rng.integers(0, 256, (7, 16, 16), dtype=np.uint8), np.arange(7) % 3)
    gen = (rng.integers(0, 256, (4, 16, 16), dtype=np.uint8),
           np.array([0, 1, 2, 2]), np.array([0, 1, 2, 0]))
    name = "gmv-test-demo-dataset"
    ds = data.make_dataset(
        name, tmp_images, train=train, generated=gen, batch_size=3,
        train_fields={"noisy": np.array([True] + [False] * 6)},
    )
    try:
        assert ds.count_sample_tags() == {"train": 7, "generated": 4}
        assert not ds.persistent
        tr, ge = ds.match_tags("train"), ds.match_tags("generated")
        assert tr.values("ground_truth.label") == [str(v) for v in train[1]]
        assert tr.values("noisy") == [True] + [False] * 6
        assert ge.values("ground_truth.label") == ["0", "1", "2", "2"]
        assert ge.values("condition.label") == ["0", "1", "2", "0"]
        assert tr.count("condition") == 0
        assert isinstance(ge.first().ground_truth, fo.Classification)
        assert all(os.path.isfile(p) for p in ds.values("filepath"))
        assert len(set(ds.values("filepath"))) == 11

        with pytest.raises(ValueError, match="exists"):
            data.make_dataset(name, tmp_images, train=train)
        ds2 = data.make_dataset(name, tmp_images, train=train, overwrite=True,
                                classes=["zero", "one", "two"])
        assert len(ds2) == 7 and ds2.count_sample_tags() == {"train": 7}
        assert ds2.distinct("ground_truth.label") == ["one", "two", "zero"]
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


def test_make_dataset_length_mismatch(tmp_images):
    import fiftyone as fo

    imgs = np.zeros((3, 8, 8), np.uint8)
    with pytest.raises(ValueError):
        data.make_dataset("gmv-test-demo-bad", tmp_images, generated=(imgs, [0, 1, 2], [0]))
    if fo.dataset_exists("gmv-test-demo-bad"):
        fo.delete_dataset("gmv-test-demo-bad")


def _tiny_digits(n=200, size=16):
    images, labels = data.load_digits(size=size)
    return images[:n], labels[:n]


def test_cvae_one_epoch_generates_uint8(tmp_path):
    images, labels = _tiny_digits()
    vae = generators.train_cvae(images, labels, epochs=1, seed=0, width=8)
    assert vae.meta["epochs"] == 1 and vae.meta["n_train"] == 200
    out, cond = generators.generate(vae, 23, seed=3)
    assert out.shape == (23, 16, 16) and out.dtype == np.uint8
    assert cond.dtype == np.int64 and cond.tolist() == [i % 10 for i in range(23)]
    again, _ = generators.generate(vae, 23, seed=3)
    np.testing.assert_array_equal(out, again)
    other, _ = generators.generate(vae, 3, labels=[5, 5, 5], seed=3)
    assert other.shape == (3, 16, 16)

    path = generators.save_checkpoint(vae, tmp_path / "vae.pt")
    loaded = generators.load_checkpoint(path)
    np.testing.assert_array_equal(generators.generate(loaded, 23, seed=3)[0], out)
    assert loaded.meta["n_train"] == 200


def test_training_is_seeded_and_leaves_global_rng():
    images, labels = _tiny_digits(100)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = generators.train_cvae(images, labels, epochs=1, seed=5, width=8)
    after = torch.rand(1)
    assert torch.equal(before, after)
    b = generators.train_cvae(images, labels, epochs=1, seed=5, width=8)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_cgan_and_classifier_one_epoch(tmp_path):
    images, labels = _tiny_digits()
    gan = generators.train_cgan(images, labels, epochs=1, width=8)
    out, cond = generators.generate(gan, 12, seed=0)
    assert out.shape == (12, 16, 16) and out.dtype == np.uint8
    clf = generators.train_classifier(images, labels, epochs=1, width=8, val_fraction=0.2)
    assert 0.0 <= clf.meta["val_accuracy"] <= 1.0 and clf.meta["n_val"] == 40
    pred = generators.classify(clf, out)
    assert pred.shape == (12,) and pred.dtype == np.int64
    assert 0.0 <= generators.agreement(clf, out, cond) <= 1.0
    loaded = generators.load_checkpoint(generators.save_checkpoint(gan, tmp_path / "g.pt"))
    np.testing.assert_array_equal(generators.generate(loaded, 12, seed=0)[0], out)


def test_diffusion_one_epoch(tmp_path):
    images, labels = _tiny_digits(100)
    model = generators.train_cdiffusion(images, labels, epochs=1, width=8)
    out, _ = generators.generate(model, 7, seed=2, sample_steps=3)
    assert out.shape == (7, 16, 16) and out.dtype == np.uint8
    guided, _ = generators.generate(model, 7, seed=2, sample_steps=3, guidance=1.0)
    assert guided.shape == out.shape
    loaded = generators.load_checkpoint(generators.save_checkpoint(model, tmp_path / "d.pt"))
    np.testing.assert_array_equal(
        generators.generate(loaded, 7, seed=2, sample_steps=3)[0], out)


def test_cached_trains_once_and_respects_fingerprint(tmp_path):
    images, labels = _tiny_digits(50)
    calls = []

    def train():
        calls.append(1)
        return generators.train_cvae(images, labels, epochs=1, width=8)

    path = generators.cache_path("tiny", tmp_path)
    assert path == tmp_path / "tiny.pt"
    fp = generators.fingerprint(images, labels, epochs=1)
    m1 = generators.cached(path, train, fp)
    m2 = generators.cached(path, train, fp)
    assert len(calls) == 1 and not m1.meta["cached"] and m2.meta["cached"]
    assert generators.fingerprint(images, labels, epochs=2) != fp
    generators.cached(path, train, generators.fingerprint(images, labels, epochs=2))
    assert len(calls) == 2


def test_bad_inputs():
    with pytest.raises(TypeError):
        generators.train_cvae(np.zeros((4, 16, 16), np.float32), [0, 1, 2, 3], epochs=1)
    with pytest.raises(ValueError):
        generators.train_cvae(np.zeros((4, 18, 18), np.uint8), [0, 1, 2, 3], epochs=1)
