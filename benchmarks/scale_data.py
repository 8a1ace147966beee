"""Synthetic scale data for ``benchmarks.scale``: MNIST-like 28x28 grayscale PNGs.

Training image ``i`` is MNIST test digit ``i % 10000`` shifted by up to 2 pixels,
contrast-scaled and with light noise (seed ``i``), so images are distinct but
real-looking; generated images are drawn the same way from another seed range.
Files are written once into ``benchmarks/.cache/scale/png`` (git-ignored), 1,000
per folder, and reused by later runs.
"""

import os
import pathlib
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
CACHE = HERE / ".cache" / "scale"
MNIST = pathlib.Path(os.environ.get("GMV_MNIST_DIR", HERE.parent.parent / "shared" / "data" / "mnist"))
if not MNIST.exists():
    MNIST = pathlib.Path("/work/shared/data/mnist")


def _digits():
    import gzip

    with gzip.open(MNIST / "t10k-images-idx3-ubyte.gz") as f:
        return np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)


def image(digits, i, salt=0):
    rng = np.random.default_rng([i, salt])
    img = digits[i % len(digits)].astype(np.float32)
    dy, dx = rng.integers(-2, 3, size=2)
    img = np.roll(np.roll(img, dy, axis=0), dx, axis=1)
    img = img * rng.uniform(0.7, 1.0) + rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def png_paths(kind, n):
    root = CACHE / "png" / kind
    return [str(root / ("%04d" % (i // 1000)) / ("%07d.png" % i)) for i in range(n)]


def ensure_pngs(kind, n, workers=2):
    """Writes the first ``n`` images of ``kind`` ("train"/"generated") that are
    missing; returns ``(paths, seconds spent writing)``."""
    paths = png_paths(kind, n)
    done_marker = CACHE / "png" / ("%s.%d.done" % (kind, n))
    if done_marker.exists():
        return paths, 0.0
    start = time.perf_counter()
    from concurrent.futures import ProcessPoolExecutor

    chunks = [(kind, s, min(n, s + 10_000)) for s in range(0, n, 10_000)]
    with ProcessPoolExecutor(workers) as ex:
        list(ex.map(_write_chunk, chunks))
    done_marker.parent.mkdir(parents=True, exist_ok=True)
    done_marker.touch()
    return paths, time.perf_counter() - start


def _write_chunk(args):
    from PIL import Image

    kind, s, e = args
    digits = _digits()
    salt = 0 if kind == "train" else 1
    paths = png_paths(kind, e)
    for i in range(s, e):
        p = paths[i]
        if os.path.exists(p):
            continue
        os.makedirs(os.path.dirname(p), exist_ok=True)
        Image.fromarray(image(digits, i, salt), mode="L").save(p + ".tmp.png", compress_level=1)
        os.replace(p + ".tmp.png", p)


if __name__ == "__main__":
    for kind, n in (("generated", 10_000), ("train", int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)):
        _, s = ensure_pngs(kind, n)
        print(kind, n, "%.1f s" % s, flush=True)
