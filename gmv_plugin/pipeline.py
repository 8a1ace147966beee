"""The GMValuator pipeline: embed, index, recall, re-rank, quality, values.

:func:`compute_values` runs everything; each stage is also its own call
(:func:`compute_embeddings`, :func:`build_index`, :func:`recall_contributors`,
:func:`rerank_contributors`, :func:`score_quality`, :func:`assign_values`) on a
run created by :func:`init_valuation`, so operators can run them separately.
Intermediate arrays live in the run's directory with a fingerprint of what
produced them: a stage whose inputs and parameters are unchanged is reloaded,
not recomputed (e.g. changing only the re-ranker keeps embeddings and index).
Fields are written only by the last stage, in bulk.
"""

import hashlib
import json
import logging
import os
import time

import numpy as np
import fiftyone.core.utils as fou

from gmv_plugin import embeddings as gmve
from gmv_plugin import index as gmvi
from gmv_plugin import quality as gmvq
from gmv_plugin import rerank as gmvr
from gmv_plugin import runs as gmvruns
from gmv_plugin import validation as gmvval
from gmv_plugin.images import ImageReadError
from gmv_plugin.valuation import accumulate_values, contribution_scores, resolve_temperature

logger = logging.getLogger(__name__)

STAGES = ("embed", "index", "recall", "rerank", "quality", "values")
REALISM_K = 3


def compute_values(
    train_view,
    generated_view,
    key="gmv",
    model=gmve.DEFAULT_MODEL,
    embeddings_field=None,
    index="auto",
    index_params=None,
    rerank="none",
    rerank_params=None,
    quality="none",
    quality_params=None,
    k=50,
    recall_k=None,
    temperature=1.0,
    batch_size=64,
    overwrite=False,
    progress=None,
):
    """Values every training sample from the generated samples (GMValuator).

    Args:
        train_view: the training samples (a dataset or view)
        generated_view: the generated samples, from the same dataset
        key ("gmv"): the run key; fields are named ``{key}_value``,
            ``{key}_hits`` (training) and ``{key}_contributors``,
            ``{key}_distances``, ``{key}_scores``, ``{key}_quality``
            (generated)
        model ("vgg16-imagenet-torch"): the encoder: ``"pixels"`` (built-in,
            weight-free), a FiftyOne zoo model name, or a FiftyOne ``Model``
        embeddings_field (None): a field holding embeddings to use, or where
            to store those computed with ``model``
        index ("auto"): the recall index, one of ``auto|flat|pq|ivfpq``
        index_params (None): dict of ``M``, ``nbits``, ``nlist``, ``nprobe``,
            ``refine``, ``train_size``; see :func:`gmv_plugin.index.default_params`
        rerank ("none"): ``none|l2|lpips|dreamsim`` or a ``Reranker``
        rerank_params (None): re-ranker options (e.g. ``size``, ``net``)
        quality ("none"): ``none|realism|maniqa``, another pyiqa
            no-reference metric, or a ``QualityScorer``
        quality_params (None): quality model options
        k (50): contributors per generated image (the set P_j)
        recall_k (None): candidates recalled before re-ranking (>= k);
            defaults to ``k``, as in the paper
        temperature (1.0): tau in ``exp(-d / tau)``; 1 is the paper;
            ``"auto"`` uses the median spread of the contributor distances
        batch_size (64): batch size of the models
        overwrite (False): whether to replace an existing run with this key
        progress (None): whether to render progress bars (True/False), use
            FiftyOne's default (None), or a callback taking a progress bar

    Returns:
        a :class:`gmv_plugin.runs.GMValuationResults`
    """
    valuation = init_valuation(
        train_view,
        generated_view,
        key=key,
        model=model,
        embeddings_field=embeddings_field,
        index=index,
        index_params=index_params,
        rerank=rerank,
        rerank_params=rerank_params,
        quality=quality,
        quality_params=quality_params,
        k=k,
        recall_k=recall_k,
        temperature=temperature,
        batch_size=batch_size,
        overwrite=overwrite,
        _register=False,  # registered when it succeeds; a failure keeps the old run
    )
    return valuation.run(progress=progress)


