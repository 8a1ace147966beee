"""Where a run lives and how it changes atomically.

A run is four things: its run document (config and results, FiftyOne's), its
sample fields, its arrays on disk and its database indexes. This module
changes them so that a crash at any point leaves the run exactly as it was
or exactly as intended:

- Arrays are immutable files with unique names in the run's directory,
  written to a temporary name, flushed and renamed. ``manifest.json`` (replaced
  atomically) says which files form the run (``stages``) and which were
  computed by an operation that has not committed yet (``pending``: reused
  when the same stage is asked for again, e.g. after a crash).
- New field values go to a staging collection first.
- A commit writes a journal (the new config, results, manifest and the
  staging collection's name), then applies it: fields are merged from the
  staging collection in one server-side pass, the run document and manifest
  are replaced, the journal is removed. Every step is idempotent, so an
  interrupted commit is completed by :func:`recover`, which every writer
  calls first (holding the run's lock) and readers call when the lock is
  free. Anything not referenced by the manifest is removed then too.
"""

import contextlib
import concurrent.futures
import json
import logging
import os
import re
import shutil
import uuid

import numpy as np
import pymongo.errors
from bson import ObjectId

import fiftyone as fo
import fiftyone.core.runs as foruns

from gmv_plugin import bulk as gmvbulk
from gmv_plugin import locks
from gmv_plugin import runs as gmvruns
from gmv_plugin.faults import crashpoint

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SHARDS = "shards"
STAGING_PREFIX = "gmv_staging."
FIELD_TYPES = {
    "value": (fo.FloatField, None),
    "hits": (fo.IntField, None),
    "cleansing": (fo.FloatField, None),
    "copied_by": (fo.IntField, None),
    "contributors": (fo.ListField, fo.StringField),
    "distances": (fo.ListField, fo.FloatField),
    "scores": (fo.ListField, fo.FloatField),
    "quality": (fo.FloatField, None),
    "copy_score": (fo.FloatField, None),
    "is_copy": (fo.BooleanField, None),
}
INDEXED = ("value", "hits")


def dataset_dir(dataset_id):
    return os.path.join(gmvruns.runs_root(), str(dataset_id))


