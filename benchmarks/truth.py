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


def main_prepare():
    cache = CACHE / "truth"
    cache.mkdir(parents=True, exist_ok=True)
    d = prepare_data()
    log(f"{len(d['x_val'])} training images, {d['corrupted'].sum()} corrupted ({d['n_per_kind']} per kind)")
    models = train_generators(d, CACHE / "models")
    sets = generated_sets(models, cache)
    return d, models, sets


if __name__ == "__main__":
    main_prepare()


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
