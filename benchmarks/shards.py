"""Sharded valuation over delegated-operation workers vs one process.

Values N_TRAIN MNIST-like training PNGs from N_GEN generated PNGs (pixels
32x32 grey, flat index, k = 50, no re-rank, no quality) three ways on the
same dataset and private database: one process (``compute_values``), and
``compute_values_sharded`` run by 2 and by 4 local ``fiftyone delegated
launch`` workers (one shard per worker). Checks that the sharded runs equal
the single one bit for bit (every array file of the run and every field),
and reports wall times, per-shard and reduce times, beside a bare numpy +
FAISS computation of the same values on the same images.

    .venv/bin/python -m benchmarks.shards [--train 20000] [--generated 16384] \
        [--repeats 1] [--pngs DIR]

``--pngs`` (or ``GMV_SCALE_PNG_DIR``) reads the scale benchmark's PNGs
(``benchmarks/.cache/scale/png`` of a checkout that ran ``benchmarks.scale``;
never written here) instead of writing its own; the issue's size is
``--train 100000 --generated 10000``. Each run (about 12-14 minutes at that
size on 2 loaded cores) adds its figures, with the load average at each
start and the medians of its repeats, to its setting in
benchmarks/results/shards.json.
"""

import argparse
import gzip
import hashlib
import json
import os
import pathlib
import platform
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.overhead import bare  # noqa: E402  (the same bare reference)

CACHE = ROOT / "benchmarks" / ".cache" / "shards"
CONFIG = dict(index="flat", k=50, rerank="none", quality="none", temperature=1.0)


