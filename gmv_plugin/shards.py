"""Sharded valuation: the generated side computed by several workers.

Eq. 3 is a sum over generated images, so everything a generated image needs
(its embedding, recalled and re-ranked contributors, quality) can be computed
apart from the others. A sharded valuation runs in three steps:

1. :func:`plan_shards` (holds the run's lock): computes and commits the
   training side (embeddings and index), splits the generated samples into
   contiguous shards and writes the plan under ``<run dir>/shards/<plan id>/``.
2. :func:`compute_shard`, once per shard, on any worker and at the same time
   (no run lock: a shard writes only its own folder, under its own lock):
   embeds, recalls, re-ranks and scores its samples with the pipeline's own
   array-level code, writes each array atomically, then ``done.json``. A shard
   killed midway is redone from scratch by a retry; a done shard is skipped.
3. :func:`reduce_shards` (holds the run's lock): concatenates the shards in
   plan order into the run's stage outputs, computes the values and commits
   once, like any other operation.

The result equals a single-process :func:`gmv_plugin.compute_values` bit for
bit because every shard repeats exactly the batches the single process
computes: shard boundaries are multiples of the plan's ``align`` rows
(:func:`alignment`), a multiple of the recall's query batches, the model's
batches and the re-ranking and quality chunks.
(FAISS's BLAS kernels round differently for different batch compositions and
thread counts, so finer shards would agree only to float rounding; workers
must use the same number of BLAS threads for identical bits.)

:func:`compute_values_sharded` queues the shards and the reduce as FiftyOne
delegated operations, run by ``fiftyone delegated launch`` workers that share
the database, the plugins directory and the runs directory
(``GMV_RUNS_DIR``); every worker checks first that it sees the plan's files.
"""

import datetime
import logging
import math
import os
import shutil
import socket
import time
import uuid

import numpy as np
import fiftyone.core.utils as fou

from gmv_plugin import embeddings as gmve
from gmv_plugin import index as gmvi
from gmv_plugin import locks
from gmv_plugin import pipeline as gmvp
from gmv_plugin import runs as gmvruns
from gmv_plugin import store as gmvstore
from gmv_plugin.faults import crashpoint

logger = logging.getLogger(__name__)

# Shard boundaries are multiples of at least this many rows: the FAISS query
# batch, which the re-ranking and quality chunks (256) and the usual model
# batch sizes divide (see alignment()).
ALIGN = gmvi.QUERY_BATCH
CHUNK = 256
EMBED_CHUNK = 4096  # gmv_plugin.embeddings.embed_to_file's chunk
TRAIN_PREFIX = "train-"  # plan ids of training-side plans
PLANS = "gmv_shard_plans"
PLUGIN = "@gmvaluator/gmv"
GENERATED_PARTS = ("embed_generated", "recall", "rerank", "quality")
ARRAYS = ("emb", "recall_dists", "recall_idx", "rerank_dists", "rerank_idx", "quality")


class RunsDirUnreachableError(RuntimeError):
    """This worker does not see the run's files (another runs directory)."""


class ShardsNotDoneError(RuntimeError):
    """Some shards of a plan are not computed yet."""


class PlanReducedError(ValueError):
    """The plan's shards were already reduced into the run."""


def _plans():
    from fiftyone.core.odm.database import get_db_conn

    return get_db_conn()[PLANS]


def _plan_dir(dataset, key, plan_id):
    return os.path.join(gmvruns.run_dir(dataset, key), gmvstore.SHARDS, plan_id)


def _shard_dir(dataset, key, plan_id, shard):
    return os.path.join(_plan_dir(dataset, key, plan_id), "shard_%d" % shard)


def _lock_name(key, plan, shard):
    # '#' cannot occur in a run key, so this never names a run's own lock
    return "%s#%s%d" % (key, "train" if plan.get("side") == "train" else "shard", shard)


def _doc_id(dataset, key, side):
    base = locks.lock_id(dataset, key)
    return base + "#train" if side == "train" else base


def _plan_doc(dataset, key, plan_id):
    """The plans-collection document (live or reduced) of ``plan_id``."""
    ids = [_doc_id(dataset, key, "generated"), _doc_id(dataset, key, "train")]
    for doc in _plans().find({"_id": {"$in": ids}}):
        if plan_id in (doc.get("plan_id"), doc.get("reduced_plan")):
            return doc
    return None


