"""Two processes on one run: one writer at a time, a clear error for the
second, readers that never crash, locks of dead processes recovered."""

import datetime
import logging
import time

import pytest

import gmv_plugin as gmv
from gmv_plugin import locks

from test_faults import OLD, NEW, child, compute, diff, ds, refs, snapshot  # noqa: F401 (fixtures)


def _wait_locked(ds, key, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if locks.holder(ds, key) is not None:
            return
        time.sleep(0.1)
    raise AssertionError("the child never took the lock")


def test_same_key_second_writer_fails_fast_and_first_is_consistent(ds, refs):
    compute(ds, "cc_same", **OLD)
    first = child(ds, "compute_values", wait=False, env={"GMV_PAUSE_AT": "stage.index:8"},
                  key="cc_same", train_tag="train", gen_tag="generated", overwrite=True, **NEW)
    _wait_locked(ds, "cc_same")
    start = time.time()
    with pytest.raises(gmv.RunLockedError, match=r"being changed by another process: compute_values \(pid %d" % first.pid):
        compute(ds, "cc_same", overwrite=True, **OLD)
    assert time.time() - start < 5
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    snap = snapshot(ds, "cc_same")
    assert snap == refs["new"], diff(snap, refs["new"])
    gmv.delete_run(ds, "cc_same")


def test_different_keys_run_side_by_side_exactly(ds, refs):
    procs = [child(ds, "compute_values", wait=False, key=key, train_tag="train", gen_tag="generated", **NEW)
             for key in ("cc_a", "cc_b")]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    for key in ("cc_a", "cc_b"):
        snap = snapshot(ds, key)
        assert snap == refs["new"], diff(snap, refs["new"])
        gmv.delete_run(ds, key)


def test_reader_during_delete_sees_old_run_or_none(ds):
    compute(ds, "cc_del", **OLD)
    proc = child(ds, "delete_run", wait=False, env={"GMV_PAUSE_AT": "delete.fields:2"}, key="cc_del")
    seen = set()
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        try:
            results = gmv.load_results(ds, "cc_del")
            assert results.num_train == 131
            seen.add("old")
        except ValueError as e:
            assert "No GMValuator run with key 'cc_del'" in str(e)
            seen.add("gone")
        time.sleep(0.05)
    assert proc.wait() == 0
    assert "cc_del" not in gmv.list_runs(ds) and "old" in seen


def test_concurrent_updates_one_wins_the_other_is_told(ds, refs):
    compute(ds, "cc_upd", **OLD)
    first = child(ds, "update_values", wait=False, env={"GMV_PAUSE_AT": "stage.recall:8"},
                  key="cc_upd", gen_tag="all_gen")
    _wait_locked(ds, "cc_upd")
    with pytest.raises(gmv.RunLockedError, match="update_values"):
        gmv.update_values(ds, "cc_upd", ds.match_tags("all_gen"), progress=False)
    assert first.wait(timeout=300) == 0
    assert snapshot(ds, "cc_upd") == refs["upd"]
    gmv.delete_run(ds, "cc_upd")


def test_lock_of_dead_process_is_taken_over(ds, refs, caplog):
    compute(ds, "cc_dead", **OLD)
    rc, _, _ = child(ds, "compute_values", env={"GMV_CRASH_AT": "stage.index"}, key="cc_dead",
                     train_tag="train", gen_tag="generated", overwrite=True, **NEW)
    assert rc == 77 and locks._collection().count_documents({"_id": locks.lock_id(ds, "cc_dead")}) == 1
    with caplog.at_level(logging.WARNING):
        compute(ds, "cc_dead", overwrite=True, **NEW)
    assert "Took over the lock" in caplog.text and "which is gone" in caplog.text
    assert snapshot(ds, "cc_dead") == refs["new"]
    gmv.delete_run(ds, "cc_dead")


def test_lease_of_another_machine(ds):
    compute(ds, "cc_lease", **OLD)
    coll = locks._collection()
    now = datetime.datetime.utcnow()
    doc = {"_id": locks.lock_id(ds, "cc_lease"), "owner": "x", "operation": "update_values",
           "pid": 4242, "host": "worker-7/boot", "hostname": "worker-7", "acquired_at": now,
           "expires_at": now + datetime.timedelta(seconds=30)}
    coll.insert_one(doc)
    with pytest.raises(gmv.RunLockedError, match=r"update_values \(pid 4242 on worker-7"):
        gmv.delete_run(ds, "cc_lease")
    coll.update_one({"_id": doc["_id"]}, {"$set": {"expires_at": now - datetime.timedelta(seconds=1)}})
    gmv.delete_run(ds, "cc_lease")  # the lease expired: taken over
    assert "cc_lease" not in gmv.list_runs(ds) and coll.count_documents({"_id": doc["_id"]}) == 0