def init_valuation(
    train_view,
    generated_view,
    key="gmv",
    model=gmve.DEFAULT_MODEL,
    embeddings_field=None,
    index="auto",
    index_params=None,
    rerank="none",
    rerank_params=None,
    quality="none",
    quality_params=None,
    k=50,
    recall_k=None,
    temperature=1.0,
    batch_size=64,
    overwrite=False,
    _generated_added=None,
    _register=True,
):
    """Validates the inputs and registers a run, without computing anything.

    Takes the arguments of :func:`compute_values` and returns a
    :class:`Valuation` whose stages can be run one by one.
    """
    dataset = train_view._root_dataset
    _validate_views(train_view, generated_view)
    gmvval.check_key(dataset, key, overwrite=overwrite)
    n_train = len(train_view)
    gmvval.check_params(
        n_train=n_train, k=k, recall_k=recall_k, temperature=temperature, index=index,
        index_params=index_params, rerank=rerank, rerank_params=rerank_params,
        quality=quality, quality_params=quality_params, batch_size=batch_size,
        embeddings_field=embeddings_field,
    )
    recall_k = k if recall_k is None else recall_k
    temperature = temperature if temperature == "auto" else float(temperature)

    if isinstance(model, str) and model not in gmve.BUILTIN_MODELS:
        gmve.resolve_model(model)  # fails fast on unknown names, missing weights
    reranker = gmvr.get_reranker(rerank, **(rerank_params or {}))
    if reranker is not None:
        reranker.check()
    scorer = gmvq.get_quality(quality, **(quality_params or {}))
    if isinstance(scorer, gmvq.QualityScorer):
        scorer.check()

    _check_files(train_view, "training")
    _check_files(generated_view, "generated")

    config = gmvruns.GMValuationConfig(
        train_view=json.dumps(train_view._serialize()),
        generated_view=json.dumps(generated_view._serialize()),
        model=gmve.model_config(model),
        embeddings_field=embeddings_field,
        index=index,
        index_params=dict(index_params or {}),
        rerank=reranker.config() if reranker is not None else {"name": "none"},
        quality=_quality_config(scorer),
        k=k,
        recall_k=recall_k,
        temperature=temperature,
        batch_size=int(batch_size),
        generated_added=list(_generated_added or []),
    )
    if _register:
        dataset.register_run(key, config, overwrite=overwrite, cleanup=False)
    return Valuation(dataset, key, config=config, model=model, reranker=reranker, scorer=scorer)


def load_valuation(samples, key, **updates):
    """Loads run ``key`` for running stages, applying config ``updates``
    (e.g. ``rerank="l2"``) with the same validation as :func:`init_valuation`.
    """
    dataset = samples._root_dataset
    config = gmvruns.get_run_config(dataset, key)
    params = {
        "model": _model_from_config(config.model),
        "embeddings_field": config.embeddings_field,
        "index": config.index,
        "index_params": config.index_params,
        "rerank": gmvr.reranker_from_config(config.rerank) or "none",
        "rerank_params": {},
        "quality": gmvq.quality_from_config(config.quality) or "none",
        "quality_params": {},
        "k": config.k,
        "recall_k": config.recall_k,
        "temperature": config.temperature,
        "batch_size": config.batch_size,
    }
    unknown = set(updates) - set(params)
    if unknown:
        raise ValueError("Unknown parameters %s; allowed are %s" % (sorted(unknown), sorted(params)))
    # New parameters for the same re-ranker / quality model keep its name.
    if "rerank_params" in updates and "rerank" not in updates:
        params["rerank"] = config.rerank["name"]
    if "quality_params" in updates and "quality" not in updates:
        params["quality"] = config.quality["name"]
    params.update(updates)
    train_view = gmvruns.train_view(dataset, config)
    generated_view = gmvruns._load_view(dataset, config.generated_view)
    return init_valuation(
        train_view, generated_view, key=key, overwrite=True,
        _generated_added=getattr(config, "generated_added", None), **params
    )


