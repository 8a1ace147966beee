"""Real image data for demos and benchmarks, and FiftyOne datasets built from it.

- :func:`load_mnist` reads MNIST's IDX files (gzipped or not) from a directory that holds
  them directly, or from torchvision's ``root/MNIST/raw/`` layout.
- :func:`load_digits` returns scikit-learn's bundled 8x8 digits, upsampled (no download).
- :func:`write_pngs` writes ``uint8`` images to PNG files.
- :func:`make_dataset` builds one FiftyOne dataset holding the training images (tag
  ``"train"``) and the generated images (tag ``"generated"``).

All images are ``uint8`` arrays of shape ``(N, H, W)`` (grayscale, 0..255); labels are
``int64`` arrays of shape ``(N,)``.
"""

import gzip
import os
import pathlib

import numpy as np

#: Where the MNIST files are looked for when no directory is given
#: (overridden by the ``GMV_MNIST_DIR`` environment variable).
DEFAULT_MNIST_DIR = "/work/shared/data/mnist"

TRAIN_TAG = "train"
GENERATED_TAG = "generated"

_MNIST_FILES = {
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
}


def _find_idx(root, stem):
    for d in (root, root / "MNIST" / "raw", root / "raw"):
        for name in (stem + ".gz", stem):
            if (d / name).is_file():
                return d / name
    raise FileNotFoundError(
        f"{stem}(.gz) not found in {root} or {root / 'MNIST' / 'raw'}"
    )


def _read_idx(path, magic, header_bytes):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(f"{path}: magic number {found}, expected {magic}")
    dims = [
        int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big")
        for i in range((header_bytes - 4) // 4)
    ]
    data = np.frombuffer(raw, dtype=np.uint8, offset=header_bytes)
    return data.reshape(dims).copy()


def load_mnist(root=None, split="test", limit=None):
    """Load an MNIST split as ``(images uint8 (N, 28, 28), labels int64 (N,))``.

    ``root`` is a directory with the IDX files (``t10k-images-idx3-ubyte.gz`` ...), or a
    torchvision root whose ``MNIST/raw/`` holds them. ``split`` is ``"test"`` (10,000
    images) or ``"train"`` (60,000, where available). ``limit`` keeps the first images.
    """
    if split not in _MNIST_FILES:
        raise ValueError(f"split must be 'test' or 'train', not {split!r}")
    root = pathlib.Path(root or os.environ.get("GMV_MNIST_DIR", DEFAULT_MNIST_DIR))
    img_stem, lbl_stem = _MNIST_FILES[split]
    images = _read_idx(_find_idx(root, img_stem), 2051, 16)
    labels = _read_idx(_find_idx(root, lbl_stem), 2049, 8).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels in {root}")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels


def load_digits(size=32):
    """scikit-learn's 1,797 8x8 digits, upsampled to ``size`` x ``size`` (bilinear).

    Returns ``(images uint8 (1797, size, size), labels int64 (1797,))``; pixel values are
    rescaled from 0..16 to 0..255.
    """
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits as _sk_load_digits

    d = _sk_load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    images = (x[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return images, d.target.astype(np.int64)


def stratified_split(labels, fraction, seed=0):
    """Indices ``(first, second)`` splitting each class so ``second`` holds ``fraction``."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    first, second = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = int(round(len(idx) * fraction))
        second.append(idx[:n])
        first.append(idx[n:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def write_pngs(images, out_dir, prefix="", start=0, batch_size=1000, progress=False):
    """Write ``uint8`` images ``(N, H, W)`` (or ``(N, H, W, 3)``) as PNGs; return their paths.

    Files are named ``{prefix}{index:06d}.png`` with indices from ``start``; existing
    files with the same names are replaced.
    """
    from PIL import Image

    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8, not {images.dtype}")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for b in range(0, len(images), batch_size):
        for i, img in enumerate(images[b : b + batch_size], start=start + b):
            p = out_dir / f"{prefix}{i:06d}.png"
            Image.fromarray(img).save(p, optimize=False, compress_level=1)
            paths.append(str(p.resolve()))
        if progress:
            print(f"  wrote {len(paths)}/{len(images)} PNGs to {out_dir}", flush=True)
    return paths


def _classification(label, classes):
    import fiftyone as fo

    label = int(label)
    return fo.Classification(label=classes[label] if classes else str(label))


def _add_in_batches(dataset, samples, batch_size):
    ids = []
    for b in range(0, len(samples), batch_size):
        ids.extend(dataset.add_samples(samples[b : b + batch_size], progress=False))
    return ids


def make_dataset(
    name,
    images_dir,
    train=None,
    generated=None,
    persistent=False,
    overwrite=False,
    classes=None,
    train_fields=None,
    generated_fields=None,
    batch_size=1000,
    progress=False,
):
    """Build a FiftyOne dataset of training and generated images.

    Args:
        name: the dataset's name.
        images_dir: PNGs are written to ``images_dir/train/`` and ``images_dir/generated/``.
        train: ``(images, labels)``; these samples get tag ``"train"`` and a
            ``ground_truth`` Classification.
        generated: ``(images, labels, conditions)``; these samples get tag
            ``"generated"``, ``ground_truth`` (``labels``: what an independent
            classifier says) and ``condition`` (the class the generator was asked for).
        persistent: whether the dataset survives the database's shutdown.
        overwrite: replace an existing dataset of that name (otherwise that is an error).
        classes: optional class names indexed by label; default ``str(label)``.
        train_fields, generated_fields: optional ``{field: values}`` with one value per
            training / generated image (for example a ``noisy`` flag).
        batch_size: samples per ``add_samples`` call (and PNGs per write batch).

    Returns:
        the ``fo.Dataset``.
    """
    import fiftyone as fo

    if fo.dataset_exists(name):
        if not overwrite:
            raise ValueError(f"dataset {name!r} exists; pass overwrite=True to replace it")
        fo.delete_dataset(name)
    images_dir = pathlib.Path(images_dir)

    dataset = fo.Dataset(name)
    dataset.persistent = persistent
    dataset.default_classes = list(classes) if classes else [str(i) for i in range(10)]

    parts = []
    if train is not None:
        images, labels = train
        parts.append((TRAIN_TAG, images, labels, None, train_fields))
    if generated is not None:
        images, labels, conditions = generated
        parts.append((GENERATED_TAG, images, labels, conditions, generated_fields))

    for tag, images, labels, conditions, extra in parts:
        n = len(images)
        if len(labels) != n or (conditions is not None and len(conditions) != n):
            raise ValueError(f"{tag}: images, labels and conditions differ in length")
        extra = extra or {}
        for field, values in extra.items():
            if len(values) != n:
                raise ValueError(f"{tag}: field {field!r} has {len(values)} values, not {n}")
        paths = write_pngs(
            images, images_dir / tag, batch_size=batch_size, progress=progress
        )
        samples = []
        for i, path in enumerate(paths):
            s = fo.Sample(
                filepath=path,
                tags=[tag],
                ground_truth=_classification(labels[i], classes),
            )
            if conditions is not None:
                s["condition"] = _classification(conditions[i], classes)
            for field, values in extra.items():
                v = values[i]
                s[field] = v.item() if isinstance(v, np.generic) else v
            samples.append(s)
        _add_in_batches(dataset, samples, batch_size)
        if progress:
            print(f"  added {n} {tag} samples to {name!r}", flush=True)
    return dataset
