"""Scale benchmark (issue 9): the pipeline beside bare numpy + FAISS, 10^4 to 10^6.

Run from the repository root::

    .venv/bin/python -m benchmarks.scale              # full: 1e4, 1e5, 1e6 PNGs + 1e6 field
    .venv/bin/python -m benchmarks.scale --sizes 10000 --no-field   # a quick look
    .venv/bin/python -m benchmarks.scale --calibrate  # re-measure the index cost constants

Writes ``benchmarks/results/scale.json`` (one row per configuration and
repeat, plus medians) and ``benchmarks/SCALE.md``. PNGs, a private FiftyOne
database (its own mongod) and the runs live in ``benchmarks/.cache/scale``
(git-ignored) and are reused by later runs; their creation is timed apart.

Every configuration runs in a fresh process (so ``peak_rss_mb`` is its own),
then the bare reference runs in another on the very arrays the pipeline
produced: the same index factory, training sample size and calibrated
nprobe/refine (FAISS's ``IndexRefineFlat`` for re-scoring), the same k, Eq. 4
and a bincount, no database. ``recall_at_k`` compares the pipeline's
contributors with exact search for a sample of 500 generated images.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / ".cache" / "scale"
RESULTS = HERE / "results" / "scale.json"
REPORT = HERE / "SCALE.md"
N_GENERATED = 10_000
K = 50
RECALL_QUERIES = 500
FLOOR_KEYS = ("floor_read_s", "floor_write_s", "floor_index_s", "floor_s", "best_possible_ratio")
FIELD_DIM = 128

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _env():
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    os.environ.setdefault("FIFTYONE_SHOW_PROGRESS_BARS", "false")
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    os.environ.setdefault("GMV_RUNS_DIR", str(CACHE / "runs"))


def _peak_rss_mb(who=resource.RUSAGE_SELF):
    return resource.getrusage(who).ru_maxrss / 1024.0


# -- datasets (created once, cached) ------------------------------------------


def dataset_name(source, n):
    return "scale-%s-%d" % (source, n)


def field_vectors(n, seed):
    """Synthetic 128-d embeddings: a mixture of 1,000 Gaussian clusters."""
    import numpy as np

    centers = np.random.default_rng(12345).standard_normal((1000, FIELD_DIM)).astype(np.float32)
    rng = np.random.default_rng(seed)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        yield centers[rng.integers(0, 1000, m)] + 0.5 * rng.standard_normal((m, FIELD_DIM)).astype(np.float32)


def ensure_dataset(source, n):
    """The dataset for ``source`` ("images"/"field") with ``n`` training and
    10,000 generated samples; returns ``(dataset, seconds to create)``."""
    import fiftyone as fo

    from benchmarks.scale_data import ensure_pngs

    name = dataset_name(source, n)
    if fo.dataset_exists(name):
        ds = fo.load_dataset(name)
        if ds.info.get("complete"):
            return ds, 0.0
        ds.delete()
    start = time.perf_counter()
    if source == "field":  # runs from a field read no image files
        from benchmarks.scale_data import png_paths

        train_paths, gen_paths = png_paths("train", n), png_paths("generated", N_GENERATED)
    else:
        train_paths, _ = ensure_pngs("train", n)
        gen_paths, _ = ensure_pngs("generated", N_GENERATED)
    ds = fo.Dataset(name, persistent=True)
    for tag, paths, seed in (("train", train_paths, 1), ("generated", gen_paths, 2)):
        vecs = field_vectors(len(paths), seed) if source == "field" else None
        for s in range(0, len(paths), 100_000):
            chunk = paths[s : s + 100_000]
            emb = next(vecs) if vecs is not None else None
            samples = []
            for i, p in enumerate(chunk):
                sample = fo.Sample(filepath=p, tags=[tag])
                if emb is not None:
                    sample["emb"] = emb[i]
                samples.append(sample)
            ds.add_samples(samples, progress=False)
    ds.info["complete"] = True
    ds.save()
    return ds, time.perf_counter() - start


# -- one pipeline run (own process) -------------------------------------------


def run_pipeline(cfg):
    """Runs compute_values for ``cfg``; returns the row (timings, RSS)."""
    _env()
    import fiftyone as fo  # noqa: F401

    import gmv_plugin as gmv

    ds = fo.load_dataset(dataset_name(cfg["source"], cfg["n_train"]))
    train, gen = ds.match_tags("train"), ds.match_tags("generated")
    key = "scale_%d_%d" % (cfg["repeat"], os.getpid())  # a new run: nothing reused
    kwargs = dict(k=K, index="auto", overwrite=True, progress=False)
    if cfg["source"] == "field":
        kwargs.update(model=None, embeddings_field="emb")
    else:
        kwargs.update(model="pixels")
    rss0 = _peak_rss_mb()
    start = time.perf_counter()
    results = gmv.compute_values(train, gen, key=key, **kwargs)
    total = time.perf_counter() - start
    timings = {k: float(v) for k, v in (results.timings or {}).items()}
    row = dict(cfg)
    row.update(
        n_generated=len(gen),
        total_s=total,
        stages=timings,
        pre_stage_s=max(0.0, total - sum(timings.values())),
        peak_rss_mb=_peak_rss_mb(),
        rss_before_mb=rss0,
        children_peak_rss_mb=_peak_rss_mb(resource.RUSAGE_CHILDREN),
        index_type=results.index_type,
        index_params=results.index_params,
        run_dir=getattr(results, "run_dir", None),
        copy_search=(getattr(results, "truth", None) or {}).get("copy_search"),
        key=key,
    )
    return row


# -- the bare reference (own process) -----------------------------------------


def _find_arrays(run_dir, n_train, n_gen):
    """The pipeline's training and generated embeddings in its run directory."""
    import numpy as np

    train = gen = None
    paths = sorted(pathlib.Path(run_dir).rglob("*.npy"), key=lambda p: ("train" not in p.name, p.name))
    for path in paths:
        try:
            arr = np.load(path, mmap_mode="r")
        except Exception:  # noqa: BLE001 - not an array file
            continue
        if arr.ndim == 2 and arr.dtype == np.float32:
            if arr.shape[0] == n_train and train is None and "gen" not in path.name:
                train = str(path)
            elif arr.shape[0] == n_gen and gen is None and "train" not in path.name:
                gen = str(path)
    return train, gen