def _model_from_config(cfg):
    if cfg.get("name") is None:
        return None
    if cfg.get("name") == "pixels":
        return gmve.PixelEmbedder(size=cfg.get("size", 32), mode=cfg.get("mode", "RGB"))
    return cfg.get("name")


def _quality_config(scorer):
    if scorer is None:
        return {"name": "none"}
    if scorer == "realism":
        return {"name": "realism", "k": REALISM_K}
    return scorer.config()


def _validate_views(train_view, generated_view):
    if train_view._root_dataset is not generated_view._root_dataset:
        raise ValueError(
            "train_view and generated_view must come from the same dataset; got "
            "%r and %r" % (train_view._root_dataset.name, generated_view._root_dataset.name)
        )
    if len(train_view) == 0:
        raise ValueError("train_view is empty")
    if len(generated_view) == 0:
        raise ValueError("generated_view is empty")
    overlap = set(train_view.values("id")) & set(generated_view.values("id"))
    if overlap:
        raise ValueError(
            "%d samples are in both train_view and generated_view, e.g. %s"
            % (len(overlap), sorted(overlap)[:3])
        )


def _check_files(view, what):
    missing = [p for p in view.values("filepath") if not os.path.isfile(p)]
    if missing:
        raise ImageReadError(
            "%d %s image files are missing, e.g. %s" % (len(missing), what, missing[:5])
        )


