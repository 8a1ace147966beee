"""The GMValuator pipeline: embed, index, recall, re-rank, quality, values.

:func:`compute_values` runs everything; each stage is also its own call
(:func:`compute_embeddings`, :func:`build_index`, :func:`recall_contributors`,
:func:`rerank_contributors`, :func:`score_quality`, :func:`assign_values`) on a
run created by :func:`init_valuation`, so operators can run them separately.
Intermediate arrays live in the run's store (:mod:`gmv_plugin.store`) with a
fingerprint of what produced them: a stage whose inputs and parameters are
unchanged is reloaded, not recomputed (e.g. changing only the re-ranker keeps
embeddings and index). Every call holds the run's lock and changes the run
in one atomic commit; fields are written only by the last stage.
"""

import hashlib
import json
import logging
import os
import shutil
import time

import numpy as np
import pymongo.errors
import fiftyone.core.utils as fou

from gmv_plugin import arrays as gmvarrays
from gmv_plugin import brain as gmvb
from gmv_plugin import bulk as gmvbulk
from gmv_plugin import cleansing as gmvcl
from gmv_plugin import copies as gmvc
from gmv_plugin import embeddings as gmve
from gmv_plugin import index as gmvi
from gmv_plugin import quality as gmvq
from gmv_plugin import rerank as gmvr
from gmv_plugin import runs as gmvruns
from gmv_plugin import store as gmvstore
from gmv_plugin import validation as gmvval
from gmv_plugin.faults import crashpoint
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
    temperature="auto",
    batch_size=64,
    overwrite=False,
    progress=None,
):
    """Values every training sample from the generated samples (GMValuator).

    Args:
        train_view: the training samples (a dataset or view)
        generated_view: the generated samples, from the same dataset
        key ("gmv"): the run key; fields are named ``{key}_value``,
            ``{key}_hits``, ``{key}_cleansing``, ``{key}_copied_by``
            (training) and ``{key}_contributors``, ``{key}_distances``,
            ``{key}_scores``, ``{key}_quality``, ``{key}_copy_score``,
            ``{key}_is_copy`` (generated); see :mod:`gmv_plugin.cleansing`
        model ("vgg16-imagenet-torch"): the encoder: ``"pixels"`` (built-in,
            weight-free), a FiftyOne zoo model name, or a FiftyOne ``Model``
        embeddings_field (None): a field holding embeddings to use, or where
            to store those computed with ``model``
        index ("auto"): the recall index, one of ``auto|flat|pq|ivfpq|brain``;
            ``brain`` recalls through an existing FiftyOne Brain similarity
            index over the training samples, whose model or embeddings field
            then embeds the generated samples (leave ``model`` and
            ``embeddings_field`` unset); see :mod:`gmv_plugin.brain`
        index_params (None): dict of ``M``, ``nbits``, ``nlist``, ``nprobe``,
            ``refine``, ``train_size``; see :func:`gmv_plugin.index.default_params`;
            for ``brain``: ``brain_key`` (required) and ``batch_size``
        rerank ("none"): ``none|l2|lpips|dreamsim`` or a ``Reranker``
        rerank_params (None): re-ranker options (e.g. ``size``, ``net``)
        quality ("none"): ``none|realism|maniqa``, another pyiqa
            no-reference metric, or a ``QualityScorer``
        quality_params (None): quality model options
        k (50): contributors per generated image (the set P_j)
        recall_k (None): candidates recalled before re-ranking (>= k);
            defaults to ``k``, as in the paper
        temperature ("auto"): tau in ``exp(-d / tau)``; ``"auto"`` uses the
            median spread of the contributor distances (the default, chosen
            by ``benchmarks/truth.py``: at the paper's 1, RMS pixel or LPIPS
            distances in [0, 1] spread each image's credit almost evenly and
            a copying generator goes undetected); 1 is the paper
        batch_size (64): batch size of the models
        overwrite (False): whether to replace an existing run with this key
        progress (None): whether to render progress bars (True/False), use
            FiftyOne's default (None), or a callback taking a progress bar

    Returns:
        a :class:`gmv_plugin.runs.GMValuationResults`
    """
    params = _model_params(locals())
    dataset = train_view._root_dataset
    gmvval.check_key(dataset, key, overwrite=overwrite)
    with gmvstore.writing(dataset, key, "compute_values") as lock:
        _sweep()
        valuation = _prepare(train_view, generated_view, key, overwrite, params, progress=progress)
        return valuation.run(progress=progress, lock=lock)


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
    temperature="auto",
    batch_size=64,
    overwrite=False,
    _generated_added=None,
):
    """Validates the inputs and registers a run, without computing anything.

    Takes the arguments of :func:`compute_values` and returns a
    :class:`Valuation` whose stages can be run one by one (e.g. with
    :func:`compute_embeddings`, then :func:`build_index`, ...).
    """
    params = _model_params(locals())
    dataset = train_view._root_dataset
    gmvval.check_key(dataset, key, overwrite=overwrite)
    with gmvstore.writing(dataset, key, "init_valuation") as lock:
        valuation = _prepare(train_view, generated_view, key, overwrite, params, _generated_added)
        valuation.commit(lock, reused=[])
    return valuation


def _model_params(scope):
    """The valuation parameters among a caller's arguments."""
    skip = ("train_view", "generated_view", "key", "overwrite", "progress", "_generated_added")
    return {k: v for k, v in scope.items() if k not in skip}


