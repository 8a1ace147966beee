"""Truth benchmark (issue 11): cleansing score, copy flags, defaults, membership, C2.

Run from the repository root::

    .venv/bin/python -m benchmarks.truth           # writes benchmarks/results/truth.json and TRUTH.md

See ``benchmarks/README.md`` (section "Truth benchmark") for the protocol.
"""

import argparse
import datetime
import json
import os
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / ".cache"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.run import _jsonable  # noqa: E402  (imports no FiftyOne)

SEED = 0
K = 100
HELD_OUT = 0.1
MEMBER_CLASS = 0
CORRUPT_SHARE = 0.01  # of the clean training set, per corruption kind
COPY_SHARE = 0.01  # of the generated set
N_GENERATED = 10_000
EPOCHS = {"cvae": 30, "cgan": 30}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------
# data


def prepare_data(unseen=True):
    """Clean training digits, corrupted held-out digits (1% of the training set
    per kind), membership groups. All seeded."""
    from gmv_plugin.demo import corruptions as C
    from gmv_plugin.demo.data import load_mnist, stratified_split

    x, y = load_mnist()
    train_idx, held_idx = stratified_split(y, HELD_OUT, seed=SEED)
    rng = np.random.default_rng(SEED)
    kinds = dict(C.CORRUPTIONS)
    if unseen:
        kinds.update(C.UNSEEN_CORRUPTIONS)
    n_per = int(round(CORRUPT_SHARE * len(train_idx)))
    pool = rng.permutation(held_idx)
    parts_x, parts_y, parts_kind = [x[train_idx]], [y[train_idx]], [np.array([""] * len(train_idx), dtype=object)]
    used_src = []
    for i, (name, fn) in enumerate(kinds.items()):
        src = np.sort(pool[i * n_per : (i + 1) * n_per])
        if len(src) < n_per:
            src = np.sort(rng.choice(held_idx, n_per, replace=False))
        used_src.append(src)
        parts_x.append(fn(x[src], np.random.default_rng(SEED + 100 + i)))
        parts_y.append(y[src])
        parts_kind.append(np.array([name] * n_per, dtype=object))
    x_val = np.concatenate(parts_x)
    y_val = np.concatenate(parts_y)
    kind = np.concatenate(parts_kind)
    corrupted = kind != ""

    cls = train_idx[y[train_idx] == MEMBER_CLASS]
    non_members = np.sort(rng.choice(cls, len(cls) // 2, replace=False))
    non_member = np.r_[np.isin(train_idx, non_members), np.zeros(corrupted.sum(), bool)]
    member = (y_val == MEMBER_CLASS) & ~non_member & ~corrupted
    used = ~non_member
    return dict(
        x=x, y=y, train_idx=train_idx, held_idx=held_idx, x_val=x_val, y_val=y_val,
        kind=kind, corrupted=corrupted, member=member, non_member=non_member, used=used,
        kinds=list(kinds), seen=list(C.CORRUPTIONS), unseen=list(C.UNSEEN_CORRUPTIONS) if unseen else [],
        n_per_kind=n_per,
    )


def train_generators(d, models_dir):
    import torch
    from gmv_plugin.demo import generators as g

    torch.set_num_threads(1)
    xg, yg = d["x_val"][d["used"]], d["y_val"][d["used"]]
    out = {}
    for fam, fn in (("cvae", g.train_cvae), ("cgan", g.train_cgan)):
        ep = EPOCHS[fam]
        fp = g.fingerprint(xg, yg, kind=fam, epochs=ep, seed=SEED)
        t0 = time.time()
        model = g.cached(g.cache_path(f"truth-{fam}", models_dir),
                         lambda fn=fn, ep=ep: fn(xg, yg, epochs=ep, seed=SEED, progress=True), fp)
        out[fam] = dict(model=model, cached=bool(model.meta.get("cached")),
                        train_seconds=model.meta.get("train_seconds"), n_train=int(len(xg)),
                        epochs=ep, wall_seconds=time.time() - t0)
        log(f"{fam}: {'cached' if out[fam]['cached'] else 'trained'} "
            f"(training took {model.meta.get('train_seconds')} s)")
    return out


def generated_sets(models, cache_dir):
    from gmv_plugin.demo import generators as g

    sets = {}
    for fam in ("cvae", "cgan"):
        path = cache_dir / f"generated-{fam}-{models[fam]['model'].meta.get('fingerprint')}.npz"
        if path.is_file():
            z = np.load(path)
            sets[fam] = dict(images=z["images"], conditions=z["conditions"])
            continue
        images, cond = g.generate(models[fam]["model"], N_GENERATED, seed=SEED + 1)
        np.savez(path, images=images, conditions=cond)
        sets[fam] = dict(images=images, conditions=cond)
    return sets


# --------------------------------------------------------------------------
# array-level valuation (the pipeline's functions on arrays)


def embed(images):
    """The pipeline's weight-free embedder (normalized 28x28 grayscale pixels)."""
    from gmv_plugin.embeddings import PixelEmbedder

    return PixelEmbedder(size=28, mode="L").embed_all(list(images)).astype(np.float32)


class Stages(object):
    """Embeddings, flat index, recall, L2 re-rank and realism of one generated set,
    computed with the functions the pipeline's stages call."""

    def __init__(self, train_images, gen_images, k=K, train_emb=None, index=None):
        from gmv_plugin import index as gmvi

        self.k = k
        self.train_images = train_images
        self.gen_images = gen_images
        self.train_emb = embed(train_images) if train_emb is None else train_emb
        self.gen_emb = embed(gen_images)
        self.index = index
        if index is None:
            self.index = gmvi.build_index(self.train_emb, "flat", {}, progress=False)
        self.recall_dists, self.recall_idx = gmvi.search(self.index, self.gen_emb, k)
        self.rerank_dists, self.rerank_idx = self._l2_rerank()
        self.realism = self._realism()

    def search(self, queries, k):
        from gmv_plugin import index as gmvi

        return gmvi.search(self.index, queries, k)

    def _l2_rerank(self, chunk=500):
        from gmv_plugin.rerank import L2Reranker

        rr = L2Reranker(size=28, mode="L")
        tr = self.train_images.reshape(len(self.train_images), -1).astype(np.float32) / 255.0
        ge = self.gen_images.reshape(len(self.gen_images), -1).astype(np.float32) / 255.0
        d = np.empty(self.recall_idx.shape, np.float32)
        for s in range(0, len(ge), chunk):
            d[s : s + chunk] = rr.pair_distances(ge[s : s + chunk], tr[self.recall_idx[s : s + chunk]])
        order = np.argsort(d, axis=1, kind="stable")[:, : self.k]
        return np.take_along_axis(d, order, 1), np.take_along_axis(self.recall_idx, order, 1)

    def _realism(self):
        from gmv_plugin import quality as gmvq
        from gmv_plugin.pipeline import REALISM_K

        rows = np.unique(self.recall_idx)
        radii, _ = self.search(self.train_emb[rows], REALISM_K + 1)
        lookup = np.zeros(len(self.train_emb), np.float32)
        lookup[rows] = radii[:, -1]
        return gmvq.realism_scores(self.recall_dists, lookup[self.recall_idx])

    def values(self, temperature=1.0, quality="none", rerank="l2"):
        from gmv_plugin.valuation import accumulate_values, contribution_scores, resolve_temperature

        d, idx = (self.rerank_dists, self.rerank_idx) if rerank == "l2" else (self.recall_dists, self.recall_idx)
        q = self.realism if quality == "realism" else np.ones(len(d), np.float32)
        tau = resolve_temperature(d, temperature)
        scores = contribution_scores(d, q, tau)
        v, hits = accumulate_values(idx, scores, len(self.train_emb))
        return v, hits, tau, d, idx, q


# --------------------------------------------------------------------------
# measurements

# (temperature, quality) candidates for the defaults; re-rank L2 at 28x28 throughout
CONFIGS = [
    ("tau1_none", 1.0, "none"),
    ("tau1_realism", 1.0, "realism"),
    ("auto_none", "auto", "none"),
    ("auto_realism", "auto", "realism"),
    ("tau0.01_none", 0.01, "none"),
    ("tau0.01_realism", 0.01, "realism"),
]
FRACTIONS = (0.01, 0.05, 0.10)
C2_KS = (5, 10, 15)
C1_KS = (30, 50, 100)


def c3(score, positive, negative):
    """AUC (low score = positive) and the share of positives in the lowest 1/5/10%
    of all valued training images, ties averaged (as ``evaluation.cleansing``)."""
    from scipy.stats import rankdata

    from gmv_plugin.evaluation import _auc

    sel = positive | negative
    ranks = rankdata(score)
    n = len(score)
    return {
        "auc": _auc(positive[sel], -score[sel]),
        "lowest": {f"{q:g}": float(np.mean(ranks[positive] <= q * n)) for q in FRACTIONS},
    }


def c3_by_kind(score, d):
    clean = ~d["corrupted"]
    return {k: c3(score, d["kind"] == k, clean) for k in d["kinds"]}


def membership(values, d):
    from scipy.stats import ttest_ind

    from gmv_plugin.evaluation import _auc

    a, b = values[d["member"]], values[d["non_member"]]
    t = ttest_ind(a, b, equal_var=False, alternative="greater")
    both = d["member"] | d["non_member"]
    return {"t": float(t.statistic), "p": float(t.pvalue), "auc": _auc(d["member"][both], values[both]),
            "mean_members": float(a.mean()), "mean_non_members": float(b.mean())}


def plant_copies(gen_images, d, seed):
    """Replaces 1% of the generated images by copies of training images the
    generators trained on (clean ones), the copy kinds in turn."""
    from gmv_plugin.demo import corruptions as C

    rng = np.random.default_rng(seed)
    m = len(gen_images)
    n = int(round(COPY_SHARE * m))
    where = np.sort(rng.choice(m, n, replace=False))
    src = rng.choice(np.flatnonzero(d["used"] & ~d["corrupted"]), n, replace=False)
    kinds = np.array(list(C.COPY_KINDS))[np.arange(n) % len(C.COPY_KINDS)]
    images = gen_images.copy()
    for i, k in enumerate(C.COPY_KINDS):
        sel = kinds == k
        images[where[sel]] = C.COPY_KINDS[k](d["x_val"][src[sel]], np.random.default_rng(seed + 10 + i))
    return images, where, src, kinds


def copy_eval(flags, copy_of, where, src, kinds, m):
    planted = np.zeros(m, bool)
    planted[where] = True
    tp = int((flags & planted).sum())
    fp = int((flags & ~planted).sum())
    right_source = copy_of[where] == src
    return {
        "n_planted": int(planted.sum()), "flagged": int(flags.sum()), "true_positives": tp,
        "false_positives": fp, "recall": tp / max(1, planted.sum()),
        "precision": tp / max(1, tp + fp),
        "recall_by_kind": {k: float(flags[where[kinds == k]].mean()) for k in dict.fromkeys(kinds)},
        "source_found": float(right_source[flags[where]].mean()) if flags[where].any() else None,
    }


def c2(stages, gen_attr_bins, train_attr_bins, gen_labels, train_labels):
    from gmv_plugin.evaluation import identical_labels

    out = {}
    for name, idx in (("no_rerank", stages.recall_idx), ("l2", stages.rerank_idx)):
        row = {a: identical_labels(gen_attr_bins[a], train_attr_bins[a], idx, C2_KS) for a in gen_attr_bins}
        row["class"] = identical_labels(gen_labels, train_labels, idx, C2_KS)
        out[name] = row
    rng = np.random.default_rng(SEED)
    rand = rng.integers(0, len(train_labels), size=(len(gen_labels), max(C2_KS)))
    row = {a: identical_labels(gen_attr_bins[a], train_attr_bins[a], rand, C2_KS) for a in gen_attr_bins}
    row["class"] = identical_labels(gen_labels, train_labels, rand, C2_KS)
    out["random"] = row
    return out


def run(verify=True):
    from gmv_plugin import attributes as gmva
    from gmv_plugin import cleansing as gmvcl
    from gmv_plugin import copies as gmvc
    from gmv_plugin.demo import generators as g
    from gmv_plugin.evaluation import identical_labels

    t_start = time.time()
    cache = CACHE / "truth"
    cache.mkdir(parents=True, exist_ok=True)
    res = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": _machine()}
    d = prepare_data()
    log(f"{len(d['x_val'])} training images, {int(d['corrupted'].sum())} corrupted ({d['n_per_kind']} per kind)")
    models = train_generators(d, CACHE / "models")
    sets = generated_sets(models, cache)
    clf = g.cached(g.cache_path("truth-classifier", CACHE / "models"),
                   lambda: g.train_classifier(d["x"][d["train_idx"]], d["y"][d["train_idx"]], epochs=5,
                                              seed=SEED, val_fraction=0),
                   g.fingerprint(d["x"][d["train_idx"]], d["y"][d["train_idx"]], kind="classifier", epochs=5, seed=SEED))
    res["data"] = dict(
        n_clean=int((~d["corrupted"]).sum()), n_corrupted=int(d["corrupted"].sum()),
        n_per_kind=d["n_per_kind"], kinds=d["kinds"], seen_kinds=d["seen"], unseen_kinds=d["unseen"],
        n_valued=int(len(d["x_val"])), n_generator_train=int(d["used"].sum()),
        n_members=int(d["member"].sum()), n_non_members=int(d["non_member"].sum()),
        n_generated=N_GENERATED, k=K, seed=SEED,
    )
    res["generators"] = {f: {k: v for k, v in models[f].items() if k != "model"} for f in models}

    # training-side measurements shared by every generator
    t0 = time.time()
    stats = gmvcl.image_statistics(d["x_val"])
    implausible = gmvcl.implausibility(stats)
    res["implausibility_seconds"] = time.time() - t0
    res["implausibility"] = {
        "clean_quantiles": {f"{q:g}": float(np.quantile(implausible[~d["corrupted"]], q)) for q in (0.5, 0.9, 0.99)},
        "by_kind_median": {k: float(np.median(implausible[d["kind"] == k])) for k in d["kinds"]},
        "auc_alone": {k: c3(-implausible, d["kind"] == k, ~d["corrupted"])["auc"] for k in d["kinds"]},
    }
    train_attr = gmva.digit_attributes(d["x_val"])
    edges = {a: gmva.bin_edges(v) for a, v in train_attr.items()}
    train_bins = gmva.bin_attributes(train_attr, edges)
    res["attributes"] = {"edges": {a: [float(x) for x in e] for a, e in edges.items()}}

    train_emb = None
    res["runs"] = {}
    for fam in ("cvae", "cgan"):
        gen = sets[fam]
        t0 = time.time()
        st = Stages(d["x_val"], gen["images"], train_emb=train_emb)
        train_emb = st.train_emb
        labels = g.classify(clf, gen["images"])
        r = {"stages_seconds": time.time() - t0, "classifier_agreement": float((labels == gen["conditions"]).mean())}
        r["C1"] = {"no_rerank": identical_labels(labels, d["y_val"], st.recall_idx, C1_KS),
                   "l2": identical_labels(labels, d["y_val"], st.rerank_idx, C1_KS)}
        r["configs"] = {}
        for name, tau, quality in CONFIGS:
            v, hits, tau_used, *_ = st.values(temperature=tau, quality=quality)
            cl = gmvcl.cleansing_scores(v, implausible)
            r["configs"][name] = {
                "temperature": tau, "temperature_used": float(tau_used), "quality": quality,
                "value_C3": c3_by_kind(v, d), "cleansing_C3": c3_by_kind(cl, d),
                "membership": membership(v, d),
            }
            log(f"{fam}/{name}: value AUC min {min(x['auc'] for x in r['configs'][name]['value_C3'].values()):.3f}, "
                f"cleansing AUC min {min(x['auc'] for x in r['configs'][name]['cleansing_C3'].values()):.3f}, "
                f"membership t={r['configs'][name]['membership']['t']:.2f}")

        # the entry point the pipeline calls, at the default settings
        v, hits, *_ = st.values(temperature=DEFAULTS["temperature"], quality=DEFAULTS["quality"])
        t0 = time.time()
        cols = gmvcl.truth_columns(v, train_images=d["x_val"], gen_images=gen["images"])
        r["truth_columns_seconds"] = time.time() - t0
        assert np.array_equal(cols["train"]["cleansing"], gmvcl.cleansing_scores(v, implausible))
        cl = cols["train"]["cleansing"]
        r["components"] = _components(st, v, d)
        r["default"] = {
            "cleansing_C3": c3_by_kind(cl, d), "value_C3": c3_by_kind(v, d),
            "non_copying_flagged": float(cols["generated"]["is_copy"].mean()),
            "non_copying_flagged_n": int(cols["generated"]["is_copy"].sum()),
            "copy_score_quantiles": {f"{q:g}": float(np.quantile(cols["generated"]["copy_score"], q))
                                     for q in (0.5, 0.99, 0.999, 1.0)},
            "differs": _differs(v, cl, d),
        }
        # planted copies among this generator's images
        planted, where, src, kinds = plant_copies(gen["images"], d, seed=SEED + 7)
        t0 = time.time()
        pc = gmvcl.truth_columns(v, train_images=d["x_val"], gen_images=planted)
        r["copies"] = copy_eval(pc["generated"]["is_copy"], pc["generated"]["copy_of"], where, src, kinds, len(planted))
        r["copies"]["seconds"] = time.time() - t0
        log(f"{fam}: copies recall {r['copies']['recall']:.3f} precision {r['copies']['precision']:.3f}; "
            f"non-copying generator flagged {100 * r['default']['non_copying_flagged']:.2f}%")
        # C2
        gen_attr = gmva.digit_attributes(gen["images"])
        r["C2"] = c2(st, gmva.bin_attributes(gen_attr, edges), train_bins, labels, d["y_val"])
        res["runs"][fam] = r

    res["C2_ceiling"] = _c2_ceiling(d, train_emb, edges, train_bins)
    res["control"] = _control(d, train_emb, implausible)
    res["variants"] = _variants(d, sets)
    res["defaults"] = dict(DEFAULTS, copy_threshold=gmvc.COPY_THRESHOLD, margin=gmvcl.ANOMALY_MARGIN,
                           weight=gmvcl.ANOMALY_WEIGHT)
    if verify:
        res["verify"] = _verify(d, sets["cgan"], clf)
    res["total_seconds"] = time.time() - t_start
    res["targets"] = targets(res)
    return res


DEFAULTS = {"temperature": "auto", "quality": "none"}


def _components(st, values, d, k=10):
    """Neighbour-based evidence measured and left out of the score: per kind AUC
    of (a) a local outlier factor (mean distance to the k nearest training
    neighbours over the median of theirs) and (b) the value relative to the
    mean value of those neighbours."""
    dist, idx = st.search(st.train_emb, k + 1)
    dist, idx = dist[:, 1:], idx[:, 1:]
    r = dist.mean(axis=1)
    lof = r / np.median(r[idx], axis=1)
    credit = np.log((values + 1e-3) / (values[idx].mean(axis=1) + 1e-3))
    return {
        "local_outlier_factor": {kk: c["auc"] for kk, c in c3_by_kind(-lof, d).items()},
        "credit_vs_neighbours": {kk: c["auc"] for kk, c in c3_by_kind(credit, d).items()},
    }


def _differs(values, cleansing, d, q=0.05):
    """Where the cleansing score's order differs from the value's."""
    from scipy.stats import spearmanr

    n = len(values)
    low_v = set(np.argsort(values, kind="stable")[: int(q * n)])
    low_c = set(np.argsort(cleansing, kind="stable")[: int(q * n)])
    clean = ~d["corrupted"]
    return {
        "spearman_clean": float(spearmanr(values[clean], cleansing[clean]).correlation),
        "lowest_5pct_overlap": len(low_v & low_c) / max(1, len(low_c)),
        "corrupted_in_lowest_5pct_value": int(d["corrupted"][list(low_v)].sum()),
        "corrupted_in_lowest_5pct_cleansing": int(d["corrupted"][list(low_c)].sum()),
        "blur_mean_value_pct": float(np.mean(np.argsort(np.argsort(values))[d["kind"] == "blur"]) / n * 100),
    }


def _c2_ceiling(d, train_emb, edges, train_bins):
    """C2 of exact kNN (flat index on the pixel embeddings) for the held-out real
    digits that were not used as corruption sources (perfect 'generations')."""
    from gmv_plugin import attributes as gmva
    from gmv_plugin import index as gmvi
    from gmv_plugin.evaluation import identical_labels

    used = set()
    n_used = d["n_per_kind"] * len(d["kinds"])
    rng = np.random.default_rng(SEED)
    pool = rng.permutation(d["held_idx"])  # same permutation as prepare_data
    used = pool[:n_used]
    rest = np.setdiff1d(d["held_idx"], used)
    if not len(rest):
        return None
    q = d["x"][rest]
    index = gmvi.build_index(train_emb, "flat", {}, progress=False)
    _, idx = gmvi.search(index, embed(q), max(C2_KS))
    bins = gmva.bin_attributes(gmva.digit_attributes(q), edges)
    out = {a: identical_labels(bins[a], train_bins[a], idx, C2_KS) for a in bins}
    out["class"] = identical_labels(d["y"][rest], d["y_val"], idx, C2_KS)
    out["n"] = int(len(rest))
    return out


def _mild_variants():
    from gmv_plugin.demo import corruptions as C

    def cutout_black(images, rng, size=8):
        out = images.copy()
        for im in out:
            top, left = rng.integers(6, 14, 2)
            im[top : top + size, left : left + size] = 0
        return out

    return {
        "gaussian_noise std 0.1": lambda a, r: C.gaussian_noise(a, r, 0.1),
        "salt_and_pepper 3%": lambda a, r: C.salt_and_pepper(a, r, 0.03),
        "blur sigma 0.8": lambda a, r: C.blur(a, r, 0.8),
        "jpeg quality 20": lambda a, r: C.jpeg(a, r, 20),
        "jpeg quality 40": lambda a, r: C.jpeg(a, r, 40),
        "black cutout 8x8": cutout_black,
        "grey occlusion 6x6": lambda a, r: C.occlusion(a, r, 6, 0.5),
        "brightness +0.2": lambda a, r: C.contrast_brightness(a, r, 1.0, 0.2),
        "pixelate 2x2": lambda a, r: C.pixelate(a, r, 2),
    }


def _variants(d, sets):
    """Milder or different corruptions of 90 held-out digits each, added to the
    valued set one variant at a time and valued with the same generations (the
    generators never saw them): cleansing AUC at the defaults against the clean
    images. The margin and weight of the score were set looking at these."""
    from gmv_plugin import cleansing as gmvcl

    rng = np.random.default_rng(42)
    src = d["x"][rng.choice(d["held_idx"], d["n_per_kind"], replace=False)]
    clean = ~d["corrupted"]
    out = {}
    for i, (name, fn) in enumerate(_mild_variants().items()):
        images = fn(src, np.random.default_rng(SEED + 200 + i))
        stack = np.concatenate([d["x_val"], images])
        implausible = gmvcl.implausibility(gmvcl.image_statistics(stack))
        pos = np.r_[np.zeros(len(d["x_val"]), bool), np.ones(len(images), bool)]
        neg = np.r_[clean, np.zeros(len(images), bool)]
        row = {"implausibility_auc": c3(-implausible, pos, neg)["auc"]}
        for fam in ("cvae", "cgan"):
            st = Stages(stack, sets[fam]["images"])
            v, *_ = st.values(temperature=DEFAULTS["temperature"], quality=DEFAULTS["quality"])
            row[fam] = {"value": c3(v, pos, neg), "cleansing": c3(gmvcl.cleansing_scores(v, implausible), pos, neg)}
        out[name] = row
        log(f"variant {name}: cleansing AUC cvae {row['cvae']['cleansing']['auc']:.3f} "
            f"cgan {row['cgan']['cleansing']['auc']:.3f} (value {row['cvae']['value']['auc']:.3f} / "
            f"{row['cgan']['value']['auc']:.3f})")
    return out


def _control(d, train_emb, implausible):
    """A copying generator (members of class 0 plus noise, std 0.1, as in benchmarks.run):
    membership under every configuration and its copy flags."""
    from gmv_plugin import cleansing as gmvcl

    rng = np.random.default_rng(SEED + 2)
    members = np.flatnonzero(d["member"])
    n = min(1000, 4 * len(members))
    src = rng.choice(members, n, replace=True)
    images = (np.clip(d["x_val"][src] / 255.0 + rng.normal(0, 0.1, d["x_val"][src].shape), 0, 1) * 255).round().astype(np.uint8)
    st = Stages(d["x_val"], images, train_emb=train_emb)
    out = {"n_generated": int(n), "noise_sigma": 0.1, "configs": {}}
    for name, tau, quality in CONFIGS:
        v, *_ = st.values(temperature=tau, quality=quality)
        out["configs"][name] = membership(v, d)
        log(f"control/{name}: t={out['configs'][name]['t']:.2f} p={out['configs'][name]['p']:.2g}")
    v, *_ = st.values(temperature=DEFAULTS["temperature"], quality=DEFAULTS["quality"])
    cols = gmvcl.truth_columns(v, train_images=d["x_val"], gen_images=images)
    out["flagged_as_copies"] = float(cols["generated"]["is_copy"].mean())
    out["copy_of_right_source"] = float((cols["generated"]["copy_of"] == src)[cols["generated"]["is_copy"]].mean())
    return out


def _verify(d, gen, clf):
    """The plugin's own pipeline (FiftyOne dataset, PNGs, compute_values) at the
    default settings on the cGAN set, compared with the array-level figures."""
    import gmv_plugin as gmv
    from gmv_plugin import cleansing as gmvcl
    from gmv_plugin.demo.data import make_dataset
    from gmv_plugin.embeddings import PixelEmbedder

    t0 = time.time()
    ds = make_dataset("gmv-truth-verify", CACHE / "truth" / "images", train=(d["x_val"], d["y_val"]),
                      generated=(gen["images"], gen["conditions"], gen["conditions"]), overwrite=True)
    train, genv = ds.match_tags("train"), ds.match_tags("generated")
    gmv.compute_values(train, genv, key="verify", model=PixelEmbedder(size=28, mode="L"), index="flat",
                       rerank="l2", rerank_params={"size": 28, "mode": "L"}, quality=DEFAULTS["quality"],
                       k=K, temperature=DEFAULTS["temperature"], overwrite=True, progress=False)
    v_pipe = np.array(train.values("verify_value"), dtype=np.float64)
    st = Stages(d["x_val"], gen["images"])
    v_arr, *_ = st.values(temperature=DEFAULTS["temperature"], quality=DEFAULTS["quality"])
    cols_paths = gmvcl.truth_columns(v_pipe, train_paths=train.values("filepath"), gen_paths=genv.values("filepath"))
    cols_arr = gmvcl.truth_columns(v_arr, train_images=d["x_val"], gen_images=gen["images"])
    out = {
        "values_max_abs_diff": float(np.abs(v_pipe - v_arr).max()),
        "cleansing_max_abs_diff": float(np.abs(cols_paths["train"]["cleansing"] - cols_arr["train"]["cleansing"]).max()),
        "copy_score_max_abs_diff": float(np.abs(cols_paths["generated"]["copy_score"] - cols_arr["generated"]["copy_score"]).max()),
        "is_copy_equal": bool(np.array_equal(cols_paths["generated"]["is_copy"], cols_arr["generated"]["is_copy"])),
        "seconds": time.time() - t0,
    }
    log(f"verify: pipeline vs arrays {out}")
    return out


def targets(res):
    rows = []
    for fam, r in res["runs"].items():
        for k, c in r["default"]["cleansing_C3"].items():
            tag = "" if k in res["data"]["seen_kinds"] else " (kind unseen in design)"
            rows.append(dict(target=f"{fam}: cleansing AUC >= 0.95, {k}{tag}", value=f"{c['auc']:.4f}",
                             met=bool(c["auc"] >= 0.95)))
        cp = r["copies"]
        rows.append(dict(target=f"{fam}: copy recall >= 0.95 on planted copies", value=f"{cp['recall']:.3f}",
                         met=bool(cp["recall"] >= 0.95)))
        rows.append(dict(target=f"{fam}: copy precision >= 0.9", value=f"{cp['precision']:.3f}",
                         met=bool(cp["precision"] >= 0.9)))
        fl = r["default"]["non_copying_flagged"]
        rows.append(dict(target=f"{fam}: < 1% of a non-copying generator's images flagged",
                         value=f"{100 * fl:.2f}%", met=bool(fl < 0.01)))
    for vname, row in (res.get("variants") or {}).items():
        worst = min(row["cvae"]["cleansing"]["auc"], row["cgan"]["cleansing"]["auc"])
        rows.append(dict(target=f"variant {vname}: cleansing AUC >= 0.9, both generators (owners' bar for unseen data)",
                         value=f"{worst:.3f}", met=bool(worst >= 0.9)))
    name = _default_config_name()
    m = res["control"]["configs"][name]
    rows.append(dict(target=f"copying control detected at the defaults ({name}), p < 0.001",
                     value=f"t={m['t']:.2f}, p={m['p']:.2g}, AUC={m['auc']:.3f}", met=bool(m["p"] < 0.001)))
    return rows


def _default_config_name():
    for name, tau, quality in CONFIGS:
        if tau == DEFAULTS["temperature"] and quality == DEFAULTS["quality"]:
            return name
    raise KeyError(DEFAULTS)


def _machine():
    import platform

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        info["load_average_at_start"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(HERE / "results"), help="results directory")
    p.add_argument("--render", action="store_true",
                   help="only re-render TRUTH.md (and the targets) from an existing truth.json")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the check against the plugin's own pipeline (needs FiftyOne's database)")
    args = p.parse_args(argv)
    out = pathlib.Path(args.out)
    if args.render:
        from benchmarks.truth_report import render

        data = json.loads((out / "truth.json").read_text())
        data["targets"] = _jsonable(targets(data))
        (out / "truth.json").write_text(json.dumps(data, indent=1) + "\n")
        (out / "TRUTH.md").write_text(render(data))
        return
    if not args.no_verify:  # before fiftyone is imported: a private database for the pipeline check
        from benchmarks.run import _setup_env

        _setup_env(CACHE)
    res = run(verify=not args.no_verify)
    out.mkdir(parents=True, exist_ok=True)
    data = _jsonable(res)
    (out / "truth.json").write_text(json.dumps(data, indent=1) + "\n")
    from benchmarks.truth_report import render

    (out / "TRUTH.md").write_text(render(data))
    log(f"done in {res['total_seconds'] / 60:.1f} min; results in {out}")
    for t in res["targets"]:
        log(f"  [{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['value']}")


if __name__ == "__main__":
    main()