def _digest(obj):
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class Valuation(object):
    """A registered run whose stages can be computed one at a time.

    Each stage stores its outputs in the run directory together with a
    fingerprint of its parameters and inputs; :meth:`run` skips stages whose
    fingerprint is unchanged.
    """

    def __init__(self, dataset, key, config=None, model=None, reranker=None, scorer=None):
        self.dataset = dataset
        self.key = key
        self.config = config or gmvruns.get_run_config(dataset, key)
        self.dir = gmvruns.run_dir(dataset, key)
        os.makedirs(self.dir, exist_ok=True)
        self._model = model
        self.reranker = reranker
        self.scorer = scorer
        self.train_view = gmvruns.train_view(dataset, self.config)
        self.generated_view = gmvruns.generated_view(dataset, self.config)
        self._state_path = os.path.join(self.dir, "state.json")
        self.state = self._read_state()

    # state -----------------------------------------------------------------

    def _read_state(self):
        if os.path.isfile(self._state_path):
            with open(self._state_path) as f:
                return json.load(f)
        return {}

    def _write_state(self):
        tmp = self._state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.state, f, indent=1)
        os.replace(tmp, self._state_path)

    def _path(self, name):
        return os.path.join(self.dir, name)

    def _view_digest(self, which):
        """Digest of a view's samples and their files (path, size, mtime), so
        that edited images are embedded again."""
        cache = self.__dict__.setdefault("_digests", {})
        if which not in cache:
            view = self.train_view if which == "train" else self.generated_view
            ids, paths = view.values(["id", "filepath"])
            stats = []
            for p in paths:
                try:
                    st = os.stat(p)
                    stats.append((st.st_size, st.st_mtime_ns))
                except OSError:
                    stats.append(None)
            cache[which] = _digest([ids, paths, stats])
        return cache[which]

    def _fingerprints(self):
        c = self.config
        train_ids = self._view_digest("train")
        gen_ids = self._view_digest("generated")
        fp = {}
        emb = {"model": c.model, "embeddings_field": c.embeddings_field}
        fp["embed_train"] = _digest([emb, train_ids])
        fp["embed_generated"] = _digest([emb, gen_ids])
        fp["index"] = _digest([fp["embed_train"], c.index, c.index_params])
        fp["recall"] = _digest([fp["index"], fp["embed_generated"], c.recall_k])
        fp["rerank"] = _digest([fp["recall"], c.rerank, c.k])
        fp["quality"] = _digest([fp["rerank"] if c.quality["name"] == "realism" else fp["embed_generated"], c.quality])
        fp["values"] = _digest([fp["rerank"], fp["quality"], c.temperature])
        return fp

    def is_fresh(self, stage):
        """Whether ``stage``'s stored outputs match the current inputs."""
        fps = self._fingerprints()
        return all(self.state.get(n, {}).get("fingerprint") == fps[n] for n in _parts(stage))

    def _done(self, name, fingerprint, seconds, **info):
        self.state[name] = dict(fingerprint=fingerprint, seconds=seconds, **info)
        self._write_state()

    # running ---------------------------------------------------------------

    def run(self, stages=None, force=False, progress=None):
        """Runs ``stages`` (default: all, in order), skipping fresh ones unless
        ``force``, and returns the run's results."""
        stages = STAGES if stages is None else stages
        for stage in stages:
            if stage not in STAGES:
                raise ValueError("Unknown stage %r; allowed are %s" % (stage, STAGES))
        reused = []
        for stage in stages:
            if not force and self.is_fresh(stage) and stage != "values":
                logger.info("Reusing %s stage of run %r", stage, self.key)
                reused.append(stage)
                continue
            if force:
                for part in _parts(stage):
                    self.state.pop(part, None)
            getattr(self, "_stage_" + stage)(progress=_stage_progress(progress, stage))
        return self._save_results(reused)

    def _require(self, stage):
        if not self.is_fresh(stage):
            raise ValueError(
                "Stage %r of run %r is missing or out of date; run it first "
                "(stages in order: %s)" % (stage, self.key, STAGES)
            )

    def _timed(self, stage, fn, progress):
        fingerprint = self._fingerprints()[stage]
        start = time.perf_counter()
        info = fn(progress) or {}
        self._done(stage, fingerprint, time.perf_counter() - start, **info)

    def _stage_embed(self, progress=None):
        model = None
        if self._model is not None and not (
            self.config.embeddings_field and self._field_complete()
        ):
            model = gmve.resolve_model(self._model)
        fps = self._fingerprints()
        for name, view in (("embed_train", self.train_view), ("embed_generated", self.generated_view)):
            if self.state.get(name, {}).get("fingerprint") == fps[name]:
                continue
            start = time.perf_counter()
            ids, _ = gmve.embed_to_file(
                view, self._path(name + ".npy"), model=model,
                embeddings_field=self.config.embeddings_field,
                batch_size=self.config.batch_size, progress=progress,
            )
            np.save(self._path(name + "_ids.npy"), np.array(ids))
            self._done(name, fps[name], time.perf_counter() - start, count=len(ids))

    def _field_complete(self):
        field = self.config.embeddings_field
        for view in (self.train_view, self.generated_view):
            if not view.has_field(field) or view.exists(field, False).count():
                return False
        return True

    def _embeddings(self, which):
        return np.load(self._path("embed_%s.npy" % which), mmap_mode="r")

    def _ids(self, which):
        return np.load(self._path("embed_%s_ids.npy" % which))

    def _index_params(self):
        emb = self._embeddings("train")
        itype = gmvi.resolve_index_type(self.config.index, emb.shape[0])
        return itype, gmvi.default_params(itype, emb.shape[0], emb.shape[1], self.config.index_params)

    def _stage_index(self, progress=None):
        self._require("embed")

        def build(progress):
            emb = self._embeddings("train")
            itype, params = self._index_params()
            index = gmvi.build_index(emb, itype, params, progress=progress)
            gmvi.save_index(index, self._path("index.faiss"))
            return {"index_type": itype, "index_params": params}

        self._timed("index", build, progress)

    def _stage_recall(self, progress=None):
        self._require("index")

        def recall(progress):
            dists, idx = self._recall(self._embeddings("generated"))
            np.savez(self._path("recall.npz"), dists=dists, idx=idx)

        self._timed("recall", recall, progress)

    def _stage_rerank(self, progress=None):
        self._require("recall")

        def rerank(progress):
            rec = np.load(self._path("recall.npz"))
            gen_paths = self.generated_view.values("filepath")
            dists, idx = self._rerank(rec["dists"], rec["idx"], gen_paths, progress)
            np.savez(self._path("rerank.npz"), dists=dists, idx=idx)

        self._timed("rerank", rerank, progress)

    def _stage_quality(self, progress=None):
        self._require("embed")
        if self.config.quality["name"] == "realism":
            self._require("recall")

        def score(progress):
            rec = None
            if self.config.quality["name"] == "realism":
                rec = np.load(self._path("recall.npz"))
            gen_paths = self.generated_view.values("filepath")
            q = self._quality(gen_paths, rec, progress)
            np.save(self._path("quality.npy"), q)
            return {"summary": _summary(q)}

        self._timed("quality", score, progress)

    # array-level steps, shared by the stages and by incremental updates -----

    def _recall(self, gen_emb):
        index = gmvi.load_index(self._path("index.faiss"))
        _, params = self._index_params()
        return gmvi.search(index, gen_emb, self.config.recall_k, params)

    def _rerank(self, dists, idx, gen_paths, progress, chunk=256):
        """Re-ranks recalled candidates and keeps the best ``k`` per row."""
        if self.reranker is not None:
            train_paths = np.array(self.train_view.values("filepath"), dtype=object)
            dists = np.empty(idx.shape, dtype=np.float32)
            with fou.ProgressBar(total=len(idx), progress=progress) as pb:
                for s in range(0, len(idx), chunk):
                    rows = idx[s : s + chunk]
                    dists[s : s + len(rows)] = self.reranker.distances(
                        gen_paths[s : s + len(rows)], train_paths[rows].tolist()
                    )
                    pb.update(len(rows))
        order = np.argsort(dists, axis=1, kind="stable")[:, : self.config.k]
        return np.take_along_axis(dists, order, axis=1), np.take_along_axis(idx, order, axis=1)

    def _quality(self, gen_paths, rec, progress, chunk=256):
        name = self.config.quality["name"]
        if name == "none":
            return np.ones(len(gen_paths), dtype=np.float32)
        if name == "realism":
            return self._realism(rec["dists"], rec["idx"])
        out = np.empty(len(gen_paths), dtype=np.float32)
        with fou.ProgressBar(total=len(gen_paths), progress=progress) as pb:
            for s in range(0, len(gen_paths), chunk):
                batch = gen_paths[s : s + chunk]
                out[s : s + len(batch)] = self.scorer.scores(batch)
                pb.update(len(batch))
        return np.maximum(out, 0)

    def _realism(self, dists, idx):
        """Realism from the recalled candidates' k-NN radii (see
        :func:`gmv_plugin.quality.realism_scores`)."""
        index = gmvi.load_index(self._path("index.faiss"))
        _, params = self._index_params()
        emb = self._embeddings("train")
        rows = np.unique(idx)
        k = min(REALISM_K + 1, emb.shape[0])
        radii, _ = gmvi.search(index, emb[rows], k, params)
        lookup = np.zeros(emb.shape[0], dtype=np.float32)
        lookup[rows] = radii[:, -1]
        return gmvq.realism_scores(dists, lookup[idx])

    def update(self, generated_view, progress=None):
        """Adds the samples of ``generated_view`` that the run has not valued
        yet: embeds, recalls, re-ranks and scores only those, then recomputes
        the values from all generated samples (Eq. 3 is a sum over them, so
        the result equals a full recomputation)."""
        for stage in STAGES[:-1]:
            self._require(stage)
        if generated_view._root_dataset is not self.dataset:
            raise ValueError("generated_view must come from dataset %r" % self.dataset.name)
        known = set(self._ids("generated").tolist())
        new = generated_view.exclude(list(known)) if known else generated_view
        if len(new) == 0:
            return self._save_results(reused=list(STAGES[:-1]))
        _validate_views(self.train_view, new)
        _check_files(new, "generated")
        start = time.perf_counter()
        model = None if self._model is None else gmve.resolve_model(self._model)
        tmp = self._path("embed_new.npy")
        new_ids, new_emb = gmve.embed_to_file(
            new, tmp, model=model, embeddings_field=self.config.embeddings_field,
            batch_size=self.config.batch_size, progress=_stage_progress(progress, "embed"),
        )
        t_embed = time.perf_counter() - start
        new_paths = new.values("filepath")
        t = time.perf_counter()
        r_dists, r_idx = self._recall(new_emb)
        t_recall = time.perf_counter() - t
        t = time.perf_counter()
        k_dists, k_idx = self._rerank(r_dists, r_idx, new_paths, _stage_progress(progress, "rerank"))
        t_rerank = time.perf_counter() - t
        t = time.perf_counter()
        q = self._quality(new_paths, {"dists": r_dists, "idx": r_idx}, _stage_progress(progress, "quality"))
        t_quality = time.perf_counter() - t

        def append_npz(name, dists, idx):
            old = np.load(self._path(name))
            np.savez(self._path(name), dists=np.concatenate([old["dists"], dists]),
                     idx=np.concatenate([old["idx"], idx]))

        gen_emb = np.concatenate([self._embeddings("generated"), new_emb])
        del new_emb
        np.save(self._path("embed_generated.npy"), gen_emb)
        os.remove(tmp)
        np.save(self._path("embed_generated_ids.npy"),
                np.concatenate([self._ids("generated"), np.array(new_ids)]))
        append_npz("recall.npz", r_dists, r_idx)
        append_npz("rerank.npz", k_dists, k_idx)
        np.save(self._path("quality.npy"), np.concatenate([np.load(self._path("quality.npy")), q]))

        added = list(getattr(self.config, "generated_added", None) or [])
        added.append(json.dumps(new._serialize()))
        self.config.generated_added = added
        self.dataset.update_run_config(self.key, self.config)
        self.generated_view = gmvruns.generated_view(self.dataset, self.config)
        self._digests = {}
        fps = self._fingerprints()
        for name, extra in (("embed_generated", t_embed), ("recall", t_recall), ("rerank", t_rerank), ("quality", t_quality)):
            info = dict(self.state.get(name, {}))
            info["fingerprint"] = fps[name]
            info["seconds"] = info.get("seconds", 0.0) + extra
            self.state[name] = info
        self._write_state()
        return self.run(stages=["values"], progress=progress)

    def _stage_values(self, progress=None):
        self._require("rerank")
        self._require("quality")

        def assign(progress):
            rr = np.load(self._path("rerank.npz"))
            dists, idx = rr["dists"], rr["idx"]
            q = np.load(self._path("quality.npy"))
            tau = resolve_temperature(dists, self.config.temperature)
            scores = contribution_scores(dists, q, tau)
            train_ids = self._ids("train")
            values, hits = accumulate_values(idx, scores, len(train_ids))
            self._write_fields(train_ids, self._ids("generated"), idx, dists, scores, q, values, hits, progress)
            return {"num_contributing": int((hits > 0).sum()), "temperature": tau}

        self._timed("values", assign, progress)

    def _write_fields(self, train_ids, gen_ids, idx, dists, scores, q, values, hits, progress):
        key = self.key
        old = gmvruns._existing_fields(self.dataset, key)
        if old:
            self.dataset.delete_sample_fields(old)
        gen_columns = {
            "contributors": lambda sl: train_ids[idx[sl]].tolist(),
            "distances": lambda sl: dists[sl].astype(float).tolist(),
            "scores": lambda sl: scores[sl].tolist(),
            "quality": lambda sl: q[sl].astype(float).tolist(),
        }
        train_columns = {
            "value": lambda sl: values[sl].tolist(),
            "hits": lambda sl: hits[sl].tolist(),
        }
        chunk = 50_000
        with fou.ProgressBar(total=len(gen_ids) + len(train_ids), progress=progress) as pb:
            for ids_all, columns in ((gen_ids, gen_columns), (train_ids, train_columns)):
                for s in range(0, len(ids_all), chunk):
                    ids = ids_all[s : s + chunk].tolist()
                    sl = slice(s, s + len(ids))
                    for suffix, column in columns.items():
                        self.dataset.set_values(
                            "%s_%s" % (key, suffix), dict(zip(ids, column(sl))),
                            key_field="id", progress=False,
                        )
                    pb.update(len(ids))

    def _save_results(self, reused):
        timings = {}
        for stage in STAGES:
            timings[stage] = float(sum(self.state.get(n, {}).get("seconds", 0.0) for n in _parts(stage)))
        index_info = self.state.get("index", {})
        results = gmvruns.GMValuationResults(
            self.dataset,
            self.config,
            self.key,
            timings=timings,
            reused=reused,
            num_train=len(self.train_view),
            num_generated=int(len(self._ids("generated"))),
            index_type=index_info.get("index_type"),
            index_params=index_info.get("index_params"),
            quality_summary=self.state.get("quality", {}).get("summary"),
            temperature=self.state.get("values", {}).get("temperature"),
            run_dir=self.dir,
        )
        self.dataset.register_run(self.key, self.config, overwrite=True, cleanup=False)
        self.dataset.save_run_results(self.key, results, overwrite=True, cache=False)
        return results