def run_bare(row):
    """Bare numpy + FAISS on the pipeline's arrays: same index, params, k."""
    import numpy as np

    from gmv_plugin import index as gmvi

    import faiss

    train_path, gen_path = _find_arrays(row["run_dir"], row["n_train"], row["n_generated"])
    if train_path is None or gen_path is None:
        raise RuntimeError("embeddings not found in %s" % row["run_dir"])
    xb = np.load(train_path, mmap_mode="r")
    xq = np.load(gen_path)
    n, d = xb.shape
    itype, params = row["index_type"], dict(row["index_params"] or {})
    for path in pathlib.Path(row["run_dir"]).rglob("*.faiss"):  # calibrated nprobe/refine
        meta = gmvi.load_index(str(path)).meta
        if meta.get("n") == n and meta.get("params") is not None:
            itype, params = meta["index_type"], meta["params"]
    start = time.perf_counter()
    if itype == "flat":
        index = faiss.IndexFlatL2(d)
    else:
        index = faiss.index_factory(d, gmvi._factory(itype, d, params))
        rows = np.sort(np.random.default_rng(0).choice(n, size=min(n, params["train_size"]), replace=False))
        index.train(np.ascontiguousarray(xb[rows]))
        if params.get("nprobe"):
            faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
        if params.get("refine"):
            index = faiss.IndexRefineFlat(index)
            index.k_factor = float(params["refine"])
    for s in range(0, n, 100_000):
        index.add(np.ascontiguousarray(xb[s : s + 100_000]))
    t_build = time.perf_counter() - start
    t = time.perf_counter()
    dist, idx = index.search(xq, K)
    t_search = time.perf_counter() - t
    t = time.perf_counter()
    scores = np.exp(-np.sqrt(np.maximum(dist, 0)))
    scores /= scores.sum(1, keepdims=True)
    values = np.bincount(idx.ravel(), weights=scores.ravel(), minlength=n)
    t_values = time.perf_counter() - t
    bare = t_build + t_search + t_values
    del index
    flat_s = None
    if itype != "flat" and n * d * 4 <= 2**30:  # is auto's choice faster than exact search?
        t = time.perf_counter()
        flat = faiss.IndexFlatL2(d)
        for s in range(0, n, 100_000):
            flat.add(np.ascontiguousarray(xb[s : s + 100_000]))
        flat.search(xq, K)
        flat_s = time.perf_counter() - t
        del flat

    # recall@k of the pipeline's contributors against exact search (sample)
    import fiftyone as fo

    ds = fo.load_dataset(dataset_name(row["source"], row["n_train"]))
    gen = ds.match_tags("generated")
    train_ids = np.asarray(ds.match_tags("train").values("id"))
    pos = {sid: i for i, sid in enumerate(train_ids)}
    contributors = gen.values("%s_contributors" % row["key"])
    sample = np.sort(np.random.default_rng(1).choice(len(xq), size=min(RECALL_QUERIES, len(xq)), replace=False))
    approx = np.array([[pos[c] for c in contributors[i]] for i in sample])
    exact_d = exact_i = None
    q = xq[sample]
    for s in range(0, n, 100_000):
        dd, ii = faiss.knn(q, np.ascontiguousarray(xb[s : s + 100_000]), K)
        if exact_d is None:
            exact_d, exact_i = dd, ii + s
        else:
            dd = np.concatenate([exact_d, dd], 1)
            ii = np.concatenate([exact_i, ii + s], 1)
            o = np.argsort(dd, 1, kind="stable")[:, :K]
            exact_d, exact_i = np.take_along_axis(dd, o, 1), np.take_along_axis(ii, o, 1)
    recall = gmvi.recall_at_k(approx[:, :K], exact_i)
    del xb
    import gmv_plugin as gmv

    gmv.delete_run(ds, row["key"])  # fields and arrays; datasets stay cached
    return {
        "bare_s": bare,
        "bare_stages": {"build": t_build, "search": t_search, "values": t_values},
        "bare_peak_rss_mb": _peak_rss_mb(),
        "bare_flat_s": flat_s,
        "bare_index_s": t_build + t_search,
        "recall_at_k": recall,
        "dim": int(d),
        "bare_index_type": itype,
        "bare_index_params": params,
        "values_sum": float(values.sum()),
    }


