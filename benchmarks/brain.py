"""Recall through FiftyOne Brain similarity indexes (index="brain") vs flat.

Run from the repository root::

    .venv/bin/python -m benchmarks.brain                 # writes benchmarks/results/brain.json
    .venv/bin/python -m benchmarks.brain --quick         # small smoke run, prints only

For each data set (real MNIST pixels at 10^4, clustered synthetic unit vectors
at 10^5) and each engine that runs here (the Brain's sklearn backend, LanceDB,
PostgreSQL + pgvector HNSW and IVFFlat, Milvus Lite), a Brain index is built
over the training vectors with ``fob.compute_similarity`` and the queries are
recalled through :class:`gmv_plugin.brain.BrainRecall`. Beside it, in the same
run on the same arrays: exact search with a bare FAISS ``IndexFlatL2`` (the
reference, = index="flat"), and for the batched engines the Brain's own
one-request-per-query ``_kneighbors`` on a few hundred queries. Approximate
engines are also measured at larger search breadths (``sweeps``) on the same
built index. Times are medians of repeats; recall@k is the share of flat's
top-k found.
"""

import argparse
import atexit
import datetime
import json
import os
import pathlib
import platform
import shutil
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / ".cache"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.run import _setup_env  # noqa: E402

K = 50
ONLY_ENGINES = None


def _median_time(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), out


def mnist_vectors(n_train, n_query):
    """Unit-norm 28x28 grayscale pixels of real MNIST digits (784-d)."""
    from tests.gmv_testdata import load_digit_images

    x, _ = load_digit_images(n_train + n_query)
    v = x.reshape(len(x), -1).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v[:n_train], v[n_train:]


