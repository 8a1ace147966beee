"""Cost of crash safety: the C3-like setting end to end, before and after.

Values 9,100 MNIST training PNGs (100 of them noisy) from 2,000 generated
PNGs (pixels, flat index, k = 30, no re-rank) with this checkout's library and
with the library at a given git revision (default: the last commit before
the run store), alternating in separate processes on the same dataset, and
reports medians of repeats and their ratio.

    .venv/bin/python -m benchmarks.overhead [--before REV] [--repeats 3]

Writes benchmarks/results/overhead.json.
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache" / "overhead"
BEFORE = "b7fa8b7"  # the last commit before the run store (issue 7)
CONFIG = dict(model="pixels", index="flat", k=30, rerank="none", quality="none")

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import fiftyone as fo
import gmv_plugin as gmv
assert gmv.__file__.startswith(sys.argv[1]), gmv.__file__
ds = fo.load_dataset(sys.argv[2])
cfg = json.loads(sys.argv[4])
start = time.perf_counter()
res = gmv.compute_values(ds.match_tags("train"), ds.match_tags("generated"), key=sys.argv[3],
                         progress=False, **cfg)
total = time.perf_counter() - start
timings = res.timings
gmv.delete_run(ds, sys.argv[3])
print(json.dumps({"total_s": total, "timings": timings}))
"""


def build_dataset():
    import gzip

    import numpy as np
    from PIL import Image

    import fiftyone as fo

    name = "gmv-overhead"
    if fo.dataset_exists(name):
        return fo.load_dataset(name)
    mnist = pathlib.Path(os.environ.get("GMV_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))
    with gzip.open(mnist / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(images))
    train, held = images[order[:9000]], images[order[9000:]]
    noisy = np.clip(held[:100] / 255.0 + rng.normal(0, 0.5, held[:100].shape), 0, 1)
    noisy = (noisy * 255).round().astype(np.uint8)
    gen = np.roll(images[order[:2000]], 1, axis=2)  # stand-in generations: shifted digits
    d = CACHE / "png"
    d.mkdir(parents=True, exist_ok=True)
    samples = []
    for tag, arr in (("train", train), ("noisy", noisy), ("generated", gen)):
        for i, img in enumerate(arr):
            p = d / ("%s_%05d.png" % (tag, i))
            if not p.exists():
                Image.fromarray(img).save(p)
            tags = ["train", "noisy"] if tag == "noisy" else [tag]
            samples.append(fo.Sample(filepath=str(p), tags=tags))
    ds = fo.Dataset(name, persistent=True)
    ds.add_samples(samples)
    return ds


def bare(ds, k):
    """numpy + FAISS on the same images: read, embed, exact search, Eq. 4 + bincount."""
    import faiss
    import numpy as np
    from PIL import Image

    def embed(paths):
        x = np.stack([np.asarray(Image.open(p).convert("L").resize((32, 32), Image.BILINEAR),
                                 dtype=np.float32).ravel() for p in paths]) / 255.0
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    start = time.perf_counter()
    tr = embed(ds.match_tags("train").values("filepath"))
    ge = embed(ds.match_tags("generated").values("filepath"))
    index = faiss.IndexFlatL2(tr.shape[1])
    index.add(tr)
    d, idx = index.search(ge, k)
    w = np.exp(-np.sqrt(np.maximum(d, 0)))
    w /= w.sum(axis=1, keepdims=True)
    np.bincount(idx.ravel(), weights=w.ravel(), minlength=len(tr))
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", default=BEFORE)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "overhead.json"))
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from benchmarks.run import _setup_env

    CACHE.mkdir(parents=True, exist_ok=True)
    _setup_env(CACHE)
    ds = build_dataset()
    old = CACHE / ("src-" + args.before)
    if not (old / "gmv_plugin").is_dir():
        old.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before, "gmv_plugin"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    versions = {"before": str(old), "after": str(ROOT)}
    times = {v: [] for v in versions}
    stages = {v: [] for v in versions}
    bare_s = []
    for r in range(args.repeats):
        for v, src in versions.items():
            key = "oh_%s_%d" % (v, r)  # a new run each time: nothing reused
            out = subprocess.run([sys.executable, "-c", CHILD, src, ds.name, key, json.dumps(CONFIG)],
                                 check=True, capture_output=True, text=True, env=dict(os.environ)).stdout
            row = json.loads(out.strip().splitlines()[-1])
            times[v].append(row["total_s"])
            stages[v].append(row["timings"])
            print("repeat %d %s: %.2f s" % (r, v, row["total_s"]), flush=True)
        bare_s.append(bare(ds, CONFIG["k"]))
    med = {v: statistics.median(t) for v, t in times.items()}
    result = {
        "setting": "9,100 training PNGs (100 noisy) / 2,000 generated PNGs, %s" % CONFIG,
        "before_rev": args.before,
        "repeats": args.repeats,
        "total_s": times,
        "median_s": med,
        "ratio_after_vs_before": med["after"] / med["before"],
        "bare_median_s": statistics.median(bare_s),
        "ratio_after_vs_bare": med["after"] / statistics.median(bare_s),
        "stage_seconds": stages,
        "machine": "%s, %d CPUs" % (platform.platform(), os.cpu_count()),
        "date": time.strftime("%Y-%m-%d"),
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: result[k] for k in ("median_s", "ratio_after_vs_before", "bare_median_s",
                                                "ratio_after_vs_bare")}, indent=1))


if __name__ == "__main__":
    main()
