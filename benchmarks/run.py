"""GMValuator benchmark on MNIST (issue 4): C1-C4, membership, PQ recall, baselines.

Run from the repository root::

    .venv/bin/python -m benchmarks.run            # full run, writes benchmarks/results/
    .venv/bin/python -m benchmarks.run --quick    # smoke run (small), writes .cache/results-quick/

Everything expensive is cached in ``benchmarks/.cache/`` (generator and classifier
checkpoints keyed by a fingerprint of their data and settings, PNGs, a private
FiftyOne database and the runs' intermediate arrays), so a second run reuses the
trained generators. See ``benchmarks/README.md`` for the protocol.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / ".cache"


def _start_mongod(dbpath):
    """A private mongod (FiftyOne's binary) on a free local port; returns its URI.

    FiftyOne's embedded database service attaches to any service already running
    on the machine, so a private database is reached by URI instead.
    """
    import atexit
    import ctypes
    import importlib.util
    import shutil
    import socket
    import subprocess

    spec = importlib.util.find_spec("fiftyone")
    mongod = os.path.join(spec.submodule_search_locations[0], "db", "bin", "mongod")
    shutil.rmtree(dbpath, ignore_errors=True)
    dbpath.mkdir(parents=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    def die_with_parent():  # SIGTERM the server if this process dies
        try:
            ctypes.CDLL("libc.so.6").prctl(1, 15)
        except OSError:
            pass

    proc = subprocess.Popen(
        [mongod, "--dbpath", str(dbpath), "--port", str(port), "--bind_ip", "127.0.0.1",
         "--nounixsocket", "--logpath", str(dbpath / "mongod.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )

    def stop():
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(dbpath, ignore_errors=True)

    atexit.register(stop)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"mongod exited with {proc.returncode}; see {dbpath}/mongod.log")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return f"mongodb://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"mongod did not start; see {dbpath}/mongod.log")
            time.sleep(0.2)


def _setup_env(cache):
    """A private FiftyOne database and run caches; must run before fiftyone is imported."""
    if "fiftyone" in sys.modules:
        raise RuntimeError("benchmarks.run must set up its database before fiftyone is imported")
    if not os.environ.get("FIFTYONE_DATABASE_URI"):
        os.environ["FIFTYONE_DATABASE_URI"] = _start_mongod(cache / "mongod" / str(os.getpid()))
    os.environ.setdefault("GMV_RUNS_DIR", str(cache / "runs"))
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    os.environ.setdefault("FIFTYONE_SHOW_PROGRESS_BARS", "false")
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

SEED = 0
KS = (30, 50, 100)
K = 100  # contributors stored per generated image (the largest k of C1)
NOISE_SIGMA = 0.5  # Gaussian noise std on the [0, 1] pixel scale, clipped (C3)
MEMBER_CLASS = 0  # half of this class is held out of the generators' training set
HELD_OUT = 0.1  # 9,000 / 1,000 split of the 10,000 MNIST images

SETTINGS = {
    "full": dict(
        n_train=None,  # all 9,000
        n_generated=10_000,
        n_noisy=100,
        epochs={"cvae": 30, "cgan": 30},
        classifier_epochs=5,
        brain_public_queries=200,
    ),
    "quick": dict(
        n_train=1500,
        n_generated=600,
        n_noisy=20,
        epochs={"cvae": 5, "cgan": 3},
        classifier_epochs=3,
        brain_public_queries=20,
    ),
}

# GMValuator configurations: name -> compute_values kwargs (k, model added later).
# Each embeds from the PNGs itself, so every C4 total is end to end.
CONFIGS = [
    ("no_rerank", dict(index="flat", rerank="none", quality="none", temperature=1.0)),
    ("l2", dict(index="flat", rerank="l2", quality="none", temperature=1.0)),
    ("l2_realism", dict(index="flat", rerank="l2", quality="realism", temperature=1.0)),
    # tau = 1 (the paper) on RMS pixel distances in [0, 1] spreads credit almost
    # uniformly over the k contributors; tau = 0.01 concentrates it on the nearest,
    # "auto" is the library's scale-free choice (median spread of the distances)
    ("l2_sharp", dict(index="flat", rerank="l2", quality="none", temperature=0.01)),
    ("l2_auto", dict(index="flat", rerank="l2", quality="none", temperature="auto")),
    ("no_rerank_realism", dict(index="flat", rerank="none", quality="realism", temperature=1.0)),
    ("pq", dict(index="pq", rerank="none", quality="none", temperature=1.0)),
    ("ivfpq", dict(index="ivfpq", rerank="none", quality="none", temperature=1.0)),
    ("lpips", dict(index="flat", rerank="lpips", quality="none", temperature=1.0)),
    ("dreamsim", dict(index="flat", rerank="dreamsim", quality="none", temperature=1.0)),
]
HEADLINE = "l2_realism"  # targets are judged on this one (best weight-free pipeline)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------
# data


def prepare_data(s):
    """Splits, noisy images and membership groups (all seeded)."""
    from gmv_plugin.demo.data import load_mnist, stratified_split

    x, y = load_mnist()
    train_idx, held_idx = stratified_split(y, HELD_OUT, seed=SEED)
    if s["n_train"]:
        _, keep = stratified_split(y[train_idx], s["n_train"] / len(train_idx), seed=SEED)
        train_idx = train_idx[keep]
    rng = np.random.default_rng(SEED)

    # C3: noisy copies of held-out digits, added to the training set
    noisy_src = np.sort(rng.choice(held_idx, s["n_noisy"], replace=False))
    noise = rng.normal(0.0, NOISE_SIGMA, size=x[noisy_src].shape)
    x_noisy = np.clip(x[noisy_src] / 255.0 + noise, 0, 1)
    x_noisy = (x_noisy * 255).round().astype(np.uint8)

    # membership: half of MEMBER_CLASS's training images are kept from the generators
    cls = train_idx[y[train_idx] == MEMBER_CLASS]
    non_members = np.sort(rng.choice(cls, len(cls) // 2, replace=False))
    is_non_member = np.isin(train_idx, non_members)

    # the valued training set: clean training images + noisy ones
    x_val = np.concatenate([x[train_idx], x_noisy])
    y_val = np.concatenate([y[train_idx], y[noisy_src]])
    noisy = np.r_[np.zeros(len(train_idx), bool), np.ones(len(noisy_src), bool)]
    non_member = np.r_[is_non_member, np.zeros(len(noisy_src), bool)]
    member = (y_val == MEMBER_CLASS) & ~non_member & ~noisy
    used = ~non_member  # what the generators train on

    eval_idx = np.setdiff1d(held_idx, noisy_src)  # classifier test digits
    return dict(
        x=x, y=y, train_idx=train_idx, held_idx=held_idx,
        x_val=x_val, y_val=y_val, noisy=noisy, member=member, non_member=non_member,
        used=used, eval_idx=eval_idx,
    )


def ceiling(x, y, train_idx, query_idx, ks=KS):
    """C1 of exact kNN in pixel space with real held-out digits as 'perfect generations'."""
    X = x[train_idx].reshape(len(train_idx), -1).astype(np.float32) / 255
    Q = x[query_idx].reshape(len(query_idx), -1).astype(np.float32) / 255
    out = {}
    d2 = (Q**2).sum(1)[:, None] - 2 * Q @ X.T + (X**2).sum(1)[None]
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    for name, dist in (("l2", d2), ("cosine", -(Qn @ Xn.T))):
        order = np.argsort(dist, axis=1, kind="stable")[:, : max(ks)]
        match = y[train_idx][order] == y[query_idx][:, None]
        out[name] = {k: float(match[:, :k].mean()) for k in ks}
    return out


# --------------------------------------------------------------------------
# models


def train_models(d, s, models_dir):
    """Classifier and generators, from checkpoints when their fingerprint matches."""
    import torch
    from gmv_plugin.demo import generators as g

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    out = {}
    x, y = d["x"], d["y"]
    tr = d["train_idx"]
    ep = s["classifier_epochs"]
    fp = g.fingerprint(x[tr], y[tr], kind="classifier", epochs=ep, seed=SEED)
    t0 = time.time()
    clf = g.cached(
        g.cache_path("classifier", models_dir),
        lambda: g.train_classifier(x[tr], y[tr], epochs=ep, seed=SEED, val_fraction=0),
        fp,
    )
    acc = float((g.classify(clf, x[d["eval_idx"]]) == y[d["eval_idx"]]).mean())
    out["classifier"] = dict(
        model=clf, accuracy=acc, n_test=int(len(d["eval_idx"])), epochs=ep,
        cached=bool(clf.meta.get("cached")), train_seconds=clf.meta.get("train_seconds"),
        wall_seconds=time.time() - t0,
    )
    log(f"classifier: accuracy {acc:.4f} on {len(d['eval_idx'])} held-out digits "
        f"({'cached' if clf.meta.get('cached') else 'trained'})")

    xg, yg = d["x_val"][d["used"]], d["y_val"][d["used"]]
    trainers = {"cvae": g.train_cvae, "cgan": g.train_cgan}
    for fam, fn in trainers.items():
        ep = s["epochs"][fam]
        fp = g.fingerprint(xg, yg, kind=fam, epochs=ep, seed=SEED)
        t0 = time.time()
        log(f"{fam}: loading or training ({ep} epochs on {len(xg)} images)")
        model = g.cached(
            g.cache_path(fam, models_dir),
            lambda fn=fn, ep=ep: fn(xg, yg, epochs=ep, seed=SEED, progress=True),
            fp,
        )
        out[fam] = dict(
            model=model, epochs=ep, n_train=int(len(xg)),
            cached=bool(model.meta.get("cached")),
            train_seconds=model.meta.get("train_seconds"), wall_seconds=time.time() - t0,
        )
        log(f"{fam}: {'cached' if model.meta.get('cached') else 'trained'} "
            f"(training took {model.meta.get('train_seconds')} s)")
    return out


def generate_sets(models, s):
    from gmv_plugin.demo import generators as g

    sets = {}
    clf = models["classifier"]["model"]
    for fam in ("cvae", "cgan"):
        t0 = time.time()
        images, cond = g.generate(models[fam]["model"], s["n_generated"], seed=SEED + 1)
        pred = g.classify(clf, images)
        sets[fam] = dict(images=images, conditions=cond, predicted=pred)
        models[fam]["agreement"] = float((pred == cond).mean())
        models[fam]["generate_seconds"] = time.time() - t0
        log(f"{fam}: {len(images)} generated, classifier agrees with the condition on "
            f"{100 * models[fam]['agreement']:.1f}%")
    return sets


# --------------------------------------------------------------------------
# datasets and runs


def build_dataset(fam, d, gen, images_dir, quick):
    from gmv_plugin.demo.data import make_dataset

    t0 = time.time()
    name = f"gmv-bench{'-quick' if quick else ''}-{fam}"
    ds = make_dataset(
        name, images_dir / fam,
        train=(d["x_val"], d["y_val"]),
        generated=(gen["images"], gen["predicted"], gen["conditions"]),
        train_fields={
            "noisy": d["noisy"].tolist(),
            "member": d["member"].tolist(),
            "non_member": d["non_member"].tolist(),
        },
        overwrite=True,
    )
    log(f"{fam}: dataset {name!r} with {len(ds)} samples ({time.time() - t0:.1f} s)")
    return ds


def _agreeing(ds):
    """Training samples plus the generated ones the classifier labels as their condition."""
    from fiftyone import ViewField as F

    return ds.match(~F("condition").exists() | (F("ground_truth.label") == F("condition.label")))


def evaluate_key(ds, key, with_c4=True):
    """All criteria of one valuation (run or baseline) as a dict."""
    from gmv_plugin import evaluation as ev

    out = {
        "C1": ev.identical_class(ds, key, "ground_truth", ks=KS)["identical_class"],
        "C1_condition": ev.identical_class(
            ds, key, "condition", ks=KS, train_label_field="ground_truth"
        )["identical_class"],
        # diagnostic: only generated images whose classifier label equals their condition
        "C1_agreeing": ev.identical_class(_agreeing(ds), key, "ground_truth", ks=KS)["identical_class"],
        "C3": ev.cleansing(ds, key, "noisy"),
        "membership": ev.membership(ds, key, "member", "non_member"),
    }
    if with_c4:
        out["C4"] = ev.efficiency(ds, key)
    return out


def run_configs(ds, fam, embedder):
    import gmv_plugin as gmv

    train = ds.match_tags("train")
    gen = ds.match_tags("generated")
    runs = {}
    for name, cfg in CONFIGS:
        cfg = dict(cfg)
        kwargs = dict(key=name, model=embedder, k=K, overwrite=True, progress=False, **cfg)
        if cfg["rerank"] == "l2":
            kwargs["rerank_params"] = {"size": 28, "mode": "L"}
        t0 = time.time()
        try:
            res = gmv.compute_values(train, gen, **kwargs)
        except gmv.MissingWeightsError as e:
            runs[name] = {"status": "not run: no weights", "reason": str(e).splitlines()[0],
                          "params": _params(cfg)}
            log(f"{fam}/{name}: not run: no weights")
            continue
        wall = time.time() - t0
        out = evaluate_key(ds, name)
        out.update(status="ok", params=_params(cfg), wall_seconds=wall)
        out["index_params"] = _resolved_index_params(res)
        if cfg["quality"] != "none":
            q = np.array([v for v in gen.values(f"{name}_quality") if v is not None], float)
            out["quality_scores"] = dict(mean=float(q.mean()), min=float(q.min()),
                                         share_below_1=float((q < 1).mean()))
        runs[name] = out
        log(f"{fam}/{name}: C1@30 {100 * out['C1'][30]:.2f}%  C3 AUC {out['C3']['auc']:.4f}  "
            f"membership t={_f(out['membership']['t'])} p={_f(out['membership']['p'])}  "
            f"{out['C4']['total_s']:.1f} s ({out['C4']['per_generated_ms']:.2f} ms/gen)")
    return runs


def _params(cfg):
    return dict(cfg)


def _resolved_index_params(res):
    for attr in ("index_params", "resolved_index_params"):
        v = getattr(res, attr, None)
        if isinstance(v, dict) and v:
            return {k: (int(x) if isinstance(x, (np.integer,)) else x) for k, x in v.items()}
    return None


def _f(x, fmt="{:.3g}"):
    return "n/a" if x is None else fmt.format(x)


def pq_recall(ds, runs):
    """recall@K of the pq / ivfpq contributors against the flat (exact) ones."""
    from gmv_plugin.index import recall_at_k

    gen = ds.match_tags("generated")
    exact = np.array(gen.values("no_rerank_contributors"), dtype=object)
    out = {}
    for name in ("pq", "ivfpq"):
        if runs.get(name, {}).get("status") != "ok":
            continue
        approx = np.array(gen.values(f"{name}_contributors"), dtype=object)
        out[name] = {
            "recall_at_k": recall_at_k(np.array(approx.tolist()), np.array(exact.tolist())),
            "k": K,
            "C1": runs[name]["C1"],
            "C1_flat": runs["no_rerank"]["C1"],
            "index_params": runs[name].get("index_params"),
        }
        log(f"{name}: recall@{K} {out[name]['recall_at_k']:.4f} vs flat")
    return out


def _hits(train_ids, contributors):
    pos = {i: n for n, i in enumerate(train_ids)}
    hits = np.zeros(len(train_ids), np.int64)
    for row in contributors:
        for i in row:
            hits[pos[i]] += 1
    return hits


def random_baseline(ds):
    """k random distinct training images per generated image; values = hit counts."""
    train = ds.match_tags("train")
    gen = ds.match_tags("generated")
    rng = np.random.default_rng(SEED)
    train_ids = np.array(train.values("id"))
    contribs = [train_ids[rng.choice(len(train_ids), K, replace=False)].tolist()
                for _ in range(len(gen))]
    gen.set_values("random_contributors", contribs)
    train.set_values("random_value", _hits(train_ids.tolist(), contribs).astype(float).tolist())
    out = evaluate_key(ds, "random", with_c4=False)
    log(f"random: C1@30 {100 * out['C1'][30]:.2f}%  C3 AUC {out['C3']['auc']:.4f}")
    return out


def embed_field(ds, embedder, field="emb", batch=1000):
    """Stores ``embedder``'s vectors of every sample in ``field`` (bulk write)."""
    from PIL import Image

    ids, paths = ds.values("id"), ds.values("filepath")
    vecs = []
    for b in range(0, len(paths), batch):
        imgs = [np.asarray(Image.open(p)) for p in paths[b : b + batch]]
        vecs.extend(embedder.embed_all(imgs).astype(np.float32))
    ds.set_values(field, dict(zip(ids, vecs)), key_field="id")


def brain_baselines(ds, embedder, n_public):
    """FiftyOne Brain similarity on the same embeddings; values = hit counts.

    ``brain``: what a user gets, ``compute_similarity`` with its default (cosine)
    metric, queried with the generated images' vectors. The sklearn backend centres
    (and, for cosine, normalizes) the indexed vectors but not query vectors, so
    these neighbours are not the exact cosine neighbours. ``brain_centered``:
    euclidean metric with queries centred like the index, which makes them exact
    (the same lists as GMValuator's flat index), so only the credit rule differs.
    """
    train = ds.match_tags("train")
    gen = ds.match_tags("generated")
    t0 = time.time()
    embed_field(ds, embedder)
    t_embed = time.time() - t0
    # arrays, not the field name: with a field name the sklearn backend indexes
    # every sample of the dataset that has the field, generated ones included
    train_emb = np.asarray(train.values("emb"), dtype=np.float32)
    queries = np.asarray(gen.values("emb"), dtype=np.float32)
    out = {}
    for key, metric, q in (
        ("brain", None, queries),
        ("brain_centered", "euclidean", queries - train_emb.mean(axis=0, keepdims=True)),
    ):
        out[key] = _brain_run(ds, key, metric, train_emb, q, t_embed, n_public)
    return out


def _brain_run(ds, key, metric, train_emb, queries, t_embed, n_public):
    import fiftyone.brain as fob

    train = ds.match_tags("train")
    gen = ds.match_tags("generated")
    t0 = time.time()
    kwargs = {"metric": metric} if metric else {}
    index = fob.compute_similarity(  # the backend centres its copy in place: pass a copy
        train, embeddings=train_emb.copy(), backend="sklearn", brain_key=f"{key}_sim",
        progress=False, **kwargs,
    )
    t_index = time.time() - t0
    t0 = time.time()
    # the batched form of index.sort_by_similarity(query, k=K), one row per query
    ids, _ = index._kneighbors(query=queries, k=K)
    t_query = time.time() - t0
    t0 = time.time()
    gen.set_values(f"{key}_contributors", ids)
    train_ids = train.values("id")
    train.set_values(f"{key}_value", _hits(train_ids, ids).astype(float).tolist())
    t_values = time.time() - t0

    # the public, one-query-at-a-time route, timed on a few queries (and checked equal)
    n = min(n_public, len(queries))
    t0 = time.time()
    same = sum(index.sort_by_similarity(queries[i], k=K).values("id") == ids[i] for i in range(n))
    t_public = (time.time() - t0) / max(1, n)

    exact = np.array(gen.values("no_rerank_contributors"), dtype=object)
    from gmv_plugin.index import recall_at_k

    out = evaluate_key(ds, key, with_c4=False)
    out["recall_vs_exact"] = recall_at_k(np.array(ids), np.array(exact.tolist()))
    total = t_embed + t_index + t_query + t_values
    out["C4"] = {
        "stages": {"embed": t_embed, "index": t_index, "recall": t_query, "values": t_values},
        "total_s": total,
        "per_generated_ms": total / len(gen) * 1000,
        "embeddings": "same embedder, stored in the 'emb' field with set_values",
        "public_sort_by_similarity_ms_per_query": t_public * 1000,
        "public_route_equal_results": f"{same}/{n}",
        "metric": index.config.metric,
    }
    log(f"{key}: C1@30 {100 * out['C1'][30]:.2f}%  C3 AUC {out['C3']['auc']:.4f}  "
        f"recall vs exact {out['recall_vs_exact']:.4f}  {total:.1f} s; "
        f"sort_by_similarity {t_public * 1000:.0f} ms/query")
    return out


def membership_control(d, images_dir, embedder, quick):
    """A 'copying generator': members of the class plus light noise. Checks whether the
    membership test detects membership where the generated images do come from members."""
    import gmv_plugin as gmv
    from gmv_plugin import evaluation as ev

    rng = np.random.default_rng(SEED + 2)
    members = np.flatnonzero(d["member"])
    n = min(1000, 4 * len(members))
    src = rng.choice(members, n, replace=True)
    noisy = np.clip(d["x_val"][src] / 255.0 + rng.normal(0, 0.1, d["x_val"][src].shape), 0, 1)
    images = (noisy * 255).round().astype(np.uint8)
    labels = d["y_val"][src]
    ds = build_dataset("copycat", d, dict(images=images, predicted=labels, conditions=labels),
                       images_dir, quick)
    out = dict(n_generated=int(n), noise_sigma=0.1, runs={})
    for name, cfg in CONFIGS:
        if name not in (HEADLINE, "l2_sharp", "l2_auto"):
            continue
        kwargs = dict(cfg, key=name, model=embedder, k=K, overwrite=True, progress=False)
        if cfg["rerank"] == "l2":
            kwargs["rerank_params"] = {"size": 28, "mode": "L"}
        gmv.compute_values(ds.match_tags("train"), ds.match_tags("generated"), **kwargs)
        m = ev.membership(ds, name, "member", "non_member")
        out["runs"][name] = m
        log(f"membership control ({n} noisy copies of members, {name}): t={_f(m['t'])} "
            f"p={_f(m['p'])} AUC={_f(m['auc'])}")
    return out


# --------------------------------------------------------------------------
# targets and machine


def targets(res):
    """The issue's targets, each with the measured value and whether it is met."""
    rows = []
    ceil30 = max(res["ceiling"]["l2"][30], res["ceiling"]["cosine"][30])
    best = None
    for fam, g in res["generators"].items():
        for name, r in g["runs"].items():
            if r.get("status") == "ok" and (best is None or r["C1"][30] > best[2]):
                best = (fam, name, r["C1"][30])
    if best:
        rows.append(dict(
            target="C1@30 within 3 points of the ceiling (best generator and config)",
            value=f"{100 * best[2]:.2f}% ({best[0]}, {best[1]}); ceiling {100 * ceil30:.2f}%",
            met=bool(best[2] >= ceil30 - 0.03),
        ))
    for fam, g in res["generators"].items():
        for name, p in g.get("pq", {}).items():
            rows.append(dict(target=f"{fam}: {name} recall@{p['k']} >= 0.95 vs flat (defaults)",
                             value=f"{p['recall_at_k']:.4f}", met=bool(p["recall_at_k"] >= 0.95)))
        h = g["runs"].get(HEADLINE, {})
        if h.get("status") == "ok":
            c3 = h["C3"]
            rows.append(dict(
                target=f"{fam}: C3 all noisy images in the lowest 5% ({HEADLINE})",
                value=f"{100 * c3['share_in_lowest']['0.05']:.1f}% of them",
                met=bool(c3["share_in_lowest"]["0.05"] >= 1.0),
            ))
            rows.append(dict(target=f"{fam}: C3 AUC >= 0.99 ({HEADLINE})",
                             value=f"{c3['auc']:.4f}", met=bool(c3["auc"] >= 0.99)))
            m = h["membership"]
            rows.append(dict(
                target=f"{fam}: membership p < 0.01 ({HEADLINE})",
                value=f"t={_f(m['t'])}, p={_f(m['p'])}, AUC={_f(m['auc'], '{:.3f}')}",
                met=bool(m["p"] is not None and m["p"] < 0.01),
            ))
        nr = g["runs"].get("no_rerank", {})
        if nr.get("status") == "ok":
            c4 = nr["C4"]
            rows.append(dict(target=f"{fam}: C4 C3 setting end to end without re-rank < 60 s",
                             value=f"{c4['total_s']:.1f} s", met=bool(c4["total_s"] < 60)))
            rows.append(dict(target=f"{fam}: C4 < 10 ms per generated image",
                             value=f"{c4['per_generated_ms']:.2f} ms",
                             met=bool(c4["per_generated_ms"] < 10)))
    rows.append(dict(target="whole benchmark < 45 min, generators included",
                     value=f"{res['total_seconds'] / 60:.1f} min "
                           f"(generators {'cached' if res['generators_cached'] else 'trained'})",
                     met=bool(res["total_seconds"] < 45 * 60)))
    return rows


def machine():
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
                break
        info["load_average_at_start"] = list(os.getloadavg())
    except OSError:
        pass
    import faiss
    import fiftyone
    import torch

    info["versions"] = {"torch": torch.__version__, "fiftyone": fiftyone.__version__,
                        "faiss": faiss.__version__, "numpy": np.__version__}
    try:
        import torch
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        info["gpu"] = None
    return info


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


# --------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small smoke run (a few minutes)")
    p.add_argument("--out", default=None,
                   help="results directory (default benchmarks/results, or "
                        "benchmarks/.cache/results-quick with --quick)")
    args = p.parse_args(argv)
    _setup_env(CACHE)
    mode = "quick" if args.quick else "full"
    s = SETTINGS[mode]
    out_dir = pathlib.Path(args.out) if args.out else (
        CACHE / "results-quick" if args.quick else HERE / "results")
    models_dir = CACHE / ("models-quick" if args.quick else "models")
    images_dir = CACHE / ("images-quick" if args.quick else "images")

    t_start = time.time()
    res = {"mode": mode, "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": machine()}
    log(f"benchmark ({mode}) on {res['machine'].get('cpu')}, {res['machine']['cpus']} CPUs")

    d = prepare_data(s)
    res["data"] = dict(
        source="MNIST test split (10,000 images) from shared/data/mnist",
        n_train_clean=int(len(d["train_idx"])), n_noisy=int(d["noisy"].sum()),
        n_valued=int(len(d["x_val"])), n_generator_train=int(d["used"].sum()),
        n_held_out=int(len(d["held_idx"])), noise_sigma=NOISE_SIGMA,
        member_class=MEMBER_CLASS, n_members=int(d["member"].sum()),
        n_non_members=int(d["non_member"].sum()), n_generated=s["n_generated"], k=K,
        seed=SEED,
    )
    res["ceiling"] = ceiling(d["x"], d["y"], d["train_idx"], d["held_idx"])
    log(f"ceiling C1@30: L2 {100 * res['ceiling']['l2'][30]:.2f}%, "
        f"cosine {100 * res['ceiling']['cosine'][30]:.2f}%")

    models = train_models(d, s, models_dir)
    sets = generate_sets(models, s)
    res["classifier"] = {k: v for k, v in models["classifier"].items() if k != "model"}
    res["generators_cached"] = all(models[f]["cached"] for f in ("cvae", "cgan"))

    from gmv_plugin.embeddings import PixelEmbedder

    embedder = PixelEmbedder(size=28, mode="L")
    res["embedding"] = embedder.config()
    res["generators"] = {}
    for fam in ("cvae", "cgan"):
        ds = build_dataset(fam, d, sets[fam], images_dir, args.quick)
        g = {k: v for k, v in models[fam].items() if k != "model"}
        g["runs"] = run_configs(ds, fam, embedder)
        g["pq"] = pq_recall(ds, g["runs"])
        g["baselines"] = {"random": random_baseline(ds)}
        g["baselines"].update(brain_baselines(ds, embedder, s["brain_public_queries"]))
        res["generators"][fam] = g
        res["total_seconds"] = time.time() - t_start  # so far, in case a later step fails
        _write(res, out_dir, final=False)

    res["membership_control"] = membership_control(d, images_dir, embedder, args.quick)
    res["total_seconds"] = time.time() - t_start
    res["machine"]["load_average_at_end"] = list(os.getloadavg())
    res["targets"] = targets(res)
    _write(res, out_dir, final=True)
    log(f"done in {res['total_seconds'] / 60:.1f} min; results in {out_dir}")
    for t in res["targets"]:
        log(f"  [{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['value']}")
    return res


def _write(res, out_dir, final):
    from benchmarks.report import render

    out_dir.mkdir(parents=True, exist_ok=True)
    data = _jsonable(res)
    (out_dir / "results.json").write_text(json.dumps(data, indent=1) + "\n")
    if final:
        (out_dir / "RESULTS.md").write_text(render(data))


if __name__ == "__main__":
    main()