def clustered_vectors(n_train, n_query, d=256, clusters=1000, seed=0):
    """Unit vectors around random centres: neighbour structure like image
    embeddings, unlike uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    lab = rng.integers(0, clusters, n_train + n_query)
    v = centres[lab] + 0.35 * rng.standard_normal((n_train + n_query, d)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v[:n_train], v[n_train:]


def _set_config(name, value):
    def apply(recall):
        setattr(recall.index.config, name, value)
    return apply


def _set_ef(value):
    def apply(recall):
        recall.searcher.ef = value
    return apply


SWEEPS = {
    # search-time settings tried on the same built index, beside the defaults
    "pgvector-hnsw": {"hnsw_ef_search=50 (k)": _set_config("hnsw_ef_search", 50),
                      "hnsw_ef_search=200": _set_config("hnsw_ef_search", 200)},
    "pgvector-ivfflat": {"ivfflat_probes=lists/2": lambda r: setattr(
        r.index.config, "ivfflat_probes", max(1, (r.index._get_index_lists() or 2) // 2))},
    "milvus-lite": {"ef=100 (2k)": _set_ef(100), "ef=400": _set_ef(400)},
}


def engines(tmp):
    """(name, backend, compute_similarity kwargs, brain config override)."""
    import importlib.util

    tmp.mkdir(parents=True, exist_ok=True)
    out = [("sklearn", "sklearn", {}, None)]
    if importlib.util.find_spec("lancedb"):
        out.append(("lancedb", "lancedb", {}, ("lancedb", {"uri": str(tmp / "lancedb")})))
    if importlib.util.find_spec("pgserver") and importlib.util.find_spec("psycopg2"):
        import pgserver

        srv = pgserver.get_server(str(tmp / "pg"), cleanup_mode="delete")
        cs = {"connection_string": srv.get_uri(), "maintenance_work_mem": "512MB"}
        out.append(("pgvector-hnsw", "pgvector", {"index_type": "hnsw"}, ("pgvector", cs)))
        out.append(("pgvector-ivfflat", "pgvector", {"index_type": "ivfflat"}, ("pgvector", cs)))
    if importlib.util.find_spec("pymilvus") and importlib.util.find_spec("milvus_lite"):
        out.append(("milvus-lite", "milvus", {}, ("milvus", {"uri": str(tmp / "milvus.db")})))
    return out


def run_set(name, train, queries, tmp, repeats, per_query_n):
    import faiss
    import fiftyone as fo
    import fiftyone.brain as fob

    from gmv_plugin import brain as gmvb
    from gmv_plugin import index as gmvi

    n, d = train.shape
    ds = fo.Dataset()
    t = time.perf_counter()
    ds.add_samples([fo.Sample(filepath="/nonexistent/%d.png" % i) for i in range(n)], progress=False)
    ids = np.array(ds.values("id"))
    print("[%s] %d samples added in %.1fs" % (name, n, time.perf_counter() - t), flush=True)

    def flat():
        index = faiss.IndexFlatL2(d)
        index.add(train)
        dd, ii = index.search(queries, K)
        return np.sqrt(np.maximum(dd, 0)), ii

    t_flat, (f_d, f_i) = _median_time(flat, repeats)
    res = {"n_train": n, "n_queries": len(queries), "dim": d, "k": K,
           "flat_faiss_seconds": t_flat, "engines": {}}
    print("[%s] flat FAISS: %.3fs" % (name, t_flat), flush=True)
    for ename, backend, kwargs, override in engines(tmp / name):
        if ONLY_ENGINES and ename not in ONLY_ENGINES:
            continue
        if override:
            fob.brain_config.similarity_backends.setdefault(override[0], {}).update(override[1])
        key = ename.replace("-", "_")
        row = {"backend": backend, "params": kwargs}
        try:
            t = time.perf_counter()
            fob.compute_similarity(ds, embeddings=train, brain_key=key, backend=backend,
                                   metric="cosine", progress=False, **kwargs)
            row["build_seconds"] = time.perf_counter() - t
            recall = gmvb.BrainRecall(ds, key, ids)
            t_r, (dists, idx) = _median_time(lambda: recall.search(queries, K), repeats)
            row["recall_seconds"] = t_r
            row["queries_per_second"] = len(queries) / t_r
            row["recall_at_k"] = gmvi.recall_at_k(idx, f_i)
            row["identical_sets"] = float(np.mean([set(a) == set(b) for a, b in zip(idx, f_i)]))
            common = np.isin(idx[:, :1], f_i[:, :1]).ravel()  # same nearest neighbour
            row["max_nn_distance_error"] = float(np.max(np.abs(dists[common, 0] - f_d[common, 0]), initial=0.0))
            row["ratio_to_flat_faiss"] = t_r / t_flat
            if backend != "sklearn" and per_query_n:
                idx_obj = ds.load_brain_results(key, cache=False)
                qq = queries[:per_query_n]
                t = time.perf_counter()
                for q in qq:
                    idx_obj._kneighbors(query=q, k=K)
                row["brain_per_query_seconds_each"] = (time.perf_counter() - t) / len(qq)
                row["batched_seconds_each"] = t_r / len(queries)
            for label, apply in SWEEPS.get(ename, {}).items():
                apply(recall)
                t_s, (_, s_idx) = _median_time(lambda: recall.search(queries, K), repeats)
                row.setdefault("sweeps", {})[label] = {
                    "recall_seconds": t_s, "recall_at_k": gmvi.recall_at_k(s_idx, f_i),
                    "identical_sets": float(np.mean([set(a) == set(b) for a, b in zip(s_idx, f_i)])),
                }
            print("[%s] %s: %s" % (name, ename, json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})), flush=True)
        except Exception as e:  # an engine failing is a result, not the end of the run
            row["error"] = "%s: %s" % (type(e).__name__, e)
            print("[%s] %s failed: %s" % (name, ename, row["error"]), flush=True)
        finally:
            try:
                ds.delete_brain_run(key)
            except Exception:
                pass
        res["engines"][ename] = row
    ds.delete()
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(HERE / "results" / "brain.json"))
    p.add_argument("--sets", nargs="*", help="only these data sets (merged into --out)")
    p.add_argument("--engines", nargs="*", help="only these engines (merged into --out)")
    args = p.parse_args(argv)
    CACHE.mkdir(exist_ok=True)
    _setup_env(CACHE)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="gmv-brain-bench-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # engines' files
    if args.quick:
        sets = [("mnist", *mnist_vectors(2000, 200))]
        repeats, per_query = 1, 20
    else:
        sets = [("mnist-1e4", *mnist_vectors(9000, 1000)),
                ("clustered-1e5", *clustered_vectors(100_000, 2000))]
        repeats, per_query = 3, 200
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
           "sets": {}}
    global ONLY_ENGINES
    ONLY_ENGINES = args.engines
    partial = bool(args.sets or args.engines)
    if partial:  # re-measure some rows of an existing result file
        merged = json.loads(pathlib.Path(args.out).read_text())
        merged.setdefault("partial_reruns", []).append(
            {"date": out["date"], "sets": args.sets, "engines": args.engines})
    for name, train, queries in sets:
        if args.sets and name not in args.sets:
            continue
        res = run_set(name, train, queries, tmp, repeats, per_query)
        if partial:
            merged["sets"][name]["engines"].update(res["engines"])
            merged["sets"][name]["flat_faiss_seconds_rerun"] = res["flat_faiss_seconds"]
    if partial:
        out = merged
    text = json.dumps(out, indent=1)
    if args.quick:
        print(text)
    else:
        pathlib.Path(args.out).write_text(text + "\n")
        print("wrote", args.out)


if __name__ == "__main__":
    main()