def journal_path(dataset, key):
    return os.path.join(dataset_dir(dataset._root_dataset._doc.id), "%s.journal.json" % key)


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path, obj):
    """Replaces ``path`` with ``obj`` as JSON, atomically and durably."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = "%s.%s.tmp" % (path, uuid.uuid4().hex[:8])
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=_json_default)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path))


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, ObjectId):
        return str(x)
    raise TypeError("Not JSON serializable: %r" % (x,))


def read_json(path):
    with open(path) as f:
        return json.load(f)


class RunStore(object):
    """The array files of run ``key`` on ``dataset``."""

    def __init__(self, dataset, key):
        self.dataset = dataset._root_dataset
        self.key = key
        self.dir = gmvruns.run_dir(self.dataset, key)

    def path(self, name):
        return os.path.join(self.dir, name)

    def manifest(self):
        """The committed manifest: ``{"stages": {...}, "pending": {...}}``."""
        path = self.path(MANIFEST)
        if not os.path.isfile(path):
            return {"stages": {}, "pending": {}}
        m = read_json(path)
        m.setdefault("stages", {})
        m.setdefault("pending", {})
        return m

    def write_manifest(self, manifest):
        write_json(self.path(MANIFEST), manifest)

    def add_pending(self, part, entry):
        """Records a stage output computed by an uncommitted operation, so
        it is reused (not recomputed) when asked for again."""
        m = self.manifest()
        m["pending"][part] = entry
        self.write_manifest(m)

    def new_file(self, label, ext):
        """A fresh ``(name, tmp_path)``: write to ``tmp_path``, then
        :meth:`seal` it; nothing refers to it until a manifest does."""
        os.makedirs(self.dir, exist_ok=True)
        name = "%s.%s%s" % (label, uuid.uuid4().hex[:12], ext)
        return name, self.path(name + ".tmp")

    def seal(self, name):
        """Makes the file written to ``new_file``'s temporary path durable
        under its final name."""
        tmp = self.path(name + ".tmp")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.path(name))
        _fsync_dir(self.dir)
        return name

    def save_array(self, label, arr):
        """Writes ``arr`` to a new ``.npy`` file; returns its name."""
        name, tmp = self.new_file(label, ".npy")
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(arr))
        return self.seal(name)

    def load_array(self, name, mmap=True):
        return np.load(self.path(name), mmap_mode="r" if mmap else None)

    def referenced(self, manifest):
        names = {MANIFEST}
        for section in ("stages", "pending"):
            for entry in manifest.get(section, {}).values():
                names.update(entry.get("files", {}).values())
        return names

    def collect_garbage(self):
        """Removes files no manifest entry refers to; returns their names."""
        if not os.path.isdir(self.dir):
            return []
        keep = self.referenced(self.manifest()) | {SHARDS}  # live shard plans: gmv_plugin.shards
        removed = []
        for name in os.listdir(self.dir):
            if name not in keep:
                p = self.path(name)
                if os.path.isdir(p):
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    os.remove(p)
                removed.append(name)
        return removed


# --- fields ----------------------------------------------------------------


def _samples_coll(dataset):
    return dataset._root_dataset._sample_collection


def _db():
    from fiftyone.core.odm.database import get_db_conn

    return get_db_conn()


def staging_prefix(dataset, key):
    return "%s%s.%s." % (STAGING_PREFIX, dataset._root_dataset._doc.id, key)


UNSET = "_gmv_unset"  # in a staging document: this run's fields the sample loses


def stage_fields(dataset, key, parts, chunk=20_000):
    """Writes new field values of run ``key`` to a staging collection.

    Args:
        parts: a list of ``(ids, {suffix: values})``; each values sequence
            is aligned with ``ids`` (sample id strings)

    A staging document holds a sample's new values as top-level fields and,
    under :data:`UNSET`, the fields of this key the sample holds today but
    its part does not write (all of them for samples in no part).

    Returns:
        the staging collection's name
    """
    name = staging_prefix(dataset, key) + uuid.uuid4().hex[:12]
    coll = _db()[name]
    held = _held_fields(dataset, gmvruns.all_field_names(key))

    def chunks():
        for ids, columns in parts:
            keys = ["%s_%s" % (key, s) for s in columns] + ["_id"]
            written = set(keys)
            cols = list(columns.values())
            for start in range(0, len(ids), chunk):
                oids = [ObjectId(sid) for sid in ids[start : start + chunk]]
                rows = zip(*(_as_list(c[start : start + chunk]) for c in cols), oids)
                docs = [dict(zip(keys, row)) for row in rows]
                for doc in docs if held else ():
                    lose = [n for n in held.pop(doc["_id"], ()) if n not in written]
                    if lose:
                        doc[UNSET] = lose
                yield docs
        docs = [{"_id": oid, UNSET: lose} for oid, lose in held.items()]
        if docs:
            yield docs

    # the database stores one chunk while the next is built
    with concurrent.futures.ThreadPoolExecutor(1) as pool, gmvbulk.paused_gc():
        pending = None
        for docs in chunks():
            if pending is not None:
                pending.result()
                crashpoint("fields.stage_chunk")
            pending = pool.submit(coll.insert_many, docs, ordered=False)
        if pending is not None:
            pending.result()
            crashpoint("fields.stage_chunk")
    return name


def _held_fields(dataset, names):
    """``{sample ObjectId: [names it holds]}`` for the samples holding any of ``names``."""
    bits = {"$add": [{"$cond": [{"$eq": [{"$type": "$" + n}, "missing"]}, 0, 1 << i]}
                     for i, n in enumerate(names)]}
    cursor = _samples_coll(dataset).aggregate([
        {"$match": {"$or": [{n: {"$exists": True}} for n in names]}},
        {"$project": {"m": bits}},
    ])
    return {d["_id"]: [n for i, n in enumerate(names) if d["m"] >> i & 1] for d in cursor}


def _as_list(values):
    if isinstance(values, np.ndarray):
        return values.tolist()
    return list(values)


def _merge_staging(dataset, key, staging):
    """Applies a staging collection to the samples (idempotent): the removals
    first, then the new values in one merge of whole documents."""
    target = _samples_coll(dataset).name
    keep = {"$not": [{"$in": ["$$f.k", "$$new." + UNSET]}]}
    if _db()[staging].find_one({UNSET: {"$exists": True}}, {"_id": 1}) is not None:
        _db()[staging].aggregate([
            {"$match": {UNSET: {"$exists": True}}},
            {"$project": {UNSET: 1}},
            {"$merge": {"into": target, "on": "_id", "whenNotMatched": "discard", "whenMatched": [
                {"$replaceWith": {"$arrayToObject": {"$filter": {
                    "input": {"$objectToArray": "$$ROOT"}, "as": "f", "cond": keep}}}},
                {"$set": {"last_modified_at": "$$NOW"}},
            ]}},
        ])
    _db()[staging].aggregate([
        {"$unset": UNSET},
        {"$set": {"last_modified_at": "$$NOW"}},
        {"$merge": {"into": target, "on": "_id", "whenMatched": "merge", "whenNotMatched": "discard"}},
    ])


def _declare_fields(dataset, fields):
    """Declares the missing ``fields`` on the dataset's schema, in one schema
    update where FiftyOne offers it (each ``add_sample_field`` reloads the
    dataset: 150 ms of a 1.6 s valuation for ten fields)."""
    specs = {n: FIELD_TYPES[_suffix(n)] for n in fields if not dataset.has_field(n)}
    merge = getattr(dataset, "_merge_sample_field_schema", None)
    if specs and merge is not None:
        merge({n: ftype(**({"field": sub()} if sub is not None else {})) for n, (ftype, sub) in specs.items()})
        return
    for name, (ftype, sub) in specs.items():
        dataset.add_sample_field(name, ftype, **({"subfield": sub} if sub is not None else {}))


def _suffix(name):
    for s in sorted(FIELD_TYPES, key=len, reverse=True):
        if name.endswith("_" + s):
            return s
    raise KeyError(name)


def _drop_staging(name):
    if name and name in _db().list_collection_names():
        _db().drop_collection(name)


def _ensure_indexes(dataset, key, present):
    existing = set(dataset.list_indexes())
    for s in INDEXED:
        name = "%s_%s" % (key, s)
        if name in present and name not in existing:
            try:
                dataset.create_index(name)
            except pymongo.errors.OperationFailure as e:  # e.g. MongoDB's 64 indexes per collection
                logger.warning("Could not index field %r (sorting by it stays possible, "
                               "but slower): %s", name, e)


def _drop_indexes(dataset, key):
    existing = set(dataset.list_indexes())
    for s in INDEXED:
        name = "%s_%s" % (key, s)
        if name in existing:
            dataset.drop_index(name)


# --- commits -----------------------------------------------------------------


def commit(dataset, key, lock, manifest, config, results, staging=None, fields=None):
    """Makes ``manifest``, ``config``, ``results`` (a dict, or None for no
    results) and the staged ``fields`` the run, atomically.

    ``fields`` lists the field names the run has from now on (None: those it
    has today stay); their values come from ``staging``.
    """
    lock.check()
    journal = {
        "action": "save",
        "key": key,
        "manifest": {"stages": manifest.get("stages", {}), "pending": {}},
        "config": config.serialize(),
        "results": results,
        "staging": staging,
        "fields": fields,
    }
    write_json(journal_path(dataset, key), journal)
    crashpoint("commit.journaled")
    _apply(dataset, journal)


def delete(dataset, key, lock):
    """Deletes run ``key`` with its fields, indexes and files, atomically."""
    lock.check()
    journal = {"action": "delete", "key": key}
    write_json(journal_path(dataset, key), journal)
    crashpoint("delete.journaled")
    _apply(dataset, journal)


def rename(dataset, key, new_key, lock):
    """Renames run ``key`` to ``new_key`` with its fields, indexes and files."""
    lock.check()
    journal = {"action": "rename", "key": key, "new_key": new_key}
    write_json(journal_path(dataset, key), journal)
    crashpoint("rename.journaled")
    _apply(dataset, journal)


def _apply(dataset, journal):
    dataset = dataset._root_dataset
    action, key = journal["action"], journal["key"]
    if action == "save":
        _apply_save(dataset, key, journal)
    elif action == "delete":
        _apply_delete(dataset, key)
    elif action == "rename":
        _apply_rename(dataset, key, journal["new_key"])
    else:
        raise ValueError("Unknown journal action %r" % action)
    os.remove(journal_path(dataset, key))
    _fsync_dir(os.path.dirname(journal_path(dataset, key)))
    crashpoint("commit.done")
    RunStore(dataset, journal.get("new_key", key)).collect_garbage()


def _apply_save(dataset, key, journal):
    staging = journal.get("staging")
    fields = journal.get("fields")
    if fields is not None:
        with locks.schema_lock(dataset):
            dataset.reload()
            _declare_fields(dataset, fields)
        crashpoint("commit.declared")
        if staging and staging in _db().list_collection_names():
            _merge_staging(dataset, key, staging)
        crashpoint("commit.merged")
        with locks.schema_lock(dataset):
            dataset.reload()
            stale = [f for f in gmvruns.all_field_names(key) if f not in fields and dataset.has_field(f)]
            if stale:
                dataset.delete_sample_fields(stale)
        _ensure_indexes(dataset, key, fields)
        dataset.reload()
    crashpoint("commit.fields")
    config = gmvruns.GMValuationConfig.from_dict(journal["config"])
    with locks.schema_lock(dataset):
        dataset.reload()
        if key not in dataset.list_runs() or dataset.get_run_info(key).config.serialize() != journal["config"]:
            dataset.register_run(key, config, overwrite=True, cleanup=False)
        crashpoint("commit.config")
        if journal["results"] is not None:
            results = gmvruns.GMValuationResults.from_dict(journal["results"], dataset, config, key)
            dataset.save_run_results(key, results, overwrite=True, cache=False)
        crashpoint("commit.results")
    RunStore(dataset, key).write_manifest(journal["manifest"])
    crashpoint("commit.manifest")
    _drop_staging(staging)


def _apply_delete(dataset, key):
    remove_run_files(dataset, key)
    crashpoint("delete.fields")
    with locks.schema_lock(dataset):
        dataset.reload()
        if key in dataset.list_runs():
            foruns.Run.delete_run(dataset, key, cleanup=False)
        crashpoint("delete.run")


def remove_run_files(dataset, key):
    """Removes run ``key``'s fields, indexes, files and staging collections
    (idempotent)."""
    dataset = dataset._root_dataset
    _drop_indexes(dataset, key)
    with locks.schema_lock(dataset):
        dataset.reload()
        fields = gmvruns._existing_fields(dataset, key)
        if fields:
            dataset.delete_sample_fields(fields)
    shutil.rmtree(gmvruns.run_dir(dataset, key), ignore_errors=True)
    drop_staging(staging_prefix(dataset, key))


def staging_collections(prefix):
    """The names of the staging collections whose names start with ``prefix``."""
    return _db().list_collection_names(filter={"name": {"$regex": "^" + re.escape(prefix)}})


def drop_staging(prefix):
    """Drops the staging collections whose names start with ``prefix``;
    returns their names."""
    names = staging_collections(prefix)
    for name in names:
        _db().drop_collection(name)
    return names


def _apply_rename(dataset, key, new_key):
    move_run_files(dataset, key, new_key)
    with locks.schema_lock(dataset):
        dataset.reload()
        if key in dataset.list_runs() and new_key not in dataset.list_runs():
            dataset.rename_run(key, new_key)


def move_run_files(dataset, key, new_key):
    """Moves run ``key``'s fields, indexes and files to ``new_key``
    (idempotent)."""
    dataset = dataset._root_dataset
    _drop_indexes(dataset, key)
    with locks.schema_lock(dataset):
        dataset.reload()
        for field in gmvruns._existing_fields(dataset, key):
            new = new_key + field[len(key):]
            if not dataset.has_field(new):
                dataset.rename_sample_field(field, new)
            crashpoint("rename.field")
    _ensure_indexes(dataset, new_key, gmvruns._existing_fields(dataset, new_key))
    old_dir, new_dir = gmvruns.run_dir(dataset, key), gmvruns.run_dir(dataset, new_key)
    if os.path.isdir(old_dir):
        if os.path.isdir(new_dir):
            shutil.rmtree(new_dir)
        os.rename(old_dir, new_dir)
    crashpoint("rename.dir")


# --- recovery ------------------------------------------------------------------


def recover(dataset, key):
    """Completes an interrupted commit of run ``key`` and removes leftovers
    of interrupted operations. Call with the run's lock held."""
    dataset = dataset._root_dataset
    jpath = journal_path(dataset, key)
    if os.path.isfile(jpath):
        journal = read_json(jpath)
        logger.warning(
            "Run %r on dataset %r: completing an interrupted %s", key, dataset.name,
            {"save": "commit", "delete": "deletion", "rename": "rename to %r" % journal.get("new_key")}[journal["action"]],
        )
        _apply(dataset, journal)
        return
    store = RunStore(dataset, key)
    leftovers = drop_staging(staging_prefix(dataset, key))
    removed = store.collect_garbage()
    tmp = [n for n in removed if n.endswith(".tmp")]
    if leftovers or tmp:
        logger.warning(
            "Run %r on dataset %r: removed leftovers of an interrupted operation "
            "(%d partial files, %d staging collections)", key, dataset.name, len(tmp), len(leftovers),
        )