def _parts(stage):
    """The state entries of a stage: embedding has one per sample set."""
    return ("embed_train", "embed_generated") if stage == "embed" else (stage,)


def _stage_progress(progress, stage):
    """Progress callbacks see the running stage as ``pb.stage``."""
    if not callable(progress):
        return progress

    def callback(pb):
        pb.stage = stage
        progress(pb)

    return callback


def _summary(x):
    x = np.asarray(x, dtype=np.float64)
    return {"min": float(x.min()), "mean": float(x.mean()), "max": float(x.max())}


def update_values(samples, key, generated_view, progress=None):
    """Values the new samples of ``generated_view`` under existing run ``key``.

    Only the generated samples not yet valued by the run are embedded,
    recalled, re-ranked and scored; the embeddings and index of the training
    set are reused. Training values are then recomputed from all generated
    samples, equal to a full recomputation on the union.

    Returns:
        the run's :class:`gmv_plugin.runs.GMValuationResults`
    """
    return load_valuation(samples, key).update(generated_view, progress=progress)


def _stage_function(stage, doc):
    def fn(samples, key="gmv", progress=None, **updates):
        valuation = load_valuation(samples, key, **updates)
        return valuation.run(stages=[stage], force=True, progress=progress)

    fn.__name__ = doc[0]
    fn.__doc__ = doc[1]
    return fn


compute_embeddings = _stage_function("embed", ("compute_embeddings", "Embeds the training and generated samples of run ``key``."))
build_index = _stage_function("index", ("build_index", "Builds the recall index of run ``key`` over its training embeddings."))
recall_contributors = _stage_function("recall", ("recall_contributors", "Recalls ``recall_k`` candidates per generated sample of run ``key``."))
rerank_contributors = _stage_function("rerank", ("rerank_contributors", "Re-ranks the candidates of run ``key`` and keeps the top ``k``."))
score_quality = _stage_function("quality", ("score_quality", "Scores the quality of the generated samples of run ``key``."))
assign_values = _stage_function("values", ("assign_values", "Computes Eq. 3/4 for run ``key`` and writes its fields."))