def _clear_plans(root, side):
    """Removes the folders of earlier plans of ``side`` (superseded)."""
    if os.path.isdir(root):
        for name in os.listdir(root):
            if name.startswith(TRAIN_PREFIX) == (side == "train"):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _save(path, arr):
    """Writes ``arr`` to ``path`` atomically and durably."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        np.save(f, np.asarray(arr))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def alignment(valuation, side="generated"):
    """Rows per shard block of ``valuation``, so that a shard repeats exactly
    the batches of a single-process run: for the generated side, the least
    common multiple of the recall's query batch (FAISS's, or the Brain
    searcher's), the model's batch size and the re-ranking/quality chunk; for
    the training side (embedding only), the model's batches."""
    batch = int(valuation.config.batch_size or 1)
    # model batches start at multiples of the batch size inside embedding chunks
    model = math.lcm(batch, 1 if EMBED_CHUNK % batch == 0 else EMBED_CHUNK)
    if side == "train":
        return model
    query = valuation._brain_recall().batch_size if valuation._brain_key() else gmvi.QUERY_BATCH
    return math.lcm(int(query), model, CHUNK)


def _new_plan_dir(dataset, key, valuation, plan_id, side, which):
    """A new plan's folder holding ``side``'s ids, paths and keys; the older
    plans of the ``which`` side are cleared first."""
    _clear_plans(os.path.join(valuation.store.dir, gmvstore.SHARDS), which)
    pdir = _plan_dir(dataset, key, plan_id)
    os.makedirs(pdir)
    for name, arr in (("ids", side.ids.astype(str)), ("paths", side.paths.astype(str)), ("keys", side.keys)):
        _save(os.path.join(pdir, name + ".npy"), arr)
    return pdir