def _prepare(train_view, generated_view, key, overwrite, params, generated_added=None, progress=None):
    """Validates everything before any work; returns an unregistered
    :class:`Valuation`."""
    dataset = train_view._root_dataset
    sides = _validate_views(train_view, generated_view, field=params["embeddings_field"])
    gmvval.check_key(dataset, key, overwrite=overwrite)
    p = params
    gmvval.check_params(
        n_train=len(sides[0][0]), k=p["k"], recall_k=p["recall_k"], temperature=p["temperature"],
        index=p["index"], index_params=p["index_params"], rerank=p["rerank"],
        rerank_params=p["rerank_params"], quality=p["quality"], quality_params=p["quality_params"],
        batch_size=p["batch_size"], embeddings_field=p["embeddings_field"], progress=progress,
        dim=_known_dim(p["model"]),
    )
    if p["index"] == "brain":
        p = dict(p, **gmvb.run_spec(
            dataset, p["index_params"], model=p["model"], embeddings_field=p["embeddings_field"],
            quality=p["quality"], default_model=gmve.DEFAULT_MODEL,
        ))
    model = p["model"]
    if model is None and p["embeddings_field"] is None:
        raise ValueError("Provide a model, or model=None with an existing embeddings_field")
    if isinstance(model, str) and model not in gmve.BUILTIN_MODELS:
        gmve.resolve_model(model)  # fails fast on unknown names, missing weights
    reranker = gmvr.get_reranker(p["rerank"], **(p["rerank_params"] or {}))
    if reranker is not None:
        reranker.check()
    scorer = gmvq.get_quality(p["quality"], **(p["quality_params"] or {}))
    if isinstance(scorer, gmvq.QualityScorer):
        scorer.check()
    temperature = p["temperature"]
    config = gmvruns.GMValuationConfig(
        train_view=json.dumps(train_view._serialize()),
        generated_view=json.dumps(generated_view._serialize()),
        model=gmve.model_config(model),
        embeddings_field=p["embeddings_field"],
        index=p["index"],
        index_params=dict(p["index_params"] or {}),
        rerank=reranker.config() if reranker is not None else {"name": "none"},
        quality=_quality_config(scorer),
        k=p["k"],
        recall_k=p["k"] if p["recall_k"] is None else p["recall_k"],
        temperature=temperature if temperature == "auto" else float(temperature),
        batch_size=int(p["batch_size"]),
        generated_added=list(generated_added or []),
    )
    # the run's generated view adds the samples of later updates to this one
    sides = sides if not generated_added else (sides[0], None)
    return Valuation(dataset, key, config=config, model=model, reranker=reranker, scorer=scorer,
                     sides=sides)


def _sweep():
    try:
        gmvstore.cleanup_runs()
    except Exception as e:  # housekeeping must never fail a valuation
        logger.warning("Could not sweep old run files: %s", e)


def _known_dim(model):
    """The embedding dimension when it is known without running the model."""
    if model == "pixels":
        model = gmve.PixelEmbedder()
    if isinstance(model, gmve.PixelEmbedder):
        # "auto" is size**2 (all grayscale) or 3 * size**2; divisors of the
        # first divide both
        return model.size * model.size * (3 if model.mode == "RGB" else 1)
    return None
