"""One writer per run: a lease lock per (dataset, run key) in FiftyOne's database.

The lock is a document in the ``gmv_locks`` collection, so it works across
processes and across machines that share the database (delegated workers).
A holder renews its lease from a background thread; a lock whose lease has
expired, or whose holder is a dead process on this machine, is taken over
with a warning. Within one process the lock is re-entrant.
"""

import contextlib
import datetime
import logging
import os
import socket
import threading
import time
import uuid

import pymongo.errors

logger = logging.getLogger(__name__)

COLLECTION = "gmv_locks"
LEASE_SECONDS = float(os.environ.get("GMV_LOCK_LEASE", 60))
_held = {}  # lock id -> [RunLock, depth]
_held_guard = threading.Lock()


class RunLockedError(RuntimeError):
    """Another process is changing this run."""


def _host():
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    return "%s/%s" % (socket.gethostname(), boot)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _collection():
    from fiftyone.core.odm.database import get_db_conn

    return get_db_conn()[COLLECTION]


def _now():
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def lock_id(dataset, key):
    return "%s/%s" % (dataset._root_dataset._doc.id, key)


def describe(doc):
    return "%s (pid %s on %s, since %s UTC)" % (
        doc.get("operation", "?"), doc.get("pid"), doc.get("hostname"),
        doc.get("acquired_at").strftime("%Y-%m-%d %H:%M:%S") if doc.get("acquired_at") else "?",
    )


def holder(dataset, key):
    """The live holder of run ``key``'s lock as a dict, or None."""
    doc = _collection().find_one({"_id": lock_id(dataset, key)})
    return None if doc is None or _stale(doc) else doc


def _stale(doc):
    if doc["expires_at"] < _now():
        return True
    return doc.get("host") == _host() and not _pid_alive(doc.get("pid", -1))


class RunLock(object):
    """The lease on one run; see :func:`run_lock`."""

    def __init__(self, dataset, key, operation):
        self.id = lock_id(dataset, key)
        self.key = key
        self.dataset_name = dataset._root_dataset.name
        self.operation = operation
        self.owner = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread = None
        self.lost = False

    def _doc(self):
        now = _now()
        return {
            "_id": self.id, "owner": self.owner, "operation": self.operation,
            "pid": os.getpid(), "host": _host(), "hostname": socket.gethostname(),
            "acquired_at": now, "expires_at": now + datetime.timedelta(seconds=LEASE_SECONDS),
        }

    def acquire(self):
        coll = _collection()
        try:
            coll.insert_one(self._doc())
        except pymongo.errors.DuplicateKeyError:
            current = coll.find_one({"_id": self.id})
            if current is not None and not _stale(current):
                raise RunLockedError(
                    "Run %r on dataset %r is being changed by another process: %s. "
                    "Try again when it has finished" % (self.key, self.dataset_name, describe(current))
                )
            query = {"_id": self.id} if current is None else {"_id": self.id, "owner": current["owner"]}
            try:
                taken = coll.find_one_and_replace(query, self._doc(), upsert=current is None)
            except pymongo.errors.DuplicateKeyError:
                taken = None
            if current is not None and taken is None:
                raise RunLockedError(
                    "Run %r on dataset %r was just locked by another process" % (self.key, self.dataset_name)
                )
            if current is not None:
                logger.warning("Took over the lock of run %r left by %s, which is gone", self.key, describe(current))
        self._thread = threading.Thread(target=self._renew, daemon=True, name="gmv-lock-" + self.key)
        self._thread.start()

    def _renew(self):
        coll = _collection()
        while not self._stop.wait(LEASE_SECONDS / 4):
            res = coll.update_one(
                {"_id": self.id, "owner": self.owner},
                {"$set": {"expires_at": _now() + datetime.timedelta(seconds=LEASE_SECONDS)}},
            )
            if res.matched_count == 0:
                self.lost = True
                return

    def check(self):
        """Raises if the lease was lost (e.g. the process was suspended past it)."""
        if self.lost or _collection().count_documents({"_id": self.id, "owner": self.owner}) == 0:
            raise RunLockedError(
                "Lost the lock of run %r on dataset %r (the lease expired); nothing was changed"
                % (self.key, self.dataset_name)
            )

    def release(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        _collection().delete_one({"_id": self.id, "owner": self.owner})


@contextlib.contextmanager
def run_lock(dataset, key, operation, wait=0):
    """Holds run ``key``'s lock for the block; raises :class:`RunLockedError`,
    naming the holder, when another process holds it (at once, or after
    ``wait`` seconds of retrying)."""
    lid = lock_id(dataset, key)
    with _held_guard:
        entry = _held.get(lid)
        if entry is not None:
            entry[1] += 1
    if entry is not None:
        try:
            yield entry[0]
        finally:
            with _held_guard:
                entry[1] -= 1
        return
    lock = RunLock(dataset, key, operation)
    deadline = time.monotonic() + wait
    while True:
        try:
            lock.acquire()
            break
        except RunLockedError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
    with _held_guard:
        _held[lid] = [lock, 1]
    try:
        yield lock
    finally:
        with _held_guard:
            del _held[lid]
        lock.release()


def schema_lock(dataset):
    """Serializes GMValuator's changes of the dataset document (field schema,
    run documents): FiftyOne saves them from an in-memory copy, so two
    processes changing them at once could lose one's change."""
    return run_lock(dataset, "_schema", "schema change", wait=120)


def is_held_here(dataset, key):
    return lock_id(dataset, key) in _held


def try_lock(dataset, key, operation):
    """:func:`run_lock` that yields None instead of raising when the run is locked."""
    @contextlib.contextmanager
    def ctx():
        try:
            cm = run_lock(dataset, key, operation)
            lock = cm.__enter__()
        except RunLockedError:
            yield None
            return
        try:
            yield lock
        finally:
            cm.__exit__(None, None, None)

    return ctx()