def run_floor(row):
    """The database work no run from a field can avoid, done bare with
    pymongo (own process): read every training sample's id and vector once
    (raw aggregate, numpy decoding, GC paused) and write four numbers into
    each training document (insert into a scratch collection, one server-side
    ``$merge``), then index two of them as "Sort by" needs. The written fields
    are removed afterwards (not timed)."""
    _env()
    import gc
    import zlib

    import numpy as np
    import fiftyone as fo

    ds = fo.load_dataset(dataset_name(row["source"], row["n_train"]))
    coll = ds._sample_collection
    view = ds.match_tags("train")
    gc.disable()
    start = time.perf_counter()
    ids, out = [], []
    for doc in coll.aggregate(view._pipeline() + [{"$project": {"_id": 1, "emb": 1}}], batchSize=10_000):
        ids.append(doc["_id"])
        out.append(zlib.decompress(doc["emb"]))
    size = len(out[0])
    vecs = np.frombuffer(b"".join(out), np.uint8).reshape(len(out), size)[:, size - 4 * FIELD_DIM :]
    vecs = np.ascontiguousarray(vecs).view(np.float32)
    read_s = time.perf_counter() - start
    del out
    names = ["floor_value", "floor_hits", "floor_cleansing", "floor_copied_by"]
    cols = [np.random.default_rng(0).random(len(ids)).tolist(), [1] * len(ids), [0.5] * len(ids), [0] * len(ids)]
    scratch = coll.database["gmv_floor_scratch"]
    scratch.drop()
    start = time.perf_counter()
    for s in range(0, len(ids), 20_000):
        scratch.insert_many([dict(zip(names, vals), _id=oid) for oid, *vals in
                             zip(ids[s : s + 20_000], *(c[s : s + 20_000] for c in cols))], ordered=False)
    insert_s = time.perf_counter() - start
    scratch.aggregate([{"$merge": {"into": coll.name, "on": "_id", "whenMatched": "merge",
                                   "whenNotMatched": "discard"}}])
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    for name in names[:2]:
        coll.create_index(name)
    index_s = time.perf_counter() - start
    gc.enable()
    for name in names[:2]:
        coll.drop_index(name + "_1")
    coll.update_many({}, {"$unset": {n: "" for n in names}})
    scratch.drop()
    floor = read_s + write_s + index_s
    return {"floor_read_s": read_s, "floor_insert_s": insert_s, "floor_write_s": write_s,
            "floor_index_s": index_s, "floor_s": floor, "floor_rows": len(ids),
            "floor_vectors_checksum": float(vecs[:1000].sum()),
            "best_possible_ratio": (row["bare_s"] + floor) / row["bare_s"]}