def load_valuation(samples, key, **updates):
    """Loads run ``key`` for running stages, applying config ``updates``
    (e.g. ``rerank="l2"``) with the same validation as :func:`init_valuation`.
    Call it holding the run's lock (:func:`gmv_plugin.store.writing`)."""
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
    if "k" in updates and "recall_k" not in updates and config.recall_k == config.k:
        params["recall_k"] = None
    params.update(updates)
    train_view = gmvruns.train_view(dataset, config)
    generated_view = gmvruns._load_view(dataset, config.generated_view)
    return _prepare(
        train_view, generated_view, key, True, params, getattr(config, "generated_added", None)
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


def _validate_views(train_view, generated_view, field=None):
    """Checks the two sample sets; returns their ``(ids, paths, hashes of
    field)`` (see :func:`_read_side`), read once."""
    if train_view._root_dataset is not generated_view._root_dataset:
        raise ValueError(
            "train_view and generated_view must come from the same dataset; got "
            "%r and %r" % (train_view._root_dataset.name, generated_view._root_dataset.name)
        )
    train = _read_side(train_view, field)
    if not train[0]:
        raise ValueError("train_view is empty")
    gen = _read_side(generated_view, field)
    if not gen[0]:
        raise ValueError("generated_view is empty")
    overlap = set(gen[0]).intersection(train[0])
    if overlap:
        raise ValueError(
            "%d samples are in both train_view and generated_view, e.g. %s"
            % (len(overlap), sorted(overlap)[:3])
        )
    return train, gen


def _read_side(view, field=None):
    """``(ids, paths, hashes)`` of ``view`` in one pass; ``hashes`` (None
    without ``field``) are the database's hashes of each sample's ``field``
    value, so that edited embeddings change a sample's key without being
    read; random where the database cannot hash (nothing is reused then)."""
    if field is None:
        return list(gmve.read_ids_paths(view)) + [None]
    db_field = view._handle_db_field(field) if hasattr(view, "_handle_db_field") else field
    ids, paths, hashes = [], [], []
    try:
        with gmvbulk.paused_gc():
            for d in view._aggregate(pipeline=[{"$project": {
                    "_id": 1, "filepath": 1, "h": {"$toHashedIndexKey": "$" + db_field}}}]):
                ids.append(str(d["_id"]))
                paths.append(d.get("filepath"))
                hashes.append(d.get("h"))
    except pymongo.errors.OperationFailure:  # a server without $toHashedIndexKey
        ids, paths = gmve.read_ids_paths(view)
        hashes = np.random.default_rng().integers(0, 2**62, len(ids)).tolist()
    return ids, paths, hashes


def _digest(obj):
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class SampleSet(object):
    """One side of a run (training or generated) as stored arrays see it:
    ids, file paths and per-sample keys (id, path, file size and mtime when
    images are read, the embeddings' hash when they come from a field) in
    array row order. ``alive`` masks rows whose samples were deleted since
    (None: all alive)."""

    def __init__(self, ids, paths, keys, alive=None):
        self.ids = np.asarray(ids, dtype=object)
        self.paths = np.asarray(paths, dtype=object)
        self.keys = np.asarray(keys, dtype=np.uint64)
        self.alive = alive
        self.digest = hashlib.sha1(np.sort(self.keys).tobytes()).hexdigest()

    @classmethod
    def read(cls, view, what, stat=True, field=None, read=None):
        """Reads ids and paths (unless given as ``read``, from
        :func:`_read_side`); with ``stat``, every file must exist and its size
        and mtime enter the keys (edited images count as changed); with
        ``field``, the hash of its value does (edited embeddings count too)."""
        ids, paths, hashes = read if read is not None else _read_side(view, field)
        if field is None:
            hashes = None
        elif hashes is None:
            hashes = _read_side(view, field)[2]
        keys = np.empty(len(ids), dtype=np.uint64)
        missing = []
        with gmvbulk.paused_gc():
            cls._keys(ids, paths, hashes, stat, keys, missing)
        if missing:
            raise ImageReadError(
                "%d %s image files are missing, e.g. %s" % (len(missing), what, missing[:5])
            )
        return cls(ids, paths, keys)

    @staticmethod
    def _keys(ids, paths, hashes, stat, keys, missing):
        for i, (sid, path) in enumerate(zip(ids, paths)):
            tag = path if hashes is None else "%s|%s" % (path, hashes[i])
            if stat:
                try:
                    st = os.stat(path)
                    sig = "%s|%s|%d|%d" % (sid, tag, st.st_size, st.st_mtime_ns)
                except OSError:
                    missing.append(path)
                    continue
            else:
                sig = "%s|%s" % (sid, tag)
            keys[i] = int.from_bytes(hashlib.blake2b(sig.encode(), digest_size=8).digest(), "little")

    def __len__(self):
        return len(self.ids)

    def alive_rows(self):
        return np.arange(len(self)) if self.alive is None else np.flatnonzero(self.alive)


PARTS = ("embed_train", "embed_generated", "index", "recall", "rerank", "quality", "values",
         "truth_train", "truth_generated")
# per side: the truth columns' per-image features (gmv_plugin.cleansing.image_features)
TRUTH_PARTS = {"train": "truth_train", "gen": "truth_generated"}


def _parts(stage):
    """The manifest entries of a stage: embedding has one per sample set."""
    return ("embed_train", "embed_generated") if stage == "embed" else (stage,)


class Valuation(object):
    """A run whose stages can be computed one at a time.

    Stage outputs are immutable files of the run's :class:`RunStore`, each
    recorded with a fingerprint of its parameters and inputs; a stage whose
    fingerprint is found is reused. Nothing becomes part of the run until
    :meth:`commit`.
    """

    def __init__(self, dataset, key, config, model=None, reranker=None, scorer=None, sides=(None, None)):
        self.dataset = dataset
        self.key = key
        self.config = config
        self._model = model
        self.reranker = reranker
        self.scorer = scorer
        self.store = gmvstore.RunStore(dataset, key)
        self.manifest = self.store.manifest()
        self._adopt_cloned_arrays()
        self.pending = {}
        self._staged = None
        self.train_view = gmvruns.train_view(dataset, config)
        self.generated_view = gmvruns.generated_view(dataset, config)
        from_field = bool(config.embeddings_field) and self._field_complete()
        self.reads_images = self._needs_images(from_field)
        # what a side's keys cover: its files when they are read, its stored embeddings
        self._keys = dict(stat=self.reads_images, field=config.embeddings_field if from_field else None)
        self.train = self._resolve("embed_train", SampleSet.read(self.train_view, "training", read=sides[0], **self._keys))
        self._gen_read = SampleSet.read(self.generated_view, "generated", read=sides[1], **self._keys)
        self.gen = self._resolve("embed_generated", self._gen_read)

    # inputs ----------------------------------------------------------------

    def _needs_images(self, from_field):
        c = self.config
        embeds = c.model.get("name") is not None and not from_field
        return embeds or c.rerank["name"] != "none" or c.quality["name"] not in gmvq.QUALITY_BUILTINS

    def _field_complete(self):
        field = self.config.embeddings_field
        for view in (self.train_view, self.generated_view):
            if not view.has_field(field) or view.exists(field, False).count():
                return False
        return True

    def _emb_digest(self):
        spec = {"model": self.config.model, "embeddings_field": self.config.embeddings_field}
        if self._brain_key():
            spec["brain"] = True  # the training side keeps ids only
        return _digest(spec)

    def _brain_key(self):
        return self.config.index_params.get("brain_key") if self.config.index == "brain" else None

    def _brain_recall(self):
        """The Brain index of an ``index="brain"`` run, checked against the
        run's training samples (see :class:`gmv_plugin.brain.BrainRecall`)."""
        if self.__dict__.get("_brain") is None:
            self._brain = gmvb.BrainRecall(
                self.dataset, self._brain_key(), self.train.ids,
                batch_size=self.config.index_params.get("batch_size"), required=self.train.alive,
            )
        return self._brain

    def _resolve(self, part, current):
        """The stored side ``current`` matches: the same samples, or a subset
        of them (deleted samples are masked, not recomputed)."""
        for entry in self._entries(part):
            if entry.get("emb") != self._emb_digest():
                continue
            if entry.get("side_digest") == current.digest:
                return self._stored_side(entry, None)
            stored_keys = self.store.load_array(entry["files"]["keys"], mmap=False)
            if np.isin(current.keys, stored_keys).all():
                alive = np.isin(stored_keys, current.keys)
                logger.info("Run %r: %d samples of %s were deleted since it was computed; "
                            "they are left out", self.key, int((~alive).sum()), part[6:])
                return self._stored_side(entry, alive)
        return current

    def _stored_side(self, entry, alive):
        files = entry["files"]
        side = SampleSet(*(self.store.load_array(files[f], mmap=False) for f in ("ids", "paths", "keys")),
                         alive=alive)
        side.digest = entry["side_digest"]
        return side

    def _stored_generated(self, present_keys):
        """The stored generated side, masked to the samples among
        ``present_keys`` (None when nothing matching is stored)."""
        for entry in self._entries("embed_generated"):
            if entry.get("emb") == self._emb_digest():
                alive = np.isin(self.store.load_array(entry["files"]["keys"], mmap=False), present_keys)
                return self._stored_side(entry, None if alive.all() else alive)
        return None

    def _entries(self, part):
        out = []
        if part in self.__dict__.get("pending", {}):
            out.append(self.pending[part])
        for section in ("stages", "pending"):
            entry = self.manifest[section].get(part)
            if entry is not None:
                out.append(entry)
        return out

    def _adopt_cloned_arrays(self):
        """A cloned dataset's run starts with the source run's arrays."""
        if self.manifest["stages"] or self.key not in gmvruns.list_runs(self.dataset):
            return
        source = self._source_dataset_id()
        if source is None:
            return
        src = os.path.join(gmvstore.dataset_dir(source), self.key)
        if not os.path.isfile(os.path.join(src, gmvstore.MANIFEST)):
            return
        manifest = gmvstore.read_json(os.path.join(src, gmvstore.MANIFEST))
        os.makedirs(self.store.dir, exist_ok=True)
        for name in self.store.referenced({"stages": manifest["stages"]}) - {gmvstore.MANIFEST}:
            dst = self.store.path(name)
            if not os.path.exists(dst):
                try:
                    os.link(os.path.join(src, name), dst)
                except OSError:
                    shutil.copy2(os.path.join(src, name), dst)
        manifest["pending"] = {}
        self.store.write_manifest(manifest)
        self.manifest = manifest
        logger.info("Run %r: using the arrays of the dataset it was cloned from (%s)", self.key, source)

    def _source_dataset_id(self):
        try:
            results = self.dataset.load_run_results(self.key, cache=False)
        except Exception:
            return None
        source = getattr(results, "dataset_id", None)
        return source if source and source != str(self.dataset._doc.id) else None

    def _fingerprints(self):
        c = self.config
        fp = {}
        fp["embed_train"] = _digest([self._emb_digest(), self.train.digest])
        fp["embed_generated"] = _digest([self._emb_digest(), self.gen.digest])
        fp["index"] = _digest([fp["embed_train"], c.index, c.index_params])
        fp["recall"] = _digest([fp["index"], fp["embed_generated"], c.recall_k])
        fp["rerank"] = _digest([fp["recall"], c.rerank, c.k])
        base = fp["rerank"] if c.quality["name"] == "realism" else fp["embed_generated"]
        fp["quality"] = _digest([base, c.quality])
        fp["values"] = _digest([fp["rerank"], fp["quality"], c.temperature])
        for what, part in TRUTH_PARTS.items():
            fp[part] = _digest(["truth", gmvcl.FEATURES_VERSION, getattr(self, what).digest])
        return fp

    def entry(self, part):
        """The stored output of ``part`` for the current inputs, or None."""
        fp = self._fingerprints()[part]
        for entry in self._entries(part):
            if entry.get("fingerprint") == fp:
                return entry
        return None

    def is_fresh(self, stage):
        """Whether ``stage``'s stored outputs match the current inputs."""
        return all(self.entry(p) is not None for p in _parts(stage))

    def _require(self, stage):
        if self.is_fresh(stage):
            return
        source = self._source_dataset_id() if not self.manifest["stages"] else None
        if source is not None:
            raise ValueError(
                "Run %r was cloned from dataset %s, whose arrays are gone; its fields are "
                "intact. Recompute it with compute_values(..., overwrite=True) or stage by "
                "stage from 'embed' (stages in order: %s)" % (self.key, source, STAGES)
            )
        raise ValueError(
            "Stage %r of run %r is missing or out of date (its inputs or parameters "
            "changed, e.g. training samples were added or edited); run it first "
            "(stages in order: %s)" % (stage, self.key, STAGES)
        )

    def _put(self, part, seconds, files, **info):
        entry = dict(fingerprint=self._fingerprints()[part], seconds=seconds, files=files, **info)
        self.store.add_pending(part, entry)
        self.pending[part] = entry
        crashpoint("stage." + part)
        return entry

    def _array(self, part, name, mmap=True):
        return self.store.load_array(self.entry(part)["files"][name], mmap=mmap)

    # running ---------------------------------------------------------------

    def run(self, stages=None, force=False, progress=None, lock=None):
        """Runs ``stages`` (default: all, in order), skipping fresh ones unless
        ``force``, commits and returns the run's results."""
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
            getattr(self, "_stage_" + stage)(progress=_stage_progress(progress, stage), force=force)
        return self.commit(lock, reused)

    def commit(self, lock, reused):
        """Makes the current config, the fresh stage outputs and any staged
        fields the run, atomically; returns the results."""
        if lock is None:
            raise ValueError("commit needs the run's lock (gmv_plugin.store.writing)")
        stages = {p: self.entry(p) for p in PARTS if self.entry(p) is not None}
        results = self._results(stages, reused)
        staging, fields = self._staged or (None, None)
        gmvstore.commit(
            self.dataset, self.key, lock, {"stages": stages}, self.config,
            results.serialize(), staging=staging, fields=fields,
        )
        self.manifest = self.store.manifest()
        self.pending = {}
        self._staged = None
        return gmvruns.load_results(self.dataset, self.key)

    def _results(self, stages, reused):
        timings = {
            s: float(sum(stages[p]["seconds"] for p in _parts(s) if p in stages)) for s in STAGES
        }
        index = stages.get("index", {})
        values = stages.get("values", {})
        return gmvruns.GMValuationResults(
            self.dataset, self.config, self.key,
            timings=timings,
            reused=reused,
            num_train=int(values.get("num_train", len(self.train.alive_rows()))),
            num_generated=int(values.get("num_generated", len(self.gen.alive_rows()))),
            num_contributing=values.get("num_contributing"),
            index_type=index.get("index_type"),
            index_params=index.get("index_params"),
            quality_summary=stages.get("quality", {}).get("summary"),
            temperature=values.get("temperature"),
            truth=values.get("truth"),
            dataset_id=str(self.dataset._doc.id),
        )

    def _timed(self, part, fn, progress):
        start = time.perf_counter()
        files, info = fn(progress)
        return self._put(part, time.perf_counter() - start, files, **info)

    # stages ------------------------------------------------------------------

    def _stage_embed(self, progress=None, force=False, parts=("embed_train", "embed_generated")):
        model = None
        brain_key = self._brain_key()
        if brain_key is None and self._model is not None and not (
            self.config.embeddings_field and self._field_complete()
        ):
            model = self._resolved_model()
        todo = [part for part in parts if force or self.entry(part) is None]
        with gmve.decode_pool(isinstance(model, gmve.PixelEmbedder) and bool(todo)):  # one pool for both sides
            self._embed_sides(model, brain_key, progress, force, parts)

    def _embed_sides(self, model, brain_key, progress, force, parts):
        if isinstance(model, gmve.PixelEmbedder) and self.gen.alive is None and \
                "embed_generated" in parts and (self.entry("embed_generated") is None or force):
            gmve.prefetch_paths(self.gen.paths.tolist(), model, truth={"stats": False})
        for part, what, view in (("embed_train", "train", self.train_view),
                                 ("embed_generated", "gen", self.generated_view)):
            if part not in parts or self.entry(part) is not None and not force:
                continue
            side = getattr(self, what)
            if side.alive is not None:  # a stored subset: embed what is there now
                side = SampleSet.read(view, what, **self._keys)
                setattr(self, what, side)
            start = time.perf_counter()
            truth = {"stats": what == "train"}  # the pixel embedder's workers compute them too
            if brain_key is not None and what == "train":
                files, ids = {}, side.ids  # the training vectors live in the Brain index
            else:
                name, tmp = self.store.new_file(part, ".npy")
                if brain_key is not None:
                    ids, emb = gmvb.embed_queries(
                        view, brain_key, tmp, batch_size=self.config.batch_size, progress=progress,
                    )
                else:
                    ids, emb = gmve.embed_to_file(
                        view, tmp, model=model, embeddings_field=self.config.embeddings_field,
                        batch_size=self.config.batch_size, progress=progress,
                        ids=side.ids.tolist(), paths=side.paths.tolist(), truth=truth,
                    )
                if list(ids) != side.ids.tolist():
                    raise RuntimeError("The %s samples changed while they were embedded; try again" % what)
                if not isinstance(model, gmve.PixelEmbedder):  # pixels are finite by construction
                    _check_finite(emb, side.ids)
                del emb
                files = {"emb": self.store.seal(name)}
            for label, arr in (("ids", side.ids.astype(str)), ("paths", side.paths.astype(str)), ("keys", side.keys)):
                files[label] = self.store.save_array("%s_%s" % (part, label), arr)
            self._put(part, time.perf_counter() - start, files, count=len(ids),
                      side_digest=side.digest, emb=self._emb_digest())
            if "features" in truth and self.reads_images:  # side.keys know the files' sizes and mtimes
                self._put_truth(what, side.keys, truth["features"], 0.0)

    def _resolved_model(self):
        """The encoder; a pixel embedder in ``"auto"`` mode follows the mode
        of the stored training embeddings, so every part of a run has one
        dimension."""
        model = gmve.resolve_model(self._model)
        if isinstance(model, gmve.PixelEmbedder) and model.mode == "auto" and self.entry("embed_train"):
            d = self._array("embed_train", "emb").shape[1]
            model.resolved = "L" if d == model.dim("L") else "RGB"
        return model

    def _index_params(self):
        emb = self._array("embed_train", "emb")
        n, d = emb.shape
        m, k = len(self.gen), self.config.recall_k
        itype = gmvi.resolve_index_type(self.config.index, n, d=d, n_queries=m, k=k,
                                        params=self.config.index_params)
        return itype, gmvi.default_params(itype, n, d, self.config.index_params, n_queries=m, k=k)

    def _stage_index(self, progress=None, force=False):
        self._require("embed_train")

        def build(progress):
            if self._brain_key():
                # nothing to build: check the Brain index covers the training samples
                return {}, {"index_type": "brain", "index_params": self._brain_recall().describe()}
            itype, params = self._index_params()
            index = gmvi.build_index(self._array("embed_train", "emb"), itype, params, progress=progress,
                                     k=self.config.recall_k, n_queries=len(self.gen))
            name, tmp = self.store.new_file("index", ".faiss")
            gmvi.save_index(index, tmp)
            info = gmvi.index_info(index)  # calibrated nprobe/refine, GPU placement
            return {"index": self.store.seal(name)}, {
                "index_type": itype, "index_params": info["params"],
                "calibration": info["calibration"], "placement": info["placement"]}

        self._timed("index", build, progress)

    def _stage_recall(self, progress=None, force=False):
        self._require("index")

        def recall(progress):
            dists, idx = self._recall(self._array("embed_generated", "emb"))
            return self._save(recall=(dists, idx)), {}

        self._timed("recall", recall, progress)

    def _save(self, **pairs):
        files = {}
        for label, (dists, idx) in pairs.items():
            files["dists"] = self.store.save_array(label + "_dists", dists)
            files["idx"] = self.store.save_array(label + "_idx", idx)
        return files

    def _stage_rerank(self, progress=None, force=False):
        self._require("recall")

        def rerank(progress):
            dists, idx = self._rerank(
                self._array("recall", "dists", mmap=False), self._array("recall", "idx", mmap=False),
                self.gen.paths, progress,
            )
            return self._save(rerank=(dists, idx)), {}

        self._timed("rerank", rerank, progress)

    def _stage_quality(self, progress=None, force=False):
        self._require("embed")
        if self.config.quality["name"] == "realism":
            self._require("recall")

        def score(progress):
            rec = None
            if self.config.quality["name"] == "realism":
                rec = {"dists": self._array("recall", "dists", mmap=False),
                       "idx": self._array("recall", "idx", mmap=False)}
            q = self._quality(self.gen.paths, rec, progress)
            return {"q": self.store.save_array("quality", q)}, {"summary": _summary(q)}

        self._timed("quality", score, progress)

    def _stage_values(self, progress=None, force=False):
        self._require("rerank")
        self._require("quality")

        def assign(progress):
            dists = self._array("rerank", "dists", mmap=False)
            idx = self._array("rerank", "idx", mmap=False)
            q = self._array("quality", "q", mmap=False)
            tau = resolve_temperature(dists, self.config.temperature)
            out = compute_credit(dists, idx, q, tau, len(self.train), self.train.alive, self.gen.alive)
            truth, source = self._truth_columns(out["values"])
            self._staged = self._stage_fields(out, dists, idx, q, progress, truth)
            files = {
                "values": self.store.save_array("values", out["values"]),
                "hits": self.store.save_array("hits", out["hits"]),
            }
            info = {
                "temperature": tau,
                "num_contributing": int((out["hits"] > 0).sum()),
                "num_train": int(len(self.train.alive_rows())),
                "num_generated": int(len(self.gen.alive_rows())),
                "truth": {"source": source, "num_copies": int(truth["generated"]["is_copy"].sum()),
                          "copy_search": truth["search"]},
            }
            return files, info

        self._timed("values", assign, progress)

    def _truth_columns(self, values):
        """Cleansing scores and copy flags (:func:`gmv_plugin.cleansing.truth_columns`)
        of the alive samples, from their images when the run reads images
        (not from an embeddings field alone), else from the embeddings.
        Image features are stored with the run and read only for images not
        seen before (keyed by the samples' keys, which know the files when
        the run reads images). Returns ``(columns, "images" | "embeddings" |
        "values")``: "values" (no copy flags) for a Brain index's run whose
        image files are gone."""
        train_rows, gen_rows = self.train.alive_rows(), self.gen.alive_rows()
        stored = "emb" in self.entry("embed_train")["files"]  # not in a Brain index's run
        if not self.reads_images and not stored and all(  # a Brain index's run: no training vectors
                os.path.isfile(p) for side, rows in ((self.train, train_rows), (self.gen, gen_rows))
                for p in side.paths[rows]):
            try:  # its keys do not know the files: read them, store nothing
                return gmvcl.truth_columns(
                    values[train_rows], train_paths=self.train.paths[train_rows].tolist(),
                    gen_paths=self.gen.paths[gen_rows].tolist(),
                ), "images"
            except ImageReadError as e:
                logger.warning("Run %r: no cleansing or copy flags from images: %s", self.key, e)
        if self.reads_images:  # every file existed when the samples were read
            try:
                train = self._truth_features("train", self.train.paths[train_rows], self.train.keys[train_rows])
                gen = self._truth_features("gen", self.gen.paths[gen_rows], self.gen.keys[gen_rows])
                return gmvcl.truth_from_features(values[train_rows], train, gen), "images"
            except ImageReadError as e:
                logger.warning("Run %r: cleansing and copy flags from embeddings: %s", self.key, e)
        if not stored:
            return gmvcl.truth_columns(values[train_rows], gen_emb=np.zeros((len(gen_rows), 0))), "values"
        train_emb = self._array("embed_train", "emb")
        neighbours = None
        if self.train.alive is not None:
            train_emb = gmvarrays.gather_rows(train_emb, train_rows)
        elif self.entry("index").get("index_type") == "flat":  # exact: no second search
            neighbours = tuple(self._array("recall", a, mmap=False)[gen_rows] for a in ("dists", "idx"))
        gen_emb = np.asarray(self._array("embed_generated", "emb")[gen_rows])
        return gmvcl.truth_columns(values[train_rows], train_emb=train_emb, gen_emb=gen_emb,
                                   gen_neighbours=neighbours), "embeddings"

    def _truth_features(self, what, paths, keys):
        """:func:`gmv_plugin.cleansing.image_features` of ``paths`` (``keys``:
        their samples' keys, which change with the files): stored rows of
        the same keys are reused, the others read; a changed set of rows is
        stored as a new entry."""
        part, stats = TRUTH_PARTS[what], what == "train"
        best = None
        for entry in self._entries(part):
            if entry.get("version") != gmvcl.FEATURES_VERSION:
                continue
            stored = self.store.load_array(entry["files"]["keys"], mmap=False)
            if not len(stored):
                continue
            order = np.argsort(stored, kind="stable")
            pos = order[np.minimum(np.searchsorted(stored, keys, sorter=order), len(stored) - 1)]
            hit = stored[pos] == keys
            if best is None or hit.sum() > best[2].sum():
                best = (entry, pos, hit, len(stored))
        start = time.perf_counter()
        if best is not None:
            entry, pos, hit, n_stored = best
            names = ("desc", "stats") if stats else ("desc",)
            if hit.all() and n_stored == len(keys) and (pos == np.arange(len(keys))).all():
                feats = {name: self.store.load_array(entry["files"][name]) for name in names}
                if entry.get("fingerprint") != self._fingerprints()[part]:
                    self._put(part, 0.0, entry["files"], version=gmvcl.FEATURES_VERSION, count=len(keys))
                return feats  # the stored arrays as they are
        feats = {"desc": np.empty((len(keys), gmvc.DESCRIPTOR_SIZE**2), np.float32)}
        if stats:
            feats["stats"] = np.empty((len(keys), len(gmvcl.STATISTICS)))
        hit = np.zeros(len(keys), bool)
        if best is not None:
            entry, pos, hit, _ = best
            for name, arr in feats.items():
                arr[hit] = self.store.load_array(entry["files"][name])[pos[hit]]
        if not hit.all():
            new = gmvcl.read_features(paths[~hit], stats=stats)
            for name, arr in feats.items():
                arr[~hit] = new[name]
        self._put_truth(what, keys, feats, time.perf_counter() - start)
        return feats

    def _put_truth(self, what, keys, feats, seconds):
        part = TRUTH_PARTS[what]
        files = {"keys": self.store.save_array(part + "_keys", np.asarray(keys, dtype=np.uint64))}
        for name in ("desc", "stats"):
            if name in feats:
                files[name] = self.store.save_array("%s_%s" % (part, name), feats[name])
        self._put(part, seconds, files, version=gmvcl.FEATURES_VERSION, count=len(keys))

    def _stage_fields(self, out, dists, idx, q, progress, truth):
        train_rows = self.train.alive_rows()
        gen_rows = self.gen.alive_rows()
        train_ids = self.train.ids
        contributors, distances, scores = _contributor_lists(
            train_ids, idx[gen_rows], dists[gen_rows], out["scores"][gen_rows], out["kept"][gen_rows]
        )
        parts = [
            (train_ids[train_rows].tolist(), {
                "value": out["values"][train_rows], "hits": out["hits"][train_rows],
                "cleansing": truth["train"]["cleansing"], "copied_by": truth["train"]["copied_by"],
            }),
            (self.gen.ids[gen_rows].tolist(), {
                "contributors": contributors, "distances": distances, "scores": scores,
                "quality": q[gen_rows].astype(float),
                "copy_score": truth["generated"]["copy_score"], "is_copy": truth["generated"]["is_copy"],
            }),
        ]
        with fou.ProgressBar(total=len(train_rows) + len(gen_rows), progress=progress) as pb:
            staging = gmvstore.stage_fields(self.dataset, self.key, parts)
            pb.update(len(train_rows) + len(gen_rows))
        fields = ["%s_%s" % (self.key, s) for _, cols in parts for s in cols]
        return staging, fields

    # array-level steps, shared by the stages and by incremental updates -----

    def _recall(self, gen_emb):
        if self._brain_key():
            return self._brain_recall().search(gen_emb, self.config.recall_k)
        index = gmvi.load_index(self.store.path(self.entry("index")["files"]["index"]))
        _, params = self._index_params()
        return gmvi.search(index, gen_emb, self.config.recall_k, params,
                           vectors=self._array("embed_train", "emb"))

    def _rerank(self, dists, idx, gen_paths, progress, chunk=256):
        """Re-ranks recalled candidates and keeps the best ``k`` per row;
        candidates whose training samples were deleted go last."""
        alive = self.train.alive
        if self.reranker is not None:
            train_paths = self.train.paths
            dists = np.empty(idx.shape, dtype=np.float32)
            with fou.ProgressBar(total=len(idx), progress=progress) as pb:
                for s in range(0, len(idx), chunk):
                    rows = idx[s : s + chunk]
                    cand = train_paths[rows]
                    if alive is not None:  # deleted samples' files may be gone
                        dead = ~alive[rows]
                        cand = np.where(dead, np.asarray(gen_paths[s : s + len(rows)], dtype=object)[:, None], cand)
                    dists[s : s + len(rows)] = self.reranker.distances(
                        list(gen_paths[s : s + len(rows)]), cand.tolist()
                    )
                    pb.update(len(rows))
        if alive is not None:
            dists = np.where(alive[idx], dists, np.inf).astype(np.float32)
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
                batch = list(gen_paths[s : s + chunk])
                out[s : s + len(batch)] = self.scorer.scores(batch)
                pb.update(len(batch))
        return np.maximum(out, 0)

    def _realism(self, dists, idx):
        """Realism from the recalled candidates' k-NN radii (see
        :func:`gmv_plugin.quality.realism_scores`)."""
        index = gmvi.load_index(self.store.path(self.entry("index")["files"]["index"]))
        _, params = self._index_params()
        emb = self._array("embed_train", "emb")
        rows = np.unique(idx)
        k = min(REALISM_K + 1, emb.shape[0])
        radii, _ = gmvi.search(index, emb[rows], k, params, vectors=emb)
        lookup = np.zeros(emb.shape[0], dtype=np.float32)
        lookup[rows] = radii[:, -1]
        return gmvq.realism_scores(dists, lookup[idx])

    def update(self, generated_view, progress=None, lock=None):
        """Adds the samples of ``generated_view`` that the run has not valued
        yet: embeds, recalls, re-ranks and scores only those, drops generated
        samples deleted since, then recomputes the values from all generated
        samples (Eq. 3 is a sum over them, so the result equals a full
        recomputation)."""
        if generated_view._root_dataset is not self.dataset:
            raise ValueError(
                "generated_view must come from dataset %r; got a view of %r"
                % (self.dataset.name, generated_view._root_dataset.name)
            )
        view = SampleSet.read(generated_view, "generated", **self._keys)
        in_train = set(view.ids.tolist()).intersection(self.train.ids[self.train.alive_rows()].tolist())
        if in_train:
            raise ValueError(
                "generated_view contains %d training samples of run %r, e.g. %s"
                % (len(in_train), self.key, sorted(in_train)[:3])
            )
        # the run's generated samples as stored, less those deleted or edited since
        present = np.concatenate([self._gen_read.keys, view.keys])
        self.gen = self._stored_generated(present) or self.gen
        for stage in STAGES[:-1]:
            self._require(stage)
        is_new = ~np.isin(view.keys, self.gen.keys[self.gen.alive_rows()])
        if not is_new.any() and self.gen.alive is None:
            self._stage_values(progress=_stage_progress(progress, "values"))
            return self.commit(lock, reused=list(STAGES[:-1]))
        new = SampleSet(view.ids[is_new], view.paths[is_new], view.keys[is_new]) if is_new.any() else None
        new_ids = new.ids.tolist() if new is not None else []
        keep = self.gen.alive_rows()
        arrays = {
            "emb": self._array("embed_generated", "emb")[keep],
            "recall": (self._array("recall", "dists")[keep], self._array("recall", "idx")[keep]),
            "rerank": (self._array("rerank", "dists")[keep], self._array("rerank", "idx")[keep]),
            "q": self._array("quality", "q")[keep],
        }
        seconds = {p: self.entry(p)["seconds"] for p in ("embed_generated", "recall", "rerank", "quality")}
        if new is not None:
            t = time.perf_counter()
            name, tmp = self.store.new_file("embed_new", ".npy")
            if self._brain_key():
                ids, new_emb = gmvb.embed_queries(
                    self.dataset.select(new_ids, ordered=True), self._brain_key(), tmp,
                    batch_size=self.config.batch_size, progress=_stage_progress(progress, "embed"),
                )
            else:
                model = None if self._model is None else self._resolved_model()
                ids, new_emb = gmve.embed_to_file(
                    self.dataset.select(new_ids, ordered=True), tmp, model=model,
                    embeddings_field=self.config.embeddings_field, batch_size=self.config.batch_size,
                    progress=_stage_progress(progress, "embed"),
                )
            _check_finite(new_emb, np.asarray(ids, dtype=object))
            new_emb = np.array(new_emb)
            os.remove(tmp)
            seconds["embed_generated"] += time.perf_counter() - t
            t = time.perf_counter()
            r = self._recall(new_emb)
            seconds["recall"] += time.perf_counter() - t
            t = time.perf_counter()
            k = self._rerank(r[0], r[1], new.paths, _stage_progress(progress, "rerank"))
            seconds["rerank"] += time.perf_counter() - t
            t = time.perf_counter()
            q = self._quality(new.paths, {"dists": r[0], "idx": r[1]}, _stage_progress(progress, "quality"))
            seconds["quality"] += time.perf_counter() - t
            arrays = {
                "emb": np.concatenate([arrays["emb"], new_emb]),
                "recall": tuple(np.concatenate([a, b]) for a, b in zip(arrays["recall"], r)),
                "rerank": tuple(np.concatenate([a, b]) for a, b in zip(arrays["rerank"], k)),
                "q": np.concatenate([arrays["q"], q]),
            }
            added = list(getattr(self.config, "generated_added", None) or [])
            added.append(json.dumps(generated_view._serialize()))
            self.config.generated_added = added
        old = self.gen
        self.gen = SampleSet(
            np.concatenate([old.ids[keep], new.ids if new else []]),
            np.concatenate([old.paths[keep], new.paths if new else []]),
            np.concatenate([old.keys[keep], new.keys if new else np.array([], np.uint64)]),
        )
        files = {"emb": self.store.save_array("embed_generated", arrays["emb"])}
        for label, arr in (("ids", self.gen.ids.astype(str)), ("paths", self.gen.paths.astype(str)), ("keys", self.gen.keys)):
            files[label] = self.store.save_array("embed_generated_" + label, arr)
        self._put("embed_generated", seconds["embed_generated"], files, count=len(self.gen),
                  side_digest=self.gen.digest, emb=self._emb_digest())
        self._put("recall", seconds["recall"], self._save(recall=arrays["recall"]))
        self._put("rerank", seconds["rerank"], self._save(rerank=arrays["rerank"]))
        self._put("quality", seconds["quality"], {"q": self.store.save_array("quality", arrays["q"])},
                  summary=_summary(arrays["q"]))
        self._stage_values(progress=_stage_progress(progress, "values"))
        return self.commit(lock, reused=["index"])


def compute_credit(dists, idx, q, tau, num_train, train_alive=None, gen_alive=None):
    """Eq. 3/4 over the generated rows that are alive, with deleted training
    samples pruned from each contributor list (their credit goes to the
    remaining contributors).

    Returns:
        a dict of ``values`` and ``hits`` (per training row), ``scores``
        (per contributor) and ``kept`` (the contributor entries that count)
    """
    kept = np.ones(idx.shape, dtype=bool)
    if train_alive is not None:
        kept &= train_alive[idx]
    if gen_alive is not None:
        kept &= gen_alive[:, None]
    masked = np.where(kept, dists, np.inf)
    rows = kept.any(axis=1)
    scores = np.zeros(idx.shape, dtype=np.float64)
    if rows.any():
        scores[rows] = contribution_scores(masked[rows], q[rows], tau)
    values, hits = accumulate_values(idx[kept], scores[kept], num_train)
    return {"values": values, "hits": hits, "scores": scores, "kept": kept}


def _contributor_lists(train_ids, idx, dists, scores, kept):
    if kept.all():
        return train_ids[idx].tolist(), dists.astype(float).tolist(), scores.tolist()
    contributors, distances, credit = [], [], []
    for i, d, s, m in zip(idx, dists, scores, kept):
        contributors.append(train_ids[i[m]].tolist())
        distances.append(d[m].astype(float).tolist())
        credit.append(s[m].tolist())
    return contributors, distances, credit


def _check_finite(emb, ids, chunk=65_536):
    bad = []
    for s in range(0, len(emb), chunk):
        # plain reads: memmap pages touched here would stay in RSS (4 GB at 10^6 x 1024)
        rows = np.flatnonzero(~np.isfinite(gmvarrays.read_rows(emb, s, s + chunk)).all(axis=1))
        bad.extend(ids[s + rows].tolist())
    if bad:
        raise gmve.EmbeddingError(
            "%d embeddings contain NaN or inf values, e.g. samples %s" % (len(bad), bad[:5])
        )


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
    set are reused; generated samples deleted since are dropped. Training
    values are then recomputed from all generated samples, equal to a full
    recomputation on the union.

    Returns:
        the run's :class:`gmv_plugin.runs.GMValuationResults`
    """
    dataset = samples._root_dataset
    gmvval.check_progress(progress)
    with gmvstore.writing(dataset, key, "update_values") as lock:
        return load_valuation(dataset, key).update(generated_view, progress=progress, lock=lock)


def _stage_function(stage, name, doc):
    def fn(samples, key="gmv", progress=None, **updates):
        dataset = samples._root_dataset
        with gmvstore.writing(dataset, key, name) as lock:
            valuation = load_valuation(dataset, key, **updates)
            return valuation.run(stages=[stage], force=True, progress=progress, lock=lock)

    fn.__name__ = name
    fn.__doc__ = doc
    return fn


compute_embeddings = _stage_function("embed", "compute_embeddings", "Embeds the training and generated samples of run ``key``.")
build_index = _stage_function("index", "build_index", "Builds the recall index of run ``key`` over its training embeddings.")
recall_contributors = _stage_function("recall", "recall_contributors", "Recalls ``recall_k`` candidates per generated sample of run ``key``.")
rerank_contributors = _stage_function("rerank", "rerank_contributors", "Re-ranks the candidates of run ``key`` and keeps the top ``k``.")
score_quality = _stage_function("quality", "score_quality", "Scores the quality of the generated samples of run ``key``.")
assign_values = _stage_function("values", "assign_values", "Computes Eq. 3/4 for run ``key`` and writes its fields.")
