"""Small real-image datasets for operator, navigation and App tests.

Digits come from MNIST's test split when its files are present
(``$GMV_MNIST_DIR`` or /work/shared/data/mnist), else from scikit-learn's
bundled 8x8 digits upsampled to 28x28; either way real handwriting, written as
PNG files. Training samples are tagged ``train``, generated ones
``generated``; every sample has a ``ground_truth`` classification and a
``split`` string field.
"""

import gzip
import os
import pathlib
import uuid

import numpy as np
from PIL import Image

MNIST_DIR = pathlib.Path(os.environ.get("GMV_MNIST_DIR", "/work/shared/data/mnist"))


def load_digit_images(n):
    """``n`` real digit images (uint8, 28x28) and their labels."""
    images = MNIST_DIR / "t10k-images-idx3-ubyte.gz"
    labels = MNIST_DIR / "t10k-labels-idx1-ubyte.gz"
    if images.is_file() and labels.is_file():
        with gzip.open(images) as f:
            x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
        with gzip.open(labels) as f:
            y = np.frombuffer(f.read(), np.uint8, offset=8)
        return x[:n].copy(), y[:n].astype(int)
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images[:n] * (255.0 / 16.0)).astype(np.uint8)
    x = np.stack([np.asarray(Image.fromarray(a).resize((28, 28), Image.BILINEAR)) for a in x])
    return x, d.target[:n].astype(int)


def make_digits_dataset(
    directory, n_train=150, n_generated=50, name=None, persistent=False, generated_first=False
):
    """A dataset of ``n_train`` training and ``n_generated`` generated digit PNGs
    written under ``directory`` (training samples first unless
    ``generated_first``)."""
    import fiftyone as fo

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    x, y = load_digit_images(n_train + n_generated)
    samples = []
    for i, (img, label) in enumerate(zip(x, y)):
        split = "train" if i < n_train else "generated"
        path = directory / ("%s_%03d.png" % (split, i))
        Image.fromarray(img).save(path)
        samples.append(
            fo.Sample(
                filepath=str(path),
                tags=[split],
                split=split,
                ground_truth=fo.Classification(label=str(label)),
            )
        )
    if generated_first:
        samples = samples[n_train:] + samples[:n_train]
    ds = fo.Dataset(name or "gmv-test-%s" % uuid.uuid4().hex[:10])
    ds.persistent = persistent
    ds.add_samples(samples, progress=False)
    return ds