def bare_decode(n_files, limit=20_000):
    """A plain single-process PIL loop (open, convert, resize, normalize) over
    up to ``limit`` of the training PNGs; seconds per image."""
    import numpy as np
    from PIL import Image

    from benchmarks.scale_data import png_paths

    paths = png_paths("train", min(n_files, limit))
    start = time.perf_counter()
    for p in paths:
        with Image.open(p) as img:
            v = np.asarray(img.convert("L").resize((32, 32), Image.BILINEAR), np.float32).ravel() / 255
            v /= np.linalg.norm(v) or 1.0
    return (time.perf_counter() - start) / len(paths)


# -- orchestration --------------------------------------------------------------


def _child(args):
    """Entry of the per-configuration processes."""
    cfg = json.loads(args.child)
    if args.what == "pipeline":
        row = run_pipeline(cfg)
    elif args.what == "bare":
        row = run_bare(cfg)
    elif args.what == "floor":
        row = run_floor(cfg)
    else:
        _env()
        import fiftyone  # noqa: F401

        ds, secs = ensure_dataset(cfg["source"], cfg["n_train"])
        row = {"created_s": secs, "peak_rss_mb": _peak_rss_mb()}
    print("ROW " + json.dumps(row), flush=True)


def _spawn(what, cfg, log):
    cmd = [sys.executable, "-m", "benchmarks.scale", "--child", json.dumps(cfg), "--what", what]
    proc = subprocess.run(cmd, cwd=str(ROOT), capture_output=True, text=True, env=os.environ.copy())
    log.write(proc.stdout[-4000:] + proc.stderr[-4000:])
    log.flush()
    rows = [ln[4:] for ln in proc.stdout.splitlines() if ln.startswith("ROW ")]
    if proc.returncode or not rows:
        raise RuntimeError("%s %s failed:\n%s" % (what, cfg, proc.stderr[-3000:]))
    return json.loads(rows[-1])