def images(n, seed):
    """``n`` MNIST-like 28x28 digits: MNIST test digits, shifted and noised."""
    import numpy as np

    mnist = pathlib.Path(os.environ.get("GMV_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))
    with gzip.open(mnist / "t10k-images-idx3-ubyte.gz") as f:
        base = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    rng = np.random.default_rng(seed)
    pick = base[rng.integers(0, len(base), n)].astype(np.float32)
    dx, dy = rng.integers(-2, 3, n), rng.integers(-2, 3, n)
    out = np.empty_like(pick)
    for i in range(n):
        out[i] = np.roll(np.roll(pick[i], dx[i], axis=1), dy[i], axis=0)
    out += rng.normal(0, 12, out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def build_dataset(n_train, n_gen, pngs=None):
    """The dataset of ``n_train`` training and ``n_gen`` generated PNGs: the
    scale benchmark's files under ``pngs`` (read only) when given, else PNGs
    written here from :func:`images`."""
    from PIL import Image

    import fiftyone as fo

    name = "gmv-shards-%s%d-%d" % ("scale-" if pngs else "", n_train, n_gen)
    if fo.dataset_exists(name):
        return fo.load_dataset(name)
    samples = []
    if pngs:
        from benchmarks import scale_data

        for tag, kind, n in (("train", "train", n_train), ("generated", "generated", n_gen)):
            markers = [m for m in pathlib.Path(pngs).glob("%s.*.done" % kind) if int(m.name.split(".")[1]) >= n]
            if not markers:
                raise SystemExit("%s holds no %d %s PNGs (no %s.N.done marker with N >= %d); run "
                                 "benchmarks.scale_data first" % (pngs, n, kind, kind, n))
            rel = [os.path.relpath(p, scale_data.CACHE / "png") for p in scale_data.png_paths(kind, n)]
            samples += [fo.Sample(filepath=os.path.join(pngs, r), tags=[tag]) for r in rel]
    else:
        d = CACHE / "png"
        d.mkdir(parents=True, exist_ok=True)
        for tag, arr in (("train", images(n_train, 0)), ("generated", images(n_gen, 1))):
            for i, img in enumerate(arr):
                p = d / ("%s_%06d.png" % (tag, i))
                if not p.exists():
                    Image.fromarray(img).save(p)
                samples.append(fo.Sample(filepath=str(p), tags=[tag]))
    ds = fo.Dataset(name, persistent=True)
    ds.add_samples(samples, progress=False)
    return ds


def fingerprint(ds, key):
    """sha1 of every array file of the run (names aside) and of its fields."""
    import numpy as np

    from gmv_plugin import runs as gmvruns
    from gmv_plugin import store as gmvstore

    ds.reload()
    store = gmvstore.RunStore(ds, key)
    out = {}
    for part, entry in sorted(store.manifest()["stages"].items()):
        for label, name in sorted(entry["files"].items()):
            with open(store.path(name), "rb") as f:
                out["%s.%s" % (part, label)] = hashlib.sha1(f.read()).hexdigest()
    for field in gmvruns.all_field_names(key):
        if ds.has_field(field):
            ids, vals = ds.exists(field).values(["id", field])
            blob = json.dumps(sorted(zip(ids, vals)), default=float).encode()
            out[field[len(key) + 1:]] = hashlib.sha1(blob).hexdigest()
    return out


def sharded(ds, key, n, env):
    from bson import ObjectId
    from fiftyone.operators.delegated import DelegatedOperationService

    import gmv_plugin as gmv

    svc = DelegatedOperationService()
    sys.path.insert(0, str(ROOT / "tests"))
    from browser import delegated_workers

    with delegated_workers(n, env):
        time.sleep(5 + 4 * n)  # workers import FiftyOne and the plugin before the clock starts
        load = os.getloadavg()[0]
        start = time.perf_counter()
        out = gmv.compute_values_sharded(ds.match_tags("train"), ds.match_tags("generated"), key=key,
                                         shards=n, progress=False, model=gmv.PixelEmbedder(mode="L"),
                                         **CONFIG)
        planned = time.perf_counter() - start
        ids = [ObjectId(i) for i in out["shard_operations"] + [out["reduce_operation"]]]
        while True:
            docs = [svc.get(i) for i in ids]
            if all(d.run_state in ("completed", "failed") for d in docs):
                break
            time.sleep(0.2)
        wall = time.perf_counter() - start
    failed = [(d.label, d.result.error if d.result else None) for d in docs if d.run_state != "completed"]
    if failed:
        raise RuntimeError("Operations failed: %s" % failed)
    ds.reload()  # the reduce changed the run in a worker process
    shards = [d.result.result for d in docs[:-1]]
    reduce_doc = docs[-1]
    reduce_s = (reduce_doc.completed_at - reduce_doc.started_at).total_seconds()
    # what each worker process spent on operations (shards; the reduce waits, so it is apart)
    per_worker = {}
    for s in shards:
        per_worker[s["pid"]] = per_worker.get(s["pid"], 0.0) + s["seconds"]
    return {
        "workers": n,
        "num_shards": out["num_shards"],
        "rows": [s.get("rows") for s in shards],
        "wall_s": wall,
        "plan_s": planned,
        "shard_s": [s["seconds"] for s in shards],
        "shard_stage_s": [s["stage_seconds"] for s in shards],
        "per_worker_shard_s": sorted(per_worker.values(), reverse=True),
        "reduce_s": reduce_s,
        "reduce_started_after_s": (reduce_doc.started_at - docs[0].queued_at).total_seconds(),
        "load_1min_at_start": load,
        "timings": gmv.load_results(ds, key).timings,
    }


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", type=int, default=20_000)
    p.add_argument("--generated", type=int, default=16_384)
    p.add_argument("--workers", default="2,4")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--pngs", default=os.environ.get("GMV_SCALE_PNG_DIR"),
                   help="the scale benchmark's PNG folder (benchmarks/.cache/scale/png), read only")
    p.add_argument("--no-bare", action="store_true")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "shards.json"))
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from benchmarks.run import _setup_env

    CACHE.mkdir(parents=True, exist_ok=True)
    _setup_env(CACHE)
    plugins = CACHE / "plugins"
    plugins.mkdir(exist_ok=True)
    if not (plugins / "gmv").exists():
        (plugins / "gmv").symlink_to(ROOT, target_is_directory=True)
    os.environ["FIFTYONE_PLUGINS_DIR"] = str(plugins)
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    import gmv_plugin as gmv

    assert gmv.__file__.startswith(str(ROOT)), gmv.__file__
    t = time.perf_counter()
    ds = build_dataset(args.train, args.generated, args.pngs)
    print("dataset: %.1f s" % (time.perf_counter() - t), flush=True)
    for key in gmv.list_runs(ds):
        gmv.delete_run(ds, key)

    singles, ref, runs = [], None, {int(x): [] for x in args.workers.split(",")}
    for rep in range(args.repeats):
        load = os.getloadavg()[0]
        start = time.perf_counter()
        res = gmv.compute_values(ds.match_tags("train"), ds.match_tags("generated"), key="single",
                                 progress=False, model=gmv.PixelEmbedder(mode="L"), **CONFIG)
        singles.append({"wall_s": time.perf_counter() - start, "timings": res.timings,
                        "load_1min_at_start": load})
        fp = fingerprint(ds, "single")
        if ref is None:
            ref = fp
        assert fp == ref, "two single-process runs differ"
        print("single: %.1f s (load %.2f)" % (singles[-1]["wall_s"], load), flush=True)
        gmv.delete_run(ds, "single")
        for n in runs:
            key = "sharded_%d" % n
            row = sharded(ds, key, n, env)
            fp = fingerprint(ds, key)
            row["identical_to_single"] = fp == ref
            row["differing"] = sorted(k for k in ref if fp.get(k) != ref[k])
            runs[n].append(row)
            print("%d workers: %.1f s (load %.2f), shards %s, reduce %.1f s, identical=%s" % (
                n, row["wall_s"], row["load_1min_at_start"], ["%.1f" % x for x in row["shard_s"]],
                row["reduce_s"], row["identical_to_single"]), flush=True)
            gmv.delete_run(ds, key)
    bare_s = None if args.no_bare else bare(ds, CONFIG["k"])
    single_med = median([r["wall_s"] for r in singles])
    result = {
        "single": singles,
        "sharded": [r for n in runs for r in runs[n]],
        "median_wall_s": dict({"single": single_med},
                              **{"%d_workers" % n: median([r["wall_s"] for r in runs[n]]) for n in runs}),
        "median_max_shard_s": {"%d_workers" % n: median([max(r["shard_s"]) for r in runs[n]]) for n in runs},
        "all_identical_to_single": all(r["identical_to_single"] for n in runs for r in runs[n]),
        "bare_s": bare_s,
        "ratio_single_vs_bare": single_med / bare_s if bare_s else None,
        "repeats": args.repeats,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "align": gmv.shards.ALIGN,
    }
    setting = ("%d training / %d generated MNIST-like PNGs%s, pixels 32x32 grey, %s"
               % (args.train, args.generated, " (the scale benchmark's files)" if args.pngs else "", CONFIG))
    out = {"machine": "%s, %d CPUs" % (platform.platform(), os.cpu_count()),
           "note": "workers are local `fiftyone delegated launch` processes on the same 2 shared CPUs "
                   "as everything else; a shard holds whole blocks of the recall's query batch; "
                   "wall_s runs from the call of compute_values_sharded (training side planned in "
                   "the caller) to the reduce's commit",
           "settings": []}
    if os.path.isfile(args.out):
        with open(args.out) as f:
            old = json.load(f)
        out["settings"] = old.get("settings") or [{"setting": old["setting"], "runs": old["runs"]}]
    for entry in out["settings"]:  # earlier runs of the same setting stay beside this one
        if entry["setting"] == setting:
            entry["runs"].append(result)
            break
    else:
        out["settings"].append({"setting": setting, "runs": [result]})
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1, default=str)
    print(json.dumps({k: result[k] for k in ("median_wall_s", "median_max_shard_s",
                                             "all_identical_to_single", "bare_s")}, indent=1))


if __name__ == "__main__":
    main()