def shard_bounds(n, num_shards, align=ALIGN):
    """Row ranges ``[(start, stop), ...]`` of at most ``num_shards``
    contiguous shards of ``n`` rows, each a whole number of ``align``-row
    blocks (but the last), as equal as that allows."""
    blocks = max(1, math.ceil(n / align))
    num = min(num_shards, blocks)
    cuts = [min(n, (i * blocks // num) * align) for i in range(num)] + [n]
    return [(cuts[i], cuts[i + 1]) for i in range(num)]


# --- planning ------------------------------------------------------------------


def plan_shards(samples, key, num_shards, progress=None):
    """Prepares run ``key`` for a sharded computation of its generated side.

    Holding the run's lock: computes and commits the training embeddings and
    the index when they are not fresh, splits the run's generated samples
    into at most ``num_shards`` contiguous shards (whole blocks of
    :func:`alignment` samples) and writes the plan. A new plan replaces the run's
    previous one.

    Returns:
        a dict with ``plan_id``, ``num_shards`` and ``shards`` (row ranges)
    """
    if not isinstance(num_shards, int) or isinstance(num_shards, bool) or num_shards < 1:
        raise ValueError("num_shards must be an integer >= 1; got %r" % (num_shards,))
    dataset = samples._root_dataset
    with gmvstore.writing(dataset, key, "plan_shards") as lock:
        valuation = gmvp.load_valuation(dataset, key)
        gen = valuation._gen_read
        valuation.gen = gen
        reused = []
        if valuation.entry("embed_train") is None:
            valuation._stage_embed(progress=gmvp._stage_progress(progress, "embed"), parts=("embed_train",))
        else:
            reused.append("embed")
        if valuation.entry("index") is None:
            valuation._stage_index(progress=gmvp._stage_progress(progress, "index"))
        else:
            reused.append("index")
        valuation.commit(lock, reused=reused)
        lock.check()

        plan_id = uuid.uuid4().hex[:12]
        pdir = _new_plan_dir(dataset, key, valuation, plan_id, gen, "generated")
        align = alignment(valuation)
        bounds = shard_bounds(len(gen), num_shards, align)
        if len(bounds) < num_shards:
            logger.warning(
                "Run %r: %d generated samples make %d shard(s), not %d: a shard holds whole "
                "blocks of %d samples so that it repeats the single-process computation exactly",
                key, len(gen), len(bounds), num_shards, align)
        plan = {
            "plan_id": plan_id,
            "side": "generated",
            "key": key,
            "dataset_id": str(dataset._doc.id),
            "num_shards": len(bounds),
            "shards": bounds,
            "align": align,
            "gen_digest": gen.digest,
            "fingerprints": valuation._fingerprints(),
            "host": socket.gethostname(),
            "runs_dir": gmvruns.runs_root(),
            "created_at": _now(),
        }
        gmvstore.write_json(os.path.join(pdir, "plan.json"), plan)
        crashpoint("shards.planned")
        _plans().replace_one(
            {"_id": locks.lock_id(dataset, key)},
            {k: plan[k] for k in ("plan_id", "num_shards", "host", "runs_dir", "created_at")},
            upsert=True,
        )
    return {"plan_id": plan_id, "num_shards": len(bounds), "shards": bounds}


def plan_train_shards(samples, key, num_shards, progress=None):
    """Prepares run ``key`` for computing its training embeddings in shards.

    Holding the run's lock: splits the run's training samples into at most
    ``num_shards`` contiguous shards (whole blocks of :func:`alignment`
    samples) and writes the plan. Each shard is then embedded by
    :func:`compute_shard` (separate processes, at the same time; each writes
    only its own folder), and :func:`reduce_shards` assembles them into the
    run's store and builds the index, so the run then holds what a
    single-process embed and index stage would. A new training plan replaces
    the previous one.

    Returns:
        a dict with ``plan_id``, ``num_shards`` and ``shards`` (row ranges)

    Raises:
        ValueError: for ``index="brain"`` (the Brain index holds the
            training vectors) or when the training embeddings are already
            stored and fresh
    """
    if not isinstance(num_shards, int) or isinstance(num_shards, bool) or num_shards < 1:
        raise ValueError("num_shards must be an integer >= 1; got %r" % (num_shards,))
    dataset = samples._root_dataset
    with gmvstore.writing(dataset, key, "plan_train_shards"):
        valuation = gmvp.load_valuation(dataset, key)
        if valuation._brain_key():
            raise ValueError("Run %r recalls through Brain index %r, which holds the training "
                             "vectors: there are no training embeddings to shard"
                             % (key, valuation._brain_key()))
        if valuation.entry("embed_train") is not None:
            raise ValueError("Run %r already has fresh training embeddings; shard its generated "
                             "side with plan_shards" % key)
        train = valuation.train
        if train.alive is not None:
            train = gmvp.SampleSet.read(valuation.train_view, "training", **valuation._keys)
        plan_id = TRAIN_PREFIX + uuid.uuid4().hex[:12]
        pdir = _new_plan_dir(dataset, key, valuation, plan_id, train, "train")
        align = alignment(valuation, "train")
        bounds = shard_bounds(len(train), num_shards, align)
        valuation.train = train
        plan = {
            "plan_id": plan_id,
            "side": "train",
            "key": key,
            "dataset_id": str(dataset._doc.id),
            "num_shards": len(bounds),
            "shards": bounds,
            "align": align,
            "side_digest": train.digest,
            "fingerprints": {"embed_train": valuation._fingerprints()["embed_train"]},
            "host": socket.gethostname(),
            "runs_dir": gmvruns.runs_root(),
            "created_at": _now(),
        }
        gmvstore.write_json(os.path.join(pdir, "plan.json"), plan)
        crashpoint("train_shards.planned")
        _plans().replace_one(
            {"_id": _doc_id(dataset, key, "train")},
            {k: plan[k] for k in ("plan_id", "num_shards", "host", "runs_dir", "created_at")},
            upsert=True,
        )
    return {"plan_id": plan_id, "num_shards": len(bounds), "shards": bounds}


def load_plan(samples, key, plan_id):
    """The plan ``plan_id`` of run ``key``, after checking that it is the
    run's live plan and that this process sees its files.

    Raises:
        RunsDirUnreachableError: the runs directory here is not the one the
            plan was written to
        ValueError: the plan was reduced or replaced
    """
    dataset = samples._root_dataset
    doc = _plan_doc(dataset, key, plan_id)
    if doc is not None and doc.get("reduced_plan") == plan_id:
        raise PlanReducedError("Shard plan %r of run %r was already reduced into the run" % (plan_id, key))
    if doc is None or doc["plan_id"] != plan_id:
        doc = _plans().find_one({"_id": _doc_id(dataset, key, "train" if plan_id.startswith(TRAIN_PREFIX)
                                                else "generated")})
        raise ValueError(
            "Run %r on dataset %r has no live shard plan %r (%s): it was reduced or replaced "
            "by a newer plan; plan again" % (
                key, dataset.name, plan_id,
                "its current plan is %r" % doc["plan_id"] if doc and doc.get("plan_id") else "it has no plan"))
    path = os.path.join(_plan_dir(dataset, key, plan_id), "plan.json")
    if not os.path.isfile(path):
        raise RunsDirUnreachableError(
            "This worker (host %s) cannot see the files of run %r: %s does not exist. The shards "
            "were planned on host %s in the runs directory %s, and this worker uses %s. Every "
            "worker must mount that directory and set GMV_RUNS_DIR to it (with the same "
            "FIFTYONE_DATABASE_URI and FIFTYONE_PLUGINS_DIR)" % (
                socket.gethostname(), key, path, doc.get("host"), doc.get("runs_dir"),
                gmvruns.runs_root()))
    return gmvstore.read_json(path)


def _plan_side(dataset, key, plan_id):
    pdir = _plan_dir(dataset, key, plan_id)
    return gmvp.SampleSet(*(np.load(os.path.join(pdir, n + ".npy")).astype(object if n != "keys" else np.uint64)
                            for n in ("ids", "paths", "keys")))


def _valuation_for(dataset, key, plan):
    """The run's :class:`Valuation` with the plan's samples, checked to have
    the plan's parameters (and, for a generated-side plan, training side)."""
    valuation = gmvp.load_valuation(dataset, key)
    if plan.get("side") == "train":
        valuation.train = _plan_side(dataset, key, plan["plan_id"])
        fp = valuation._fingerprints()
        changed = [] if plan["fingerprints"]["embed_train"] == fp["embed_train"] else ["embed_train"]
        if changed:
            raise ValueError("Run %r changed since its training shards were planned (plan %s; "
                             "different: model or embeddings field); plan again" % (key, plan["plan_id"]))
        return valuation
    valuation.gen = _plan_side(dataset, key, plan["plan_id"])
    fp = valuation._fingerprints()
    changed = sorted(p for p in fp if plan["fingerprints"].get(p) != fp[p])
    if changed or valuation.entry("index") is None:
        raise ValueError(
            "Run %r changed since its shards were planned (plan %s; different: %s); plan again"
            % (key, plan["plan_id"], ", ".join(changed) or "index"))
    return valuation


# --- shards --------------------------------------------------------------------


def _done_path(dataset, key, plan_id, shard):
    return os.path.join(_shard_dir(dataset, key, plan_id, shard), "done.json")


def compute_shard(samples, key, plan_id, shard, progress=None, wait=None):
    """Computes shard ``shard`` of plan ``plan_id`` of run ``key``: embeds,
    recalls, re-ranks and scores its generated samples into the shard's
    folder. Runs without the run's lock, at the same time as other shards;
    a shard that is done is skipped, a partial one is redone.

    Args:
        wait (None): seconds to wait while another process computes the same
            shard (None: as long as it runs)

    Returns:
        the shard's ``done.json`` record
    """
    dataset = samples._root_dataset
    plan = load_plan(dataset, key, plan_id)
    if not isinstance(shard, int) or not 0 <= shard < plan["num_shards"]:
        raise ValueError("shard must be an integer in [0, %d) for plan %s; got %r"
                         % (plan["num_shards"], plan_id, shard))
    done = _done_path(dataset, key, plan_id, shard)
    deadline = None if wait is None else time.monotonic() + wait
    while True:
        if os.path.isfile(done):
            return gmvstore.read_json(done)
        with locks.try_lock(dataset, _lock_name(key, plan, shard), "compute_shard") as lock:
            if lock is not None:
                if os.path.isfile(done):
                    return gmvstore.read_json(done)
                if plan.get("side") == "train":
                    return _compute_train(dataset, key, plan, shard, lock, progress)
                return _compute(dataset, key, plan, shard, lock, progress)
        if deadline is not None and time.monotonic() > deadline:
            raise locks.RunLockedError("Shard %d of run %r is being computed by another process" % (shard, key))
        time.sleep(0.5)


def _embed(valuation, view, path, progress):
    """The generated side's embeddings, as the pipeline's embed stage makes them."""
    brain_key = getattr(valuation, "_brain_key", lambda: None)()
    if brain_key is not None:  # index="brain": the Brain index's model embeds
        from gmv_plugin import brain as gmvb

        return gmvb.embed_queries(view, brain_key, path, batch_size=valuation.config.batch_size,
                                  progress=progress)
    model = None
    if valuation._model is not None and not (valuation.config.embeddings_field and valuation._field_complete()):
        resolve = getattr(valuation, "_resolved_model", None)  # follows the training side's mode
        model = resolve() if resolve is not None else gmve.resolve_model(valuation._model)
    return gmve.embed_to_file(view, path, model=model, embeddings_field=valuation.config.embeddings_field,
                              batch_size=valuation.config.batch_size, progress=progress)


def _begin(dataset, key, plan, shard):
    """``(rows, folder, clock, valuation)`` of a shard's attempt, in a fresh
    folder (the leftovers of a killed attempt are removed)."""
    sdir = _shard_dir(dataset, key, plan["plan_id"], shard)
    shutil.rmtree(sdir, ignore_errors=True)
    os.makedirs(sdir)
    clock = (_now(), time.perf_counter())
    return plan["shards"][shard], sdir, clock, _valuation_for(dataset, key, plan)


def _seal_embeddings(tmp, sdir, got, emb, ids, what, shard):
    """Checks a shard's embeddings and moves them to ``emb.npy`` (durably)."""
    if list(got) != ids.tolist():
        raise RuntimeError("The %s samples of shard %d changed while they were embedded; "
                           "plan again" % (what, shard))
    gmvp._check_finite(emb, ids)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(sdir, "emb.npy"))


def _finish(sdir, lock, clock, record, crash):
    """Writes the shard's ``done.json`` while its lock is still held."""
    lock.check()
    record.update(wall_seconds=time.perf_counter() - clock[1], host=socket.gethostname(),
                  pid=os.getpid(), started_at=clock[0], finished_at=_now())
    gmvstore.write_json(os.path.join(sdir, "done.json"), record)
    crashpoint(crash)
    return record


def _compute(dataset, key, plan, shard, lock, progress):
    (start, stop), sdir, clock, valuation = _begin(dataset, key, plan, shard)
    gen = valuation.gen
    ids, paths = gen.ids[start:stop], gen.paths[start:stop]
    seconds = {}

    t = time.perf_counter()
    tmp = os.path.join(sdir, "emb.npy.tmp")
    got, emb = _embed(valuation, dataset.select(ids.tolist(), ordered=True), tmp,
                      gmvp._stage_progress(progress, "embed"))
    emb = np.array(emb)
    _seal_embeddings(tmp, sdir, got, emb, ids, "generated", shard)
    seconds["embed_generated"] = time.perf_counter() - t
    crashpoint("shard.embedded")

    t = time.perf_counter()
    rdists, ridx = valuation._recall(emb)
    _save(os.path.join(sdir, "recall_dists.npy"), rdists)
    _save(os.path.join(sdir, "recall_idx.npy"), ridx)
    seconds["recall"] = time.perf_counter() - t
    crashpoint("shard.recalled")

    t = time.perf_counter()
    kdists, kidx = valuation._rerank(rdists, ridx, paths, gmvp._stage_progress(progress, "rerank"))
    _save(os.path.join(sdir, "rerank_dists.npy"), kdists)
    _save(os.path.join(sdir, "rerank_idx.npy"), kidx)
    seconds["rerank"] = time.perf_counter() - t
    crashpoint("shard.reranked")

    t = time.perf_counter()
    if valuation.config.quality["name"] != "realism":  # realism needs every shard: the reduce scores it
        q = valuation._quality(paths, None, gmvp._stage_progress(progress, "quality"))
        _save(os.path.join(sdir, "quality.npy"), q)
    seconds["quality"] = time.perf_counter() - t
    crashpoint("shard.scored")

    return _finish(sdir, lock, clock, {"shard": shard, "rows": [start, stop], "seconds": seconds},
                   "shard.done")


def _compute_train(dataset, key, plan, shard, lock, progress):
    """Embeds the training rows of ``shard`` into the shard's ``emb.npy``."""
    (start, stop), sdir, clock, valuation = _begin(dataset, key, plan, shard)
    ids, paths = valuation.train.ids[start:stop], valuation.train.paths[start:stop]
    model = None
    if valuation._model is not None and not (valuation.config.embeddings_field and valuation._field_complete()):
        model = valuation._resolved_model()
    tmp = os.path.join(sdir, "emb.npy.tmp")
    got, emb = gmve.embed_to_file(dataset.select(ids.tolist(), ordered=True), tmp, model=model,
                                  embeddings_field=valuation.config.embeddings_field,
                                  batch_size=valuation.config.batch_size,
                                  progress=gmvp._stage_progress(progress, "embed"),
                                  ids=ids.tolist(), paths=paths.tolist())
    dim = int(emb.shape[1])
    _seal_embeddings(tmp, sdir, got, emb, ids, "training", shard)
    del emb
    crashpoint("train_shard.embedded")
    seconds = time.perf_counter() - clock[1]
    return _finish(sdir, lock, clock, {"shard": shard, "side": "train", "rows": [start, stop], "dim": dim,
                                       "seconds": {"embed_train": seconds}}, "train_shard.done")


# --- status and reduce ----------------------------------------------------------


def shard_status(samples, key):
    """Progress of run ``key``'s live shard plan.

    Returns:
        a dict with ``plan_id``, ``num_shards``, ``done``, ``running`` and
        ``pending`` (shard numbers), ``running_on`` (shard -> holder) and
        ``seconds`` (shard -> wall time of done shards); or None when the run
        has no plan
    """
    dataset = samples._root_dataset
    doc = None
    for side in ("train", "generated"):  # a live training-side plan comes first
        doc = _plans().find_one({"_id": _doc_id(dataset, key, side)})
        if doc is not None and doc.get("plan_id") is not None:
            break
    if doc is None or doc.get("plan_id") is None:
        return None
    plan = load_plan(dataset, key, doc["plan_id"])
    out = {"plan_id": plan["plan_id"], "side": plan.get("side", "generated"),
           "num_shards": plan["num_shards"], "done": [], "running": [],
           "pending": [], "running_on": {}, "seconds": {}}
    for i in range(plan["num_shards"]):
        done = _done_path(dataset, key, plan["plan_id"], i)
        if os.path.isfile(done):
            out["done"].append(i)
            out["seconds"][i] = gmvstore.read_json(done)["wall_seconds"]
            continue
        holder = locks.holder(dataset, _lock_name(key, plan, i))
        if holder is not None:
            out["running"].append(i)
            out["running_on"][i] = locks.describe(holder)
        else:
            out["pending"].append(i)
    return out


def _wait_for_shards(dataset, key, plan, lock, wait, compute_missing, progress):
    """Returns once every shard of ``plan`` is done (see :func:`reduce_shards`)."""
    plan_id, n = plan["plan_id"], plan["num_shards"]
    deadline = time.monotonic() + wait
    with fou.ProgressBar(total=n, progress=gmvp._stage_progress(progress, "shards")) as pb:
        while True:
            done = [i for i in range(n) if os.path.isfile(_done_path(dataset, key, plan_id, i))]
            pb.update(len(done) - pb.iteration)
            missing = [i for i in range(n) if i not in done]
            if not missing:
                return
            if compute_missing:
                free = [i for i in missing if locks.holder(dataset, _lock_name(key, plan, i)) is None]
                for i in free:
                    compute_shard(dataset, key, plan_id, i)
                if free:
                    continue
            if time.monotonic() >= deadline:
                raise ShardsNotDoneError(
                    "Shards %s of %d of run %r (plan %s) are not done. Retry each alone with "
                    "gmv.compute_shard(dataset, %r, %r, shard) (or rerun its delegated "
                    "operation), then reduce again" % (missing, n, key, plan_id, key, plan_id))
            lock.check()
            time.sleep(0.5)


def _retire(dataset, key, plan):
    """Marks ``plan`` reduced (shard operations still queued for it then skip
    it) and removes its files."""
    plan_id = plan["plan_id"]
    _plans().update_one({"_id": _doc_id(dataset, key, plan.get("side")), "plan_id": plan_id},
                        {"$set": {"plan_id": None, "reduced_plan": plan_id}})
    shutil.rmtree(_plan_dir(dataset, key, plan_id), ignore_errors=True)
    try:
        os.rmdir(os.path.dirname(_plan_dir(dataset, key, plan_id)))
    except OSError:  # another plan is there
        pass


def reduce_shards(samples, key, plan_id, wait=0, compute_missing=False, progress=None):
    """Completes a sharded computation: once every shard of plan ``plan_id``
    is done, concatenates them in plan order into the run's store and commits
    the run (one commit, like any other operation).

    For a generated-side plan (:func:`plan_shards`) the reduce computes the
    values and writes the fields; for a training-side plan
    (:func:`plan_train_shards`) it stores the training embeddings and builds
    the index.

    Args:
        wait (0): seconds to wait for shards still running or queued
        compute_missing (False): whether to compute here the shards that no
            process is computing (e.g. a failed one) instead of waiting
        progress (None): like FiftyOne's ``progress``; the bar counts shards
            done, then the stages run here

    Raises:
        ShardsNotDoneError: naming the shards not done after ``wait`` seconds
    """
    dataset = samples._root_dataset
    with gmvstore.writing(dataset, key, "reduce_shards") as lock:
        plan = load_plan(dataset, key, plan_id)
        _wait_for_shards(dataset, key, plan, lock, wait, compute_missing, progress)
        valuation = _valuation_for(dataset, key, plan)
        if plan.get("side") == "train":
            current = gmvp.SampleSet.read(valuation.train_view, "training", **valuation._keys)
            if current.digest != plan["side_digest"]:
                raise ValueError("The training samples of run %r changed since its shards were "
                                 "planned; plan again" % key)
            fp = valuation._fingerprints()
            committed = valuation.manifest["stages"]
            if all(committed.get(p, {}).get("fingerprint") == fp[p] for p in ("embed_train", "index")):
                # a reduce killed after its commit: only the plan is left to retire
                results = gmvruns.load_results(dataset, key)
            else:
                # what a killed reduce left pending (sealed files) is reused
                if valuation.entry("embed_train") is None:
                    _assemble_train(valuation, dataset, key, plan)
                if valuation.entry("index") is None:
                    valuation._stage_index(progress=gmvp._stage_progress(progress, "index"))
                results = valuation.commit(lock, reused=[])
            crashpoint("train_shards.reduced")
        else:
            if valuation._gen_read.digest != plan["gen_digest"]:
                raise ValueError("The generated samples of run %r changed since its shards were "
                                 "planned; plan again" % key)
            _assemble(valuation, dataset, key, plan, progress)
            valuation._stage_values(progress=gmvp._stage_progress(progress, "values"))
            results = valuation.commit(lock, reused=[])
            crashpoint("shards.reduced")
        _retire(dataset, key, plan)
    return results


def queue_generated(samples, key, num_shards, wait=24 * 3600, progress=None):
    """Plans the generated side of run ``key`` in ``num_shards`` shards and
    queues them with their reduce (what a training-side reduce queued with
    ``then_shards`` does next).

    Returns:
        a dict with ``plan_id``, ``num_shards``, ``shards``,
        ``shard_operations`` and ``reduce_operation``
    """
    plan = plan_shards(samples, key, num_shards, progress=progress)
    plan.update(queue_shards(samples, key, plan["plan_id"], wait=wait))
    return plan


def _assemble(valuation, dataset, key, plan, progress):
    """Puts the concatenated shard arrays into the run's store as the
    pending outputs of the generated-side stages."""
    n = plan["num_shards"]
    dirs = [_shard_dir(dataset, key, plan["plan_id"], i) for i in range(n)]
    records = [gmvstore.read_json(os.path.join(d, "done.json")) for d in dirs]
    realism = valuation.config.quality["name"] == "realism"

    def cat(name):
        return np.concatenate([np.load(os.path.join(d, name + ".npy")) for d in dirs])

    def seconds(part):
        return float(sum(r["seconds"][part] for r in records))

    store, gen = valuation.store, valuation.gen
    files = {"emb": store.save_array("embed_generated", cat("emb"))}
    for label, arr in (("ids", gen.ids.astype(str)), ("paths", gen.paths.astype(str)), ("keys", gen.keys)):
        files[label] = store.save_array("embed_generated_" + label, arr)
    valuation._put("embed_generated", seconds("embed_generated"), files, count=len(gen),
                   side_digest=gen.digest, emb=valuation._emb_digest())
    recall = (cat("recall_dists"), cat("recall_idx"))
    valuation._put("recall", seconds("recall"), valuation._save(recall=recall))
    valuation._put("rerank", seconds("rerank"),
                   valuation._save(rerank=(cat("rerank_dists"), cat("rerank_idx"))))
    t = time.perf_counter()
    if realism:
        q = valuation._quality(gen.paths, {"dists": recall[0], "idx": recall[1]},
                               gmvp._stage_progress(progress, "quality"))
    else:
        q = cat("quality")
    valuation._put("quality", seconds("quality") + time.perf_counter() - t,
                   {"q": store.save_array("quality", q)}, summary=gmvp._summary(q))


def _assemble_train(valuation, dataset, key, plan):
    """Puts the shards' training embeddings, concatenated, into the run's
    store as the pending output of the embed stage. With a pixel embedder in
    ``"auto"`` mode, shards of grayscale images are converted to RGB when
    another shard holds colour images, as a single process converts them."""
    from gmv_plugin import arrays

    n = plan["num_shards"]
    dirs = [_shard_dir(dataset, key, plan["plan_id"], i) for i in range(n)]
    records = [gmvstore.read_json(os.path.join(d, "done.json")) for d in dirs]
    dims = [r["dim"] for r in records]
    model = valuation._model
    convert = (isinstance(model, gmve.PixelEmbedder) and model.mode == "auto" and len(set(dims)) > 1
               and set(dims) == {model.dim("L"), model.dim("RGB")})
    if len(set(dims)) > 1 and not convert:
        raise ValueError("The training shards of run %r have different dimensions %s; plan again"
                         % (key, sorted(set(dims))))
    train = valuation.train
    name, tmp = valuation.store.new_file("embed_train", ".npy")
    writer = arrays.NpyWriter(tmp, len(train))
    try:
        for d, (start, _) in zip(dirs, plan["shards"]):
            part = np.load(os.path.join(d, "emb.npy"), mmap_mode="r")
            for s in range(0, len(part), 65_536):
                rows = np.array(part[s : s + 65_536])
                if convert and rows.shape[1] == model.dim("L"):
                    rows = gmve.gray_to_rgb(rows)
                writer.write(start + s, rows)
            del part
        writer.close()
    except BaseException:
        writer.abort()
        raise
    files = {"emb": valuation.store.seal(name)}
    for label, arr in (("ids", train.ids.astype(str)), ("paths", train.paths.astype(str)), ("keys", train.keys)):
        files[label] = valuation.store.save_array("embed_train_" + label, arr)
    valuation._put("embed_train", float(sum(r["wall_seconds"] for r in records)), files,
                   count=len(train), side_digest=train.digest, emb=valuation._emb_digest())


# --- delegated operations -------------------------------------------------------


def queue_shards(samples, key, plan_id, wait=24 * 3600, then_shards=None):
    """Queues one ``reduce_gmv_shards`` delegated operation, then one
    ``compute_gmv_shard`` per shard of plan ``plan_id``.

    ``fiftyone delegated launch`` runs the newest queued operation first, so
    the shards start before the reduce; the reduce waits up to ``wait``
    seconds for shards running elsewhere and computes itself any shard that
    no worker has taken (whatever order another orchestrator uses, any
    number of workers >= 1 completes the valuation). Shard operations that
    find their plan already reduced do nothing. For a training-side plan,
    ``then_shards`` makes its reduce operation then plan and queue the
    generated side in that many shards (:func:`queue_generated`).

    Returns:
        a dict of ``shard_operations`` and ``reduce_operation`` (ids)
    """
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionContext

    dataset = samples._root_dataset
    plan = load_plan(dataset, key, plan_id)
    service = DelegatedOperationService()

    def queue(name, label, params):
        ctx = ExecutionContext(request_params={
            "dataset_name": dataset.name, "dataset_id": str(dataset._doc.id),
            "params": params, "delegated": True,
        })
        return str(service.queue_operation(operator="%s/%s" % (PLUGIN, name), label=label, context=ctx).id)

    n = plan["num_shards"]
    what = "training shard" if plan.get("side") == "train" else "shard"
    params = {"run_key": key, "plan_id": plan_id, "wait": wait, "compute_missing": True}
    if then_shards and plan.get("side") == "train":
        params.update(then_shards=int(then_shards), then_wait=wait)
    reduce_op = queue("reduce_gmv_shards", "GMValuator reduce %d %ss (key=%s)" % (n, what, key), params)
    shard_ops = [
        queue("compute_gmv_shard", "GMValuator %s %d/%d (key=%s)" % (what, i + 1, n, key),
              {"run_key": key, "plan_id": plan_id, "shard": i})
        for i in range(n)
    ]
    return {"shard_operations": shard_ops, "reduce_operation": reduce_op}


def compute_values_sharded(train_view, generated_view, key="gmv", shards=2, train_shards=None,
                           overwrite=False, wait=24 * 3600, progress=None, **kwargs):
    """:func:`gmv_plugin.compute_values` with the work done by
    delegated-operation workers: registers the run; then either computes the
    training side here (:func:`plan_shards`) and queues ``shards`` shard
    operations and the reduce, or, with ``train_shards``, queues
    ``train_shards`` training-embedding shards whose reduce stores them,
    builds the index and then queues the ``shards`` generated-side shards and
    the final reduce. Start workers with ``fiftyone delegated launch`` (same
    database, plugins directory and ``GMV_RUNS_DIR``); follow progress with
    :func:`shard_status`.

    Args:
        shards (2): the number of generated-side shards (at most one per
            block of :func:`alignment` generated samples, 1024 by default)
        train_shards (None): the number of training-side shards (None: the
            training side is computed here); ignored when the training
            embeddings are stored already or the run recalls through a
            Brain index
        wait: seconds each reduce waits for its shards
        kwargs: the valuation options of :func:`gmv_plugin.compute_values`

    Returns:
        a dict with ``plan_id``, ``num_shards``, ``shards``,
        ``shard_operations`` and ``reduce_operation`` (those of the training
        side when it is sharded)
    """
    if train_shards is not None and (not isinstance(train_shards, int) or isinstance(train_shards, bool)
                                     or train_shards < 1):
        raise ValueError("train_shards must be None or an integer >= 1; got %r" % (train_shards,))
    if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
        raise ValueError("shards must be an integer >= 1; got %r" % (shards,))
    gmvp.init_valuation(train_view, generated_view, key=key, overwrite=overwrite, **kwargs)
    if train_shards is not None and _train_shardable(train_view, key):
        plan = plan_train_shards(train_view, key, train_shards, progress=progress)
        plan.update(queue_shards(train_view, key, plan["plan_id"], wait=wait, then_shards=shards))
        return plan
    return queue_generated(train_view, key, shards, wait=wait, progress=progress)


def _train_shardable(samples, key):
    """Whether run ``key`` has training embeddings to compute."""
    dataset = samples._root_dataset
    with gmvstore.writing(dataset, key, "plan_train_shards"):
        valuation = gmvp.load_valuation(dataset, key)
        return not valuation._brain_key() and valuation.entry("embed_train") is None