def _median(xs):
    xs = sorted(xs)
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else 0.5 * (xs[m - 1] + xs[m])


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--no-field", action="store_true", help="skip the 10^6 embeddings-field run")
    ap.add_argument("--keep", action="store_true",
                    help="keep the rows of other configurations already in --out")
    ap.add_argument("--repeats", type=int, default=None, help="repeats per size (default 3/2/1)")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--db", default="db", help="database folder under .cache/scale (one per process)")
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--combine", nargs="*", default=None,
                    help="merge the rows of these result files into --out")
    ap.add_argument("--child", default=None)
    ap.add_argument("--what", default=None)
    args = ap.parse_args(argv)
    if args.child:
        return _child(args)
    if args.calibrate:
        return calibrate()
    if args.combine:
        out = None
        for path in args.combine:
            with open(path) as f:
                part = json.load(f)
            if out is None:
                out = part
            else:
                out["rows"] += part["rows"]
                out["created"].update(part.get("created", {}))
                out["bare_decode_s_per_image"] = out.get("bare_decode_s_per_image") or part.get("bare_decode_s_per_image")
                out.setdefault("also", []).append({"date": part["date"], "machine": part["machine"]})
        _write(out, args.out)
        return 0

    sys.path.insert(0, str(ROOT / "tests"))
    from browser import private_mongod

    CACHE.mkdir(parents=True, exist_ok=True)
    # one runs folder per database: a run store sweeps folders of datasets its database lacks
    os.environ["GMV_RUNS_DIR"] = str(CACHE / ("runs" if args.db == "db" else "runs-" + args.db))
    _env()
    log = open(CACHE / "scale.log", "a")
    configs = [("images", n) for n in args.sizes]
    if not args.no_field:
        configs.append(("field", 1_000_000))
    print("configurations: %s" % configs, flush=True)
    out = {"machine": _machine(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "rows": [], "created": {}, "bare_decode_s_per_image": None}
    if args.keep and os.path.exists(args.out):
        with open(args.out) as f:
            old = json.load(f)
        rerun = set(configs)
        out["rows"] = [r for r in old["rows"] if (r["source"], r["n_train"]) not in rerun]
        out["superseded"] = old.get("superseded", []) + [
            dict(r, superseded_on=out["date"]) for r in old["rows"] if (r["source"], r["n_train"]) in rerun]
        out["also"] = old.get("also", []) + [{"date": old["date"], "machine": old["machine"]}]
        out["created"] = old.get("created", {})
        out["bare_decode_s_per_image"] = old.get("bare_decode_s_per_image")
    with private_mongod(CACHE / args.db) as uri:
        os.environ["FIFTYONE_DATABASE_URI"] = uri
        for source, n in configs:
            cfg = {"source": source, "n_train": n}
            t = time.perf_counter()
            created = _spawn("create", cfg, log)
            out["created"]["%s-%d" % (source, n)] = dict(created, wall_s=time.perf_counter() - t)
            print("dataset %s %d: created in %.1f s" % (source, n, created["created_s"]), flush=True)
        if args.sizes:
            out["bare_decode_s_per_image"] = bare_decode(max(args.sizes))
        for source, n in configs:
            repeats = args.repeats or (3 if n <= 10_000 else 2 if n <= 100_000 else 1)
            for r in range(repeats):
                cfg = {"source": source, "n_train": n, "repeat": r}
                row = _spawn("pipeline", cfg, log)
                row.update(_spawn("bare", row, log))
                row["ratio_vs_bare"] = row["total_s"] / row["bare_s"]
                if source == "field":  # what the database alone costs beside bare FAISS
                    row.update(_spawn("floor", row, log))
                if source == "images":
                    row["bare_decode_s"] = out["bare_decode_s_per_image"] * (n + N_GENERATED)
                out["rows"].append(row)
                print("%s n=%d r=%d: total %.1f s, bare %.1f s (x%.2f), %s, rss %.0f MB, recall %.3f, stages %s"
                      % (source, n, r, row["total_s"], row["bare_s"], row["ratio_vs_bare"],
                         row["index_type"], row["peak_rss_mb"], row["recall_at_k"],
                         {k: round(v, 1) for k, v in row["stages"].items()}), flush=True)
                _write(out, args.out)
    _write(out, args.out)
    return 0


def _machine():
    import faiss
    import numpy as np

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "faiss": faiss.__version__, "numpy": np.__version__,
            "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "loadavg_at_start": os.getloadavg()}


def summarize(rows):
    """Median row per (source, n_train)."""
    groups = {}
    for r in rows:
        groups.setdefault((r["source"], r["n_train"]), []).append(r)
    out = []
    for (source, n), rs in sorted(groups.items()):
        stages = sorted({s for r in rs for s in r["stages"]})
        out.append({
            "source": source, "n_train": n, "repeats": len(rs), "dim": rs[0]["dim"],
            "index_type": rs[0]["index_type"], "index_params": rs[0]["index_params"],
            "total_s": _median([r["total_s"] for r in rs]),
            "bare_s": _median([r["bare_s"] for r in rs]),
            "ratio_vs_bare": _median([r["ratio_vs_bare"] for r in rs]),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            "recall_at_k": min(r["recall_at_k"] for r in rs),
            "stages": {s: _median([r["stages"].get(s, 0.0) for r in rs]) for s in stages},
            "pre_stage_s": _median([r["pre_stage_s"] for r in rs]),
            "bare_decode_s": rs[0].get("bare_decode_s"),
            "bare_index_s": _median([r.get("bare_index_s") or 0.0 for r in rs]),
            "bare_flat_s": (_median([r["bare_flat_s"] for r in rs])
                            if all(r.get("bare_flat_s") for r in rs) else None),
            "children_peak_rss_mb": max(r.get("children_peak_rss_mb") or 0 for r in rs),
            "copy_search": rs[0].get("copy_search"),
        })
        for f in FLOOR_KEYS:
            if all(r.get(f) is not None for r in rs):
                out[-1][f] = _median([r[f] for r in rs])
    return out


def growth(summary, source="images"):
    """Per stage: exponent b of t ~ N^b between the two largest sizes."""
    import math

    rows = [s for s in summary if s["source"] == source]
    if len(rows) < 2:
        return {}
    a, b = rows[-2], rows[-1]
    law = {}
    for stage in list(b["stages"]) + ["total_s", "pre_stage_s"]:
        ta = a["stages"].get(stage) if stage in a["stages"] else a.get(stage)
        tb = b["stages"].get(stage) if stage in b["stages"] else b.get(stage)
        if ta and tb and ta > 0.05 and tb > 0.05:
            law[stage] = {"exponent": math.log(tb / ta) / math.log(b["n_train"] / a["n_train"]),
                          "at": b["n_train"], "seconds": tb}
    return law


def extrapolate(summary, law, sizes=(10**7, 10**8)):
    """Stage times at ``sizes`` from the measured growth laws, plus the index
    ``auto`` would pick there and its memory, and the embeddings' disk size."""
    from gmv_plugin import index as gmvi

    rows = [s for s in summary if s["source"] == "images"]
    if not rows or not law:
        return []
    last = rows[-1]
    out = []
    for n in sizes:
        stages = {}
        for stage, fit in law.items():
            stages[stage] = fit["seconds"] * (n / fit["at"]) ** fit["exponent"]
        plan = gmvi.plan_index(n, last["dim"], n_queries=N_GENERATED, k=K)
        out.append({
            "n_train": n, "stages": stages, "index_type": plan["index_type"],
            "index_memory_mb": plan["estimates"][plan["index_type"]]["memory_mb"],
            "embeddings_disk_gb": n * last["dim"] * 4 / 1e9,
            "png_disk_gb": n * 4096 / 1e9,
        })
    return out


def render(out):
    """The tables of SCALE.md (the prose around them is written by hand)."""
    lines = ["| source | N train | dim | index (auto) | total s | bare s | ratio | peak RSS MB | recall@%d | "
             "pre-stage s | embed | index | recall | values | repeats |" % K,
             "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in out["summary"]:
        st = r["stages"]
        lines.append("| %s | %s | %d | %s | %.1f | %.1f | %.2fx | %.0f | %.3f | %.1f | %.1f | %.1f | %.1f | %.1f | %d |" % (
            r["source"], "{:,}".format(r["n_train"]), r["dim"], r["index_type"], r["total_s"], r["bare_s"],
            r["ratio_vs_bare"], r["peak_rss_mb"], r["recall_at_k"], r["pre_stage_s"], st.get("embed", 0),
            st.get("index", 0), st.get("recall", 0), st.get("values", 0), r["repeats"]))
    lines.append("")
    floors = [r for r in out["summary"] if r.get("floor_s") is not None]
    if floors:
        lines.append("| source | N train | bare s | database floor s (read / write / index) | "
                     "bare + floor = best possible ratio | plugin ratio |")
        lines.append("| --- | ---: | ---: | --- | ---: | ---: |")
        for r in floors:
            lines.append("| %s | %s | %.1f | %.1f (%.1f / %.1f / %.1f) | %.2fx | %.2fx |" % (
                r["source"], "{:,}".format(r["n_train"]), r["bare_s"], r["floor_s"], r["floor_read_s"],
                r["floor_write_s"], r["floor_index_s"], r["best_possible_ratio"], r["ratio_vs_bare"]))
        lines.append("")
    if out.get("growth"):
        lines.append("| stage | t ~ N^b, b (10^5 -> 10^6) | seconds at 10^6 |")
        lines.append("| --- | ---: | ---: |")
        for stage, fit in out["growth"].items():
            lines.append("| %s | %.2f | %.1f |" % (stage, fit["exponent"], fit["seconds"]))
        lines.append("")
    if out.get("extrapolated"):
        lines.append("| N train | predicted total s | embed s | index s | recall s | values s | auto index | index MB | embeddings on disk GB | PNGs GB |")
        lines.append("| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
        for e in out["extrapolated"]:
            st = e["stages"]
            lines.append("| %s | %.0f | %.0f | %.0f | %.0f | %.0f | %s | %.0f | %.0f | %.0f |" % (
                "{:,}".format(e["n_train"]), st.get("total_s", 0), st.get("embed", 0), st.get("index", 0),
                st.get("recall", 0), st.get("values", 0), e["index_type"], e["index_memory_mb"],
                e["embeddings_disk_gb"], e["png_disk_gb"]))
    return "\n".join(lines) + "\n"


def _write(out, path):
    out["summary"] = summarize(out["rows"])
    out["growth"] = growth(out["summary"])
    out["extrapolated"] = extrapolate(out["summary"], out["growth"])
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1, default=str)
    with open(pathlib.Path(path).with_suffix(".tables.md"), "w") as f:
        f.write(render(out))


def calibrate():
    """Measures the constants of gmv_plugin.index's cost model on this machine."""
    import numpy as np

    import faiss

    from gmv_plugin import index as gmvi

    rng = np.random.default_rng(0)

    def timed(fn):
        ts = []
        for _ in range(3):
            s = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - s)
        return _median(ts)

    gmvi._set_threads()
    n, m, d, nlist = 50_000, 2_000, 128, 256
    x = rng.standard_normal((n, d), dtype=np.float32)
    q = rng.standard_normal((m, d), dtype=np.float32)
    flat = faiss.IndexFlatL2(d)
    flat.add(x)
    out = {"C_GEMM": timed(lambda: flat.search(q, K)) / (m * n * d)}
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
    ivf.train(x[: 39 * nlist])
    ivf.add(x)
    ivf.nprobe = 16
    out["C_SCAN"] = timed(lambda: ivf.search(q, K)) / (m * n * 16 / nlist * d)
    pq = faiss.IndexPQ(d, 16, 8)
    s = time.perf_counter()
    pq.train(x[:9984])
    out["C_PQ_TRAIN"] = (time.perf_counter() - s) / (9984 * 256 * d * gmvi.PQ_ITERS)
    pq.add(x)
    out["C_PQ_SCAN"] = timed(lambda: pq.search(q[:500], K)) / (500 * n * 16)
    for key, v in out.items():
        print("%s = %.3g  (module: %.3g)" % (key, v, getattr(gmvi, key)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
