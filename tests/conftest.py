"""Test setup: an isolated FiftyOne database and plugins directory per session.

The environment is prepared before FiftyOne is imported anywhere, so every test
talks to a private mongod and loads this checkout as a plugin.
"""

import atexit
import contextlib
import os
import pathlib
import shutil
import tempfile

from browser import private_mongod  # imports no FiftyOne

ROOT = pathlib.Path(__file__).resolve().parents[1]
_TMP = pathlib.Path(tempfile.mkdtemp(prefix="gmv-tests-"))
_PLUGINS = _TMP / "plugins"
_PLUGINS.mkdir()
(_PLUGINS / "gmv").symlink_to(ROOT, target_is_directory=True)

# atexit runs last-registered first: FiftyOne's own hooks, then our mongod
# stops, then the temp dir goes.
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)
_MONGOD = contextlib.ExitStack()
atexit.register(_MONGOD.close)
# Our own mongod, reached by URI: FiftyOne's embedded service would attach to
# any FiftyOne database service already running on the machine.
os.environ["FIFTYONE_DATABASE_URI"] = _MONGOD.enter_context(private_mongod(_TMP / "db"))
os.environ["FIFTYONE_PLUGINS_DIR"] = str(_PLUGINS)
os.environ["GMV_RUNS_DIR"] = str(_TMP / "runs")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
os.environ.setdefault("FIFTYONE_SHOW_PROGRESS_BARS", "false")
# No test downloads real weights: missing ones fail as on an offline machine
# (tests/test_weights.py lifts this for its 127.0.0.1 server).
os.environ.setdefault("GMV_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture
def tmp_images(tmp_path):
    """A directory for images written by a test."""
    d = tmp_path / "images"
    d.mkdir()
    return d


MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist"


def load_mnist(n=None):
    """The real MNIST test split as ``(images uint8 (N, 28, 28), labels)``."""
    import gzip

    import numpy as np

    with gzip.open(MNIST_DIR / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(MNIST_DIR / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return (images[:n], labels[:n]) if n else (images, labels)


def write_pngs(images, directory, prefix="img"):
    """Writes uint8 images as PNGs; returns their paths."""
    from PIL import Image

    paths = []
    for i, img in enumerate(images):
        path = str(pathlib.Path(directory) / ("%s_%05d.png" % (prefix, i)))
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def digits_dataset(tmp_path):
    """A dataset of real MNIST digits: 270 tagged "train", 30 "generated",
    each with a ``ground_truth`` classification."""
    import fiftyone as fo

    images, labels = load_mnist(300)
    paths = write_pngs(images, tmp_path)
    dataset = fo.Dataset()
    dataset.add_samples(
        fo.Sample(
            filepath=p,
            tags=["generated" if i % 10 == 0 else "train"],
            ground_truth=fo.Classification(label=str(labels[i])),
        )
        for i, p in enumerate(paths)
    )
    yield dataset
    if fo.dataset_exists(dataset.name):
        dataset.delete()