def recover_if_free(dataset, key):
    """:func:`recover` for readers: only when a journal is left and no live
    process holds the run's lock."""
    if not os.path.isfile(journal_path(dataset, key)):
        return
    with locks.try_lock(dataset, key, "recover") as lock:
        if lock is not None:
            recover(dataset, key)


@contextlib.contextmanager
def writing(dataset, key, operation, *extra_keys):
    """Holds the locks of ``key`` (and ``extra_keys``), recovers each run,
    sweeps files of deleted datasets, then yields the lock of ``key``."""
    with contextlib.ExitStack() as stack:
        lock = stack.enter_context(locks.run_lock(dataset, key, operation))
        for k in extra_keys:
            stack.enter_context(locks.run_lock(dataset, k, operation))
        for k in (key,) + extra_keys:
            recover(dataset, k)
        yield lock


def cleanup_runs(dry_run=False):
    """Removes the run files of datasets that no longer exist, and of runs
    that no longer exist on their dataset (when nobody holds their lock).

    Returns:
        the removed directories
    """
    root = gmvruns.runs_root()
    if not os.path.isdir(root):
        return []
    datasets = {str(d["_id"]): d["name"] for d in _db().datasets.find({}, {"name": 1})}
    removed = []
    for ds_id in os.listdir(root):
        path = os.path.join(root, ds_id)
        if not os.path.isdir(path):
            continue
        if ds_id not in datasets:
            removed.append(path)
            if not dry_run:
                shutil.rmtree(path, ignore_errors=True)
                drop_staging(STAGING_PREFIX + ds_id + ".")
            continue
        dataset = None
        for key in os.listdir(path):
            kdir = os.path.join(path, key)
            if not os.path.isdir(kdir) or key.startswith("_"):
                continue
            if dataset is None:
                dataset = fo.load_dataset(datasets[ds_id])
            if (key in gmvruns.list_runs(dataset) or os.path.isfile(journal_path(dataset, key))
                    or locks.is_held_here(dataset, key)):
                continue
            with locks.try_lock(dataset, key, "cleanup_runs") as lock:
                if lock is None or key in gmvruns.list_runs(dataset):
                    continue
                removed.append(kdir)
                if not dry_run:
                    shutil.rmtree(kdir, ignore_errors=True)
    if removed and not dry_run:
        logger.info("Removed %d directories of deleted datasets or runs", len(removed))
    return removed
